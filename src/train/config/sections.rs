//! The sections of a training config, each with the rules that concern it alone; the rules that
//! span sections are in [`super::TrainConfig::validate`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::data::feature_cache::{CacheConfig, FeatureSource};
use crate::data::images::AugmentConfig;
use crate::data::synth::SynthConfig;
use crate::eval::retrieval::Recall;
use crate::kernels::backend::BackendKind;
use crate::model::precision::Precision;
use crate::util::error::{Error, Result};

/// An error about `key` of the config named `source`.
pub(super) fn invalid(key: &str, message: impl Into<String>, source: &str) -> Error {
    Error::config(key, message, source)
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Training annotations: `.json`, `.jsonl`, `.csv`, `.tsv`, or a `.tar` shard / folder of shards.
    pub train: PathBuf,
    /// Held-out annotations for retrieval during training.
    #[serde(default)]
    pub eval: Option<PathBuf>,
    /// Folder that image paths are relative to (default: the annotation file's folder).
    #[serde(default)]
    pub image_root: Option<PathBuf>,
    /// Generate the synthetic shapes set here when `train` does not exist.
    #[serde(default)]
    pub synth: Option<SynthConfig>,
    /// The run stops when more than this fraction of records had to be skipped.
    #[serde(default = "default_skip")]
    pub max_skip_fraction: f64,
    /// Decoded images larger than this are refused (decompression bombs).
    #[serde(default = "default_max_pixels")]
    pub max_pixels: u64,
    /// Batches prepared ahead of the step on background threads.
    #[serde(default = "default_prefetch")]
    pub prefetch: usize,
    /// Training augmentation (random resized crop, flip).
    #[serde(default)]
    pub augment: AugmentConfig,
    /// `images` (run the frozen encoder every step) or `cache` (read `[data.cache]`).
    #[serde(default)]
    pub features: FeatureSource,
    /// The frozen-feature cache that `qformer cache-features` builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheConfig>,
}

impl DataConfig {
    pub fn validate(&self, source: &str) -> Result<()> {
        let err = |key: &str, msg: &str| Err(invalid(key, msg, source));
        if !(0.0..=1.0).contains(&self.max_skip_fraction) {
            return err("data.max_skip_fraction", "must be in [0, 1]");
        }
        if !(0.0 < self.augment.crop_scale_min && self.augment.crop_scale_min <= 1.0) {
            return err("data.augment.crop_scale_min", "must be in (0, 1]");
        }
        if self.prefetch == 0 {
            return err("data.prefetch", "must be > 0");
        }
        if let Some(s) = &self.synth {
            s.validate(source)?;
        }
        if self.features == FeatureSource::Cache && self.cache.is_none() {
            return err("data.features", "\"cache\" needs a [data.cache] section (dir, dtype, views)");
        }
        if self.cache.as_ref().is_some_and(|c| c.views > 0) && !self.augment.enabled {
            return err("data.cache.views", "augmented views need data.augment.enabled = true (views = 0 stores the eval transform)");
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TextConfig {
    /// `vocab.txt` (WordPiece) or `tokenizer.json`.
    pub tokenizer: PathBuf,
    pub max_len: usize,
    pub max_words: usize,
}

impl TextConfig {
    pub fn validate(&self, source: &str) -> Result<()> {
        if self.max_words == 0 {
            return Err(invalid("text.max_words", "must be > 0", source));
        }
        Ok(())
    }
}

impl Default for TextConfig {
    fn default() -> Self {
        Self { tokenizer: PathBuf::from("data/bert-base-uncased-vocab.txt"), max_len: 32, max_words: 50 }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl OptimConfig {
    pub fn validate(&self, source: &str) -> Result<()> {
        let err = |key: &str, msg: &str| Err(invalid(key, msg, source));
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return err("optim.lr", "must be > 0");
        }
        for (key, b) in [("optim.beta1", self.beta1), ("optim.beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return err(key, "must be in [0, 1)");
            }
        }
        if !(self.eps > 0.0) {
            return err("optim.eps", "must be > 0");
        }
        if !(self.weight_decay >= 0.0) {
            return err("optim.weight_decay", "must be >= 0");
        }
        Ok(())
    }
}

impl Default for OptimConfig {
    /// LAVIS stage one: AdamW (0.9, 0.999), eps 1e-8, wd 0.05, peak lr 1e-4.
    fn default() -> Self {
        Self { lr: 1e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.05 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// Linear warm-up from `warmup_lr`, then per-step cosine to `min_lr` at the last step.
    Cosine,
    /// LAVIS: warm-up within epoch 0, then one cosine value per epoch (constant within it).
    Staircase,
    /// Warm-up, then constant.
    Constant,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    pub kind: ScheduleKind,
    pub warmup_steps: u64,
    pub warmup_lr: f64,
    pub min_lr: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self { kind: ScheduleKind::Cosine, warmup_steps: 0, warmup_lr: 1e-6, min_lr: 1e-5 }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Samples per optimizer micro-step (the ITC/ITM negative pool).
    pub batch_size: usize,
    /// Optimizer steps; or give `epochs` instead.
    #[serde(default)]
    pub steps: Option<u64>,
    #[serde(default)]
    pub epochs: Option<u64>,
    /// Micro-batches summed into one optimizer step. It does not enlarge the negative pool.
    #[serde(default = "one")]
    pub grad_accum: usize,
    /// Global-norm gradient clipping; off when absent or 0 (so a command line can switch off
    /// what a file sets).
    #[serde(default)]
    pub clip_grad_norm: Option<f64>,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub backend: BackendKind,
    /// Precision of the Q-Former's matmuls (f32 master weights either way); half needs a GPU
    /// backend.
    #[serde(default)]
    pub precision: Precision,
    /// Run name under `checkpoint.dir` (default: the config file's stem).
    #[serde(default)]
    pub run_name: Option<String>,
    /// Consecutive non-finite steps tolerated (each skipped) before the run stops.
    #[serde(default = "default_bad_steps")]
    pub max_bad_steps: usize,
}

impl TrainSection {
    /// The clipping threshold, if clipping is on.
    pub fn clip(&self) -> Option<f64> {
        self.clip_grad_norm.filter(|c| *c > 0.0)
    }

    pub fn validate(&self, source: &str) -> Result<()> {
        let err = |key: &str, msg: &str| Err(invalid(key, msg, source));
        if self.batch_size == 0 {
            return err("train.batch_size", "must be > 0");
        }
        match (self.steps, self.epochs) {
            (Some(0), _) => return err("train.steps", "must be > 0"),
            (_, Some(0)) => return err("train.epochs", "must be > 0"),
            (None, None) | (Some(_), Some(_)) => return err("train.steps", "give exactly one of train.steps and train.epochs"),
            _ => {}
        }
        if self.grad_accum == 0 {
            return err("train.grad_accum", "must be > 0");
        }
        if self.clip_grad_norm.is_some_and(|c| !(c >= 0.0 && c.is_finite())) {
            return err("train.clip_grad_norm", "must be >= 0 (0 switches clipping off)");
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    pub dir: PathBuf,
    /// Steps between checkpoints (one is always written at the end).
    pub every: u64,
    /// Checkpoints kept.
    pub keep: usize,
}

impl CheckpointConfig {
    pub fn validate(&self, source: &str) -> Result<()> {
        if self.every == 0 || self.keep == 0 {
            return Err(invalid("checkpoint.every", "checkpoint.every and checkpoint.keep must be > 0", source));
        }
        Ok(())
    }
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self { dir: PathBuf::from("checkpoints"), every: 100, keep: 3 }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Steps between plain progress lines when stderr is not a terminal.
    pub every: u64,
    /// Steps in a row with ITM within `itm_stall_margin` of its constant answer's loss before the
    /// run warns (once) that ITM is not learning; 0: never.
    pub itm_stall_steps: u64,
    pub itm_stall_margin: f64,
}

impl LogConfig {
    pub fn validate(&self, source: &str) -> Result<()> {
        if self.every == 0 {
            return Err(invalid("log.every", "must be > 0", source));
        }
        if !(self.itm_stall_margin >= 0.0 && self.itm_stall_margin.is_finite()) {
            return Err(invalid("log.itm_stall_margin", "must be >= 0", source));
        }
        Ok(())
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { every: 10, itm_stall_steps: 100, itm_stall_margin: 0.01 }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Steps between held-out ITC retrieval evaluations (0: only at the end).
    pub every: u64,
    /// Held-out images used (all when 0).
    pub max_images: usize,
    /// Steps between full evaluations: ITM re-ranking, ITM accuracy, ITG perplexity (0: never
    /// during training; `qformer eval` does it afterwards). A multiple of `every`.
    pub rerank_every: u64,
    /// Candidates ITM re-ranks per query.
    pub k_test: usize,
    /// Keep the checkpoint with the best value of this metric in `<run>/best/`: `itc.X` or
    /// `itm.X` (the latter needs `rerank_every`), X one of `i2t_r1` ... `t2i_r10`, `i2t_mean`,
    /// `t2i_mean`, `mean`. Empty: no best checkpoint.
    pub best_metric: String,
    /// Images (captions, ITM pairs) per forward during evaluation: what bounds its device memory,
    /// whatever the held-out set's size.
    pub chunk: usize,
    /// Seeds the fixed image shuffle of the ITG grounding gap (the same pairing on every run).
    pub seed: u64,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self { every: 0, max_images: 0, rerank_every: 0, k_test: 16, best_metric: String::new(), chunk: 64, seed: 0 }
    }
}

impl EvalConfig {
    pub fn validate(&self, source: &str) -> Result<()> {
        let err = |key: &str, msg: &str| Err(invalid(key, msg, source));
        if self.rerank_every > 0 && (self.every == 0 || !self.rerank_every.is_multiple_of(self.every)) {
            return err("eval.rerank_every", "must be a multiple of eval.every (> 0)");
        }
        if self.k_test == 0 {
            return err("eval.k_test", "must be > 0");
        }
        if self.chunk == 0 {
            return err("eval.chunk", "must be > 0");
        }
        Ok(())
    }

    /// Whether `best_metric` names a metric evaluation computes: `itc.X`, or `itm.X` with
    /// re-ranking on.
    pub fn best_metric_known(&self) -> bool {
        match self.best() {
            Some((rerank, field)) => Recall::default().get(field).is_some() && (!rerank || self.rerank_every > 0),
            None => false,
        }
    }

    /// The best-checkpoint metric as (uses re-ranking, recall field); `None` when unset.
    pub fn best(&self) -> Option<(bool, &str)> {
        match self.best_metric.split_once('.')? {
            ("itc", field) => Some((false, field)),
            ("itm", field) => Some((true, field)),
            _ => None,
        }
    }
}

fn default_skip() -> f64 {
    0.01
}
fn default_max_pixels() -> u64 {
    64 * 1024 * 1024
}
fn default_prefetch() -> usize {
    2
}
fn one() -> usize {
    1
}
fn default_bad_steps() -> usize {
    5
}
