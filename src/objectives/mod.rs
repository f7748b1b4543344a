//! The three stage-one objectives, their masks, the hard-negative sampler and their weighted sum.

pub mod batch;
pub mod itc;
pub mod itg;
pub mod itm;
pub mod masks;
pub mod sampler;
pub mod stage1;

pub use batch::Stage1Batch;
pub use itc::ItcGradient;
pub use masks::{AttentionMask, MaskKind};
pub use sampler::{NegativeMode, NegativeSampler, SamplerStats};
pub use stage1::{stage1_loss, Objective, ObjectiveConfig, Stage1Output, Switch};

use crate::kernels::Kernels;
use burn::tensor::{activation::log_softmax, Tensor};

/// Cross-entropy against a target distribution per row: `mean_n(-sum_c target[n,c] log p[n,c])`.
/// Covers label smoothing and several positives per row (LAVIS's `image_id` branch).
pub(crate) fn soft_cross_entropy<B: Kernels>(logits: Tensor<B, 2>, targets: Tensor<B, 2>) -> Tensor<B, 1> {
    (log_softmax(logits, 1) * targets).sum_dim(1).mean().neg()
}
