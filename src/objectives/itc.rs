//! ITC: image-text contrastive loss over query-max similarities.

use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::soft_cross_entropy;
use crate::kernels::Kernels;

/// Which side of each similarity carries gradient.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ItcGradient {
    /// LAVIS: each direction compares the local features with *detached* copies of the other
    /// modality's batch (its all-gather runs without gradient), so i2t trains only the image side
    /// and t2i only the text side.
    #[default]
    Detached,
    /// Both sides of every similarity carry gradient (the textbook contrastive loss).
    Full,
}

pub struct ItcOutput<B: Kernels> {
    pub loss: Tensor<B, 1>,
    /// `[B, B]` image-to-text logits (similarity / temperature).
    pub sim_i2t: Tensor<B, 2>,
    /// `[B, B]` text-to-image logits.
    pub sim_t2i: Tensor<B, 2>,
}

/// L2 normalisation as `F.normalize` (norm clamped at 1e-12).
pub fn normalize<B: Kernels, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let norm = x.clone().powf_scalar(2.0).sum_dim(D - 1).sqrt().clamp_min(1e-12);
    x / norm
}

/// Similarity logits. `image`: normalised `[B, Q, E]`; `text`: normalised `[N, E]`.
/// `sim_i2t[b, n] = max_q <image[b,q], text[n]> / temp`, `sim_t2i[n, b]` likewise from the text.
pub fn similarities<B: Kernels>(
    image: Tensor<B, 3>,
    text: Tensor<B, 2>,
    temp: Tensor<B, 1>,
    gradient: ItcGradient,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let [b, q, e] = image.dims();
    let [n, _] = text.dims();
    let (image_all, text_all) = match gradient {
        ItcGradient::Detached => (image.clone().detach(), text.clone().detach()),
        ItcGradient::Full => (image.clone(), text.clone()),
    };
    let temp = temp.unsqueeze::<2>();
    let i2t = image.reshape([b * q, e]).matmul(text_all.transpose()).reshape([b, q, n]).max_dim(1).squeeze_dim::<2>(1) / temp.clone();
    let t2i = text.matmul(image_all.reshape([b * q, e]).transpose()).reshape([n, b, q]).max_dim(2).squeeze_dim::<2>(2) / temp;
    (i2t, t2i)
}

/// Smoothed targets: `(1 - eps) · pos / |pos|` per row plus `eps / N` everywhere. With one
/// positive per row this is PyTorch's label-smoothed cross-entropy.
pub fn targets<B: Kernels>(positives: &[Vec<bool>], eps: f64, device: &B::Device) -> Tensor<B, 2> {
    let n = positives.len();
    let mut values = Vec::with_capacity(n * n);
    for row in positives {
        let count = row.iter().filter(|&&p| p).count().max(1) as f64;
        values.extend(row.iter().map(|&p| ((1.0 - eps) * f64::from(u8::from(p)) / count + eps / n as f64) as f32));
    }
    Tensor::from_data(TensorData::new(values, [n, n]), device)
}

/// The ITC loss: mean of the two directions' smoothed cross-entropies.
pub fn itc_loss<B: Kernels>(
    image: Tensor<B, 3>,
    text: Tensor<B, 2>,
    temp: Tensor<B, 1>,
    positives: &[Vec<bool>],
    gradient: ItcGradient,
    label_smoothing: f64,
) -> ItcOutput<B> {
    let device = image.device();
    let (sim_i2t, sim_t2i) = similarities(normalize(image), normalize(text), temp, gradient);
    let t_i2t = targets::<B>(positives, label_smoothing, &device);
    let transposed: Vec<Vec<bool>> = (0..positives.len()).map(|j| positives.iter().map(|row| row[j]).collect()).collect();
    let t_t2i = targets::<B>(&transposed, label_smoothing, &device);
    let loss = (soft_cross_entropy(sim_i2t.clone(), t_i2t) + soft_cross_entropy(sim_t2i.clone(), t_t2i)).div_scalar(2.0);
    ItcOutput { loss, sim_i2t, sim_t2i }
}
