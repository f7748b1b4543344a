//! The training configuration: one TOML file (optionally built on a `base` file), overridden by
//! `--set section.key=value`, validated with errors that name the key and the file, and saved
//! resolved next to every run.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::feature_cache::{CacheConfig, FeatureSource};
use crate::data::images::AugmentConfig;
use crate::data::synth::SynthConfig;
use crate::interop::pretrained::InitConfig;
use crate::kernels::backend::BackendKind;
use crate::model::vit::{Precision, VitConfig};
use crate::model::QFormerConfig;
use crate::objectives::ObjectiveConfig;
use crate::util::error::{Error, Result};

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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TextConfig {
    /// `vocab.txt` (WordPiece) or `tokenizer.json`.
    pub tokenizer: PathBuf,
    pub max_len: usize,
    pub max_words: usize,
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
    /// Global-norm gradient clipping; off when absent.
    #[serde(default)]
    pub clip_grad_norm: Option<f64>,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub backend: BackendKind,
    /// Run name under `checkpoint.dir` (default: the config file's stem).
    #[serde(default)]
    pub run_name: Option<String>,
    /// Consecutive non-finite steps tolerated (each skipped) before the run stops.
    #[serde(default = "default_bad_steps")]
    pub max_bad_steps: usize,
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
    /// The best-checkpoint metric as (uses re-ranking, recall field); `None` when unset.
    pub fn best(&self) -> Option<(bool, &str)> {
        match self.best_metric.split_once('.')? {
            ("itc", field) => Some((false, field)),
            ("itm", field) => Some((true, field)),
            _ => None,
        }
    }
}

/// Data parallelism (`[distributed]`): `train.batch_size` is the global batch, split evenly over
/// every peer of every node. One peer on one node (the default) trains on one device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistributedConfig {
    /// Peers on this node: threads that share the cores on CPU backends, one per GPU otherwise.
    pub peers: usize,
    /// GPU indices of the local peers (default `0..peers`); CPU backends ignore them.
    pub devices: Vec<usize>,
    /// Nodes (machines or processes) in the run, each with `peers` peers.
    pub nodes: usize,
    /// This node's index in `0..nodes`; node 0 writes the checkpoints, metrics and progress.
    pub node: usize,
    /// The orchestrator that `qformer orchestrator --port P` runs, e.g. `ws://10.0.0.1:3000`.
    pub orchestrator: String,
    /// This node's address as the other nodes reach it, e.g. `ws://10.0.0.2:3001`; its port is
    /// the one the node serves tensor transfers on.
    pub address: String,
    /// Seconds a peer waits for the others at a step before the run stops with an error naming
    /// the peers that did not arrive.
    pub timeout_s: u64,
}

impl Default for DistributedConfig {
    fn default() -> Self {
        Self { peers: 1, devices: Vec::new(), nodes: 1, node: 0, orchestrator: String::new(), address: String::new(), timeout_s: 600 }
    }
}

impl DistributedConfig {
    /// Peers in the whole run.
    pub fn world(&self) -> usize {
        self.peers * self.nodes
    }

    /// The port of [`DistributedConfig::address`].
    pub fn data_port(&self) -> Option<u16> {
        self.address.rsplit(':').next()?.trim_end_matches('/').parse().ok()
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

/// Reads a TOML file, merging it over the file named by its top-level `base` key (relative to it).
fn read_table(path: &Path, depth: usize) -> Result<toml::Table> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| Error::config("toml", e.to_string(), &name))?;
    let Some(base) = table.remove("base") else { return Ok(table) };
    let base = base.as_str().ok_or_else(|| Error::config("base", "must be a path string", &name))?;
    if depth > 8 {
        return Err(Error::config("base", "too many nested base files", &name));
    }
    let mut merged = read_table(&path.parent().unwrap_or(Path::new(".")).join(base), depth + 1)?;
    merge(&mut merged, table);
    Ok(merged)
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

/// Applies `section.key=value`; the value is read as TOML (number, bool, string, array) and as a
/// plain string when that fails.
fn apply_override(table: &mut toml::Table, assignment: &str) -> Result<()> {
    let bad = |msg: &str| Error::config(assignment, msg, "--set");
    let (path, raw) = assignment.split_once('=').ok_or_else(|| bad("expected section.key=value"))?;
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let keys: Vec<&str> = path.trim().split('.').collect();
    let (last, parents) = keys.split_last().ok_or_else(|| bad("empty key"))?;
    let mut node = table;
    for k in parents {
        node = node
            .entry(k.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| bad(&format!("`{k}` is not a section")))?;
    }
    node.insert(last.to_string(), value);
    Ok(())
}

/// An error about a key that a `--set` gave names the command line, not the config file.
fn blame_override(e: Error, overrides: &[String]) -> Error {
    if let Error::Config { key, message, .. } = &e {
        let set = overrides.iter().rev().find(|o| o.split_once('=').is_some_and(|(k, _)| k.trim() == key));
        if let Some(o) = set {
            return Error::config(key.as_str(), message.as_str(), format!("command line: --set {o}"));
        }
    }
    e
}

/// `section.key` named by an error at byte `offset` of a TOML text: the assignment on that line,
/// or for a missing field, the field inside the section the error points at.
fn key_at(text: &str, offset: usize, message: &str) -> String {
    let before = &text[..offset.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[line_start..].find('\n').map_or(text.len(), |i| line_start + i);
    let line = text[line_start..line_end].trim();
    let header = |l: &str| l.strip_prefix('[').and_then(|l| l.strip_suffix(']')).map(str::to_string);
    let (section, key) = match header(line) {
        Some(section) => (section, String::new()),
        None => {
            let section = before[..line_start].lines().rev().find_map(|l| header(l.trim())).unwrap_or_default();
            (section, line.split('=').next().unwrap_or("").trim().trim_matches('"').to_string())
        }
    };
    let missing = message.strip_prefix("missing field `").and_then(|m| m.split('`').next());
    let key = missing.map(str::to_string).unwrap_or(key);
    [section, key].into_iter().filter(|p| !p.is_empty()).collect::<Vec<_>>().join(".")
}

impl TrainConfig {
    /// Loads, overrides and validates a config file.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let name = path.display().to_string();
        let mut table = read_table(path, 0)?;
        for o in overrides {
            apply_override(&mut table, o)?;
        }
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

    pub fn validate(&self, source: &str) -> Result<()> {
        let err = |key: &str, msg: String| Err(Error::config(key, msg, source));
        self.model.validate(source)?;
        self.encoder.validate(source)?;
        self.init.validate(source)?;
        if self.encoder.width != self.model.encoder_hidden_size {
            return err("encoder.width", format!("must equal model.encoder_hidden_size ({})", self.model.encoder_hidden_size));
        }
        if self.encoder.precision != Precision::F32 && !self.train.backend.is_gpu() {
            return err(
                "encoder.precision",
                "half precision needs a GPU backend (train.backend = \"cuda\" or \"wgpu\"); the CPU backends run the encoder in f32".into(),
            );
        }
        let o = &self.objectives;
        if !(o.itc.enabled || o.itm.enabled || o.itg.enabled) {
            return err("objectives", "enable at least one of itc, itm, itg".into());
        }
        for (key, sw) in [("objectives.itc.weight", o.itc), ("objectives.itm.weight", o.itm), ("objectives.itg.weight", o.itg)] {
            if !(sw.weight >= 0.0 && sw.weight.is_finite()) {
                return err(key, "must be >= 0".into());
            }
        }
        if !(0.0..1.0).contains(&o.label_smoothing) {
            return err("objectives.label_smoothing", "must be in [0, 1)".into());
        }
        let p = &self.optim;
        if !(p.lr > 0.0 && p.lr.is_finite()) {
            return err("optim.lr", "must be > 0".into());
        }
        for (key, b) in [("optim.beta1", p.beta1), ("optim.beta2", p.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return err(key, "must be in [0, 1)".into());
            }
        }
        if !(p.eps > 0.0) {
            return err("optim.eps", "must be > 0".into());
        }
        if !(p.weight_decay >= 0.0) {
            return err("optim.weight_decay", "must be >= 0".into());
        }
        let s = &self.schedule;
        if !(s.warmup_lr >= 0.0 && s.min_lr >= 0.0 && s.min_lr <= p.lr) {
            return err("schedule.min_lr", "warmup_lr and min_lr must be >= 0, min_lr <= optim.lr".into());
        }
        let t = &self.train;
        if t.batch_size == 0 {
            return err("train.batch_size", "must be > 0".into());
        }
        match (t.steps, t.epochs) {
            (Some(0), _) | (_, Some(0)) => return err("train.steps", "must be > 0".into()),
            (None, None) | (Some(_), Some(_)) => return err("train.steps", "give exactly one of train.steps and train.epochs".into()),
            _ => {}
        }
        if t.grad_accum == 0 {
            return err("train.grad_accum", "must be > 0".into());
        }
        if t.clip_grad_norm.is_some_and(|c| !(c > 0.0)) {
            return err("train.clip_grad_norm", "must be > 0".into());
        }
        if self.text.max_len < 2 || self.text.max_len > self.model.max_position_embeddings {
            return err("text.max_len", format!("must be in 2..={}", self.model.max_position_embeddings));
        }
        if self.text.max_words == 0 {
            return err("text.max_words", "must be > 0".into());
        }
        if !(0.0..=1.0).contains(&self.data.max_skip_fraction) {
            return err("data.max_skip_fraction", "must be in [0, 1]".into());
        }
        if !(0.0 < self.data.augment.crop_scale_min && self.data.augment.crop_scale_min <= 1.0) {
            return err("data.augment.crop_scale_min", "must be in (0, 1]".into());
        }
        if self.data.prefetch == 0 {
            return err("data.prefetch", "must be > 0".into());
        }
        if self.data.features == FeatureSource::Cache && self.data.cache.is_none() {
            return err("data.features", "\"cache\" needs a [data.cache] section (dir, dtype, views)".into());
        }
        if let Some(c) = &self.data.cache {
            if c.views > 0 && !self.data.augment.enabled {
                return err(
                    "data.cache.views",
                    "augmented views need data.augment.enabled = true (views = 0 stores the eval transform)".into(),
                );
            }
        }
        if self.checkpoint.every == 0 || self.checkpoint.keep == 0 {
            return err("checkpoint.every", "checkpoint.every and checkpoint.keep must be > 0".into());
        }
        let e = &self.eval;
        if e.rerank_every > 0 && (e.every == 0 || !e.rerank_every.is_multiple_of(e.every)) {
            return err("eval.rerank_every", "must be a multiple of eval.every (> 0)".into());
        }
        if e.k_test == 0 {
            return err("eval.k_test", "must be > 0".into());
        }
        if e.chunk == 0 {
            return err("eval.chunk", "must be > 0".into());
        }
        if !e.best_metric.is_empty() {
            let ok = match e.best() {
                Some((rerank, field)) => crate::eval::retrieval::Recall::default().get(field).is_some() && (!rerank || e.rerank_every > 0),
                None => false,
            };
            if !ok || self.data.eval.is_none() {
                return err("eval.best_metric", "expected itc.<field> or itm.<field> (itm needs eval.rerank_every), field one of i2t_r1, i2t_r5, i2t_r10, t2i_r1, t2i_r5, t2i_r10, i2t_mean, t2i_mean, mean; and data.eval set".into());
            }
        }
        if self.log.every == 0 {
            return err("log.every", "must be > 0".into());
        }
        if !(self.log.itm_stall_margin >= 0.0 && self.log.itm_stall_margin.is_finite()) {
            return err("log.itm_stall_margin", "must be >= 0".into());
        }
        let d = &self.distributed;
        if d.peers == 0 || d.nodes == 0 {
            return err("distributed.peers", "distributed.peers and distributed.nodes must be > 0".into());
        }
        if !d.devices.is_empty() && d.devices.len() != d.peers {
            return err("distributed.devices", format!("gives {} devices for {} peers", d.devices.len(), d.peers));
        }
        if d.node >= d.nodes {
            return err("distributed.node", format!("must be in 0..{}", d.nodes));
        }
        if d.nodes > 1 && d.orchestrator.is_empty() {
            return err("distributed.orchestrator", "several nodes need the orchestrator's address, e.g. \"ws://10.0.0.1:3000\"".into());
        }
        if d.nodes > 1 && d.data_port().is_none() {
            return err("distributed.address", "several nodes need this node's address with a port, e.g. \"ws://10.0.0.2:3001\"".into());
        }
        if d.timeout_s == 0 {
            return err("distributed.timeout_s", "must be > 0".into());
        }
        if !t.batch_size.is_multiple_of(d.world()) {
            return err(
                "train.batch_size",
                format!("the global batch ({}) must split evenly over {} peers ({} nodes × {})", t.batch_size, d.world(), d.nodes, d.peers),
            );
        }
        if d.world() > 1 && o.itc_gradient == crate::objectives::ItcGradient::Full {
            return err("objectives.itc_gradient", "\"full\" needs one peer; across peers ITC is \"detached\" (LAVIS)".into());
        }
        Ok(())
    }
}
