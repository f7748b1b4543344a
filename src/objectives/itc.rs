//! ITC: image-text contrastive loss over query-max similarities.

use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::soft_cross_entropy;
use crate::kernels::Kernels;

/// Which side of each similarity carries gradient.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
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
    /// `[b, N]` image-to-text logits (similarity / temperature) of this peer's images.
    pub sim_i2t: Tensor<B, 2>,
    /// `[b, N]` text-to-image logits of this peer's texts.
    pub sim_t2i: Tensor<B, 2>,
}

/// L2 normalisation as `F.normalize` (norm clamped at 1e-12).
pub fn normalize<B: Kernels, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let norm = x.clone().powf_scalar(2.0).sum_dim(D - 1).sqrt().clamp_min(1e-12);
    x / norm
}

/// Similarity logits of this peer's rows against the whole batch. `image`: normalised `[b, Q, E]`
/// and `text`: normalised `[b, E]`, this peer's rows; `image_all` (`[N, Q, E]`) and `text_all`
/// (`[N, E]`): the whole batch's, with or without gradient as [`ItcGradient`] says.
/// `sim_i2t[i, n] = max_q <image[i,q], text_all[n]> / temp`, `sim_t2i[t, n]` likewise from the text.
pub fn similarities<B: Kernels>(
    image: Tensor<B, 3>,
    text: Tensor<B, 2>,
    image_all: Tensor<B, 3>,
    text_all: Tensor<B, 2>,
    temp: Tensor<B, 1>,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let [b, q, e] = image.dims();
    let [n, _, _] = image_all.dims();
    let temp = temp.unsqueeze::<2>();
    let i2t = image.reshape([b * q, e]).matmul(text_all.transpose()).reshape([b, q, n]).max_dim(1).squeeze_dim::<2>(1) / temp.clone();
    let t2i = text.matmul(image_all.reshape([n * q, e]).transpose()).reshape([b, n, q]).max_dim(2).squeeze_dim::<2>(2) / temp;
    (i2t, t2i)
}

/// Smoothed targets of `rows × cols` positives: `(1 - eps) · pos / |pos|` per row plus
/// `eps / cols` everywhere. With one positive per row this is PyTorch's label-smoothed
/// cross-entropy.
pub fn targets<B: Kernels>(positives: &[Vec<bool>], eps: f64, device: &B::Device) -> Tensor<B, 2> {
    let rows = positives.len();
    let cols = positives.first().map_or(0, Vec::len);
    let mut values = Vec::with_capacity(rows * cols);
    for row in positives {
        let count = row.iter().filter(|&&p| p).count().max(1) as f64;
        values.extend(row.iter().map(|&p| ((1.0 - eps) * f64::from(u8::from(p)) / count + eps / cols as f64) as f32));
    }
    Tensor::from_data(TensorData::new(values, [rows, cols]), device)
}

/// The ITC loss of this peer's rows: mean over them of the two directions' smoothed
/// cross-entropies, halved. `positives[i][n]`: this peer's sample `i` and the batch's sample `n`
/// share an image (the relation is symmetric, so it serves both directions).
pub fn itc_loss<B: Kernels>(
    (image, text): (Tensor<B, 3>, Tensor<B, 2>),
    (image_all, text_all): (Tensor<B, 3>, Tensor<B, 2>),
    temp: Tensor<B, 1>,
    positives: &[Vec<bool>],
    label_smoothing: f64,
) -> ItcOutput<B> {
    let device = image.device();
    let (sim_i2t, sim_t2i) = similarities(image, text, image_all, text_all, temp);
    let target = targets::<B>(positives, label_smoothing, &device);
    let loss = (soft_cross_entropy(sim_i2t.clone(), target.clone()) + soft_cross_entropy(sim_t2i.clone(), target)).div_scalar(2.0);
    ItcOutput { loss, sim_i2t, sim_t2i }
}
