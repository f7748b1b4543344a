//! The training configuration: one TOML file (optionally built on a `base` file), overridden by
//! `--set section.key=value`, validated with errors that name the key and the file, and saved
//! resolved next to every run. Each section checks itself ([`sections`], [`distributed`]); the
//! rules here are the ones that span sections.

mod distributed;
mod sections;
mod toml_layers;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use distributed::DistributedConfig;
pub use sections::{
    CheckpointConfig, DataConfig, EvalConfig, LogConfig, OptimConfig, ScheduleConfig, ScheduleKind, TextConfig, TrainSection,
};

use crate::interop::pretrained::InitConfig;
use crate::model::vit::VitConfig;
use crate::model::QFormerConfig;
use crate::objectives::ObjectiveConfig;
use crate::util::error::{Error, Result};
use toml_layers::{apply_override, blame_override, key_at, read_table, replace_run_length, resolve_override_paths};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub model: QFormerConfig,
    pub encoder: VitConfig,
    /// Starting weights of a fresh run (BERT or a whole Q-Former); ignored on resume.
    #[serde(default)]
    pub init: InitConfig,
    pub data: DataConfig,
    #[serde(default)]
    pub text: TextConfig,
    #[serde(default)]
    pub objectives: ObjectiveConfig,
    #[serde(default)]
    pub optim: OptimConfig,
    #[serde(default)]
    pub schedule: ScheduleConfig,
    pub train: TrainSection,
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub eval: EvalConfig,
    #[serde(default)]
    pub distributed: DistributedConfig,
}

impl TrainConfig {
    /// Loads, overrides and validates a config file.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let name = path.display().to_string();
        let mut table = read_table(path, 0)?;
        for o in overrides {
            apply_override(&mut table, o)?;
        }
        replace_run_length(&mut table, overrides);
        resolve_override_paths(&mut table, overrides)?;
        // Parsed back from text so that an error carries a position, which names the key.
        let merged = toml::to_string(&table).map_err(|e| Error::config("toml", e.to_string(), &name))?;
        let blame = |e: Error| blame_override(e, overrides);
        let cfg: Self = toml::from_str(&merged).map_err(|e| {
            let key = e.span().map_or_else(|| "config".to_string(), |s| key_at(&merged, s.start, e.message()));
            blame(Error::config(key, e.message().to_string(), &name))
        })?;
        cfg.validate(&name).map_err(blame)?;
        Ok(cfg)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("config serialises")
    }

    /// Every section's own rules, then the ones between sections.
    pub fn validate(&self, source: &str) -> Result<()> {
        self.model.validate(source)?;
        self.encoder.validate(source)?;
        self.init.validate(source)?;
        self.data.validate(source)?;
        self.text.validate(source)?;
        self.objectives.validate(self.distributed.world(), source)?;
        self.optim.validate(source)?;
        self.train.validate(source)?;
        self.checkpoint.validate(source)?;
        self.log.validate(source)?;
        self.eval.validate(source)?;
        self.distributed.validate(source)?;
        self.validate_across(source)
    }

    fn validate_across(&self, source: &str) -> Result<()> {
        let err = |key: &str, msg: String| Err(Error::config(key, msg, source));
        if self.encoder.width != self.model.encoder_hidden_size {
            return err("encoder.width", format!("must equal model.encoder_hidden_size ({})", self.model.encoder_hidden_size));
        }
        for (key, precision) in [("encoder.precision", self.encoder.precision), ("train.precision", self.train.precision)] {
            if let Some(why) = precision.refusal(self.train.backend) {
                return err(key, format!("{why} (train.backend = {:?})", self.train.backend));
            }
        }
        let s = &self.schedule;
        if !(s.warmup_lr >= 0.0 && s.min_lr >= 0.0 && s.min_lr <= self.optim.lr) {
            return err("schedule.min_lr", "warmup_lr and min_lr must be >= 0, min_lr <= optim.lr".into());
        }
        if self.text.max_len < 2 || self.text.max_len > self.model.max_position_embeddings {
            return err("text.max_len", format!("must be in 2..={}", self.model.max_position_embeddings));
        }
        let best_usable = self.eval.best_metric.is_empty() || (self.eval.best_metric_known() && self.data.eval.is_some());
        if !best_usable {
            return err("eval.best_metric", "expected itc.<field> or itm.<field> (itm needs eval.rerank_every), field one of i2t_r1, i2t_r5, i2t_r10, t2i_r1, t2i_r5, t2i_r10, i2t_mean, t2i_mean, mean; and data.eval set".into());
        }
        let (t, d) = (&self.train, &self.distributed);
        if !t.batch_size.is_multiple_of(d.world()) {
            return err(
                "train.batch_size",
                format!("the global batch ({}) must split evenly over {} peers ({} nodes × {})", t.batch_size, d.world(), d.nodes, d.peers),
            );
        }
        Ok(())
    }
}
