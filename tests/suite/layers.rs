//! The layer rule of `src/` (README, "Layout"): each top-level module imports only from its own
//! layer or the layers below it, and only the application layer prints. Checked on the source
//! text: every `crate::<module>` path in a file, and every `print!`-family macro.

use std::path::{Path, PathBuf};

/// Bottom to top.
const LAYERS: [&str; 9] = ["util", "kernels", "model", "data", "objectives", "interop", "eval", "train", "app"];

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|&l| l == module)
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The layer a file belongs to: its folder under `src/` (`main.rs` is the application).
fn layer_of(src: &Path, file: &Path) -> Option<&'static str> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?;
    match first {
        "main.rs" => Some("app"),
        "lib.rs" => None,
        name => LAYERS.iter().copied().find(|&l| l == name.trim_end_matches(".rs")),
    }
}

/// Every module named right after `crate::` (with `use crate::{a, b}` groups expanded).
fn imports(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level items of the group: split at commas outside nested braces.
            let (mut depth, mut item) = (0usize, String::new());
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => found.push(std::mem::take(&mut item)),
                    _ => {}
                }
                item.push(c);
            }
            found.push(item);
        } else {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            found.push(name);
        }
    }
    let mut found: Vec<String> =
        found.iter().map(|p| p.trim_start_matches([',', ' ', '\n']).split("::").next().unwrap_or("").trim().to_string()).collect();
    found.retain(|m| !m.is_empty());
    found
}

/// The printing macros a source text calls.
fn prints(text: &str) -> Vec<&'static str> {
    ["print", "println", "eprint", "eprintln"]
        .into_iter()
        .filter(|mac| {
            text.match_indices(&format!("{mac}!")).any(|(at, _)| !text[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_'))
        })
        .collect()
}

#[test]
fn every_file_sits_in_a_layer_and_imports_only_downwards() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut problems = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap().display().to_string();
        if rel == "lib.rs" {
            continue;
        }
        let Some(own) = layer_of(&src, file) else {
            problems.push(format!("{rel}: not in a layer folder ({})", LAYERS.join(", ")));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for module in imports(&text) {
            match rank(&module) {
                Some(r) if r > rank(own).unwrap() => problems.push(format!("{rel} ({own}) imports crate::{module}, a higher layer")),
                None => problems.push(format!("{rel}: crate::{module} is not a layer")),
                _ => {}
            }
        }
        if own != "app" {
            for mac in prints(&text) {
                problems.push(format!("{rel} ({own}) prints with {mac}!: only the application layer prints"));
            }
        }
    }
    assert!(problems.is_empty(), "layer rule broken:\n{}", problems.join("\n"));
}

#[test]
fn the_checker_sees_grouped_and_nested_paths() {
    let found = imports("use crate::{model::{self, QFormer}, data::text};\nlet x = crate::train::checkpoint::resolve(p);");
    assert_eq!(found, ["model", "data", "train"]);
    assert_eq!(prints("eprintln!(\"x\"); writeln!(f)"), ["eprintln"]);
    assert_eq!(rank("util"), Some(0));
    assert!(rank("app") > rank("train"));
}
