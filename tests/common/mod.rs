//! Helpers shared by the integration tests: a small model shape and a deterministic batch.
#![allow(dead_code)]

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Distribution, Tensor};
use qformer::model::QFormerConfig;
use qformer::objectives::{Stage1Batch, TextBatch};

pub type B = Autodiff<Flex>;

pub fn small() -> QFormerConfig {
    QFormerConfig {
        hidden_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 128,
        encoder_hidden_size: 48,
        num_query_tokens: 8,
        image_text_hidden_size: 32,
        vocab_size: 1000,
        bos_token_id: 999,
        ..QFormerConfig::blip2()
    }
}

pub fn batch(b: usize, image_ids: Option<Vec<i64>>, seed: u64) -> Stage1Batch<B> {
    let device = Default::default();
    <B as burn::tensor::backend::Backend>::seed(&device, seed);
    let feats = Tensor::<B, 3>::random([b, 10, 48], Distribution::Normal(0.0, 1.0), &device);
    let t = 12;
    let ids = (0..b)
        .map(|i| (0..t).map(|j| match j { 0 => 101, j if j < 6 + i % 5 => 200 + ((i * 31 + j * 7) % 700) as i64, j if j == 6 + i % 5 => 102, _ => 0 }).collect())
        .collect::<Vec<Vec<i64>>>();
    let mask = ids.iter().map(|r| r.iter().map(|&x| i64::from(x != 0)).collect()).collect();
    Stage1Batch::new(feats, TextBatch::new(ids, mask, 1000).unwrap(), image_ids).unwrap()
}


/// The backend RNG is process-wide: tests that seed it and draw from it hold this lock so that
/// parallel test threads cannot interleave their draws.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
