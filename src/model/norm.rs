//! LayerNorm over the last dimension, run as one fused op (forward and backward) through
//! [`Kernels`]; burn's module would record each of its seven elementwise steps.

use burn::module::{Module, Param};
use burn::tensor::{Tensor, TensorPrimitive};

use crate::kernels::Kernels;

/// Same parameters and names as burn's `LayerNorm` (`gamma`, optional `beta`).
#[derive(Module, Debug)]
pub struct LayerNorm<B: Kernels> {
    pub gamma: Param<Tensor<B, 1>>,
    pub beta: Option<Param<Tensor<B, 1>>>,
    pub epsilon: f64,
}

impl<B: Kernels> LayerNorm<B> {
    /// Ones and zeros, as PyTorch.
    pub fn new(width: usize, epsilon: f64, device: &B::Device) -> Self {
        Self {
            gamma: Param::from_tensor(Tensor::ones([width], device)),
            beta: Some(Param::from_tensor(Tensor::zeros([width], device))),
            epsilon,
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let gamma = self.gamma.val();
        let beta = match &self.beta {
            Some(beta) => beta.val(),
            None => Tensor::zeros(gamma.shape(), &gamma.device()),
        };
        let out =
            B::fused_layer_norm(x.into_primitive().tensor(), gamma.into_primitive().tensor(), beta.into_primitive().tensor(), self.epsilon);
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }
}
