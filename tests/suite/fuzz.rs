//! Bounded fuzzing (proptest, 256 cases per property in CI): the TOML config loader and the
//! annotation parsers never panic on mutated or arbitrary input, and every error names its key,
//! file or line.

use crate::common;

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use qformer::train::config::TrainConfig;

fn tiny() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/tiny.toml")).unwrap()
}

fn scratch(name: &str) -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| common::workdir("fuzz")).join(name)
}

/// One edit of a config: replace a line, delete it, insert a line, or cut the file.
#[derive(Clone, Debug)]
enum Edit {
    Replace(usize, String),
    Delete(usize),
    Insert(usize, String),
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let value = prop_oneof![
        Just("-1".to_string()),
        Just("0".to_string()),
        Just("1e400".to_string()),
        Just("nan".to_string()),
        Just("\"\"".to_string()),
        Just("[1, 2]".to_string()),
        Just("{ a = 1 }".to_string()),
        "[a-z_]{1,12}".prop_map(|s| format!("\"{s}\"")),
        any::<i64>().prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| format!("{v:?}")),
    ];
    let key = prop_oneof![
        Just("hidden_size".to_string()),
        Just("batch_size".to_string()),
        Just("lr".to_string()),
        Just("every".to_string()),
        Just("image_size".to_string()),
        "[a-z_]{1,10}",
    ];
    prop_oneof![
        (0usize..120, key.clone(), value.clone()).prop_map(|(l, k, v)| Edit::Replace(l, format!("{k} = {v}"))),
        (0usize..120).prop_map(Edit::Delete),
        (0usize..120, prop_oneof![(key, value).prop_map(|(k, v)| format!("{k} = {v}")), "\\[[a-z.]{1,12}\\]", ".{0,40}"])
            .prop_map(|(l, t)| Edit::Insert(l, t)),
        (0usize..4000).prop_map(Edit::Truncate),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    for e in edits {
        let n = lines.len().max(1);
        match e {
            Edit::Replace(i, t) if !lines.is_empty() => lines[i % n] = t.clone(),
            Edit::Delete(i) if !lines.is_empty() => {
                lines.remove(i % n);
            }
            Edit::Insert(i, t) => lines.insert(i % (lines.len() + 1), t.clone()),
            Edit::Truncate(at) => {
                let joined = lines.join("\n");
                let cut = joined.char_indices().map(|(i, _)| i).find(|&i| i >= *at).unwrap_or(joined.len());
                lines = joined[..cut].lines().map(String::from).collect();
            }
            _ => {}
        }
    }
    lines.join("\n")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_configs_load_or_name_the_problem(edits in prop::collection::vec(edit(), 1..4)) {
        let path = scratch("mutated.toml");
        std::fs::write(&path, apply(&tiny(), &edits)).unwrap();
        if let Err(e) = TrainConfig::load(&path, &[]) {
            let msg = e.to_string();
            // A config error names the key (section.key or the file's place) and the file.
            prop_assert!(msg.contains("mutated.toml"), "{}", msg);
        }
    }

    #[test]
    fn overrides_load_or_name_the_key(key in "[a-z_.]{1,24}", value in ".{0,16}") {
        let path = scratch("base.toml");
        std::fs::write(&path, tiny()).unwrap();
        if let Err(e) = TrainConfig::load(&path, &[format!("{key}={value}")]) {
            let msg = e.to_string();
            prop_assert!(msg.contains(&key) || msg.contains("--set") || msg.contains("base.toml"), "{}", msg);
        }
    }

    #[test]
    fn arbitrary_annotation_lines_are_skipped_with_their_line(lines in prop::collection::vec(".{0,60}", 1..12), ext in prop_oneof![Just("jsonl"), Just("csv"), Just("tsv"), Just("json")]) {
        let path = scratch(&format!("ann.{ext}"));
        let body = if ext == "csv" { format!("image,caption\n{}", lines.join("\n")) } else if ext == "tsv" { format!("image\tcaption\n{}", lines.join("\n")) } else { lines.join("\n") };
        std::fs::write(&path, body).unwrap();
        match qformer::data::annotations::load(&path, None) {
            Ok(a) => {
                for s in &a.skipped {
                    prop_assert!(s.origin.contains(&format!("ann.{ext}:")), "{}", s);
                }
            }
            Err(e) => prop_assert!(e.to_string().contains(&format!("ann.{ext}")), "{}", e),
        }
    }
}
