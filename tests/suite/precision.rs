//! Half-precision products in the Q-Former (`train.precision`): a training step in f16 and bf16
//! against the same step in f32, on flex (the cast path is backend-generic) and, built with
//! `--features wgpu`, on burn's wgpu backend (cubecl, CUDA's code path; in CI Mesa's software
//! Vulkan driver). The weights, optimizer, LayerNorms, softmax and losses stay f32, so the step's
//! losses and gradient norm move only by the rounding of the products' operands.

use crate::common;

use burn::tensor::Tensor;
use qformer::kernels::TrainBackend;
use qformer::model::precision::Precision;
use qformer::model::QFormer;
use qformer::objectives::{Alone, NegativeMode, ObjectiveConfig};
use qformer::train::config::OptimConfig;
use qformer::train::optim::AdamW;
use qformer::train::trainer::{StepOptions, Trainer};

/// Two steps of the miniature model at `precision` from the same weights and batch (negatives
/// given, so that no draw depends on the similarities): each step's ITC, ITM and ITG losses and
/// gradient norm.
fn steps<K: TrainBackend>(precision: Precision) -> Vec<[f64; 4]> {
    let device = Default::default();
    K::seed(&device, 5);
    let model = QFormer::<K>::new(&common::small(), &device).with_precision(precision);
    let optim = AdamW::new(&OptimConfig::default(), &model);
    let negatives = NegativeMode::Explicit { images: vec![1, 2, 3, 0], texts: vec![3, 0, 1, 2] };
    let objectives = ObjectiveConfig { negatives, ..Default::default() };
    let mut trainer = Trainer::new(model, optim, objectives, StepOptions { clip: Some(1.0), seed: 3 }, Box::new(Alone));
    let b = common::batch(4, Some(vec![0, 1, 2, 3]), 7);
    let feats = Tensor::<K, 3>::from_data(b.image_feats.to_data(), &device);
    (0..2u64)
        .map(|step| {
            let batch = trainer
                .batch(feats.clone(), b.text.clone(), vec![0, 1, 2, 3], &[4 * step, 4 * step + 1, 4 * step + 2, 4 * step + 3])
                .unwrap();
            let report = trainer.step(&[batch], 1e-3, false).unwrap();
            // The optimizer's update keeps the precision: the model it returns still casts.
            assert_eq!(trainer.model.layers[0].attention.compute, precision.dtype());
            assert_eq!(trainer.model.lm_head.compute, precision.dtype());
            let [itc, itm, itg] = report.totals.terms.map(|t| t.unwrap());
            [itc, itm, itg, report.grad_norm]
        })
        .collect()
}

/// The largest relative difference of the half-precision figures from f32's, over both steps.
fn worst(half: &[[f64; 4]], full: &[[f64; 4]]) -> f64 {
    half.iter().flatten().zip(full.iter().flatten()).fold(0f64, |m, (h, f)| m.max((h - f).abs() / f.abs()))
}

fn check<K: TrainBackend>(backend: &str, precisions: &[(Precision, f64)]) {
    let full = steps::<K>(Precision::F32);
    for &(precision, tol) in precisions {
        let err = worst(&steps::<K>(precision), &full);
        eprintln!("{backend}, {precision:?}: largest relative difference from f32 {err:.2e} (losses and gradient norm, 2 steps)");
        // Above 0: the products really ran in half precision.
        assert!(err > 0.0 && err < tol, "{backend}, {precision:?}: {err:e} (tolerance {tol:e})");
    }
}

/// f16 keeps 11 significant bits, bf16 8. Measured: f16 5.1e-5 (flex) and 4.8e-5 (wgpu on
/// lavapipe), bf16 5.0e-4 (flex); the tolerances are 4x those.
#[test]
fn half_precision_steps_stay_close_to_f32() {
    let _guard = common::serial();
    check::<common::B>("flex", &[(Precision::F16, 2e-4), (Precision::Bf16, 2e-3)]);
    #[cfg(feature = "wgpu")]
    check::<burn::backend::Autodiff<burn::backend::Wgpu>>("wgpu", &[(Precision::F16, 2e-4)]);
}
