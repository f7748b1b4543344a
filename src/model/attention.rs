//! BERT multi-head attention written out by hand: burn's `MultiHeadAttention` needs keys as wide as
//! the queries (image features are wider) and has no additive masks.

use burn::module::{Module, Param};
use burn::nn::{Initializer, Linear, LinearConfig};

use super::norm::LayerNorm;
use burn::tensor::{FloatDType, Tensor};

use super::precision::{linear, matmul};
use crate::kernels::{attention_softmax, dropout, gather_rows, swap_heads, DropoutSite, Kernels};

/// Per-head keys and values, `[B, H, S, head_dim]`. Cached from the query rows for ITG and
/// computed once per batch from the image for every cross-attention pass.
#[derive(Clone, Debug)]
pub struct KeyValue<B: Kernels> {
    pub key: Tensor<B, 4>,
    pub value: Tensor<B, 4>,
}

impl<B: Kernels> KeyValue<B> {
    /// Rows of the batch in the given order (negative pairs for ITM); gradients scatter back.
    pub fn select(&self, rows: &[usize]) -> Self {
        Self { key: gather_rows(self.key.clone(), rows), value: gather_rows(self.value.clone(), rows) }
    }

    /// Keeps sequence positions `start..start+len` (the query rows of a joint pass).
    pub fn narrow_seq(&self, start: usize, len: usize) -> Self {
        Self { key: self.key.clone().narrow(2, start, len), value: self.value.clone().narrow(2, start, len) }
    }

    /// This batch's rows followed by `other`'s (negatives gathered from other peers).
    pub fn cat_batch(self, other: Self) -> Self {
        Self { key: Tensor::cat(vec![self.key, other.key], 0), value: Tensor::cat(vec![self.value, other.value], 0) }
    }

    /// Puts `prefix` in front along the sequence: ITG text attends to cached query keys first.
    pub fn prepend(self, prefix: &Self) -> Self {
        Self { key: Tensor::cat(vec![prefix.key.clone(), self.key], 2), value: Tensor::cat(vec![prefix.value.clone(), self.value], 2) }
    }
}

/// One attention block: Q/K/V projections, scaled dot product with an additive mask, dropout on
/// the probabilities, then `LayerNorm(x + Dropout(Dense(context)))` (post-LN, as BERT).
#[derive(Module, Debug)]
pub struct Attention<B: Kernels> {
    pub query: Linear<B>,
    pub key: Linear<B>,
    pub value: Linear<B>,
    pub dense: Linear<B>,
    pub norm: LayerNorm<B>,
    pub num_heads: usize,
    pub attention_dropout: f64,
    pub hidden_dropout: f64,
    /// Precision of the projections and attention products (`None`: f32).
    #[module(skip)]
    pub compute: Option<FloatDType>,
}

pub struct AttentionConfig {
    pub hidden: usize,
    /// Width of the keys' source: `hidden` for self-attention, the image width for cross-attention.
    pub kv_width: usize,
    pub num_heads: usize,
    pub layer_norm_eps: f64,
    pub attention_dropout: f64,
    pub hidden_dropout: f64,
    pub init_std: f64,
}

/// BERT initialisation: N(0, std) weights (std = `initializer_range`), zero biases (trainable,
/// like every parameter).
pub(crate) fn bert_linear<B: Kernels>(d_in: usize, d_out: usize, std: f64, device: &B::Device) -> Linear<B> {
    let mut linear = LinearConfig::new(d_in, d_out).with_initializer(Initializer::Normal { mean: 0.0, std }).init(device);
    linear.bias = Some(Param::from_tensor(Tensor::zeros([d_out], device)));
    linear
}

pub(crate) fn layer_norm<B: Kernels>(width: usize, eps: f64, device: &B::Device) -> LayerNorm<B> {
    LayerNorm::new(width, eps, device)
}

impl AttentionConfig {
    pub fn init<B: Kernels>(&self, device: &B::Device) -> Attention<B> {
        Attention {
            query: bert_linear(self.hidden, self.hidden, self.init_std, device),
            key: bert_linear(self.kv_width, self.hidden, self.init_std, device),
            value: bert_linear(self.kv_width, self.hidden, self.init_std, device),
            dense: bert_linear(self.hidden, self.hidden, self.init_std, device),
            norm: layer_norm(self.hidden, self.layer_norm_eps, device),
            num_heads: self.num_heads,
            attention_dropout: self.attention_dropout,
            hidden_dropout: self.hidden_dropout,
            compute: None,
        }
    }
}

impl<B: Kernels> Attention<B> {
    fn heads(&self, x: Tensor<B, 3>) -> Tensor<B, 4> {
        split_heads(x, self.num_heads)
    }

    /// Keys and values of `source` (`[B, S, kv_width]`), split into heads.
    pub fn key_value(&self, source: Tensor<B, 3>) -> KeyValue<B> {
        KeyValue {
            key: self.heads(linear(&self.key, source.clone(), self.compute)),
            value: self.heads(linear(&self.value, source, self.compute)),
        }
    }

    /// Attends from `hidden` (`[B, Sq, D]`) to `kv`; `mask` is additive, broadcastable to
    /// `[B, H, Sq, Sk]`. Returns the block output, residual and LayerNorm included.
    pub fn attend(
        &self,
        hidden: Tensor<B, 3>,
        kv: &KeyValue<B>,
        mask: Option<Tensor<B, 4>>,
        site: Option<DropoutSite<'_>>,
    ) -> Tensor<B, 3> {
        let q = self.heads(linear(&self.query, hidden.clone(), self.compute));
        let context = scaled_dot_product(q, kv, mask, self.attention_dropout, site.map(|s| s.at(0)), self.compute);
        let out = dropout(linear(&self.dense, context, self.compute), self.hidden_dropout, site.map(|s| s.at(1)));
        self.norm.forward(out + hidden)
    }
}

/// `softmax(q kᵀ / √d + mask) v` over heads, with dropout on the probabilities; `q` is
/// `[B, H, Sq, head_dim]`, the result `[B, Sq, H·head_dim]` with heads merged. The two products
/// run in `compute`, the softmax in f32.
pub fn scaled_dot_product<B: Kernels>(
    q: Tensor<B, 4>,
    kv: &KeyValue<B>,
    mask: Option<Tensor<B, 4>>,
    dropout_prob: f64,
    site: Option<DropoutSite<'_>>,
    compute: Option<FloatDType>,
) -> Tensor<B, 3> {
    let [b, h, sq, head_dim] = q.dims();
    let scores = matmul(q, kv.key.clone().swap_dims(2, 3), compute);
    let probs = dropout(attention_softmax(scores, mask, 1.0 / (head_dim as f64).sqrt()), dropout_prob, site);
    swap_heads(matmul(probs, kv.value.clone(), compute)).reshape([b, sq, h * head_dim])
}

/// `[B, S, H·d]` to `[B, H, S, d]`.
pub fn split_heads<B: Kernels>(x: Tensor<B, 3>, num_heads: usize) -> Tensor<B, 4> {
    let [b, s, d] = x.dims();
    swap_heads(x.reshape([b, s, num_heads, d / num_heads]))
}
