//! A Q-Former with its frozen encoder and config, ready for inference or export: from a training
//! checkpoint (verified), or built fresh from a config (its `[init]` weights, else random).

use std::path::{Path, PathBuf};

use crate::interop::pretrained::{self, InitConfig};
use crate::interop::vit::build_encoder;
use crate::kernels::Kernels;
use crate::model::vit::Vit;
use crate::model::QFormer;
use crate::train::checkpoint;
use crate::train::config::TrainConfig;
use crate::util::error::{Error, Result};
use crate::util::seed::mix;

/// Seed stream of a fresh model's random initialisation.
const INIT_STREAM: u64 = 0x1417;

/// A fresh model for `cfg`: random from (`train.seed`, init stream), then `[init]` applied.
/// `init.weights` may name a run, step or export folder ([`checkpoint::weights_file`]). Returns
/// log lines about what was loaded.
pub fn fresh_model<B: Kernels>(cfg: &TrainConfig, device: &B::Device) -> Result<(QFormer<B>, Vec<String>)> {
    let mut init = cfg.init.clone();
    init.weights = init.weights.as_deref().map(checkpoint::weights_file).transpose()?;
    B::seed(device, mix(cfg.train.seed, INIT_STREAM));
    let (model, lines) = pretrained::apply(QFormer::new(&cfg.model, device), &cfg.model, &init, device)?;
    Ok((model.with_precision(cfg.train.precision), lines))
}

pub struct Trained<B: Kernels> {
    pub cfg: TrainConfig,
    pub model: QFormer<B>,
    pub vit: Vit<B>,
    /// What was loaded from where besides the checkpoint itself ([`Trained::checkpoint`]), for the log.
    pub messages: Vec<String>,
    /// The checkpoint folder and its step, when loaded from one.
    pub checkpoint: Option<(PathBuf, u64)>,
}

impl<B: Kernels> Trained<B> {
    /// From a run folder (its latest checkpoint) or a step folder; checksums are verified.
    pub fn from_checkpoint(path: &Path, device: &B::Device) -> Result<Self> {
        let loaded = checkpoint::load::<B>(path, None, device)?;
        let mut messages = Vec::new();
        let (vit, report) = build_encoder(&loaded.cfg.encoder, device)?;
        messages.extend(report.map(|r| r.summary()));
        Ok(Self { cfg: loaded.cfg, model: loaded.model, vit, messages, checkpoint: Some((loaded.dir, loaded.state.step)) })
    }

    /// A checkpoint (its own config; `config` must be `None`), or weights of any kind
    /// `[init] weights` takes with `config` for the rest.
    pub fn load(path: &Path, config: Option<TrainConfig>, device: &B::Device) -> Result<Self> {
        match (checkpoint::resolve(path).is_ok(), config) {
            (true, None) => Self::from_checkpoint(path, device),
            (true, Some(_)) => Err(Error::input("--config", format!("{} is a checkpoint with a config of its own", path.display()))),
            (false, Some(mut cfg)) => {
                cfg.init = InitConfig { weights: Some(path.to_path_buf()), ..InitConfig::default() };
                Self::from_config(cfg, device)
            }
            (false, None) => Err(Error::file(
                path,
                "not a qformer checkpoint: for other weights (an export folder, a LAVIS .pth) pass --config with the model, encoder, tokenizer and data",
            )),
        }
    }

    /// A model as a fresh run of `cfg` would start it.
    pub fn from_config(cfg: TrainConfig, device: &B::Device) -> Result<Self> {
        if cfg.init.bert.is_none() && cfg.init.weights.is_none() {
            return Err(Error::config("init.weights", "the config names no weights (set init.weights, or pass a checkpoint)", "config"));
        }
        let (model, mut messages) = fresh_model(&cfg, device)?;
        let (vit, report) = build_encoder(&cfg.encoder, device)?;
        messages.extend(report.map(|r| r.summary()));
        Ok(Self { cfg, model, vit, messages, checkpoint: None })
    }
}
