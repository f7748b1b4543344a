//! A run is a pure function of (config, data, build, CPU instruction set): the same command gives
//! the same bits whatever the number of threads and however the threads are scheduled. Four runs
//! of a config wide enough to take every parallel path of a CPU step (two with 2 threads, one
//! with 1 and one with 4) must agree byte for byte on every per-step record (losses, gradient
//! norm, temperature, held-out retrieval and the full evaluation), the final weights and the
//! optimizer state.

use crate::common;

use std::path::Path;

use common::{tensors, workdir, RunConfig};

fn records(run: &Path) -> Vec<String> {
    common::records(run, &[])
}

const STEPS: u64 = 24;

fn train(cfg: &Path, run: &str, threads: usize) {
    let out = common::qformer("train")
        .config(cfg)
        .run_name(run)
        .sets([format!("checkpoint.every={STEPS}")])
        .env("RAYON_NUM_THREADS", threads.to_string())
        .output();
    assert!(out.status.success(), "{run} ({threads} threads) failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn runs_are_bit_identical_across_repeats_and_thread_counts() {
    let dir = workdir("determinism");
    let cfg = RunConfig::wide(STEPS).write(&dir, "run");
    let runs = [("first", 2), ("second", 2), ("one-thread", 1), ("four-threads", 4)];
    for (run, threads) in runs {
        train(&cfg, run, threads);
    }
    let root = dir.join("checkpoints");
    let reference = records(&root.join("first"));
    assert_eq!(reference.len(), STEPS as usize);
    assert!(reference.last().unwrap().contains("\"evaluation\""), "the last step runs the full evaluation");
    let last = |run: &str| qformer::train::checkpoint::resolve(&root.join(run)).unwrap();
    for (run, threads) in &runs[1..] {
        let other = records(&root.join(run));
        for (step, (a, b)) in reference.iter().zip(&other).enumerate() {
            assert_eq!(a, b, "step {} differs between `first` (2 threads) and `{run}` ({threads} threads)", step + 1);
        }
        for file in ["model.safetensors", "optimizer.safetensors"] {
            let (a, b) = (tensors(&last("first").join(file)), tensors(&last(run).join(file)));
            assert_eq!(a.len(), b.len());
            for ((name, x), (_, y)) in a.iter().zip(&b) {
                assert!(
                    x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()),
                    "{file}: `{name}` differs in `{run}` ({threads} threads)"
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
