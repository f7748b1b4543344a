//! The three stage-one objectives, their masks, the hard-negative sampler and their weighted sum.

pub mod batch;
pub mod global;
pub mod itc;
pub mod itg;
pub mod itm;
pub mod masks;
pub mod peers;
pub mod sampler;
pub mod stage1;

pub use batch::Stage1Batch;
pub use itc::ItcGradient;
pub use masks::{AttentionMask, MaskKind};
pub use peers::{Alone, Peers};
pub use sampler::{NegativeMode, NegativeSampler, SamplerStats};
pub use stage1::{stage1_loss, stage1_loss_across, Objective, ObjectiveConfig, Stage1Output, Switch};

/// Tags of the passes over a sample: each pass draws its own dropout masks.
pub(crate) mod pass {
    pub const UNIMODAL: u64 = 1;
    pub const ITM_POSITIVE: u64 = 2;
    pub const ITM_NEGATIVE_IMAGE: u64 = 3;
    pub const ITM_NEGATIVE_TEXT: u64 = 4;
    pub const ITG: u64 = 5;
}

use crate::kernels::Kernels;
use burn::tensor::{activation::log_softmax, Tensor};

/// Cross-entropy against a target distribution per row: `mean_n(-sum_c target[n,c] log p[n,c])`.
/// Covers label smoothing and several positives per row (LAVIS's `image_id` branch).
pub(crate) fn soft_cross_entropy<B: Kernels>(logits: Tensor<B, 2>, targets: Tensor<B, 2>) -> Tensor<B, 1> {
    (log_softmax(logits, 1) * targets).sum_dim(1).mean().neg()
}
