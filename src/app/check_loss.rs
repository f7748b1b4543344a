//! `qformer check-loss`: evaluates the stage-one loss on given weights and a given batch, in eval
//! mode, and prints every term (and optionally writes every gradient). It lets a user compare
//! against LAVIS on their own weights, and it is how parity with the reference is checked.

use std::path::PathBuf;

use burn::tensor::Tensor;
use serde_json::{json, Value};

use crate::interop::batch_file::read_batch;
use crate::interop::hf_config::model_config_file;
use crate::interop::weights::{load_weights, save_gradients};
use crate::kernels::backend::BackendJob;
use crate::kernels::{Kernels, TrainBackend};
use crate::objectives::{stage1_loss, ItcGradient, NegativeMode, NegativeSampler, Objective, ObjectiveConfig};
use crate::util::error::Result;
use crate::util::host::scalar;
use crate::util::host::to_f64;

pub struct CheckLoss {
    pub weights: PathBuf,
    pub batch: PathBuf,
    /// The model shape when the weights carry no `config` metadata: a TOML `[model]` table or a
    /// JSON config (an HF `config.json` included).
    pub config: Option<PathBuf>,
    pub grads: Option<PathBuf>,
    pub objectives: Vec<Objective>,
    pub itc_gradient: ItcGradient,
    /// Seed of the negative sampler when the batch has no explicit negatives and `argmax` is off.
    pub sample_seed: Option<u64>,
}

fn optional<B: Kernels>(t: &Option<Tensor<B, 1>>) -> Value {
    t.as_ref().map_or(Value::Null, |t| json!(scalar(t.clone())))
}

fn matrix<B: Kernels>(t: &Option<Tensor<B, 2>>) -> Value {
    t.as_ref().map_or(Value::Null, |t| {
        let [_, c] = t.dims();
        let v = to_f64(t.clone());
        json!(v.chunks(c).map(<[f64]>::to_vec).collect::<Vec<_>>())
    })
}

impl BackendJob for CheckLoss {
    type Output = Value;

    fn run<B: TrainBackend>(self, device: B::Device) -> Result<Value> {
        let cfg = self.config.as_deref().map(model_config_file).transpose()?;
        let (model, cfg) = load_weights::<B>(&self.weights, cfg.as_ref(), &device)?;
        let file = read_batch::<B>(&self.batch, &cfg, &device)?;
        let negatives = match (file.negatives, self.sample_seed) {
            (Some((images, texts)), _) => NegativeMode::Explicit { images, texts },
            (None, Some(_)) => NegativeMode::Sample,
            (None, None) => NegativeMode::Argmax,
        };
        let objectives = ObjectiveConfig { itc_gradient: self.itc_gradient, negatives, ..Default::default() }.only(&self.objectives);
        let sampler = NegativeSampler::new(self.sample_seed.unwrap_or(0));
        let out = stage1_loss(&model, &file.batch, &objectives, &sampler, false)?;
        let report = json!({
            "loss": scalar(out.loss.clone()),
            "loss_itc": optional(&out.itc),
            "loss_itm": optional(&out.itm),
            "loss_itg": optional(&out.itg),
            "sim_i2t": matrix(&out.sim_i2t),
            "itm_logits": matrix(&out.itm_logits),
            "sampler": out.sampler,
        });
        if let Some(path) = &self.grads {
            let grads = out.loss.backward();
            save_gradients(&model, &cfg, &grads, path)?;
        }
        Ok(report)
    }
}
