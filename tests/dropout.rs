//! Dropout acts in training only, and follows the backend's seed. Alone in its own test binary:
//! the backend RNG is process-wide, so tests running beside it in threads would draw from it too.

mod common;

use common::{batch, small, B};
use qformer::model::QFormer;
use qformer::objectives::{stage1_loss, NegativeMode, NegativeSampler, ObjectiveConfig};

#[test]
fn dropout_only_in_training() {
    let device = Default::default();
    let model = QFormer::<B>::new(&small(), &device);
    let b = batch(4, None, 2);
    let cfg = ObjectiveConfig { negatives: NegativeMode::Argmax, ..Default::default() };
    let eval = |seed| {
        <B as burn::tensor::backend::Backend>::seed(&device, seed);
        stage1_loss(&model, &b, &cfg, &mut NegativeSampler::new(0), false).unwrap().loss.into_scalar()
    };
    assert_eq!(eval(1), eval(2));
    let train = |seed| {
        <B as burn::tensor::backend::Backend>::seed(&device, seed);
        stage1_loss(&model, &b, &cfg, &mut NegativeSampler::new(0), true).unwrap().loss.into_scalar()
    };
    assert_eq!(train(1), train(1), "seeded dropout repeats");
    assert_ne!(train(1), train(2));
}
