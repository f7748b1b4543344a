//! Half-precision matmuls, as PyTorch's autocast runs them: the operands of a product are cast to
//! f16 or bf16, the product comes back as f32, and everything between products (residuals,
//! LayerNorm, softmax, GELU, dropout, losses, the optimizer and its master weights) stays f32.
//! Casting is differentiable, so the gradient of an f32 master weight is an f32 tensor.

use burn::nn::Linear;
use burn::tensor::{FloatDType, Tensor};
use serde::{Deserialize, Serialize};

use crate::kernels::backend::BackendKind;
use crate::kernels::Kernels;

/// Precision of a model's matmuls (`encoder.precision`, `train.precision`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    F16,
}

impl Precision {
    /// The cast a product takes; `None` for f32 (no cast at all, so f32 runs are unchanged).
    pub fn dtype(self) -> Option<FloatDType> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(FloatDType::BF16),
            Precision::F16 => Some(FloatDType::F16),
        }
    }

    /// Why `backend` cannot compute in this precision, if it cannot.
    pub fn refusal(self, backend: BackendKind) -> Option<&'static str> {
        match (self, backend) {
            (Precision::F32, _) => None,
            (_, BackendKind::Flex | BackendKind::Ndarray) => {
                Some("half precision needs a GPU backend (cuda or wgpu); the CPU backends compute in f32")
            }
            // cubecl's WGSL compiler panics on the first bf16 kernel.
            (Precision::Bf16, BackendKind::Wgpu) => Some("wgpu's shader language (WGSL) has no bf16: use f16 on wgpu, bf16 on cuda"),
            _ => None,
        }
    }
}

/// `linear` applied to `[B, S, D]` as one 2-D product (burn's backward for 3-D inputs is several
/// times slower on CPU backends), in `compute`.
pub(crate) fn linear<B: Kernels>(linear: &Linear<B>, x: Tensor<B, 3>, compute: Option<FloatDType>) -> Tensor<B, 3> {
    let [b, s, d] = x.dims();
    let y = linear_2d(linear, x.reshape([b * s, d]), compute);
    let out = y.dims()[1];
    y.reshape([b, s, out])
}

/// `linear` applied to rows `[N, D]` with its product in `compute`; the bias is added in f32. A
/// weight already stored in `compute` (the frozen encoder's) is not cast again.
pub(crate) fn linear_2d<B: Kernels>(linear: &Linear<B>, x: Tensor<B, 2>, compute: Option<FloatDType>) -> Tensor<B, 2> {
    let Some(dt) = compute else { return linear.forward(x) };
    let y = x.cast(dt).matmul(linear.weight.val().cast(dt)).cast(FloatDType::F32);
    match &linear.bias {
        Some(bias) => y + bias.val().unsqueeze(),
        None => y,
    }
}

/// `a · b` with the product in `compute`, returned as f32.
pub(crate) fn matmul<B: Kernels, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>, compute: Option<FloatDType>) -> Tensor<B, D> {
    match compute {
        None => a.matmul(b),
        Some(dt) => a.cast(dt).matmul(b.cast(dt)).cast(FloatDType::F32),
    }
}
