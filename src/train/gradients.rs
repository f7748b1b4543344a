//! A step's gradients: accumulated over micro-batches as one flat tensor per parameter, summed
//! over peers in one all-reduce, and measured (global norm) and scaled for clipping.

use burn::module::Param;
use burn::tensor::Tensor;

use crate::interop::weights::{visit_params, Layout, ParamVisitor};
use crate::kernels::{sum_squares, Kernels, TrainBackend};
use crate::model::QFormer;
use crate::train::collective::Exchange;
use crate::util::error::Result;
use crate::util::host::{to_f32, to_f64};

/// Gradients summed over micro-batches (and peers), one flat tensor per parameter in visit order.
pub struct GradAccumulator<B: TrainBackend> {
    pub(super) grads: Vec<Option<Tensor<B::InnerBackend, 1>>>,
    sizes: Vec<usize>,
    device: <B::InnerBackend as burn::tensor::backend::BackendTypes>::Device,
}

/// A tensor as one flat row (how gradients and moments are held).
pub(super) fn flat<B: Kernels, const D: usize>(t: Tensor<B, D>) -> Tensor<B, 1> {
    let n = t.shape().num_elements();
    t.reshape([n])
}

impl<B: TrainBackend> GradAccumulator<B> {
    pub fn new(model: &QFormer<B>) -> Self {
        struct Sizes(Vec<usize>);
        impl<B: TrainBackend> ParamVisitor<B> for Sizes {
            fn visit<const D: usize>(&mut self, _: &str, p: &mut Param<Tensor<B, D>>, _: Layout) {
                self.0.push(p.val().shape().num_elements());
            }
        }
        let mut sizes = Sizes(Vec::new());
        visit_params(&mut model.clone(), &mut sizes);
        Self { grads: vec![None; sizes.0.len()], sizes: sizes.0, device: model.query_tokens.val().inner().device() }
    }

    /// Sums the gradients over every peer with one all-reduce of all parameters, flat (zeros
    /// stand in for a parameter without gradient here), after a small one that says which
    /// parameters have a gradient anywhere: one that no peer trained keeps none, and AdamW leaves
    /// it alone as on one device. Returns the bytes all-reduced.
    pub fn all_sum(&mut self, peers: &dyn Exchange<B::InnerBackend>) -> Result<u64> {
        if peers.count() == 1 {
            return Ok(0);
        }
        let present = peers.all_sum(self.grads.iter().map(|g| f32::from(u8::from(g.is_some()))).collect())?;
        let parts: Vec<_> =
            self.grads.iter().zip(&self.sizes).map(|(g, &n)| g.clone().unwrap_or_else(|| Tensor::zeros([n], &self.device))).collect();
        let flat = Tensor::cat(parts, 0);
        let bytes = (flat.shape().num_elements() + present.len()) as u64 * 4;
        let summed = peers.all_sum_tensor(flat)?;
        let mut offset = 0;
        for ((g, &n), &p) in self.grads.iter_mut().zip(&self.sizes).zip(&present) {
            *g = (p > 0.0).then(|| summed.clone().narrow(0, offset, n));
            offset += n;
        }
        Ok(bytes)
    }

    /// Adds this micro-batch's gradients.
    pub fn add(&mut self, model: &QFormer<B>, grads: &B::Gradients) {
        struct Add<'a, B: TrainBackend> {
            acc: &'a mut [Option<Tensor<B::InnerBackend, 1>>],
            grads: &'a B::Gradients,
            i: usize,
        }
        impl<B: TrainBackend> ParamVisitor<B> for Add<'_, B> {
            fn visit<const D: usize>(&mut self, _: &str, p: &mut Param<Tensor<B, D>>, _: Layout) {
                if let Some(g) = p.val().grad(self.grads) {
                    let g = flat(g);
                    self.acc[self.i] = Some(match self.acc[self.i].take() {
                        Some(a) => a + g,
                        None => g,
                    });
                }
                self.i += 1;
            }
        }
        visit_params(&mut model.clone(), &mut Add::<B> { acc: &mut self.grads, grads, i: 0 });
    }

    /// Global L2 norm of all gradients (NaN or inf when any entry is). Each tensor's sum of
    /// squares stays on the device (fixed summation order); one read-back brings them all.
    pub fn norm(&self) -> f64 {
        let sums: Vec<_> = self.grads.iter().flatten().map(|g| sum_squares(g.clone())).collect();
        if sums.is_empty() {
            return 0.0;
        }
        let host = to_f64(Tensor::cat(sums, 0));
        host.iter().sum::<f64>().sqrt()
    }

    /// The gradients on the host, one per parameter in visit order (`None`: no gradient).
    pub fn to_host(&self) -> Vec<Option<Vec<f32>>> {
        self.grads.iter().map(|g| g.clone().map(to_f32)).collect()
    }

    pub fn scale(&mut self, factor: f64) {
        for g in self.grads.iter_mut().flatten() {
            *g = g.clone().mul_scalar(factor);
        }
    }
}
