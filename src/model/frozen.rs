//! Where a run's frozen image features come from: the encoder run on pixels, or a feature cache
//! (then no encoder exists in the process). Either way the result is the input of `ln_vision`.

use burn::module::Module;
use burn::tensor::{Tensor, TensorData};

use super::vit::Vit;
use crate::kernels::Kernels;

pub enum Frozen<B: Kernels> {
    Encoder { vit: Vit<B>, image_size: usize },
    Cache { tokens: usize, width: usize },
}

impl<B: Kernels> Frozen<B> {
    /// A copy on `device` (each data-parallel peer holds its own).
    pub fn to_device(&self, device: &B::Device) -> Self {
        match self {
            Frozen::Encoder { vit, image_size } => Frozen::Encoder { vit: vit.clone().fork(device), image_size: *image_size },
            Frozen::Cache { tokens, width } => Frozen::Cache { tokens: *tokens, width: *width },
        }
    }

    /// Values per sample in the host inputs this source takes.
    pub fn input_len(&self) -> usize {
        match self {
            Frozen::Encoder { image_size, .. } => 3 * image_size * image_size,
            Frozen::Cache { tokens, width } => tokens * width,
        }
    }

    /// Features `[n, tokens, width]` from host inputs (pixels or cached features) of `n` samples.
    pub fn features(&self, inputs: Vec<f32>, device: &B::Device) -> Tensor<B, 3> {
        let n = inputs.len() / self.input_len();
        match self {
            Frozen::Encoder { vit, image_size: s } => vit.forward(Tensor::from_data(TensorData::new(inputs, [n, 3, *s, *s]), device)),
            Frozen::Cache { tokens, width } => Tensor::from_data(TensorData::new(inputs, [n, *tokens, *width]), device),
        }
    }
}
