//! The whole trainable model: query tokens, `ln_vision`, the trunk, the ITC projections, the ITM
//! head, the ITG head and the temperature. The frozen image encoder is not part of it.

use burn::module::{Module, Param};
use burn::nn::{Initializer, Linear, LinearConfig};

use super::norm::LayerNorm;
use burn::tensor::{Int, Tensor};

use super::attention::{layer_norm, KeyValue};
use super::embeddings::Embeddings;
use super::heads::LmHead;
use super::layer::{Layer, LayerContext};
use super::precision::{linear, Precision};
use super::QFormerConfig;
use crate::kernels::{DropoutKeys, Kernels};

/// Initial ITC temperature, as BLIP-2.
pub const TEMP_INIT: f64 = 0.07;
/// The temperature is clamped to this range when used. LAVIS leaves it unclamped; a collapsing
/// temperature makes the similarities overflow, so we keep BLIP-1's bounds.
pub const TEMP_RANGE: (f64, f64) = (0.001, 0.5);

#[derive(Module, Debug)]
pub struct QFormer<B: Kernels> {
    /// `[1, Q, D]`, N(0, 0.02).
    pub query_tokens: Param<Tensor<B, 3>>,
    pub embeddings: Embeddings<B>,
    pub layers: Vec<Layer<B>>,
    /// Trainable LayerNorm on the frozen image features.
    pub ln_vision: LayerNorm<B>,
    pub vision_proj: Linear<B>,
    pub text_proj: Linear<B>,
    pub itm_head: Linear<B>,
    pub lm_head: LmHead<B>,
    /// Raw temperature, shape `[1]` (a scalar in the weights file).
    pub temp: Param<Tensor<B, 1>>,
    pub num_query: usize,
    /// `[DEC]`, which starts every ITG decoder input.
    pub bos_token_id: usize,
}

/// What a trunk pass attends to besides its own rows.
enum Context<'a, B: Kernels> {
    /// Nothing: text alone.
    Text,
    /// The leading `num_query` rows are queries, cross-attending to per-layer image keys/values.
    Image { num_query: usize, image: &'a [Option<KeyValue<B>>] },
    /// Text whose self-attention also sees each layer's cached query keys/values (ITG decoding).
    AfterQueries(&'a [KeyValue<B>]),
}

/// One pass through the trunk, built by the constructor of its kind so that only meaningful
/// combinations can be written: queries always come with an image, cached query keys/values
/// never with one, and the text-only and decoding passes always with their mask.
pub struct Pass<'a, B: Kernels> {
    embeds: Tensor<B, 3>,
    mask: Option<Tensor<B, 4>>,
    context: Context<'a, B>,
    rows_read: Option<usize>,
    dropout: Option<&'a DropoutKeys>,
}

impl<'a, B: Kernels> Pass<'a, B> {
    /// Text rows alone under an additive `mask` (ITC's text side at evaluation, plain BERT).
    pub fn text(embeds: Tensor<B, 3>, mask: Tensor<B, 4>) -> Self {
        Self { embeds, mask: Some(mask), context: Context::Text, rows_read: None, dropout: None }
    }

    /// `[queries; text?]` rows whose `num_query` leading queries cross-attend to the image's
    /// per-layer keys/values (the unimodal ITC pass, the ITM pass, the image side of retrieval).
    pub fn with_image(embeds: Tensor<B, 3>, num_query: usize, image: &'a [Option<KeyValue<B>>]) -> Self {
        Self { embeds, mask: None, context: Context::Image { num_query, image }, rows_read: None, dropout: None }
    }

    /// Text rows that also attend to the queries' cached keys/values of each layer, under the
    /// text part of the multimodal causal `mask` (ITG, captioning).
    pub fn after_queries(embeds: Tensor<B, 3>, mask: Tensor<B, 4>, queries: &'a [KeyValue<B>]) -> Self {
        Self { embeds, mask: Some(mask), context: Context::AfterQueries(queries), rows_read: None, dropout: None }
    }

    /// An additive attention mask (`None`: every row sees every row).
    pub fn masked(self, mask: Option<Tensor<B, 4>>) -> Self {
        Self { mask, ..self }
    }

    /// Only the first `rows` output rows are read: the last layer computes just those (queries
    /// and `[CLS]` for ITC, queries for ITM), which the reference does not skip.
    pub fn reading(self, rows: usize) -> Self {
        Self { rows_read: Some(rows), ..self }
    }

    /// Dropout on, with these row keys (training), or off (`None`). The embedding step of the
    /// same pass takes the same keys ([`QFormer::embed`]).
    pub fn dropout(self, keys: Option<&'a DropoutKeys>) -> Self {
        Self { dropout: keys, ..self }
    }
}

/// Output of a trunk pass.
pub struct Encoded<B: Kernels> {
    /// `[B, S, D]`.
    pub hidden: Tensor<B, 3>,
    /// Each layer's own self-attention keys/values, `[B, H, S, head_dim]`.
    pub key_values: Vec<KeyValue<B>>,
}

impl<B: Kernels> QFormer<B> {
    /// A randomly initialised model (BERT init for the trunk, PyTorch defaults for the heads).
    pub fn new(cfg: &QFormerConfig, device: &B::Device) -> Self {
        let default_linear = |d_in, d_out| LinearConfig::new(d_in, d_out).init(device);
        let query_tokens =
            Initializer::Normal { mean: 0.0, std: cfg.initializer_range }.init([1, cfg.num_query_tokens, cfg.hidden_size], device);
        super::materialize(Self {
            query_tokens,
            embeddings: Embeddings::new(cfg, device),
            layers: (0..cfg.num_hidden_layers).map(|i| Layer::new(cfg, i, device)).collect(),
            ln_vision: layer_norm(cfg.encoder_hidden_size, cfg.ln_vision_eps, device),
            vision_proj: default_linear(cfg.hidden_size, cfg.image_text_hidden_size),
            text_proj: default_linear(cfg.hidden_size, cfg.image_text_hidden_size),
            itm_head: default_linear(cfg.hidden_size, 2),
            lm_head: LmHead::new(cfg, device),
            temp: Param::from_tensor(Tensor::from_floats([TEMP_INIT as f32], device)),
            num_query: cfg.num_query_tokens,
            bos_token_id: cfg.bos_token_id,
        })
    }

    /// Runs the trunk's products (attention projections and products, feed-forward blocks, the
    /// ITG transform) in `precision`, the weights staying f32 masters. The small ITC/ITM heads, the
    /// fused vocabulary product and loss, LayerNorms and softmax stay f32 (PyTorch AMP's split).
    pub fn with_precision(mut self, precision: Precision) -> Self {
        let compute = precision.dtype();
        self.layers = self.layers.into_iter().map(|l| l.with_compute(compute)).collect();
        self.lm_head.compute = compute;
        self
    }

    /// The temperature actually used, clamped to [`TEMP_RANGE`].
    pub fn temperature(&self) -> Tensor<B, 1> {
        self.temp.val().clamp(TEMP_RANGE.0, TEMP_RANGE.1)
    }

    /// Query tokens broadcast over a batch: `[batch, Q, D]`.
    pub fn queries(&self, batch: usize) -> Tensor<B, 3> {
        let [_, q, d] = self.query_tokens.dims();
        self.query_tokens.val().expand([batch, q, d])
    }

    /// Applies `ln_vision` to frozen features `[B, Nv, Dv]` and projects them to cross-attention
    /// keys/values once per layer; every pass of the step (and every ITM pair) reuses them.
    pub fn image_key_values(&self, image_feats: Tensor<B, 3>) -> Vec<Option<KeyValue<B>>> {
        let image = self.ln_vision.forward(image_feats);
        self.layers.iter().map(|layer| layer.crossattention.as_ref().map(|c| c.key_value(image.clone()))).collect()
    }

    /// Runs the trunk over one [`Pass`].
    pub fn encode(&self, pass: Pass<'_, B>) -> Encoded<B> {
        let (num_query, image, prefix) = match pass.context {
            Context::Text => (0, None, None),
            Context::Image { num_query, image } => (num_query, Some(image), None),
            Context::AfterQueries(prefix) => (0, None, Some(prefix)),
        };
        let last = self.layers.len().saturating_sub(1);
        let mut hidden = pass.embeds;
        let mut key_values = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let ctx = LayerContext {
                num_query,
                mask: pass.mask.clone(),
                prefix: prefix.map(|p| &p[i]),
                image: image.and_then(|kv| kv.get(i)).and_then(|kv| kv.as_ref()),
                rows: if i == last { pass.rows_read } else { None },
                dropout: pass.dropout.map(|k| k.site().at(1 + i as u64)),
            };
            let (h, kv) = layer.forward(hidden, ctx);
            hidden = h;
            key_values.push(kv);
        }
        Encoded { hidden, key_values }
    }

    /// Embeds `[queries; text]` (either part optional) for a trunk pass.
    pub fn embed(&self, queries: Option<Tensor<B, 3>>, ids: Option<Tensor<B, 2, Int>>, dropout: Option<&DropoutKeys>) -> Tensor<B, 3> {
        self.embeddings.forward(queries, ids, dropout.map(|k| k.site().at(0)))
    }

    /// ITC image side: projected query outputs `[B, Q, E]` (not normalised).
    pub fn project_image(&self, query_out: Tensor<B, 3>) -> Tensor<B, 3> {
        linear(&self.vision_proj, query_out, None)
    }

    /// ITC text side: projected `[CLS]` outputs `[B, E]` (not normalised).
    pub fn project_text(&self, cls: Tensor<B, 2>) -> Tensor<B, 2> {
        self.text_proj.forward(cls)
    }

    /// ITM logits `[N, 2]`: the head applied to every query output, averaged over queries.
    pub fn itm_logits(&self, query_out: Tensor<B, 3>) -> Tensor<B, 2> {
        linear(&self.itm_head, query_out, None).mean_dim(1).squeeze_dim(1)
    }

    /// ITG loss (label-smoothed, mean over rows) of text rows `[N, D]` predicting `labels`.
    pub fn lm_loss(&self, text_rows: Tensor<B, 2>, labels: &[usize], eps: f64) -> Tensor<B, 1> {
        self.lm_head.loss(text_rows, self.embeddings.word.weight.val(), labels, eps)
    }

    /// ITG logits `[N, V]` for text rows `[N, D]`.
    pub fn lm_logits(&self, text_rows: Tensor<B, 2>) -> Tensor<B, 2> {
        self.lm_head.forward(text_rows, self.embeddings.word.weight.val())
    }
}
