//! Dropout acts in training only, and its masks are a function of the batch's sample keys: no
//! process-wide RNG is read, so a seed set on the backend changes nothing.

use crate::common;

use common::{batch, small, B};
use qformer::model::QFormer;
use qformer::objectives::{stage1_loss, NegativeMode, NegativeSampler, ObjectiveConfig};

#[test]
fn dropout_only_in_training_and_keyed_by_sample() {
    let _rng = common::serial();
    let device = Default::default();
    let model = QFormer::<B>::new(&small(), &device);
    let b = batch(4, None, 2);
    let cfg = ObjectiveConfig { negatives: NegativeMode::Argmax, ..Default::default() };
    let loss = |batch, train| stage1_loss(&model, batch, &cfg, &NegativeSampler::new(0), train).unwrap().loss.into_scalar();
    let eval = loss(&b, false);
    let train = loss(&b, true);
    assert_ne!(eval, train, "dropout acts in training");
    <B as burn::tensor::backend::Backend>::seed(&device, 99);
    assert_eq!(train, loss(&b, true), "the backend RNG plays no part");
    assert_eq!(eval, loss(&b, false));
    let renamed = b.clone().keyed(vec![10, 11, 12, 13]).unwrap();
    assert_ne!(train, loss(&renamed, true), "other samples, other masks");
}

/// The same keys draw the same mask bits on every backend: flex (its in-place loop), ndarray (the
/// host mask, uploaded) and, built with `--features wgpu`, the GPU path that hashes on the device.
/// Several keep rates, a 3-d shape whose rows are not a multiple of anything, and nested sites.
#[test]
fn masks_are_identical_on_every_backend() {
    let _rng = common::serial();
    use burn::backend::{Flex, NdArray};
    use burn::tensor::Tensor;
    use qformer::kernels::{self, DropoutKeys};

    fn draw<K: qformer::kernels::Kernels>(keys: &DropoutKeys, shape: [usize; 3], p: f64) -> Vec<f32> {
        let device = Default::default();
        let site = keys.site().at(2).at(5);
        kernels::dropout(Tensor::<K, 3>::ones(shape, &device), p, Some(site)).into_data().to_vec::<f32>().unwrap()
    }
    // Keys spread over the whole 64-bit range (both words of the row seed matter).
    let keys = DropoutKeys::new((0..7u64).map(|r| r.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xdead_beef).collect());
    for (shape, p) in [([7, 13, 29], 0.1), ([7, 3, 1000], 0.5), ([7, 1, 5], 0.9)] {
        let flex = draw::<Flex>(&keys, shape, p);
        let kept = flex.iter().filter(|&&v| v > 0.0).count() as f64 / flex.len() as f64;
        assert!((kept - (1.0 - p)).abs() < 0.1, "kept {kept} at p = {p}");
        assert_eq!(draw::<NdArray>(&keys, shape, p), flex, "ndarray, {shape:?} p = {p}");
        #[cfg(feature = "wgpu")]
        assert_eq!(draw::<burn::backend::Wgpu>(&keys, shape, p), flex, "wgpu, {shape:?} p = {p}");
    }
}
