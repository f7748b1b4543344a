//! One Q-Former layer: self-attention shared by query and text rows, cross-attention to the image
//! for the query rows only (in some layers), and separate feed-forward blocks for the two kinds of
//! rows.

use burn::module::Module;
use burn::nn::Linear;

use super::norm::LayerNorm;
use burn::tensor::{FloatDType, Tensor};

use super::attention::{bert_linear, layer_norm, Attention, AttentionConfig, KeyValue};
use super::precision::linear;
use super::QFormerConfig;
use crate::kernels::{dropout, gelu, DropoutSite, Kernels};

/// `LayerNorm(x + Dropout(Dense(GELU(Dense(x)))))`.
#[derive(Module, Debug)]
pub struct FeedForward<B: Kernels> {
    pub intermediate: Linear<B>,
    pub output: Linear<B>,
    pub norm: LayerNorm<B>,
    pub hidden_dropout: f64,
    /// Precision of the two products (`None`: f32).
    #[module(skip)]
    pub compute: Option<FloatDType>,
}

impl<B: Kernels> FeedForward<B> {
    pub fn new(cfg: &QFormerConfig, device: &B::Device) -> Self {
        Self {
            intermediate: bert_linear(cfg.hidden_size, cfg.intermediate_size, cfg.initializer_range, device),
            output: bert_linear(cfg.intermediate_size, cfg.hidden_size, cfg.initializer_range, device),
            norm: layer_norm(cfg.hidden_size, cfg.layer_norm_eps, device),
            hidden_dropout: cfg.hidden_dropout_prob,
            compute: None,
        }
    }

    pub fn forward(&self, x: Tensor<B, 3>, site: Option<DropoutSite<'_>>) -> Tensor<B, 3> {
        let h = gelu(linear(&self.intermediate, x.clone(), self.compute));
        let h = dropout(linear(&self.output, h, self.compute), self.hidden_dropout, site);
        self.norm.forward(h + x)
    }
}

#[derive(Module, Debug)]
pub struct Layer<B: Kernels> {
    pub attention: Attention<B>,
    /// Present in layers where `layer % cross_attention_frequency == 0`.
    pub crossattention: Option<Attention<B>>,
    pub ffn_text: FeedForward<B>,
    pub ffn_query: FeedForward<B>,
}

/// What one layer sees besides its hidden states.
pub struct LayerContext<'a, B: Kernels> {
    /// Leading rows of the sequence that are queries; 0 for text-only passes (all rows then use
    /// the text FFN and no row cross-attends, as in LAVIS).
    pub num_query: usize,
    /// Additive self-attention mask broadcastable to `[B, H, S, prefix + S]`.
    pub mask: Option<Tensor<B, 4>>,
    /// Cached keys/values placed before this pass's own (ITG attends to the query rows this way).
    pub prefix: Option<&'a KeyValue<B>>,
    /// This layer's image keys/values, when the layer has cross-attention.
    pub image: Option<&'a KeyValue<B>>,
    /// Leading rows whose output is read (at least `num_query`); `None` for all. The other rows
    /// still give their keys/values but skip the query projection, attention and FFN.
    pub rows: Option<usize>,
    /// This layer's dropout site; `None` in evaluation.
    pub dropout: Option<DropoutSite<'a>>,
}

impl<B: Kernels> Layer<B> {
    pub fn new(cfg: &QFormerConfig, index: usize, device: &B::Device) -> Self {
        let attention = |kv_width| AttentionConfig {
            hidden: cfg.hidden_size,
            kv_width,
            num_heads: cfg.num_attention_heads,
            layer_norm_eps: cfg.layer_norm_eps,
            attention_dropout: cfg.attention_probs_dropout_prob,
            hidden_dropout: cfg.hidden_dropout_prob,
            init_std: cfg.initializer_range,
        };
        Self {
            attention: attention(cfg.hidden_size).init(device),
            crossattention: cfg.has_cross_attention(index).then(|| attention(cfg.encoder_hidden_size).init(device)),
            ffn_text: FeedForward::new(cfg, device),
            ffn_query: FeedForward::new(cfg, device),
        }
    }

    /// Runs every product of the layer in `compute` (`None`: f32).
    pub fn with_compute(mut self, compute: Option<FloatDType>) -> Self {
        self.attention.compute = compute;
        if let Some(cross) = &mut self.crossattention {
            cross.compute = compute;
        }
        self.ffn_text.compute = compute;
        self.ffn_query.compute = compute;
        self
    }

    /// Returns the layer output and this pass's own self-attention keys/values (without prefix).
    pub fn forward(&self, hidden: Tensor<B, 3>, ctx: LayerContext<'_, B>) -> (Tensor<B, 3>, KeyValue<B>) {
        let [b, s, d] = hidden.dims();
        let own = self.attention.key_value(hidden.clone());
        let keys = match ctx.prefix {
            Some(prefix) => own.clone().prepend(prefix),
            None => own.clone(),
        };
        let nq = ctx.num_query;
        let s = ctx.rows.map_or(s, |rows| rows.max(nq).min(s));
        let (hidden, mask) = if s < hidden.dims()[1] {
            let mask = ctx.mask.map(|m| {
                let [mb, mh, mq, mk] = m.dims();
                if mq > 1 {
                    m.slice([0..mb, 0..mh, 0..s, 0..mk])
                } else {
                    m
                }
            });
            (hidden.slice([0..b, 0..s, 0..d]), mask)
        } else {
            (hidden, ctx.mask)
        };
        let site = |block: u64| ctx.dropout.map(|s| s.at(block));
        let h = self.attention.attend(hidden, &keys, mask, site(0));
        if nq == 0 {
            return (self.ffn_text.forward(h, site(3)), own);
        }
        let mut queries = h.clone().slice([0..b, 0..nq, 0..d]);
        if let Some(cross) = &self.crossattention {
            let image = ctx.image.expect("image keys/values for a cross-attention layer");
            queries = cross.attend(queries, image, None, site(1));
        }
        let queries = self.ffn_query.forward(queries, site(2));
        let out = if s > nq {
            let text = self.ffn_text.forward(h.slice([0..b, nq..s, 0..d]), site(3));
            Tensor::cat(vec![queries, text], 1)
        } else {
            queries
        };
        (out, own)
    }
}
