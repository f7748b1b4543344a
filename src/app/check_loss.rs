//! `qformer check-loss`: evaluates the stage-one loss on given weights and a given batch, in eval
//! mode, and prints every term (and optionally writes every gradient). It lets a user compare
//! against LAVIS on their own weights, and it is how parity with the reference is checked.

use std::path::PathBuf;
use std::process::ExitCode;

use burn::tensor::Tensor;
use serde_json::{json, Value};

use super::args::BackendArg;
use crate::interop::batch_file::read_batch;
use crate::interop::hf_config::model_config_file;
use crate::interop::weights::{load_weights, save_gradients};
use crate::kernels::backend::{dispatch, BackendJob};
use crate::kernels::{Kernels, TrainBackend};
use crate::objectives::{stage1_loss, ItcGradient, NegativeMode, NegativeSampler, Objective, ObjectiveConfig};
use crate::util::error::Result;
use crate::util::host::scalar;
use crate::util::host::to_f64;

#[derive(clap::Args)]
pub struct CheckLossArgs {
    #[command(flatten)]
    pub backend: BackendArg,
    #[command(flatten)]
    pub job: CheckLoss,
}

#[derive(clap::Args)]
pub struct CheckLoss {
    /// Q-Former weights (safetensors, HF names; shapes from the `config` metadata).
    #[arg(long)]
    pub weights: PathBuf,
    /// Batch safetensors: image_feats, input_ids, attention_mask [, neg_image_idx, neg_text_idx, image_ids].
    #[arg(long)]
    pub batch: PathBuf,
    /// The model shape for weights without config metadata: a TOML [model] table or a JSON config (HF config.json too).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Also write d(loss)/d(parameter) for every parameter here.
    #[arg(long)]
    pub grads: Option<PathBuf>,
    /// Objectives to include, comma separated.
    #[arg(long, value_enum, default_value = "itc,itm,itg", value_delimiter = ',')]
    pub objectives: Vec<Objective>,
    /// ITC gradient variant: detached (LAVIS) or full.
    #[arg(long, value_enum, default_value = "detached", hide_possible_values = true)]
    pub itc_gradient: ItcGradient,
    /// Sample negatives with this seed when the batch has no explicit negatives (default: hardest negative).
    #[arg(long)]
    pub sample_seed: Option<u64>,
}

/// Prints the loss report as JSON.
pub fn run(args: CheckLossArgs) -> Result<ExitCode> {
    let report = dispatch(args.backend.or_flex(), args.job)?;
    println!("{report:#}");
    Ok(ExitCode::SUCCESS)
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
