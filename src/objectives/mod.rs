//! The three stage-one objectives, their masks, the hard-negative sampler and their weighted sum.

pub mod batch;
pub mod itc;
pub mod itg;
pub mod itm;
pub mod masks;
pub mod sampler;
pub mod stage1;

pub use batch::{Stage1Batch, TextBatch};
pub use itc::ItcGradient;
pub use masks::{AttentionMask, MaskKind};
pub use sampler::{NegativeMode, NegativeSampler, SamplerStats};
pub use stage1::{stage1_loss, ObjectiveConfig, Objective, Stage1Output, Switch};

use burn::tensor::{activation::log_softmax, backend::Backend, Int, Tensor};

/// Cross-entropy against a target distribution per row: `mean_n(-sum_c target[n,c] log p[n,c])`.
/// Covers label smoothing and several positives per row (LAVIS's `image_id` branch).
pub(crate) fn soft_cross_entropy<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 2>) -> Tensor<B, 1> {
    (log_softmax(logits, 1) * targets).sum_dim(1).mean().neg()
}

/// PyTorch's `cross_entropy(label_smoothing = eps)` with class indices, without materialising a
/// `[N, C]` target (the ITG vocabulary is large): `(1-eps)·(-log p_y) + eps·mean_c(-log p_c)`.
pub(crate) fn smoothed_cross_entropy<B: Backend>(logits: Tensor<B, 2>, labels: Tensor<B, 1, Int>, eps: f64) -> Tensor<B, 1> {
    let [n, _] = logits.dims();
    let logp = log_softmax(logits, 1);
    let picked = logp.clone().gather(1, labels.reshape([n, 1])).mean();
    if eps == 0.0 {
        return picked.neg();
    }
    let uniform = logp.mean();
    (picked.mul_scalar(1.0 - eps) + uniform.mul_scalar(eps)).neg()
}
