//! Reading a config: TOML files layered through `base`, `--set` overrides on top, and errors
//! that name the key and where it was set. A relative path means the same file from any working
//! directory: in a config file it is relative to that file (as `base` is), on the command line
//! relative to the current directory. Paths are stored absolute, so the config a run saves
//! beside its checkpoints names the same files wherever it is read from.

use std::path::{Component, Path, PathBuf};

use crate::util::error::{Error, Result};

/// Reads a TOML file, merging it over the file named by its top-level `base` key (relative to it).
pub(super) fn read_table(path: &Path, depth: usize) -> Result<toml::Table> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| Error::config("toml", e.to_string(), &name))?;
    let folder = path.parent().unwrap_or(Path::new("."));
    resolve_paths(&mut table, folder, &|_| true, &name)?;
    let Some(base) = table.remove("base") else { return Ok(table) };
    let base = base.as_str().ok_or_else(|| Error::config("base", "must be a path string", &name))?;
    if depth > 8 {
        return Err(Error::config("base", "too many nested base files", &name));
    }
    let mut merged = read_table(&folder.join(base), depth + 1)?;
    merge(&mut merged, table);
    Ok(merged)
}

/// The config keys that hold paths.
const PATH_KEYS: [&str; 9] = [
    "data.train",
    "data.eval",
    "data.image_root",
    "data.cache.dir",
    "text.tokenizer",
    "init.bert",
    "init.weights",
    "encoder.weights",
    "checkpoint.dir",
];

/// `path` joined to `folder` when relative, made absolute and with `.`/`..` taken out lexically.
fn absolute_in(folder: &Path, path: &Path) -> Result<PathBuf> {
    let joined = std::path::absolute(folder.join(path)).map_err(|e| Error::io(path, e))?;
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.components().next_back(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

/// Makes the path keys of `table` (those `selected` picks) absolute against `folder`.
pub(super) fn resolve_paths(table: &mut toml::Table, folder: &Path, selected: &dyn Fn(&str) -> bool, source: &str) -> Result<()> {
    for key in PATH_KEYS.into_iter().filter(|k| selected(k)) {
        let (parents, last) = key.rsplit_once('.').expect("section.key");
        let mut node = Some(&mut *table);
        for part in parents.split('.') {
            node = node.and_then(|n| n.get_mut(part)).and_then(toml::Value::as_table_mut);
        }
        let Some(value) = node.and_then(|n| n.get_mut(last)) else { continue };
        let text = value.as_str().ok_or_else(|| Error::config(key, "must be a path string", source))?;
        *value = toml::Value::String(absolute_in(folder, Path::new(text))?.display().to_string());
    }
    Ok(())
}

/// The path keys the command line set: they are relative to the current directory.
pub(super) fn resolve_override_paths(table: &mut toml::Table, overrides: &[String]) -> Result<()> {
    let set = |key: &str| overrides.iter().any(|o| o.split_once('=').is_some_and(|(k, _)| k.trim() == key));
    resolve_paths(table, Path::new("."), &set, "command line")
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

/// Applies `section.key=value`; the value is read as TOML (number, bool, string, array) and as a
/// plain string when that fails.
pub(super) fn apply_override(table: &mut toml::Table, assignment: &str) -> Result<()> {
    let bad = |msg: &str| Error::config(assignment, msg, "--set");
    let (path, raw) = assignment.split_once('=').ok_or_else(|| bad("expected section.key=value"))?;
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let keys: Vec<&str> = path.trim().split('.').collect();
    let (last, parents) = keys.split_last().ok_or_else(|| bad("empty key"))?;
    let mut node = table;
    for k in parents {
        node = node
            .entry(k.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| bad(&format!("`{k}` is not a section")))?;
    }
    node.insert(last.to_string(), value);
    Ok(())
}

/// A run length given by `--set` replaces the files' one: `train.steps` clears `train.epochs`
/// and the other way round (unless the command line sets both, which validation refuses).
pub(super) fn replace_run_length(table: &mut toml::Table, overrides: &[String]) {
    let set = |key: &str| overrides.iter().any(|o| o.split_once('=').is_some_and(|(k, _)| k.trim() == key));
    for (given, cleared) in [("steps", "epochs"), ("epochs", "steps")] {
        if set(&format!("train.{given}")) && !set(&format!("train.{cleared}")) {
            if let Some(train) = table.get_mut("train").and_then(toml::Value::as_table_mut) {
                train.remove(cleared);
            }
        }
    }
}

/// An error about a key that a `--set` gave names the command line, not the config file.
pub(super) fn blame_override(e: Error, overrides: &[String]) -> Error {
    if let Error::Config { key, message, .. } = &e {
        let set = overrides.iter().rev().find(|o| o.split_once('=').is_some_and(|(k, _)| k.trim() == key));
        if let Some(o) = set {
            return Error::config(key.as_str(), message.as_str(), format!("command line: --set {o}"));
        }
    }
    e
}

/// `section.key` named by an error at byte `offset` of a TOML text: the assignment on that line,
/// or for a missing field, the field inside the section the error points at.
pub(super) fn key_at(text: &str, offset: usize, message: &str) -> String {
    let before = &text[..offset.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[line_start..].find('\n').map_or(text.len(), |i| line_start + i);
    let line = text[line_start..line_end].trim();
    let header = |l: &str| l.strip_prefix('[').and_then(|l| l.strip_suffix(']')).map(str::to_string);
    let (section, key) = match header(line) {
        Some(section) => (section, String::new()),
        None => {
            let section = before[..line_start].lines().rev().find_map(|l| header(l.trim())).unwrap_or_default();
            (section, line.split('=').next().unwrap_or("").trim().trim_matches('"').to_string())
        }
    };
    let missing = message.strip_prefix("missing field `").and_then(|m| m.split('`').next());
    let key = missing.map(str::to_string).unwrap_or(key);
    [section, key].into_iter().filter(|p| !p.is_empty()).collect::<Vec<_>>().join(".")
}
