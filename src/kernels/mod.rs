//! Fused kernels for the memory-bound pieces of a step: LayerNorm, attention softmax, GELU,
//! dropout masks, cross-entropy (plain and through the tied LM head), head split/merge, row
//! gathers and AdamW. burn builds several of these from many elementwise ops, each a node of the
//! autodiff graph, a full pass over memory and (on the CPU backends) a single thread; here each is
//! one op forward and one backward. Every backend gets the composed version
//! by default ([`reference`]); `flex` overrides it with multi-threaded vectorised loops
//! ([`flex`]); `Autodiff` wraps them with their hand-written gradients ([`autodiff`]).

mod autodiff;
pub mod backend;
mod dropout;
mod flex;
mod math;
pub mod reference;

pub use dropout::{DropoutKeys, DropoutSite};

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Shape, Tensor, TensorPrimitive};

/// A backend with the fused kernels. Every model and objective function is generic over it.
pub trait Kernels: Backend {
    /// Whether [`Kernels::adamw_step`] updates moments in place when it holds their only
    /// reference; the optimizer hands them over only then. Elsewhere it shares them: handing
    /// cubecl's fusion the moments with zero-length placeholders left behind corrupted the
    /// one-element temperature's update on wgpu (issue 24), and the composed update gains nothing.
    const ADAMW_IN_PLACE: bool = false;

    /// Bytes the device's allocator holds (cubecl backends; `None` on the CPU backends, whose
    /// memory is the process's). Its pools keep the pages they ever needed, so after a step this
    /// is that step's peak.
    fn device_memory(_device: &Self::Device) -> Option<u64> {
        None
    }

    /// LayerNorm over the last dimension, with affine `gamma` and `beta` (`[D]`).
    fn fused_layer_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, beta: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        <Self as burn::tensor::ops::ModuleOps<Self>>::layer_norm(x, gamma, Some(beta), eps)
    }

    /// Gradients of [`Kernels::fused_layer_norm`] for `x`, `gamma` and `beta`.
    fn fused_layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        eps: f64,
        grad: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 3] {
        reference::layer_norm_backward::<Self>(x, gamma, eps, grad)
    }

    /// Attention probabilities `softmax(scale · scores + mask)` over the last dimension; `scores`
    /// is `[B, H, Sq, Sk]`, the additive `mask` (a constant, no gradient) broadcasts to it.
    fn attention_softmax(scores: FloatTensor<Self>, mask: Option<FloatTensor<Self>>, scale: f64) -> FloatTensor<Self> {
        reference::attention_softmax::<Self>(scores, mask, scale)
    }

    /// Gradient for the scores from the probabilities `y`: `scale · y · (g − Σ g·y)`.
    fn attention_softmax_backward(y: FloatTensor<Self>, grad: FloatTensor<Self>, scale: f64) -> FloatTensor<Self> {
        reference::softmax_backward::<Self>(y, grad, scale)
    }

    /// `[B, A, C, d]` to `[B, C, A, d]`: between one row per token and one block per head. A
    /// strided view by default; `flex` copies whole `d`-rows in parallel (its generic strided copy,
    /// which a later reshape would run, goes element by element).
    fn swap_heads(x: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_swap_dims(x, 1, 2)
    }

    /// Rows `rows` of `x` along dimension 0, in that order (repeats allowed).
    fn gather_rows(x: FloatTensor<Self>, rows: &[usize]) -> FloatTensor<Self> {
        reference::gather_rows::<Self>(x, rows)
    }

    /// The gradient of [`Kernels::gather_rows`]: `grad`'s rows summed into `n` rows.
    fn scatter_rows(grad: FloatTensor<Self>, rows: &[usize], n: usize) -> FloatTensor<Self> {
        reference::scatter_rows::<Self>(grad, rows, n)
    }

    /// `Σ x²` over every element, as a `[1]` tensor (gradient norms). Its summation order must
    /// depend on the shape alone, so that a run gives the same bits at any thread count.
    fn sum_squares(x: FloatTensor<Self>) -> FloatTensor<Self> {
        reference::sum_squares::<Self>(x)
    }

    /// Exact (erf) GELU.
    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        <Self as burn::tensor::ops::ActivationOps<Self>>::gelu(x)
    }

    fn fused_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        <Self as burn::tensor::ops::ActivationOps<Self>>::gelu_backward(x, grad)
    }

    /// An inverted-dropout mask of `shape` (batch first): `1/keep` with probability `keep`, else
    /// 0, as [`DropoutSite::mask`] draws it. Built on the host by default and uploaded (the CPU
    /// backends); the GPU backends draw it on the device ([`DropoutSite::device_mask`]).
    fn dropout_mask(shape: Shape, keep: f64, site: &DropoutSite<'_>, device: &Self::Device) -> FloatTensor<Self> {
        let values = site.mask(&shape, keep);
        Self::float_from_data(burn::tensor::TensorData::new(values, shape), device)
    }

    /// Label-smoothed cross-entropy of `logits` (`[N, C]`) against class indices, averaged over
    /// rows, as PyTorch's `cross_entropy(label_smoothing = eps)`. Returns the loss (`[1]`) and each
    /// row's log-sum-exp (`[N]`, kept for the backward pass).
    fn cross_entropy_forward(logits: FloatTensor<Self>, labels: &[usize], eps: f64) -> (FloatTensor<Self>, FloatTensor<Self>) {
        reference::cross_entropy_forward::<Self>(logits, labels, eps)
    }

    /// Gradient for the logits: `g/N · (softmax − (1−eps)·onehot − eps/C)`.
    fn cross_entropy_backward(
        logits: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        labels: &[usize],
        eps: f64,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        reference::cross_entropy_backward::<Self>(logits, lse, labels, eps, grad)
    }

    /// One AdamW update of a flat parameter `w` with gradient `g` and moments `m`, `v`;
    /// returns the new `[w, m, v]`.
    fn adamw_step(
        w: FloatTensor<Self>,
        g: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        step: &AdamWStep,
    ) -> [FloatTensor<Self>; 3] {
        reference::adamw_step::<Self>(w, g, m, v, step)
    }

    /// Cross-entropy of the tied LM head's logits `h · weightᵀ + bias` (`h`: `[N, D]`, `weight`:
    /// `[V, D]`) as one op: its backward writes the weight gradient straight in `[V, D]` (no
    /// transposed `[D, V]` copy to add into the embedding's) and runs no autodiff node per piece.
    fn lm_cross_entropy(
        h: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        labels: &[usize],
        eps: f64,
    ) -> FloatTensor<Self> {
        Self::cross_entropy_forward(reference::lm_logits::<Self>(h, weight, bias), labels, eps).0
    }

    /// The loss alone; `Autodiff` records the op with its gradient.
    fn fused_cross_entropy(logits: FloatTensor<Self>, labels: &[usize], eps: f64) -> FloatTensor<Self> {
        Self::cross_entropy_forward(logits, labels, eps).0
    }
}

/// The scalars of one AdamW update, PyTorch's arithmetic: `m ← β₁m + (1−β₁)g`,
/// `v ← β₂v + (1−β₂)g²`, `w ← w·decay − lr/bc1 · m / (√v / bc2_sqrt + eps)`.
#[derive(Clone, Copy, Debug)]
pub struct AdamWStep {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// `lr / (1 − β₁ᵗ)`.
    pub step_size: f64,
    /// `√(1 − β₂ᵗ)`.
    pub bc2_sqrt: f64,
    /// `1 − lr · weight_decay`, or 1 for parameters without decay.
    pub decay: f64,
}

/// The training backend: autodiff over a backend that has the kernels too (evaluation runs on
/// the inner one).
pub trait TrainBackend: AutodiffBackend<InnerBackend: Kernels> + Kernels {}

impl<B: AutodiffBackend<InnerBackend: Kernels> + Kernels> TrainBackend for B {}

impl Kernels for burn::backend::NdArray {}

/// The cubecl (GPU) backends: the composed kernels, with dropout masks drawn on the device.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
macro_rules! cubecl_kernels {
    ($backend:ty, $runtime:ty) => {
        impl Kernels for $backend {
            fn device_memory(device: &Self::Device) -> Option<u64> {
                <$runtime as burn::cubecl::Runtime>::client(device).memory_usage().ok().map(|m| m.bytes_reserved)
            }

            fn dropout_mask(shape: Shape, keep: f64, site: &DropoutSite<'_>, device: &Self::Device) -> FloatTensor<Self> {
                <Self as burn::tensor::ops::FloatTensorOps<Self>>::float_reshape(
                    float(site.device_mask::<Self>(&shape, keep, device)),
                    shape,
                )
            }
        }
    };
}

#[cfg(feature = "cuda")]
cubecl_kernels!(burn::backend::Cuda, burn::cubecl::cuda::CudaRuntime);

#[cfg(feature = "wgpu")]
cubecl_kernels!(burn::backend::Wgpu, burn::backend::wgpu::WgpuRuntime);

fn float<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

fn tensor<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// `softmax(scale · scores + mask)` over the last dimension of `[B, H, Sq, Sk]` scores.
pub fn attention_softmax<B: Kernels>(scores: Tensor<B, 4>, mask: Option<Tensor<B, 4>>, scale: f64) -> Tensor<B, 4> {
    tensor(B::attention_softmax(float(scores), mask.map(float), scale))
}

/// `[B, A, C, d]` to `[B, C, A, d]`.
pub fn swap_heads<B: Kernels>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    tensor(B::swap_heads(float(x)))
}

/// Rows `rows` of `x` along dimension 0 (gradients summed back).
pub fn gather_rows<B: Kernels, const D: usize>(x: Tensor<B, D>, rows: &[usize]) -> Tensor<B, D> {
    tensor(B::gather_rows(float(x), rows))
}

/// `Σ x²` as a `[1]` tensor, in a fixed summation order.
pub fn sum_squares<B: Kernels, const D: usize>(x: Tensor<B, D>) -> Tensor<B, 1> {
    tensor(B::sum_squares(float(x)))
}

/// Exact GELU.
pub fn gelu<B: Kernels, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    tensor(B::fused_gelu(float(x)))
}

/// Inverted dropout with probability `p` at `site`; the identity without a site (evaluation).
/// An explicit argument rather than burn's `Dropout` (active whenever autodiff is, drawing from
/// the process-wide RNG), so that eval-mode gradients (`check-loss`) are possible and every mask
/// is a function of the keys it names.
pub fn dropout<B: Kernels, const D: usize>(x: Tensor<B, D>, p: f64, site: Option<DropoutSite<'_>>) -> Tensor<B, D> {
    let Some(site) = site.filter(|_| p > 0.0) else {
        return x;
    };
    let mask = tensor::<B, D>(B::dropout_mask(x.shape(), 1.0 - p, &site, &x.device()));
    x * mask
}

/// [`cross_entropy`] of `h · weightᵀ + bias`, as one op.
pub fn lm_cross_entropy<B: Kernels>(h: Tensor<B, 2>, weight: Tensor<B, 2>, bias: Tensor<B, 1>, labels: &[usize], eps: f64) -> Tensor<B, 1> {
    tensor(B::lm_cross_entropy(float(h), float(weight), float(bias), labels, eps))
}

/// PyTorch's `cross_entropy(logits, labels, label_smoothing = eps)`, mean over rows, as one op.
pub fn cross_entropy<B: Kernels>(logits: Tensor<B, 2>, labels: &[usize], eps: f64) -> Tensor<B, 1> {
    tensor(B::fused_cross_entropy(float(logits), labels, eps))
}
