//! Data parallelism computes the one-device step: 2 peers × batch B against 1 peer × batch 2B,
//! with dropout on and sampled hard negatives, compare every loss term, every gradient (summed
//! over the peers) and the weights after 3 AdamW steps. Only the order of reductions differs.
//!
//! Tolerance 1e-5 (the temperature's gradient excepted: `TEMPERATURE_GRAD_TOL`): relative for
//! loss terms; for a tensor, its difference's norm against 1e-5 of its norm, or of the whole set's root-mean-square value scaled to the tensor's size when that is
//! larger. The floor is for tensors that are rounding noise on both sides: the attention key
//! biases, whose gradient is zero in exact arithmetic (softmax ignores a shift), and the biases
//! that start at zero, which AdamW moves by about `lr` per step whatever the size of a gradient
//! element, so that elements whose gradient cancels to near zero move by rounding-sized
//! differences amplified to `lr`.

use crate::common;

use std::sync::Arc;

use burn::module::Module;
use burn::tensor::Tensor;
use common::{batch, serial, small, workdir, B};
use qformer::interop::weights::save_weights;
use qformer::model::QFormer;
use qformer::objectives::{ObjectiveConfig, Stage1Batch};
use qformer::train::collective::launch;
use qformer::train::config::{DistributedConfig, OptimConfig};
use qformer::train::optim::AdamW;
use qformer::train::trainer::{StepOptions, Trainer};

const GLOBAL: usize = 8;
const STEPS: usize = 3;
/// The temperature's gradient (the model's one scalar parameter) is a single sum over every
/// similarity logit of both directions whose terms cancel: the softmax-weighted similarity minus
/// the positives'. Its rounding error against its own size is the largest of all and depends on
/// the matmul kernels the CPU dispatches to: measured 1.5e-6 on an AVX-512 machine, 1.15e-5 on
/// the CI machine.
const TEMPERATURE_GRAD_TOL: f64 = 1e-4;

/// What a run reports from its first peer.
struct Outcome {
    /// The first step's gradients, summed over peers.
    grads: Vec<Option<Vec<f32>>>,
    /// Each step's loss and terms, summed over peers.
    steps: Vec<[f64; 4]>,
    weights: Vec<(String, Vec<f32>)>,
}

fn run(peers: usize, image_ids: Vec<i64>, name: &str) -> Outcome {
    let device = Default::default();
    let cfg = small();
    // Weights and data drawn once, before the peers start.
    <B as burn::tensor::backend::Backend>::seed(&device, 1);
    let model = QFormer::<B>::new(&cfg, &device);
    let data = batch(GLOBAL, Some(image_ids), 7);
    let dir = workdir(&format!("data_parallel_{name}_{peers}"));
    let dist = DistributedConfig { peers, ..Default::default() };
    let shared = Arc::new((model, data, cfg, dir));
    launch::<<B as burn::tensor::backend::AutodiffBackend>::InnerBackend, _, _>(
        &dist,
        |_| device,
        move |exchange, device| {
            let (model, data, cfg, dir) = &*shared;
            // Each peer its own parameters (fresh autodiff leaves), as a run's peers have: peers
            // that share leaves share one autodiff graph, and burn 0.21 can deadlock when two
            // threads build and back-propagate it at once.
            let model = model.clone().fork(&device);
            let (rank, count) = (exchange.rank(), exchange.count());
            let rows: Vec<usize> = (rank * GLOBAL / count..(rank + 1) * GLOBAL / count).collect();
            let options = StepOptions { clip: Some(1.0), seed: 3 };
            let mut trainer =
                Trainer::new(model.clone(), AdamW::new(&OptimConfig::default(), &model), ObjectiveConfig::default(), options, exchange);
            let slice = |trainer: &Trainer<B>, step: usize| -> Stage1Batch<B> {
                let feats = Tensor::cat(rows.iter().map(|&r| data.image_feats.clone().narrow(0, r, 1)).collect(), 0);
                let ids = rows.iter().map(|&r| data.image_ids.as_ref().unwrap()[r]).collect();
                let positions: Vec<u64> = rows.iter().map(|&r| (step * GLOBAL + r) as u64).collect();
                trainer.batch(feats, data.text.select(&rows), ids, &positions).unwrap()
            };
            let mut first = None;
            let mut steps = Vec::new();
            for step in 0..STEPS {
                let gradients = trainer.gradients(&[slice(&trainer, step)], false)?;
                // The first step's gradients as the update sees them: summed over micro-batches and peers.
                first.get_or_insert_with(|| gradients.grads.to_host());
                let t = trainer.apply(gradients, 1e-4).totals;
                steps.push([t.loss, t.terms[0].unwrap(), t.terms[1].unwrap(), t.terms[2].unwrap()]);
            }
            let path = dir.join(format!("rank{rank}.safetensors"));
            save_weights(&trainer.model, cfg, &path)?;
            Ok(Outcome { grads: first.unwrap_or_default(), steps, weights: common::tensors(&path) })
        },
    )
    .unwrap()
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt()
}

/// The root-mean-square element of a set of tensors.
fn rms<'a>(tensors: impl Iterator<Item = &'a [f32]>) -> f64 {
    let (sum, n) = tensors.fold((0.0, 0usize), |(s, n), t| (s + norm(t).powi(2), n + t.len()));
    (sum / n as f64).sqrt()
}

fn assert_close_tensor(what: &str, a: &[f32], b: &[f32], rms: f64, tol: f64) {
    assert_eq!(a.len(), b.len(), "{what}");
    let diff: Vec<f32> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let (d, n) = (norm(&diff), norm(b));
    let scale = n.max(rms * (b.len() as f64).sqrt());
    assert!(d <= tol * scale, "{what}: |a - b| = {d:e}, |b| = {n:e}, scale {scale:e}");
}

fn assert_close(what: &str, a: f64, b: f64) {
    assert!((a - b).abs() <= 1e-5 * b.abs().max(1e-6), "{what}: {a} vs {b}");
}

fn compare(image_ids: Vec<i64>, name: &str) {
    let _turn = serial();
    let one = run(1, image_ids.clone(), name);
    let two = run(2, image_ids, name);
    assert_eq!(one.grads.len(), two.grads.len());
    let grad_rms = rms(one.grads.iter().flatten().map(Vec::as_slice));
    for (i, (a, b)) in two.grads.iter().zip(&one.grads).enumerate() {
        match (a, b) {
            (Some(a), Some(b)) => {
                let tol = if b.len() == 1 { TEMPERATURE_GRAD_TOL } else { 1e-5 };
                assert_close_tensor(&format!("gradient {i}"), a, b, grad_rms, tol)
            }
            (None, None) => {}
            _ => panic!("gradient {i}: present on one side only"),
        }
    }
    for (s, (a, b)) in two.steps.iter().zip(&one.steps).enumerate() {
        for i in 0..4 {
            assert_close(&format!("step {s} term {i}"), a[i], b[i]);
        }
    }
    assert_eq!(one.weights.len(), two.weights.len());
    let weight_rms = rms(one.weights.iter().map(|(_, w)| w.as_slice()));
    for ((name_a, a), (name_b, b)) in two.weights.iter().zip(&one.weights) {
        assert_eq!(name_a, name_b);
        assert_close_tensor(&format!("weights {name_a} after {STEPS} steps"), a, b, weight_rms, 1e-5);
    }
}

#[test]
fn two_peers_compute_the_one_device_step() {
    compare((0..GLOBAL as i64).collect(), "distinct");
}

#[test]
fn shared_images_that_straddle_peers() {
    // Rows 3 and 4 (one on each peer) and rows 0 and 6 show the same image.
    compare(vec![0, 1, 2, 3, 3, 4, 0, 5], "shared");
}

/// A run checkpointed on one peer continues on two with the same global batch: the records of
/// the whole run stay within 1e-5 of the one-peer run (only the order of additions differs).
#[test]
fn a_run_resumed_on_another_number_of_peers_continues_the_same_run() {
    let dir = workdir("data_parallel_resume");
    let cfg = common::RunConfig::miniature(6).write(&dir, "run");
    let train = |args: &[&str]| {
        common::qformer("train").config(&cfg).sets(["schedule.kind=\"constant\""]).args(args).succeed();
    };
    train(&["--set", "train.run_name=\"one\""]);
    train(&["--set", "train.run_name=\"split\"", "--set", "train.steps=3"]);
    train(&["--set", "train.run_name=\"split\"", "--set", "distributed.peers=2", "--resume", "latest"]);
    let read = |run: &str| qformer::train::metrics::MetricsLog::read(&dir.join("checkpoints").join(run)).unwrap();
    let (one, split) = (read("one"), read("split"));
    assert_eq!(split.len(), 6);
    for (a, b) in split.iter().zip(&one) {
        let terms = [
            ("loss", a.loss, b.loss),
            ("itc", a.loss_itc.unwrap(), b.loss_itc.unwrap()),
            ("itm", a.loss_itm.unwrap(), b.loss_itm.unwrap()),
            ("itg", a.loss_itg.unwrap(), b.loss_itg.unwrap()),
        ];
        for (what, x, y) in terms {
            assert!((x - y).abs() <= 1e-5 * y.abs(), "step {} {what}: {x} vs {y}", a.step);
        }
    }
}
