//! The ITG decoder: a small model trained to overfit three captions (ITG only, one image each)
//! must reproduce each caption from its image by greedy decoding and by beam search.

use crate::common;
use std::path::Path;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::tensor::{Distribution, Tensor};
use qformer::data::text::TextBatch;
use qformer::data::text::{clean_caption, TextEncoder};
use qformer::eval::caption::{generate, DecodeOptions};
use qformer::eval::scoring::image_side;
use qformer::model::QFormer;
use qformer::model::QFormerConfig;
use qformer::objectives::{stage1_loss, NegativeSampler, Objective, ObjectiveConfig, Stage1Batch};
use qformer::train::config::OptimConfig;
use qformer::train::gradients::GradAccumulator;
use qformer::train::optim::AdamW;

type B = Autodiff<Flex>;

const CAPTIONS: [&str; 3] =
    ["a small red circle left of a large blue square", "a large green triangle above a small white circle", "two yellow squares"];

#[test]
fn greedy_and_beam_decoding_reproduce_overfit_captions() {
    let _rng = common::serial();
    let device = Default::default();
    let text = TextEncoder::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("data/bert-base-uncased-vocab.txt"), 16, 50).unwrap();
    let (ids, mask) = text.encode(&CAPTIONS.map(String::from)).unwrap();
    let cfg = QFormerConfig {
        hidden_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 128,
        encoder_hidden_size: 32,
        num_query_tokens: 4,
        image_text_hidden_size: 16,
        max_position_embeddings: 32,
        hidden_dropout_prob: 0.0,
        attention_probs_dropout_prob: 0.0,
        ..QFormerConfig::blip2()
    };
    <B as burn::tensor::backend::Backend>::seed(&device, 11);
    let feats = Tensor::<B, 3>::random([3, 5, 32], Distribution::Normal(0.0, 1.0), &device);
    let batch = Stage1Batch::new(feats.clone(), TextBatch::new(ids, mask, cfg.vocab_size).unwrap(), None).unwrap();
    let objectives = ObjectiveConfig { label_smoothing: 0.0, ..ObjectiveConfig::default().only(&[Objective::Itg]) };
    let mut model = QFormer::<B>::new(&cfg, &device);
    let mut optim = AdamW::new(&OptimConfig { lr: 3e-3, weight_decay: 0.0, ..OptimConfig::default() }, &model);
    let mut loss = f64::INFINITY;
    for _ in 0..200 {
        let out = stage1_loss(&model, &batch, &objectives, &NegativeSampler::new(0), true).unwrap();
        loss = qformer::util::host::scalar(out.loss.clone().inner());
        let mut grads = GradAccumulator::new(&model);
        grads.add(&model, &out.loss.backward());
        model = optim.update(model, &grads, 3e-3);
        if loss < 0.01 {
            break;
        }
    }
    assert!(loss < 0.05, "did not overfit: ITG loss {loss}");

    let valid = model.valid();
    let side = image_side(&valid, feats.inner());
    let eos = text.token_id("[SEP]").unwrap();
    for (i, caption) in CAPTIONS.iter().enumerate() {
        let query_kv = side.select(&[i]).query_kv;
        for beams in [1, 3] {
            let opts = DecodeOptions { beams, max_len: 16, min_len: 0, ..DecodeOptions::default() };
            let got = text.decode(&generate(&valid, &query_kv, eos, &opts)).unwrap();
            assert_eq!(got, clean_caption(caption, 50), "image {i}, {beams} beam(s)");
        }
    }
    // A minimum length longer than the caption forces the decoder past its [SEP].
    let opts = DecodeOptions { beams: 1, max_len: 16, min_len: 15, ..DecodeOptions::default() };
    let long = generate(&valid, &side.select(&[2]).query_kv, eos, &opts);
    assert!(long.len() >= 14, "{long:?}");
}
