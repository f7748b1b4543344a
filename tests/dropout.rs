//! Dropout acts in training only, and its masks are a function of the batch's sample keys: no
//! process-wide RNG is read, so a seed set on the backend changes nothing.

mod common;

use common::{batch, small, B};
use qformer::model::QFormer;
use qformer::objectives::{stage1_loss, NegativeMode, NegativeSampler, ObjectiveConfig};

#[test]
fn dropout_only_in_training_and_keyed_by_sample() {
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
