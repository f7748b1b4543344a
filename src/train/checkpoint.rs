//! Checkpoints: `checkpoints/<run>/step-XXXXXXXX/` with the trainable weights (HF names), the
//! optimizer moments, the resolved config and `state.json` (step, data position, counters and a
//! SHA-256 of every other file). A checkpoint is built in a temporary folder and renamed into
//! place, then `latest` is replaced atomically, so an interrupted write leaves the previous one
//! intact. Loading verifies the checksum of every file it reads and that the config matches before
//! anything is used.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::interop::safetensors_io::{write_safetensors, SafetensorsFile};
use crate::interop::weights::{load_weights, save_weights};
use crate::kernels::{Kernels, TrainBackend};
use crate::model::QFormer;
use crate::train::config::TrainConfig;
use crate::train::optim::AdamW;
use crate::util::error::{Error, Result};
use crate::util::fs::{sync_dir, temp_path, write_atomic};

pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const CONFIG_FILE: &str = "config.toml";
pub const STATE_FILE: &str = "state.json";
/// The per-step log in a run folder.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// Folder of the best checkpoint by `eval.best_metric`.
pub const BEST: &str = "best";
const LATEST: &str = "latest";

/// Where training stands. Every random choice is derived from `(seed, step)` or `(seed, data
/// position)`, so these numbers are the whole RNG state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: u64,
    /// Next position in the data stream.
    pub data_position: u64,
    pub samples_seen: u64,
    pub samples_skipped: u64,
    pub bad_steps_total: u64,
    pub seed: u64,
    /// SHA-256 of each other file of the checkpoint.
    #[serde(default)]
    pub checksums: BTreeMap<String, String>,
    /// Best value so far of `eval.best_metric`, and its step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best: Option<(u64, f64)>,
    /// The training annotations the run reads, by content: a resume checks these, not the path,
    /// so a data set that moved still resumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataIdentity>,
}

/// An annotation file by content: its SHA-256 and the number of pairs read from it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataIdentity {
    pub sha256: String,
    pub samples: u64,
}

impl DataIdentity {
    pub fn of(path: &Path, samples: u64) -> Result<Self> {
        Ok(Self { sha256: sha256(path)?, samples })
    }

    /// Refuses to resume a run on other data than it was trained on (`data.train` names the file).
    pub fn check_resume(&self, saved: Option<&DataIdentity>, path: &Path) -> Result<()> {
        match saved {
            Some(saved) if saved != self => Err(Error::config(
                "data.train",
                format!(
                    "{} is not the data this run was trained on ({} pairs, sha256 {}; the checkpoint's: {} pairs, sha256 {})",
                    path.display(),
                    self.samples,
                    self.sha256,
                    saved.samples,
                    saved.sha256
                ),
                "config",
            )),
            _ => Ok(()),
        }
    }
}

fn sha256(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect())
}

fn step_dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// Writes a checkpoint. `write_files` fills the temporary folder with the model and optimizer
/// files; this adds the config and the state with checksums, publishes it as the step's folder,
/// points `latest` at it and prunes to the last `keep`.
pub fn save(
    run_dir: &Path,
    cfg: &TrainConfig,
    state: &TrainState,
    keep: usize,
    write_files: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let dir = write_checkpoint(run_dir, &step_dir_name(state.step), cfg, state, write_files)?;
    write_atomic(&run_dir.join(LATEST), step_dir_name(state.step).as_bytes())?;
    prune(run_dir, keep)?;
    Ok(dir)
}

/// The files a trainer's checkpoint holds besides the config and state: the trainable weights
/// (HF names) and the optimizer's moments with its step count, for [`save`] and [`save_best`].
pub fn trainer_files<'a, B: TrainBackend>(
    model: &'a QFormer<B>,
    cfg: &'a TrainConfig,
    optim: &'a AdamW<B>,
) -> impl Fn(&Path) -> Result<()> + 'a {
    move |dir| {
        save_weights(model, &cfg.model, &dir.join(MODEL_FILE))?;
        let meta = std::collections::HashMap::from([("step".to_string(), optim.step.to_string())]);
        write_safetensors(&dir.join(OPTIMIZER_FILE), optim.state_tensors(), meta)
    }
}

/// A verified checkpoint's model, config and state.
pub struct Loaded<B: Kernels> {
    /// The step folder.
    pub dir: PathBuf,
    pub cfg: TrainConfig,
    pub state: TrainState,
    pub model: QFormer<B>,
}

/// Loads the checkpoint `path` names ([`resolve`]) after verifying the files it reads (the model
/// and config; the optimizer is checked by [`load_optimizer`]) and that its config matches `cfg`,
/// or its own config when `cfg` is `None` (evaluation, export).
pub fn load<B: Kernels>(path: &Path, cfg: Option<&TrainConfig>, device: &B::Device) -> Result<Loaded<B>> {
    let dir = resolve(path)?;
    let state = verify_files(&dir, &[MODEL_FILE, CONFIG_FILE])?;
    let cfg = match cfg {
        Some(cfg) => cfg.clone(),
        None => TrainConfig::load(&dir.join(CONFIG_FILE), &[])?,
    };
    check_config(&dir, &cfg)?;
    let (model, _) = load_weights::<B>(&dir.join(MODEL_FILE), Some(&cfg.model), device)?;
    let model = model.with_precision(cfg.train.precision);
    Ok(Loaded { dir, cfg, state, model })
}

/// The optimizer of a loaded checkpoint (what a resume needs beyond the model), verified first.
pub fn load_optimizer<B: TrainBackend>(loaded: &Loaded<B>) -> Result<AdamW<B>> {
    check_sums(&loaded.dir, &loaded.state, &[OPTIMIZER_FILE])?;
    let mut optim = AdamW::new(&loaded.cfg.optim, &loaded.model);
    let file = SafetensorsFile::open(&loaded.dir.join(OPTIMIZER_FILE))?;
    let steps =
        file.metadata()?.get("step").and_then(|s| s.parse().ok()).ok_or_else(|| Error::file(&file.path, "no `step` in the metadata"))?;
    optim.load_state(steps, |name, n| {
        let (shape, v) = file.f32(name)?;
        if shape != [n] {
            return Err(Error::file(&file.path, format!("`{name}` has shape {shape:?}, expected [{n}]")));
        }
        Ok(v)
    })?;
    Ok(optim)
}

/// The Q-Former weights file that `path` names for `[init] weights` and friends: a weights file
/// (one inside a checkpoint folder is verified against its checksum), a run or step folder (its
/// verified `model.safetensors`), or a folder holding a `model.safetensors` (an export).
pub fn weights_file(path: &Path) -> Result<PathBuf> {
    if path.is_dir() {
        if let Ok(dir) = resolve(path) {
            verify_files(&dir, &[MODEL_FILE])?;
            return Ok(dir.join(MODEL_FILE));
        }
        let file = path.join(MODEL_FILE);
        if !file.exists() {
            return Err(Error::file(path, "holds no checkpoint (state.json or latest) and no model.safetensors"));
        }
        return Ok(file);
    }
    let parent = path.parent().unwrap_or(Path::new("."));
    if path.file_name().is_some_and(|n| n == MODEL_FILE) && parent.join(STATE_FILE).exists() {
        verify_files(parent, &[MODEL_FILE])?;
    }
    Ok(path.to_path_buf())
}

/// Writes the best checkpoint so far to `<run>/best/` (a full, resumable checkpoint).
pub fn save_best(run_dir: &Path, cfg: &TrainConfig, state: &TrainState, write_files: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    write_checkpoint(run_dir, BEST, cfg, state, write_files)
}

/// Fills `.<name>.tmp-<pid>` and renames it to `name`: a reader sees the old folder or the new one.
fn write_checkpoint(
    run_dir: &Path,
    name: &str,
    cfg: &TrainConfig,
    state: &TrainState,
    write_files: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let final_dir = run_dir.join(name);
    let tmp = temp_path(&final_dir);
    let io = |p: &Path, e| Error::io(p, e);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    let result = (|| {
        write_files(&tmp)?;
        std::fs::write(tmp.join(CONFIG_FILE), cfg.to_toml()).map_err(|e| io(&tmp.join(CONFIG_FILE), e))?;
        let mut state = state.clone();
        for f in [MODEL_FILE, OPTIMIZER_FILE, CONFIG_FILE] {
            state.checksums.insert(f.to_string(), sha256(&tmp.join(f))?);
        }
        let state_path = tmp.join(STATE_FILE);
        write_atomic(&state_path, serde_json::to_string_pretty(&state).expect("state json").as_bytes())?;
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir).map_err(|e| io(&final_dir, e))?;
        }
        std::fs::rename(&tmp, &final_dir).map_err(|e| io(&final_dir, e))?;
        sync_dir(run_dir)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    Ok(final_dir)
}

/// What of a run a folder holds: its checkpoints, `latest`, `best/` and `metrics.jsonl`, each
/// named (empty for a new folder).
pub fn run_contents(run_dir: &Path) -> Result<Vec<String>> {
    let mut steps = 0;
    let mut named = Vec::new();
    for entry in std::fs::read_dir(run_dir).map_err(|e| Error::io(run_dir, e))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("step-") {
            steps += 1;
        } else if [LATEST, BEST, METRICS_FILE].contains(&name.as_str()) {
            named.push(name);
        }
    }
    if steps > 0 {
        named.insert(0, format!("{steps} checkpoint(s)"));
    }
    Ok(named)
}

/// Removes a previous run from its folder (`--overwrite`): checkpoints, `latest`, `best/`, the
/// metrics log and the config. Anything else in the folder is left alone.
pub fn clear_run(run_dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(run_dir).map_err(|e| Error::io(run_dir, e))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("step-") || [LATEST, BEST, METRICS_FILE, CONFIG_FILE].contains(&name.as_str()) {
            let path = entry.path();
            let result = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            result.map_err(|e| Error::io(&path, e))?;
        }
    }
    sync_dir(run_dir)
}

/// Removes what an interrupted write left behind in a run folder (`.step-*.tmp-PID`,
/// `.best.tmp-PID`, `.latest.tmp-PID`, and `latest.tmp-PID` from earlier builds): published
/// checkpoints are never touched.
pub fn clean_stale(run_dir: &Path) -> Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(run_dir).map_err(|e| Error::io(run_dir, e))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.contains(".tmp-") {
            continue;
        }
        let path = entry.path();
        let result = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        result.map_err(|e| Error::io(&path, e))?;
        removed += 1;
    }
    Ok(removed)
}

/// Step folders of a run, oldest first.
pub fn list(run_dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut steps: Vec<(u64, PathBuf)> = std::fs::read_dir(run_dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("step-").and_then(|n| n.parse().ok()).map(|n| (n, e.path()))
        })
        .collect();
    steps.sort();
    steps
}

fn prune(run_dir: &Path, keep: usize) -> Result<()> {
    let steps = list(run_dir);
    for (_, dir) in steps.iter().take(steps.len().saturating_sub(keep)) {
        std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    Ok(())
}

/// The checkpoint folder meant by `path`: a step folder itself, or a run folder (its `latest`).
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.join(STATE_FILE).exists() {
        return Ok(path.to_path_buf());
    }
    let latest = path.join(LATEST);
    let name = std::fs::read_to_string(&latest).map_err(|_| Error::file(path, "no checkpoint here (neither state.json nor latest)"))?;
    let dir = path.join(name.trim());
    if !dir.join(STATE_FILE).exists() {
        return Err(Error::file(&latest, format!("points to {}, which is missing", dir.display())));
    }
    Ok(dir)
}

/// Config keys that may change when a run resumes: extending it, how often it logs, starting
/// weights (they only matter to a fresh run), `distributed` (the same global batch on another
/// number of peers continues the same run), and where the data lies (the training data is judged
/// by content, [`DataIdentity`]).
const RESUMABLE_CHANGES: [&str; 13] = [
    "train.steps",
    // Weights and optimizer state are f32 whatever precision the products run in.
    "train.precision",
    "train.epochs",
    "train.run_name",
    "checkpoint",
    "log",
    "eval",
    "data.prefetch",
    "init",
    "distributed",
    "data.train",
    "data.eval",
    "data.image_root",
];

fn flatten(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// Reads a checkpoint's state and checks `files` against the checksums it records.
pub fn verify_files(dir: &Path, files: &[&str]) -> Result<TrainState> {
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
    let state: TrainState = serde_json::from_str(&text).map_err(|e| Error::file(&state_path, format!("corrupt state: {e}")))?;
    check_sums(dir, &state, files)?;
    Ok(state)
}

fn check_sums(dir: &Path, state: &TrainState, files: &[&str]) -> Result<()> {
    for f in files {
        let want = state.checksums.get(*f).ok_or_else(|| Error::file(dir.join(STATE_FILE), format!("no checksum for {f}")))?;
        let path = dir.join(f);
        if !path.exists() {
            return Err(Error::file(&path, "missing from the checkpoint"));
        }
        if &sha256(&path)? != want {
            return Err(Error::file(&path, "checksum mismatch: the file was altered or damaged"));
        }
    }
    Ok(())
}

/// The newest checkpoint of a run whose every file verifies, and each newer one passed over with
/// the reason (for `--resume auto`, and to point a refused `--resume latest` at it).
pub fn newest_intact(run_dir: &Path) -> (Option<PathBuf>, Vec<String>) {
    let mut skipped = Vec::new();
    for (_, dir) in list(run_dir).into_iter().rev() {
        match verify_files(&dir, &[MODEL_FILE, OPTIMIZER_FILE, CONFIG_FILE]) {
            Ok(_) => return (Some(dir), skipped),
            Err(e) => skipped.push(e.to_string()),
        }
    }
    (None, skipped)
}

/// Verifies every file of a checkpoint folder and its config against `cfg`; returns its state.
pub fn verify(dir: &Path, cfg: &TrainConfig) -> Result<TrainState> {
    let state = verify_files(dir, &[MODEL_FILE, OPTIMIZER_FILE, CONFIG_FILE])?;
    check_config(dir, cfg)?;
    Ok(state)
}

/// Refuses, naming each key, a checkpoint whose config differs from `cfg` in anything but
/// [`RESUMABLE_CHANGES`].
fn check_config(dir: &Path, cfg: &TrainConfig) -> Result<()> {
    let saved_text = std::fs::read_to_string(dir.join(CONFIG_FILE)).map_err(|e| Error::io(dir.join(CONFIG_FILE), e))?;
    let saved: toml::Value = toml::from_str(&saved_text).map_err(|e| Error::file(dir.join(CONFIG_FILE), e.to_string()))?;
    let current: toml::Value = toml::from_str(&cfg.to_toml()).expect("config round-trips");
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    flatten("", &saved, &mut a);
    flatten("", &current, &mut b);
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let differing: Vec<String> = keys
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .filter(|k| !RESUMABLE_CHANGES.iter().any(|r| k.as_str() == *r || k.starts_with(&format!("{r}."))))
        .map(|k| {
            format!("{k} (checkpoint {}, config {})", a.get(k).map_or("unset", String::as_str), b.get(k).map_or("unset", String::as_str))
        })
        .collect();
    if !differing.is_empty() {
        return Err(Error::file(dir, format!("checkpoint was made with a different config: {}", differing.join("; "))));
    }
    Ok(())
}
