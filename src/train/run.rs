//! A training run, readable top to bottom: set up what every peer shares (data, model and
//! optimizer, fresh or resumed), start the peers, and on each: batch → frozen encoder →
//! [`Trainer::step`] → log → evaluate → checkpoint. Only the run's leader (peer 0 of node 0)
//! writes files and reports progress.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::Serialize;

use super::checkpoint::{self, TrainState, MODEL_FILE, OPTIMIZER_FILE};
use super::collective::{launch, Exchange};
use super::diagnostics::ItmStall;
use super::metrics::{MetricsLog, Progress, StepMetrics};
use super::optim::AdamW;
use super::run_lock::RunLock;
use super::schedule::lr_at;
use super::trainer::Trainer;
use crate::data::feature_cache::{FeatureCache, FeatureSource};
use crate::data::loader::{Dataset, EvalSet, Prefetcher, Transform};
use crate::data::skip_limit::SkipLimit;
use crate::data::synth;
use crate::data::text::TextEncoder;
use crate::eval::evaluate::{evaluate, EvalOptions};
use crate::eval::retrieval::{itc_recall, Recall};
use crate::interop::safetensors_io::{write_safetensors, SafetensorsFile};
use crate::interop::vit::build_encoder;
use crate::interop::weights::{load_weights, save_weights};
use crate::kernels::backend::BackendJob;
use crate::kernels::{Kernels, TrainBackend};
use crate::model::frozen::Frozen;
use crate::model::QFormer;
use crate::train::config::TrainConfig;
use crate::train::trained::fresh_model;
use crate::util::error::{Error, Result};
use crate::util::fs::write_atomic;
use crate::util::host::scalar;
use crate::util::report::{Reporter, Silent};

pub struct TrainJob {
    pub cfg: TrainConfig,
    pub run_name: String,
    /// A run folder (its latest checkpoint) or a step folder.
    pub resume: Option<PathBuf>,
    /// Where the run reports its steps and notes.
    pub progress: Arc<dyn Progress>,
    /// A fresh run may replace the run already in its folder (otherwise it is refused).
    pub overwrite: bool,
    /// Set from outside (a signal handler) to stop after the current step, with a checkpoint.
    pub stop: Arc<AtomicBool>,
}

impl TrainJob {
    /// A job that reports nothing (library callers, tests); see [`TrainJob::reporting`].
    pub fn new(cfg: TrainConfig, run_name: impl Into<String>, resume: Option<PathBuf>) -> Self {
        Self { cfg, run_name: run_name.into(), resume, progress: Arc::new(Silent), overwrite: false, stop: Arc::default() }
    }

    pub fn reporting(self, progress: Arc<dyn Progress>) -> Self {
        Self { progress, ..self }
    }

    /// Stops the run after the step in progress when `stop` becomes true: the step is finished,
    /// checkpointed, and the run returns with [`TrainOutcome::stopped`] set.
    pub fn stopping_on(self, stop: Arc<AtomicBool>) -> Self {
        Self { stop, ..self }
    }

    /// Lets a fresh run replace the run already in its folder.
    pub fn overwriting(self, overwrite: bool) -> Self {
        Self { overwrite, ..self }
    }
}

#[derive(Debug, Serialize)]
pub struct TrainOutcome {
    pub run_dir: PathBuf,
    pub steps: u64,
    pub last: StepMetrics,
    pub recall: Option<Recall>,
    /// The run stopped early on request ([`TrainJob::stop`]), after checkpointing its last step.
    pub stopped: bool,
}

/// Generates the synthetic set when the configured annotations do not exist yet.
pub fn ensure_data(cfg: &TrainConfig, reporter: &dyn Reporter) -> Result<()> {
    synth::ensure(&cfg.data.train, cfg.data.synth.as_ref(), cfg.encoder.image_size as u32, reporter)
}

/// The run's frozen-feature source, with the training and held-out transforms that feed it.
fn frozen_source<B: Kernels>(cfg: &TrainConfig, device: &B::Device, reporter: &dyn Reporter) -> Result<(Frozen<B>, Transform, Transform)> {
    let d = &cfg.data;
    let mut train = Transform {
        image_size: cfg.encoder.image_size as u32,
        max_pixels: d.max_pixels,
        augment: d.augment.enabled.then(|| d.augment.clone()),
        cache: None,
    };
    let mut eval = Transform { augment: None, ..train.clone() };
    let frozen = match (d.features, &d.cache) {
        (FeatureSource::Cache, Some(cache)) => {
            let open = |path: &Path, split| FeatureCache::open(cache, &cfg.encoder, path, &d.augment, split).map(Arc::new);
            let c = open(&d.train, "train")?;
            reporter.note(&format!(
                "features from the cache in {} ({} views per image); the encoder is not run",
                cache.dir.display(),
                c.views()
            ));
            let frozen = Frozen::Cache { tokens: c.tokens(), width: c.width() };
            train.cache = Some(c);
            if let Some(path) = &d.eval {
                eval.cache = Some(open(path, "eval")?);
            }
            frozen
        }
        _ => {
            let (vit, report) = build_encoder(&cfg.encoder, device)?;
            if let Some(r) = report {
                reporter.note(&r.summary());
            }
            Frozen::Encoder { vit, image_size: cfg.encoder.image_size }
        }
    };
    Ok((frozen, train, eval))
}

/// What every peer of this node starts from: checked inputs, the model and optimizer (fresh or
/// resumed), and the run folder's state.
struct Shared<B: TrainBackend> {
    cfg: TrainConfig,
    progress: Arc<dyn Progress>,
    stop: Arc<AtomicBool>,
    text: Arc<TextEncoder>,
    train_data: Arc<Dataset>,
    run_dir: PathBuf,
    model: QFormer<B>,
    optim: AdamW<B>,
    /// Built once: a random encoder draws its weights from burn's process-wide RNG.
    frozen: Frozen<B::InnerBackend>,
    transforms: (Transform, Transform),
    state: TrainState,
    total: u64,
    steps_per_epoch: u64,
    /// Held by the writing node until the run ends: no other process writes into the folder.
    _lock: Option<RunLock>,
}

impl TrainJob {
    /// Checks the inputs, prepares the run folder (on the writing node) and builds or loads the
    /// model and optimizer, once for all local peers.
    fn prepare<B: TrainBackend>(self, device: &B::Device) -> Result<std::result::Result<Shared<B>, TrainOutcome>> {
        let cfg = self.cfg;
        let progress = self.progress;
        let t = &cfg.train;
        let writer = cfg.distributed.node == 0;
        ensure_data(&cfg, progress.as_ref())?;
        let text = Arc::new(TextEncoder::load(&cfg.text.tokenizer, cfg.text.max_len, cfg.text.max_words)?);
        if text.vocab_size != cfg.model.vocab_size || text.dec_id as usize != cfg.model.bos_token_id {
            return Err(Error::config(
                "model.vocab_size",
                format!(
                    "the tokenizer has {} tokens with [DEC] = {}; the model expects {} and bos_token_id {}",
                    text.vocab_size, text.dec_id, cfg.model.vocab_size, cfg.model.bos_token_id
                ),
                "config",
            ));
        }
        let train_data = Arc::new(Dataset::load(&cfg.data.train, cfg.data.image_root.as_deref())?);
        for s in &train_data.skipped {
            progress.note(&format!("skipped {s}"));
        }
        let n_records = train_data.records.len() as u64;
        let skip_limit = SkipLimit { max_fraction: cfg.data.max_skip_fraction };
        skip_limit.check_complete(train_data.skipped.len() as u64, n_records + train_data.skipped.len() as u64)?;

        let (frozen, transform, eval_transform) = frozen_source::<B::InnerBackend>(&cfg, device, progress.as_ref())?;
        let run_dir = cfg.checkpoint.dir.join(&self.run_name);
        let lock = if writer {
            std::fs::create_dir_all(&run_dir).map_err(|e| Error::io(&run_dir, e))?;
            let lock = RunLock::acquire(&run_dir)?;
            let stale = checkpoint::clean_stale(&run_dir)?;
            if stale > 0 {
                progress.note(&format!("removed {stale} partial checkpoint write(s) left by an interrupted run"));
            }
            if self.resume.is_none() {
                let held = checkpoint::run_contents(&run_dir)?;
                if !held.is_empty() {
                    if !self.overwrite {
                        return Err(Error::file(
                            &run_dir,
                            format!("holds a run ({}): continue it with --resume latest, or replace it with --overwrite", held.join(", ")),
                        ));
                    }
                    checkpoint::clear_run(&run_dir)?;
                    progress.note(&format!("--overwrite: removed the previous run in {} ({})", run_dir.display(), held.join(", ")));
                }
            }
            Some(lock)
        } else {
            None
        };

        let per_step = (t.batch_size * t.grad_accum) as u64;
        let steps_per_epoch = (n_records / per_step).max(1);
        let total = t.steps.unwrap_or_else(|| t.epochs.unwrap_or(1) * steps_per_epoch);

        let (model, optim, state) = match &self.resume {
            Some(path) => {
                let dir = checkpoint::resolve(path)?;
                let state = checkpoint::verify(&dir, &cfg)?;
                let (model, _) = load_weights::<B>(&dir.join(MODEL_FILE), Some(&cfg.model), device)?;
                let mut optim = AdamW::new(&cfg.optim, &model);
                let file = SafetensorsFile::open(&dir.join(OPTIMIZER_FILE))?;
                let opt_steps = file
                    .metadata()?
                    .get("step")
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| Error::file(&file.path, "no `step` in the metadata"))?;
                optim.load_state(opt_steps, |name, n| {
                    let (shape, v) = file.f32(name)?;
                    if shape != [n] {
                        return Err(Error::file(&file.path, format!("`{name}` has shape {shape:?}, expected [{n}]")));
                    }
                    Ok(v)
                })?;
                progress.note(&format!("resumed from {} at step {}", dir.display(), state.step));
                (model, optim, state)
            }
            None => {
                // Drawn here, once, before any peer runs: every peer starts from these weights.
                let (model, lines) = fresh_model::<B>(&cfg, device)?;
                for line in lines {
                    progress.note(&line);
                }
                let optim = AdamW::new(&cfg.optim, &model);
                (model, optim, TrainState { seed: t.seed, ..Default::default() })
            }
        };

        if writer {
            // Only now, with the config and any resume checked, does the run write into its folder.
            write_atomic(&run_dir.join(checkpoint::CONFIG_FILE), cfg.to_toml().as_bytes())?;
        }
        if state.step >= total {
            progress.note(&format!(
                "the run in {} already reached step {} of {total}: nothing left to do (raise train.steps to continue it)",
                run_dir.display(),
                state.step
            ));
            let last = MetricsLog::read(&run_dir).ok().and_then(|mut m| m.pop()).unwrap_or_default();
            return Ok(Err(TrainOutcome { run_dir, steps: state.step, recall: last.retrieval, last, stopped: false }));
        }
        if total <= cfg.schedule.warmup_steps {
            progress.note(&format!(
                "warning: train.steps ({total}) is not above schedule.warmup_steps ({}): the whole run is warm-up and never reaches optim.lr ({:e})",
                cfg.schedule.warmup_steps, cfg.optim.lr
            ));
        }
        if cfg.distributed.world() > 1 {
            let d = &cfg.distributed;
            progress.note(&format!(
                "data parallel: {} peers ({} nodes × {}), {} pairs each of the global batch of {}",
                d.world(),
                d.nodes,
                d.peers,
                t.batch_size / d.world(),
                t.batch_size
            ));
        }
        Ok(Ok(Shared {
            cfg,
            progress,
            stop: self.stop,
            text,
            train_data,
            run_dir,
            model,
            optim,
            frozen,
            transforms: (transform, eval_transform),
            state,
            total,
            steps_per_epoch,
            _lock: lock,
        }))
    }
}

/// Local peer `i`'s device: its GPU index (`distributed.devices`; on CUDA by default `i`), or the
/// one device of a CPU backend, which every local peer shares. wgpu peers share the adapter wgpu
/// picks unless `distributed.devices` names discrete GPUs.
fn peer_device<K: Backend>(base: &K::Device, cfg: &TrainConfig, i: usize) -> K::Device {
    use crate::kernels::backend::BackendKind;
    use burn::tensor::backend::{Device, DeviceOps};
    let mut id = base.id();
    match (cfg.distributed.devices.get(i), cfg.train.backend) {
        (Some(&index), BackendKind::Wgpu) => {
            // wgpu's device ids: type 0 is a discrete GPU, the index counts those.
            id.type_id = 0;
            id.index_id = index as u16;
        }
        (Some(&index), _) => id.index_id = index as u16,
        (None, BackendKind::Cuda) => id.index_id = i as u16,
        (None, _) => return base.clone(),
    }
    K::Device::from_id(id)
}

impl BackendJob for TrainJob {
    type Output = TrainOutcome;

    fn run<B: TrainBackend>(self, device: B::Device) -> Result<TrainOutcome> {
        let cfg = self.cfg.clone();
        let shared = match self.prepare::<B>(&device)? {
            Ok(shared) => Arc::new(shared),
            Err(done) => return Ok(done),
        };
        launch::<B::InnerBackend, _, _>(
            &cfg.distributed,
            |i| peer_device::<B::InnerBackend>(&device, &cfg, i),
            move |peers, dev| run_peer::<B>(&shared, peers, dev),
        )
    }
}

/// One peer's loop.
fn run_peer<B: TrainBackend>(shared: &Shared<B>, peers: Box<dyn Exchange<B::InnerBackend>>, device: B::Device) -> Result<TrainOutcome> {
    let cfg = &shared.cfg;
    let t = &cfg.train;
    let leader = peers.rank() == 0;
    let silent: Arc<dyn Progress> = Arc::new(Silent);
    let progress = if leader { shared.progress.clone() } else { silent };
    let (world, rank) = (peers.count(), peers.rank());
    let per_peer = t.batch_size / world;
    let skip_limit = SkipLimit { max_fraction: cfg.data.max_skip_fraction };
    let frozen = shared.frozen.to_device(&device);
    let (transform, eval_transform) = shared.transforms.clone();
    let eval_set = match (&cfg.data.eval, leader) {
        (Some(path), true) => {
            let data = Dataset::load(path, cfg.data.image_root.as_deref())?;
            let set = EvalSet::load(&data, &shared.text, &eval_transform, cfg.eval.max_images)?;
            for s in data.skipped.iter().chain(&set.skipped) {
                progress.note(&format!("skipped (held-out) {s}"));
            }
            Some(set)
        }
        _ => None,
    };
    let mut state = shared.state.clone();
    let mut trainer = Trainer::new(
        shared.model.clone().fork(&device),
        shared.optim.to_device(&device),
        cfg.objectives.clone(),
        (t.clip_grad_norm, t.seed),
        peers,
    );
    let metrics = if leader { Some(MetricsLog::open(&shared.run_dir, state.step)?) } else { None };
    let slice = rank * per_peer..(rank + 1) * per_peer;
    let mut loader = Prefetcher::start(
        shared.train_data.clone(),
        shared.text.clone(),
        transform,
        t.seed,
        state.data_position,
        (t.batch_size, slice),
        cfg.data.prefetch,
    );
    let total = shared.total;
    progress.start(state.step, total);
    let per_step = (t.batch_size * t.grad_accum) as u64;
    let mut consecutive_bad = 0usize;
    let mut itm_stall = ItmStall::new(cfg.log.itm_stall_steps, cfg.log.itm_stall_margin);
    let mut last = StepMetrics::default();
    let mut recall = None;
    let run_dir = &shared.run_dir;

    while state.step < total {
        let started = Instant::now();
        let lr = lr_at(&cfg.schedule, cfg.optim.lr, state.step, total, shared.steps_per_epoch);
        let mut micro = Vec::with_capacity(t.grad_accum);
        for _ in 0..t.grad_accum {
            let hb = loader.next_batch()?;
            for s in &hb.skipped {
                progress.note(&format!("skipped {s}"));
            }
            // Every peer counts the whole window's positions; skips are this peer's own.
            state.samples_seen += hb.seen * world as u64;
            state.samples_skipped += hb.skipped.len() as u64;
            state.data_position = hb.end;
            skip_limit.check_running(state.samples_skipped, state.samples_seen)?;
            let feats = Tensor::<B, 3>::from_inner(frozen.features(hb.inputs, &device));
            micro.push(trainer.batch(feats, hb.text, hb.image_ids, &hb.positions)?);
        }
        let stop_requested = shared.stop.load(Ordering::SeqCst);
        let report = trainer.step(&micro, lr, stop_requested)?;
        let mut stop = None;
        if report.skipped_update {
            consecutive_bad += 1;
            state.bad_steps_total += 1;
            progress.note(&format!("step {}: non-finite loss or gradient, update skipped ({consecutive_bad} in a row)", state.step + 1));
            if consecutive_bad >= t.max_bad_steps {
                stop = Some(Error::input(
                    "train.max_bad_steps",
                    format!(
                        "{consecutive_bad} consecutive non-finite steps; stopping. The last checkpoint in {} is intact",
                        run_dir.display()
                    ),
                ));
            }
        } else {
            consecutive_bad = 0;
        }
        state.step += 1;
        let model = &trainer.model;
        last = StepMetrics {
            step: state.step,
            loss: report.loss,
            loss_itc: report.terms[0],
            loss_itm: report.terms[1],
            loss_itg: report.terms[2],
            itm_constant: report.itm_constant,
            lr,
            temp: scalar(model.temp.val().inner()),
            grad_norm: report.grad_norm,
            pairs_per_s: per_step as f64 / started.elapsed().as_secs_f64(),
            sampler_fallbacks: report.sampler_fallbacks,
            skipped_total: state.samples_skipped,
            skipped_update: report.skipped_update,
            retrieval: None,
            evaluation: None,
        };
        let Some(metrics) = &metrics else {
            // Other peers only follow: the leader logs, evaluates and checkpoints.
            if let Some(e) = stop {
                return Err(e);
            }
            if report.stop && state.step < total {
                return Ok(TrainOutcome { run_dir: run_dir.clone(), steps: state.step, last, recall, stopped: true });
            }
            continue;
        };
        let eval_due = (cfg.eval.every > 0 && state.step.is_multiple_of(cfg.eval.every)) || state.step == total;
        let rerank_due = cfg.eval.rerank_every > 0 && (state.step.is_multiple_of(cfg.eval.rerank_every) || state.step == total);
        let mut best_candidate = None;
        if let (true, Some(set)) = (eval_due, &eval_set) {
            let valid = trainer.valid();
            let r = itc_recall(&valid, &frozen, set, cfg.eval.chunk);
            progress.note(&format!(
                "step {} held-out retrieval: i2t R@1 {:.1} R@5 {:.1} | t2i R@1 {:.1} R@5 {:.1} ({} images)",
                state.step, r.i2t_r1, r.i2t_r5, r.t2i_r1, r.t2i_r5, set.images
            ));
            last.retrieval = Some(r);
            recall = Some(r);
            if rerank_due {
                let opts =
                    EvalOptions { k_test: cfg.eval.k_test, chunk: cfg.eval.chunk, seed: cfg.eval.seed, captions: Some(&shared.text) };
                let report = evaluate(&valid, &frozen, set, &opts)?;
                let (gain_i2t, gain_t2i) = report.rerank_gain();
                progress.note(&format!(
                    "step {} re-ranked (top {}): i2t R@1 {:.1} ({gain_i2t:+.1}) | t2i R@1 {:.1} ({gain_t2i:+.1}); ITM accuracy {:.1}/{:.1}; ITG perplexity {:.2}, grounding gap {:.3}{}",
                    state.step,
                    report.k_test,
                    report.itm.i2t_r1,
                    report.itm.t2i_r1,
                    report.itm_acc_positive,
                    report.itm_acc_negative,
                    report.itg_perplexity,
                    report.itg_grounding_gap,
                    report.caption_accuracy.map_or(String::new(), |a| format!("; captions naming both objects {a:.1}%"))
                ));
                last.evaluation = Some(report);
            }
            if let Some((rerank, field)) = cfg.eval.best() {
                let source = if rerank { last.evaluation.as_ref().map(|e| e.itm) } else { Some(r) };
                best_candidate = source.and_then(|x| x.get(field)).filter(|v| state.best.is_none_or(|(_, b)| *v > b));
            }
        }
        metrics.append(&last)?;
        progress.step(&last, total);
        if let Some(warning) = itm_stall.observe(last.loss_itm, last.itm_constant) {
            progress.note(&format!("step {}: {warning}", state.step));
        }
        // The step that trips the limit is recorded, and no checkpoint is written after it.
        if let Some(e) = stop {
            progress.finish();
            return Err(e);
        }
        let write_files = |dir: &Path| {
            save_weights(&trainer.model, &cfg.model, &dir.join(MODEL_FILE))?;
            let meta = std::collections::HashMap::from([("step".to_string(), trainer.optim.step.to_string())]);
            write_safetensors(&dir.join(OPTIMIZER_FILE), trainer.optim.state_tensors(), meta)
        };
        if let Some(value) = best_candidate {
            state.best = Some((state.step, value));
            let dir = checkpoint::save_best(run_dir, cfg, &state, write_files)?;
            progress.note(&format!("step {}: best {} so far ({value:.2}), saved to {}", state.step, cfg.eval.best_metric, dir.display()));
        }
        let stop_now = report.stop && state.step < total;
        if state.step.is_multiple_of(cfg.checkpoint.every) || state.step == total || stop_now {
            checkpoint::save(run_dir, cfg, &state, cfg.checkpoint.keep, write_files)?;
        }
        if stop_now {
            progress.finish();
            return Ok(TrainOutcome { run_dir: run_dir.clone(), steps: state.step, last, recall, stopped: true });
        }
    }
    progress.finish();
    Ok(TrainOutcome { run_dir: run_dir.clone(), steps: state.step, last, recall, stopped: false })
}
