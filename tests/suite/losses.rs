//! Properties of the stage-one loss on a freshly initialised model: values at initialisation,
//! switches, tiny batches, and that the frozen features receive no gradient.

use crate::common;

use burn::tensor::{Distribution, Tensor};
use common::{batch, serial, small, B};
use qformer::model::QFormer;
use qformer::objectives::{stage1_loss, NegativeMode, NegativeSampler, Objective, ObjectiveConfig, Stage1Batch};

fn losses(b: usize, objectives: ObjectiveConfig) -> (f32, Option<f32>, Option<f32>, Option<f32>) {
    let device = Default::default();
    <B as burn::tensor::backend::Backend>::seed(&device, 42);
    let model = QFormer::<B>::new(&small(), &device);
    let out = stage1_loss(&model, &batch(b, None, 1), &objectives, &NegativeSampler::new(3), false).unwrap();
    let v = |t: Option<Tensor<B, 1>>| t.map(|t| t.into_scalar());
    (out.loss.into_scalar(), v(out.itc), v(out.itm), v(out.itg))
}

#[test]
fn at_init_itc_is_ln_b_itm_ln_2_itg_ln_v() {
    let _rng = serial();
    let b = 16;
    let (total, itc, itm, itg) = losses(b, ObjectiveConfig::default());
    let (itc, itm, itg) = (itc.unwrap(), itm.unwrap(), itg.unwrap());
    let ln_b = (b as f32).ln();
    assert!((itc - ln_b).abs() < 0.05 * ln_b, "ITC {itc} vs ln B {ln_b}");
    assert!((itm - 2f32.ln()).abs() < 0.1, "ITM {itm} vs ln 2");
    assert!((itg - 1000f32.ln()).abs() < 0.1 * 1000f32.ln(), "ITG {itg} vs ln V");
    assert!((total - (itc + itm + itg)).abs() < 1e-4);
}

#[test]
fn weights_scale_terms_and_switches_remove_them() {
    let _rng = serial();
    let mut cfg = ObjectiveConfig::default();
    cfg.itm.weight = 0.5;
    cfg.itg.weight = 2.0;
    let (total, itc, itm, itg) = losses(8, cfg);
    assert!((total - (itc.unwrap() + 0.5 * itm.unwrap() + 2.0 * itg.unwrap())).abs() < 1e-4);

    let (total, itc, itm, itg) = losses(8, ObjectiveConfig::default().only(&[Objective::Itm, Objective::Itg]));
    assert!(itc.is_none());
    assert!((total - (itm.unwrap() + itg.unwrap())).abs() < 1e-4);

    let none = ObjectiveConfig::default().only(&[]);
    let device = Default::default();
    let model = QFormer::<B>::new(&small(), &device);
    assert!(stage1_loss(&model, &batch(2, None, 1), &none, &NegativeSampler::new(0), false).is_err());
}

#[test]
fn batches_of_one_and_two_train() {
    let _rng = serial();
    for (b, mode) in [(1, NegativeMode::Sample), (2, NegativeMode::Sample), (2, NegativeMode::Argmax)] {
        let device = Default::default();
        let model = QFormer::<B>::new(&small(), &device);
        let cfg = ObjectiveConfig { negatives: mode, ..Default::default() };
        let out = stage1_loss(&model, &batch(b, None, 5), &cfg, &NegativeSampler::new(0), true).unwrap();
        assert!(out.loss.clone().into_scalar().is_finite());
        // B = 1: no negative exists, so only the positive pair is scored.
        let pairs = out.itm_logits.unwrap().dims()[0];
        assert_eq!(pairs, if b == 1 { 1 } else { 3 * b });
        assert_eq!(out.sampler.without_negative, if b == 1 { 2 } else { 0 });
        let grads = out.loss.backward();
        assert!(model.query_tokens.val().grad(&grads).is_some());
    }
}

#[test]
fn one_image_per_batch_has_no_negatives() {
    let _rng = serial();
    let device = Default::default();
    let model = QFormer::<B>::new(&small(), &device);
    let out = stage1_loss(&model, &batch(3, Some(vec![4, 4, 4]), 1), &ObjectiveConfig::default(), &NegativeSampler::new(0), false).unwrap();
    assert_eq!(out.sampler.without_negative, 6);
    assert!(out.loss.into_scalar().is_finite());
}

#[test]
fn frozen_features_get_no_gradient_and_ln_vision_does() {
    let _rng = serial();
    let device = Default::default();
    let model = QFormer::<B>::new(&small(), &device);
    let feats = Tensor::<B, 3>::random([4, 10, 48], Distribution::Normal(0.0, 1.0), &device).require_grad();
    let text = batch(4, None, 2).text;
    let batch = Stage1Batch::new(feats.clone(), text, None).unwrap();
    let out = stage1_loss(&model, &batch, &ObjectiveConfig::default(), &NegativeSampler::new(0), true).unwrap();
    let grads = out.loss.backward();
    assert!(feats.grad(&grads).is_none(), "image features must enter without gradient");
    assert!(model.ln_vision.gamma.val().grad(&grads).is_some());
}

#[test]
fn every_parameter_of_a_fresh_model_is_trained() {
    let _rng = serial();
    use burn::module::Param;
    use qformer::interop::weights::{visit_params, Layout, ParamVisitor};
    struct Untrained<'a>(&'a <B as burn::tensor::backend::AutodiffBackend>::Gradients, Vec<String>);
    impl ParamVisitor<B> for Untrained<'_> {
        fn visit<const D: usize>(&mut self, name: &str, p: &mut Param<Tensor<B, D>>, _: Layout) {
            if p.val().grad(self.0).is_none() {
                self.1.push(name.to_string());
            }
        }
    }
    let device = Default::default();
    let model = QFormer::<B>::new(&small(), &device);
    let out = stage1_loss(&model, &batch(4, None, 2), &ObjectiveConfig::default(), &NegativeSampler::new(0), true).unwrap();
    let grads = out.loss.backward();
    let mut v = Untrained(&grads, Vec::new());
    visit_params(&mut model.clone(), &mut v);
    assert!(v.1.is_empty(), "parameters without gradient: {:?}", v.1);
}
