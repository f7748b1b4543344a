//! The kernels composed from ordinary tensor ops: what every backend without its own version
//! runs, and what the fused versions are tested against.

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData, TensorMetadata};

use super::{float, tensor, AdamWStep};

/// `x` as `[rows, last]`.
fn rows<B: Backend>(x: FloatTensor<B>) -> Tensor<B, 2> {
    let shape = x.shape();
    let last = shape[shape.num_dims() - 1];
    let n = shape.num_elements() / last.max(1);
    tensor::<B, 1>(x).reshape([n, last])
}

fn labels_tensor<B: Backend>(labels: &[usize], device: &B::Device) -> Tensor<B, 2, Int> {
    let values: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
    Tensor::from_data(TensorData::new(values, [labels.len(), 1]), device)
}

pub fn layer_norm_backward<B: Backend>(x: FloatTensor<B>, gamma: FloatTensor<B>, eps: f64, grad: FloatTensor<B>) -> [FloatTensor<B>; 3] {
    let shape = x.shape();
    let x = rows::<B>(x);
    let g = rows::<B>(grad);
    let d = x.dims()[1];
    let centered = x.clone() - x.mean_dim(1);
    let rstd = (centered.clone().powf_scalar(2.0).mean_dim(1) + eps).sqrt().recip();
    let xhat = centered * rstd.clone();
    let dbeta = g.clone().sum_dim(0).reshape([d]);
    let dgamma = (g.clone() * xhat.clone()).sum_dim(0).reshape([d]);
    let dxhat = g * tensor::<B, 1>(gamma).reshape([1, d]);
    let dx = (dxhat.clone() - dxhat.clone().mean_dim(1) - xhat.clone() * (dxhat * xhat).mean_dim(1)) * rstd;
    [B::float_reshape(float(dx), shape), float(dgamma), float(dbeta)]
}

pub fn sum_squares<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let n = x.shape().num_elements();
    float(tensor::<B, 1>(B::float_reshape(x, [n].into())).powf_scalar(2.0).sum())
}

pub fn attention_softmax<B: Backend>(scores: FloatTensor<B>, mask: Option<FloatTensor<B>>, scale: f64) -> FloatTensor<B> {
    let x = tensor::<B, 4>(scores).mul_scalar(scale);
    let x = match mask {
        Some(mask) => x + tensor::<B, 4>(mask),
        None => x,
    };
    float(burn::tensor::activation::softmax(x, 3))
}

pub fn softmax_backward<B: Backend>(y: FloatTensor<B>, grad: FloatTensor<B>, scale: f64) -> FloatTensor<B> {
    let shape = y.shape();
    let y = rows::<B>(y);
    let g = rows::<B>(grad);
    let dot = (g.clone() * y.clone()).sum_dim(1);
    B::float_reshape(float((y * (g - dot)).mul_scalar(scale)), shape)
}

pub fn cross_entropy_forward<B: Backend>(logits: FloatTensor<B>, labels: &[usize], eps: f64) -> (FloatTensor<B>, FloatTensor<B>) {
    let x = tensor::<B, 2>(logits);
    let [n, _] = x.dims();
    let max = x.clone().max_dim(1);
    let lse = (x.clone() - max.clone()).exp().sum_dim(1).log() + max;
    let picked = x.clone().gather(1, labels_tensor::<B>(labels, &x.device()));
    let rows = lse.clone() - picked.mul_scalar(1.0 - eps) - x.mean_dim(1).mul_scalar(eps);
    (float(rows.mean().reshape([1])), float(lse.reshape([n])))
}

pub fn cross_entropy_backward<B: Backend>(
    logits: FloatTensor<B>,
    lse: FloatTensor<B>,
    labels: &[usize],
    eps: f64,
    grad: FloatTensor<B>,
) -> FloatTensor<B> {
    let x = tensor::<B, 2>(logits);
    let [n, c] = x.dims();
    let device = x.device();
    let scale = tensor::<B, 1>(grad).reshape([1, 1]).div_scalar(n as f64);
    let probs = (x - tensor::<B, 1>(lse).reshape([n, 1])).exp().sub_scalar(eps / c as f64);
    let hot = Tensor::<B, 2>::full([n, 1], -(1.0 - eps), &device);
    float(probs.scatter(1, labels_tensor::<B>(labels, &device), hot, IndexingUpdateOp::Add) * scale)
}

pub fn adamw_step<B: Backend>(
    w: FloatTensor<B>,
    g: FloatTensor<B>,
    m: FloatTensor<B>,
    v: FloatTensor<B>,
    s: &AdamWStep,
) -> [FloatTensor<B>; 3] {
    let (w, g) = (tensor::<B, 1>(w), tensor::<B, 1>(g));
    let m = tensor::<B, 1>(m).mul_scalar(s.beta1) + g.clone().mul_scalar(1.0 - s.beta1);
    let v = tensor::<B, 1>(v).mul_scalar(s.beta2) + g.powf_scalar(2.0).mul_scalar(1.0 - s.beta2);
    let w = if s.decay == 1.0 { w } else { w.mul_scalar(s.decay) };
    let denom = v.clone().sqrt().div_scalar(s.bc2_sqrt).add_scalar(s.eps);
    let w = w - m.clone().div(denom).mul_scalar(s.step_size);
    [float(w), float(m), float(v)]
}

/// `h · weightᵀ + bias`.
pub fn lm_logits<B: Backend>(h: FloatTensor<B>, weight: FloatTensor<B>, bias: FloatTensor<B>) -> FloatTensor<B> {
    let vocab = bias.shape().num_elements();
    B::float_add(B::float_matmul(h, B::float_transpose(weight)), B::float_reshape(bias, [1, vocab].into()))
}

fn row_index<B: Backend>(rows: &[usize], device: &B::Device) -> burn::tensor::ops::IntTensor<B> {
    let values: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    Tensor::<B, 1, Int>::from_data(TensorData::new(values, [rows.len()]), device).into_primitive()
}

pub fn gather_rows<B: Backend>(x: FloatTensor<B>, rows: &[usize]) -> FloatTensor<B> {
    let index = row_index::<B>(rows, &B::float_device(&x));
    B::float_select(x, 0, index)
}

pub fn scatter_rows<B: Backend>(grad: FloatTensor<B>, rows: &[usize], n: usize) -> FloatTensor<B> {
    let device = B::float_device(&grad);
    let mut shape = grad.shape();
    shape[0] = n;
    let zeros = B::float_zeros(shape, &device, grad.dtype().into());
    B::float_select_add(zeros, 0, row_index::<B>(rows, &device), grad)
}
