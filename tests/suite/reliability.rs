//! Failure handling of a real run: non-finite losses (injected through poisoned cached features)
//! skip the update and stop the run after `train.max_bad_steps` in a row with the last checkpoint
//! intact; a checkpoint write that fails (a file-size limit, as a full disk) stops the run with a
//! clear error and leaves the previous checkpoint loadable.

use crate::common;

use std::path::Path;
use std::process::Command;

use common::{tensors, RunConfig};
use qformer::train::checkpoint;
use qformer::train::metrics::MetricsLog;

fn qformer(args: &[&str], cfg: &Path, extra_sets: &[String]) -> Command {
    common::qformer(args[0]).args(&args[1..]).config(cfg).sets(extra_sets).command()
}

fn workdir(name: &str) -> std::path::PathBuf {
    common::workdir(&format!("reliability-{name}"))
}

#[test]
fn non_finite_steps_are_skipped_counted_and_stop_the_run() {
    let dir = workdir("nan");
    let cfg = RunConfig::miniature(2).train_line("max_bad_steps = 3").write(&dir, "run");
    let cache = [
        "data.features=\"cache\"".to_string(),
        format!("data.cache.dir=\"{}/cache\"", dir.display()),
        "data.cache.dtype=\"f32\"".into(),
        "data.augment.enabled=false".into(),
        "checkpoint.every=2".into(),
    ];
    let out = qformer(&["cache-features"], &cfg, &cache).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = qformer(&["train"], &cfg, &cache).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = dir.join("checkpoints/run");
    let good = tensors(&checkpoint::resolve(&run).unwrap().join("model.safetensors"));

    // Every cached feature becomes NaN: each further step's loss is NaN.
    let bin = dir.join("cache/train.bin");
    let len = std::fs::metadata(&bin).unwrap().len() as usize;
    std::fs::write(&bin, f32::NAN.to_le_bytes().repeat(len / 4)).unwrap();
    let mut resumed = cache.to_vec();
    resumed.push("train.steps=8".into());
    let out = qformer(&["train", "--resume", "latest"], &cfg, &resumed).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("3 consecutive non-finite steps") && stderr.contains("train.max_bad_steps") && stderr.contains("intact"),
        "{stderr}"
    );

    // The skipped steps are logged; the checkpoint written meanwhile (step 4) holds the weights
    // of step 2, untouched by NaN, and verifies.
    let steps = MetricsLog::read(&run).unwrap();
    let skipped: Vec<u64> = steps.iter().filter(|m| m.skipped_update).map(|m| m.step).collect();
    assert_eq!(skipped, vec![3, 4, 5]);
    let latest = checkpoint::resolve(&run).unwrap();
    assert!(latest.ends_with("step-00000004"), "{}", latest.display());
    assert!(tensors(&latest.join("model.safetensors")) == good, "an update was applied from a NaN step");
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(latest.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["bad_steps_total"], 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failed_checkpoint_write_stops_the_run_and_keeps_the_previous_checkpoint() {
    let dir = workdir("full");
    let cfg = RunConfig::miniature(2).write(&dir, "run");
    let out = qformer(&["train"], &cfg, &[]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = dir.join("checkpoints/run");
    let before = checkpoint::resolve(&run).unwrap();
    let model = std::fs::metadata(before.join("model.safetensors")).unwrap().len();
    let optimizer = std::fs::metadata(before.join("optimizer.safetensors")).unwrap().len();
    assert!(optimizer > model + 2048);

    // A file-size limit between the two file sizes: the optimizer state cannot be written, as on
    // a full disk (the limit's signal ignored, so the write fails with an error instead).
    let blocks = (model + optimizer) / 2 / 1024;
    let script = format!("ulimit -f {blocks}; trap '' XFSZ; exec \"$@\"");
    let out = Command::new("bash")
        .args(["-c", &script, "qformer", env!("CARGO_BIN_EXE_qformer"), "train", "--config"])
        .arg(&cfg)
        .args(["--set", "train.steps=4", "--resume", "latest"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the run should have stopped: {stderr}");
    assert!(stderr.contains("optimizer.safetensors") && stderr.contains("File too large"), "{stderr}");

    // `latest` still names the step-2 checkpoint, which verifies and loads; no partial folder.
    let after = checkpoint::resolve(&run).unwrap();
    assert_eq!(after, before);
    let cfg_loaded = qformer::train::config::TrainConfig::load(&after.join("config.toml"), &[]).unwrap();
    checkpoint::verify(&after, &cfg_loaded).unwrap();
    assert!(!std::fs::read_dir(&run).unwrap().flatten().any(|e| e.file_name().to_string_lossy().contains(".tmp-")));
    let _ = std::fs::remove_dir_all(&dir);
}
