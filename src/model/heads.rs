//! The ITG language-model head: BERT's MLM transform, then a decoder tied to the word embeddings
//! (so generation and input share one vocabulary matrix) plus its own bias.

use burn::module::{Module, Param};
use burn::nn::Linear;

use super::norm::LayerNorm;
use burn::tensor::Tensor;

use crate::kernels::{gelu, lm_cross_entropy, Kernels};

use super::attention::{bert_linear, layer_norm};
use super::QFormerConfig;

#[derive(Module, Debug)]
pub struct LmHead<B: Kernels> {
    pub dense: Linear<B>,
    pub norm: LayerNorm<B>,
    pub bias: Param<Tensor<B, 1>>,
}

impl<B: Kernels> LmHead<B> {
    pub fn new(cfg: &QFormerConfig, device: &B::Device) -> Self {
        Self {
            dense: bert_linear(cfg.hidden_size, cfg.hidden_size, cfg.initializer_range, device),
            norm: layer_norm(cfg.hidden_size, cfg.layer_norm_eps, device),
            bias: Param::from_tensor(Tensor::zeros([cfg.vocab_size], device)),
        }
    }

    fn transform(&self, hidden: Tensor<B, 2>) -> Tensor<B, 2> {
        self.norm.forward(gelu(self.dense.forward(hidden)))
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
