//! Kill torture: a training run (the wide configuration of the determinism test: batch 32,
//! every parallel path of a CPU step) is killed with SIGKILL at random moments (some land while a
//! checkpoint is being written, which the restarted run reports and cleans up) and resumed from
//! `latest` until it completes. Its final weights, optimizer state and per-step losses must equal
//! those of an uninterrupted run bit for bit.
//!
//! `QFORMER_TORTURE_KILLS` sets the number of kills (default 20, as CI runs it).

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{tensors, workdir, RunConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn train(cfg: &Path, run: &str, resume: bool, log: &Path) -> std::process::Child {
    // A run killed before its first checkpoint left only its log: nothing to resume, start again.
    common::qformer("train").config(cfg).run_name(run).arg(if resume { "--resume=latest" } else { "--overwrite" }).log_to(log).spawn()
}

#[test]
fn killed_and_resumed_run_equals_an_uninterrupted_one() {
    let kills_wanted: usize = std::env::var("QFORMER_TORTURE_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let dir = workdir("torture");
    let steps = 3 * kills_wanted as u64;
    let cfg = RunConfig::wide(steps).write(&dir, "run");

    let started = Instant::now();
    let status = train(&cfg, "reference", false, &dir.join("reference.log")).wait().unwrap();
    assert!(status.success(), "{}", std::fs::read_to_string(dir.join("reference.log")).unwrap());
    let uninterrupted = started.elapsed();

    let run = dir.join("checkpoints/tortured");
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let (mut kills, mut starts, mut cleaned) = (0usize, 0usize, 0usize);
    let per_step = uninterrupted.as_secs_f64() / steps as f64;
    loop {
        let log = dir.join(format!("tortured-{starts}.log"));
        let mut child = train(&cfg, "tortured", run.join("latest").exists(), &log);
        starts += 1;
        assert!(starts < 50 * kills_wanted.max(1), "no progress after {starts} starts");
        // Live long enough to get a few steps done on average, never so long that it finishes
        // before the wanted number of kills.
        let life = Duration::from_secs_f64(rng.random_range(0.05..(0.2 + 4.0 * per_step)));
        let born = Instant::now();
        let finished = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if born.elapsed() >= life && kills < kills_wanted {
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let text = || std::fs::read_to_string(&log).unwrap_or_default();
        cleaned += text().lines().filter(|l| l.contains("partial checkpoint write")).count();
        match finished {
            Some(status) => {
                assert!(status.success(), "restart {starts} failed: {}", text());
                break;
            }
            None => {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                kills += 1;
            }
        }
    }
    eprintln!(
        "{kills} kills over {starts} starts; {cleaned} restarts found a partial checkpoint write; uninterrupted run {uninterrupted:.1?}"
    );
    assert!(kills >= kills_wanted, "the run finished after only {kills} kills");

    let reference = dir.join("checkpoints/reference");
    let last = |r: &Path| qformer::train::checkpoint::resolve(r).unwrap();
    for file in ["model.safetensors", "optimizer.safetensors"] {
        assert!(tensors(&last(&reference).join(file)) == tensors(&last(&run).join(file)), "{file} differs after {kills} kills");
    }
    assert_eq!(common::losses(&reference), common::losses(&run), "per-step losses differ");
    let _ = std::fs::remove_dir_all(&dir);
}
