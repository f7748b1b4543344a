//! The ITG language-model head: BERT's MLM transform, then a decoder tied to the word embeddings
//! (so generation and input share one vocabulary matrix) plus its own bias.

use burn::module::{Module, Param};
use burn::nn::Linear;

use super::norm::LayerNorm;
use burn::tensor::{FloatDType, Tensor};

use crate::kernels::{gelu, lm_cross_entropy, Kernels};

use super::attention::{bert_linear, layer_norm};
use super::precision::linear_2d;
use super::QFormerConfig;

#[derive(Module, Debug)]
pub struct LmHead<B: Kernels> {
    pub dense: Linear<B>,
    pub norm: LayerNorm<B>,
    pub bias: Param<Tensor<B, 1>>,
    /// Precision of the transform's product (`None`: f32). The vocabulary product stays f32: it is
    /// fused with the loss ([`lm_cross_entropy`]), whose softmax must be f32.
    #[module(skip)]
    pub compute: Option<FloatDType>,
}

impl<B: Kernels> LmHead<B> {
    pub fn new(cfg: &QFormerConfig, device: &B::Device) -> Self {
        Self {
            dense: bert_linear(cfg.hidden_size, cfg.hidden_size, cfg.initializer_range, device),
            norm: layer_norm(cfg.hidden_size, cfg.layer_norm_eps, device),
            bias: Param::from_tensor(Tensor::zeros([cfg.vocab_size], device)),
            compute: None,
        }
    }

    fn transform(&self, hidden: Tensor<B, 2>) -> Tensor<B, 2> {
        self.norm.forward(gelu(linear_2d(&self.dense, hidden, self.compute)))
    }

    /// `hidden`: `[N, D]` rows to score; `word_embeddings`: `[V, D]`. Returns logits `[N, V]`.
    pub fn forward(&self, hidden: Tensor<B, 2>, word_embeddings: Tensor<B, 2>) -> Tensor<B, 2> {
        self.transform(hidden).matmul(word_embeddings.transpose()) + self.bias.val().unsqueeze()
    }

    /// Label-smoothed cross-entropy of the rows' logits against `labels`, without handing the
    /// `[N, V]` logits to autodiff.
    pub fn loss(&self, hidden: Tensor<B, 2>, word_embeddings: Tensor<B, 2>, labels: &[usize], eps: f64) -> Tensor<B, 1> {
        lm_cross_entropy(self.transform(hidden), word_embeddings, self.bias.val(), labels, eps)
    }
}
