//! AdamW with LAVIS's parameter groups (no weight decay for 1-D tensors and biases; the 0-D
//! temperature is decayed, as at LAVIS HEAD). Clipping and accumulation are in [`super::gradients`].
//! Written here rather than taken from burn so that its state is named like the weights (it goes
//! into checkpoints) and so the groups and clipping are exactly LAVIS's.

use burn::module::Param;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};

use super::gradients::{flat, GradAccumulator};
use crate::interop::safetensors_io::OwnedTensor;
use crate::interop::weights::{visit_params, Layout, ParamVisitor};
use crate::kernels::{AdamWStep, Kernels, TrainBackend};
use crate::model::QFormer;
use crate::train::config::OptimConfig;
use crate::util::error::Result;
use crate::util::host::to_f32;

/// Moments of one parameter, flattened.
struct Moments<B: Kernels> {
    name: String,
    decay: bool,
    m: Tensor<B, 1>,
    v: Tensor<B, 1>,
}

pub struct AdamW<B: TrainBackend> {
    cfg: OptimConfig,
    /// Optimizer steps taken (bias correction uses it).
    pub step: u64,
    moments: Vec<Moments<B::InnerBackend>>,
}

/// LAVIS HEAD's rule, on the shapes as stored in files (the temperature is 0-D there).
pub fn decays(name: &str, layout: Layout, dims: usize) -> bool {
    let file_dims = if layout == Layout::Scalar { 0 } else { dims };
    !(file_dims == 1 || name.ends_with(".bias"))
}

impl<B: TrainBackend> AdamW<B> {
    pub fn new(cfg: &OptimConfig, model: &QFormer<B>) -> Self {
        struct Init<B: Kernels>(Vec<Moments<B>>);
        impl<B: TrainBackend> ParamVisitor<B> for Init<B::InnerBackend> {
            fn visit<const D: usize>(&mut self, name: &str, p: &mut Param<Tensor<B, D>>, layout: Layout) {
                let zeros = flat(p.val().inner().zeros_like());
                self.0.push(Moments { name: name.to_string(), decay: decays(name, layout, D), m: zeros.clone(), v: zeros });
            }
        }
        let mut init = Init::<B::InnerBackend>(Vec::new());
        visit_params(&mut model.clone(), &mut init);
        Self { cfg: cfg.clone(), step: 0, moments: init.0 }
    }

    /// One update with learning rate `lr`, PyTorch's AdamW arithmetic.
    pub fn update(&mut self, model: QFormer<B>, grads: &GradAccumulator<B>, lr: f64) -> QFormer<B> {
        self.step += 1;
        let c = &self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2_sqrt = (1.0 - c.beta2.powi(self.step as i32)).sqrt();
        struct Step<'a, B: TrainBackend> {
            moments: &'a mut [Moments<B::InnerBackend>],
            grads: &'a [Option<Tensor<B::InnerBackend, 1>>],
            cfg: &'a OptimConfig,
            lr: f64,
            bc1: f64,
            bc2_sqrt: f64,
            i: usize,
        }
        impl<B: TrainBackend> ParamVisitor<B> for Step<'_, B> {
            fn visit<const D: usize>(&mut self, _: &str, p: &mut Param<Tensor<B, D>>, _: Layout) {
                let i = self.i;
                self.i += 1;
                let Some(g) = &self.grads[i] else { return };
                let st = &mut self.moments[i];
                let c = self.cfg;
                let step = AdamWStep {
                    beta1: c.beta1,
                    beta2: c.beta2,
                    eps: c.eps,
                    step_size: self.lr / self.bc1,
                    bc2_sqrt: self.bc2_sqrt,
                    decay: if st.decay { 1.0 - self.lr * c.weight_decay } else { 1.0 },
                };
                let value = p.val().inner();
                let shape = value.shape();
                let prim = |t: &Tensor<B::InnerBackend, 1>| t.clone().into_primitive().tensor();
                // Hand over the moments (not a second reference) to a kernel that updates them in place.
                let (m, v) = if B::InnerBackend::ADAMW_IN_PLACE {
                    let none = || Tensor::<B::InnerBackend, 1>::zeros([0], &g.device());
                    (std::mem::replace(&mut st.m, none()), std::mem::replace(&mut st.v, none()))
                } else {
                    (st.m.clone(), st.v.clone())
                };
                let [w, m, v] = B::InnerBackend::adamw_step(
                    prim(&flat(value)),
                    prim(g),
                    m.into_primitive().tensor(),
                    v.into_primitive().tensor(),
                    &step,
                );
                let back = |t| Tensor::<B::InnerBackend, 1>::from_primitive(TensorPrimitive::Float(t));
                (st.m, st.v) = (back(m), back(v));
                *p = Param::initialized(p.id, Tensor::from_inner(back(w).reshape(shape)).require_grad());
            }
        }
        let mut model = model;
        visit_params(&mut model, &mut Step::<B> { moments: &mut self.moments, grads: &grads.grads, cfg: c, lr, bc1, bc2_sqrt, i: 0 });
        model
    }

    /// A copy whose moments live on `device` (each peer holds its own).
    pub fn to_device(&self, device: &<B::InnerBackend as burn::tensor::backend::BackendTypes>::Device) -> Self {
        let moments = self
            .moments
            .iter()
            .map(|s| Moments { name: s.name.clone(), decay: s.decay, m: s.m.clone().to_device(device), v: s.v.clone().to_device(device) })
            .collect();
        Self { cfg: self.cfg.clone(), step: self.step, moments }
    }

    /// Moments under `{param}.exp_avg` / `{param}.exp_avg_sq`, flattened.
    pub fn state_tensors(&self) -> Vec<(String, OwnedTensor)> {
        let host = |t: &Tensor<B::InnerBackend, 1>| to_f32(t.clone());
        self.moments
            .iter()
            .flat_map(|s| {
                let n = s.m.dims()[0];
                [
                    (format!("{}.exp_avg", s.name), OwnedTensor::f32(vec![n], &host(&s.m))),
                    (format!("{}.exp_avg_sq", s.name), OwnedTensor::f32(vec![n], &host(&s.v))),
                ]
            })
            .collect()
    }

    /// Restores moments read by `read`, which returns a named flat tensor.
    pub fn load_state(&mut self, step: u64, mut read: impl FnMut(&str, usize) -> Result<Vec<f32>>) -> Result<()> {
        for s in &mut self.moments {
            let n = s.m.dims()[0];
            let device = s.m.device();
            s.m = Tensor::from_data(TensorData::new(read(&format!("{}.exp_avg", s.name), n)?, [n]), &device);
            s.v = Tensor::from_data(TensorData::new(read(&format!("{}.exp_avg_sq", s.name), n)?, [n]), &device);
        }
        self.step = step;
        Ok(())
    }
}
