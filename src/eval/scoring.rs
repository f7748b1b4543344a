//! Inference-time scores of image-text pairs, shared by retrieval, export checks and captioning:
//! ITC embeddings and similarities (max over queries, as LAVIS and HF), and ITM logits.

use burn::tensor::{backend::Backend, Tensor};

use crate::model::{KeyValue, QFormer};
use crate::objectives::itc::normalize;
use crate::objectives::{AttentionMask, TextBatch};

/// Image side of ITC for frozen features `[N, P, W]`: normalised projected queries `[N, Q, E]`,
/// and the image keys/values (to reuse for ITM).
pub fn image_embeds<B: Backend>(model: &QFormer<B>, feats: Tensor<B, 3>) -> (Tensor<B, 3>, Vec<Option<KeyValue<B>>>) {
    let n = feats.dims()[0];
    let kv = model.image_key_values(feats);
    let hidden = model.encode(model.embed(Some(model.queries(n)), None, false), model.num_query, None, &kv, None, false).hidden;
    (normalize(model.project_image(hidden)), kv)
}

/// Text side of ITC: normalised projected `[CLS]` outputs `[T, E]`.
pub fn text_embeds<B: Backend>(model: &QFormer<B>, text: &TextBatch) -> Tensor<B, 2> {
    let device = model.query_tokens.device();
    let mask = AttentionMask::unimodal(0, &text.mask).to_additive::<B>(&device);
    let hidden = model.encode(model.embed(None, Some(text.ids_tensor(&device)), false), 0, Some(mask), &[], None, false).hidden;
    let [n, _, d] = hidden.dims();
    normalize(model.project_text(hidden.slice([0..n, 0..1, 0..d]).reshape([n, d])))
}

/// Cosine similarities `[I, T]`: for each pair, the best of the image's queries (no temperature).
pub fn itc_similarities<B: Backend>(image: Tensor<B, 3>, text: Tensor<B, 2>) -> Tensor<B, 2> {
    let [i, q, e] = image.dims();
    let t = text.dims()[0];
    image.reshape([i * q, e]).matmul(text.transpose()).reshape([i, q, t]).max_dim(1).reshape([i, t])
}

/// ITM logits `[N, 2]` for pairs (image keys/values row `n`, caption `n`): the joint pass under
/// the bidirectional mask, the head averaged over the query outputs.
pub fn itm_logits<B: Backend>(model: &QFormer<B>, image_kv: &[Option<KeyValue<B>>], text: &TextBatch) -> Tensor<B, 2> {
    let device = model.query_tokens.device();
    let n = text.batch_size();
    let q = model.num_query;
    let mask = AttentionMask::bidirectional(q, &text.mask).to_additive::<B>(&device);
    let embeds = model.embed(Some(model.queries(n)), Some(text.ids_tensor(&device)), false);
    let hidden = model.encode(embeds, q, Some(mask), image_kv, None, false).hidden;
    let d = hidden.dims()[2];
    model.itm_logits(hidden.slice([0..n, 0..q, 0..d]))
}
