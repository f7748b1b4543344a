//! Inference-time scores of image-text pairs, shared by retrieval, export checks and captioning:
//! ITC embeddings and similarities (max over queries, as LAVIS and HF), and ITM logits.

use burn::tensor::Tensor;

use crate::data::text::TextBatch;
use crate::kernels::Kernels;
use crate::model::{KeyValue, Pass, QFormer};
use crate::objectives::itc::normalize;
use crate::objectives::AttentionMask;
use crate::util::host::index_tensor;

/// What the query pass over some images yields.
pub struct ImageSide<B: Kernels> {
    /// Normalised projected query outputs `[N, Q, E]` (the ITC image side).
    pub embeds: Tensor<B, 3>,
    /// Per-layer image keys/values (reused by ITM pairs).
    pub image_kv: Vec<Option<KeyValue<B>>>,
    /// Per-layer query self-attention keys/values `[N, H, Q, head_dim]` (the ITG prefix).
    pub query_kv: Vec<KeyValue<B>>,
}

impl<B: Kernels> ImageSide<B> {
    /// Rows in the given order (pairs for ITM, captions' images for ITG).
    pub fn select(&self, rows: &[usize]) -> Self {
        let idx = index_tensor::<B>(rows, &self.embeds.device());
        Self {
            embeds: self.embeds.clone().select(0, idx.clone()),
            image_kv: self.image_kv.iter().map(|kv| kv.as_ref().map(|kv| kv.select(rows))).collect(),
            query_kv: self.query_kv.iter().map(|kv| kv.select(rows)).collect(),
        }
    }

    /// Concatenates chunks along the batch.
    pub fn cat(parts: Vec<Self>) -> Self {
        let layers = parts.first().map_or(0, |p| p.image_kv.len());
        let kv_cat = |kvs: Vec<KeyValue<B>>| KeyValue {
            key: Tensor::cat(kvs.iter().map(|k| k.key.clone()).collect(), 0),
            value: Tensor::cat(kvs.iter().map(|k| k.value.clone()).collect(), 0),
        };
        Self {
            embeds: Tensor::cat(parts.iter().map(|p| p.embeds.clone()).collect(), 0),
            image_kv: (0..layers)
                .map(|l| {
                    parts[0].image_kv[l]
                        .as_ref()
                        .map(|_| kv_cat(parts.iter().map(|p| p.image_kv[l].clone().expect("same layers")).collect()))
                })
                .collect(),
            query_kv: (0..layers).map(|l| kv_cat(parts.iter().map(|p| p.query_kv[l].clone()).collect())).collect(),
        }
    }
}

/// The query pass over frozen features `[N, P, W]`.
pub fn image_side<B: Kernels>(model: &QFormer<B>, feats: Tensor<B, 3>) -> ImageSide<B> {
    let n = feats.dims()[0];
    let q = model.num_query;
    let image_kv = model.image_key_values(feats);
    let enc = model.encode(Pass::with_image(model.embed(Some(model.queries(n)), None, None), q, &image_kv));
    ImageSide { embeds: normalize(model.project_image(enc.hidden)), image_kv, query_kv: enc.key_values }
}

/// Text side of ITC: normalised projected `[CLS]` outputs `[T, E]`.
pub fn text_embeds<B: Kernels>(model: &QFormer<B>, text: &TextBatch) -> Tensor<B, 2> {
    let device = model.query_tokens.device();
    let mask = AttentionMask::unimodal(0, &text.mask).to_additive::<B>(&device);
    let hidden = model.encode(Pass::text(model.embed(None, Some(text.ids_tensor(&device)), None), mask).reading(1)).hidden;
    let [n, _, d] = hidden.dims();
    normalize(model.project_text(hidden.slice([0..n, 0..1, 0..d]).reshape([n, d])))
}

/// Cosine similarities `[I, T]`: for each pair, the best of the image's queries (no temperature).
pub fn itc_similarities<B: Kernels>(image: Tensor<B, 3>, text: Tensor<B, 2>) -> Tensor<B, 2> {
    let [i, q, e] = image.dims();
    let t = text.dims()[0];
    image.reshape([i * q, e]).matmul(text.transpose()).reshape([i, q, t]).max_dim(1).reshape([i, t])
}

/// ITM logits `[N, 2]` for pairs (image keys/values row `n`, caption `n`): the joint pass under
/// the bidirectional mask, the head averaged over the query outputs.
pub fn itm_logits<B: Kernels>(model: &QFormer<B>, image_kv: &[Option<KeyValue<B>>], text: &TextBatch) -> Tensor<B, 2> {
    let device = model.query_tokens.device();
    let n = text.batch_size();
    let q = model.num_query;
    let mask = AttentionMask::bidirectional(q, &text.mask).to_additive::<B>(&device);
    let embeds = model.embed(Some(model.queries(n)), Some(text.ids_tensor(&device)), None);
    let hidden = model.encode(Pass::with_image(embeds, q, image_kv).masked(Some(mask)).reading(q)).hidden;
    let d = hidden.dims()[2];
    model.itm_logits(hidden.slice([0..n, 0..q, 0..d]))
}
