//! `qformer check-loss`: evaluates the stage-one loss on given weights and a given batch, in eval
//! mode, and prints every term (and optionally writes every gradient). It lets a user compare
//! against LAVIS on their own weights, and it is how parity with the reference is checked.

use std::path::{Path, PathBuf};

use burn::tensor::Tensor;
use serde_json::{json, Value};

use crate::backend::BackendJob;
use crate::error::{Error, Result};
use crate::interop::batch_file::read_batch;
use crate::interop::weights::{load_weights, save_gradients};
use crate::model::{scalar, QFormerConfig};
use crate::objectives::{stage1_loss, ItcGradient, NegativeMode, NegativeSampler, Objective, ObjectiveConfig};
use crate::kernels::{Kernels, TrainBackend};

pub struct CheckLoss {
    pub weights: PathBuf,
    pub batch: PathBuf,
    /// TOML whose `[model]` table gives the shapes, when the weights carry no `config` metadata.
    pub config: Option<PathBuf>,
    pub grads: Option<PathBuf>,
    pub objectives: Vec<Objective>,
    pub itc_gradient: ItcGradient,
    /// Seed of the negative sampler when the batch has no explicit negatives and `argmax` is off.
    pub sample_seed: Option<u64>,
}

/// Reads the `[model]` table of a TOML config.
pub fn model_config_from_toml(path: &Path) -> Result<QFormerConfig> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let value: toml::Table = toml::from_str(&text).map_err(|e| Error::config("toml", e.to_string(), &name))?;
    let model = value.get("model").cloned().ok_or_else(|| Error::config("model", "missing [model] table", &name))?;
    let cfg: QFormerConfig = model.try_into().map_err(|e: toml::de::Error| Error::config("model", e.to_string(), &name))?;
    cfg.validate(&name)?;
    Ok(cfg)
}

fn optional<B: Kernels>(t: &Option<Tensor<B, 1>>) -> Value {
    t.as_ref().map_or(Value::Null, |t| json!(scalar(t.clone())))
}

fn matrix<B: Kernels>(t: &Option<Tensor<B, 2>>) -> Value {
    t.as_ref().map_or(Value::Null, |t| {
        let [_, c] = t.dims();
        let v = t.clone().into_data().convert::<f64>().to_vec::<f64>().expect("f64 data");
        json!(v.chunks(c).map(<[f64]>::to_vec).collect::<Vec<_>>())
    })
}

impl BackendJob for CheckLoss {
    type Output = Value;

    fn run<B: TrainBackend>(self, device: B::Device) -> Result<Value> {
        let cfg = self.config.as_deref().map(model_config_from_toml).transpose()?;
        let (model, cfg) = load_weights::<B>(&self.weights, cfg.as_ref(), &device)?;
        let file = read_batch::<B>(&self.batch, &cfg, &device)?;
        let negatives = match (file.negatives, self.sample_seed) {
            (Some((images, texts)), _) => NegativeMode::Explicit { images, texts },
            (None, Some(_)) => NegativeMode::Sample,
            (None, None) => NegativeMode::Argmax,
        };
        let objectives = ObjectiveConfig { itc_gradient: self.itc_gradient, negatives, ..Default::default() }.only(&self.objectives);
        let mut sampler = NegativeSampler::new(self.sample_seed.unwrap_or(0));
        let out = stage1_loss(&model, &file.batch, &objectives, &mut sampler, false)?;
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
