//! A training run, readable top to bottom: set up what every peer shares (data, model and
//! optimizer, fresh or resumed), start the peers, and on each: batches → [`Trainer::step`] →
//! bad-step count → the leader's duties ([`Leader::after_step`]: evaluate, log, checkpoint) →
//! stop. Only the run's leader (peer 0 of node 0) writes files and reports progress.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::Serialize;

use super::checkpoint::{self, DataIdentity, TrainState};
use super::collective::{launch, Exchange};
use super::frozen_cache::{build_cache, Rebuild};
use super::leader::{load_eval_set, Leader, StepEnd};
use super::metrics::{MetricsLog, Progress, StepMetrics};
use super::optim::AdamW;
use super::run_folder::RunFolder;
use super::schedule::lr_at;
use super::trainer::{StepOptions, Trainer};
use crate::data::eval_set::EvalSet;
use crate::data::feature_cache::{FeatureCache, FeatureSource};
use crate::data::loader::{Dataset, Prefetcher, Transform};
use crate::data::skip_limit::SkipLimit;
use crate::data::synth;
use crate::data::text::TextEncoder;
use crate::eval::retrieval::Recall;
use crate::interop::vit::build_encoder;
use crate::kernels::backend::BackendJob;
use crate::kernels::{Kernels, TrainBackend};
use crate::model::frozen::Frozen;
use crate::model::QFormer;
use crate::objectives::Stage1Batch;
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

/// Images per encoder forward when a run builds its feature cache.
const CACHE_BATCH: usize = 32;

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
            // One node builds what is missing; several would race for the same files.
            if cfg.distributed.nodes == 1 {
                build_cache::<B>(cfg, device, CACHE_BATCH, Rebuild::Missing, reporter)?;
            }
            let open = |path: &Path, split| FeatureCache::open(cache, &cfg.encoder, path, &d.augment, split).map(Arc::new);
            let c = open(&d.train, "train")?;
            let views = match c.views() {
                1 => "one view per image".to_string(),
                n => format!("{n} views per image"),
            };
            reporter.note(&format!("features from the cache in {} ({views}); the encoder is not run", cache.dir.display()));
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
/// resumed), and the run folder (held by the writing node).
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
    transform: Transform,
    /// The held-out set, loaded by the writing node (its leader evaluates).
    eval_set: Option<Arc<EvalSet>>,
    state: TrainState,
    total: u64,
    steps_per_epoch: u64,
    _folder: Option<RunFolder>,
}

/// A prepared run: ready for its peers, or already at its last step.
enum Prepared<B: TrainBackend> {
    Ready(Shared<B>),
    AlreadyDone(TrainOutcome),
}

/// The model, optimizer and state a run starts from: a verified checkpoint, or fresh weights.
fn starting_point<B: TrainBackend>(
    cfg: &TrainConfig,
    resume: Option<&Path>,
    data: DataIdentity,
    device: &B::Device,
    progress: &dyn Progress,
) -> Result<(QFormer<B>, AdamW<B>, TrainState)> {
    match resume {
        Some(path) => {
            let mut loaded = checkpoint::load::<B>(path, Some(cfg), device)?;
            data.check_resume(loaded.state.data.as_ref(), &cfg.data.train)?;
            loaded.state.data = Some(data);
            let optim = checkpoint::load_optimizer(&loaded)?;
            progress.note(&format!("resumed from {} at step {}", loaded.dir.display(), loaded.state.step));
            Ok((loaded.model, optim, loaded.state))
        }
        None => {
            // Drawn here, once, before any peer runs: every peer starts from these weights.
            let (model, lines) = fresh_model::<B>(cfg, device)?;
            for line in lines {
                progress.note(&line);
            }
            let optim = AdamW::new(&cfg.optim, &model);
            Ok((model, optim, TrainState { seed: cfg.train.seed, data: Some(data), ..Default::default() }))
        }
    }
}

/// The tokenizer, checked against the model's vocabulary.
fn load_text(cfg: &TrainConfig) -> Result<TextEncoder> {
    let text = TextEncoder::load(&cfg.text.tokenizer, cfg.text.max_len, cfg.text.max_words)?;
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
    Ok(text)
}

/// The training annotations, with their skips reported and the skip limit checked.
fn load_train_data(cfg: &TrainConfig, progress: &dyn Progress) -> Result<Dataset> {
    let data = Dataset::load(&cfg.data.train, cfg.data.image_root.as_deref())?;
    for s in &data.skipped {
        progress.note(&format!("skipped {s}"));
    }
    let skip_limit = SkipLimit { max_fraction: cfg.data.max_skip_fraction };
    skip_limit.check_complete(data.skipped.len() as u64, (data.records.len() + data.skipped.len()) as u64)?;
    Ok(data)
}

/// Notes the run's size (data, parameters, steps) and a shape a user may not have meant: all
/// warm-up, or several peers sharing a CPU's cores.
fn note_run_shape(cfg: &TrainConfig, total: u64, data: &Dataset, params: usize, progress: &dyn Progress) {
    progress.note(&format!(
        "{} training pairs ({} skipped), {:.1}M trainable parameters, {total} steps of {} pairs",
        data.records.len(),
        data.skipped.len(),
        params as f64 / 1e6,
        cfg.train.batch_size * cfg.train.grad_accum
    ));
    if total <= cfg.schedule.warmup_steps {
        progress.note(&format!(
            "warning: train.steps ({total}) is not above schedule.warmup_steps ({}): the whole run is warm-up and never reaches optim.lr ({:e})",
            cfg.schedule.warmup_steps, cfg.optim.lr
        ));
    }
    let d = &cfg.distributed;
    if d.world() > 1 {
        let batch = cfg.train.batch_size;
        progress.note(&format!(
            "data parallel: {} peers ({} nodes × {}), {} pairs each of the global batch of {batch}",
            d.world(),
            d.nodes,
            d.peers,
            batch / d.world()
        ));
        if d.peers > 1 && !cfg.train.backend.is_gpu() {
            progress.note(&format!(
                "note: the {} local peers of a CPU backend share this machine's cores; one peer is usually faster (measured 2.6x on 2 cores): use peers for several devices or nodes",
                d.peers
            ));
        }
    }
}

impl TrainJob {
    /// Checks the inputs, claims the run folder (on the writing node) and builds or loads the
    /// model and optimizer, once for all local peers. A previous run that `--overwrite`
    /// replaces is removed only after all of that has succeeded.
    fn prepare<B: TrainBackend>(self, device: &B::Device) -> Result<Prepared<B>> {
        let (cfg, progress) = (self.cfg, self.progress);
        ensure_data(&cfg, progress.as_ref())?;
        let text = Arc::new(load_text(&cfg)?);
        let train_data = Arc::new(load_train_data(&cfg, progress.as_ref())?);
        let (frozen, transform, eval_transform) = frozen_source::<B::InnerBackend>(&cfg, device, progress.as_ref())?;
        let writer = cfg.distributed.node == 0;
        let eval_set = if writer { load_eval_set(&cfg, &text, &eval_transform, progress.as_ref())?.map(Arc::new) } else { None };
        let run_dir = cfg.checkpoint.dir.join(&self.run_name);
        let mut folder =
            writer.then(|| RunFolder::claim(&run_dir, self.resume.is_some(), self.overwrite, progress.as_ref())).transpose()?;
        let per_step = (cfg.train.batch_size * cfg.train.grad_accum) as u64;
        let steps_per_epoch = (train_data.records.len() as u64 / per_step).max(1);
        let total = cfg.train.steps.unwrap_or_else(|| cfg.train.epochs.unwrap_or(1) * steps_per_epoch);
        let data = DataIdentity::of(&cfg.data.train, train_data.records.len() as u64)?;
        let (model, optim, state) = starting_point::<B>(&cfg, self.resume.as_deref(), data, device, progress.as_ref())?;
        if let Some(folder) = &mut folder {
            folder.replace_previous(progress.as_ref())?;
            // Only now, with the config and any resume checked, does the run write into its folder.
            write_atomic(&run_dir.join(checkpoint::CONFIG_FILE), cfg.to_toml().as_bytes())?;
            folder.started();
        }
        if state.step >= total {
            progress.note(&format!(
                "the run in {} already reached step {} of {total}: nothing left to do (raise train.steps to continue it)",
                run_dir.display(),
                state.step
            ));
            let last = MetricsLog::read(&run_dir).ok().and_then(|mut m| m.pop()).unwrap_or_default();
            return Ok(Prepared::AlreadyDone(TrainOutcome { run_dir, steps: state.step, recall: last.retrieval, last, stopped: false }));
        }
        note_run_shape(&cfg, total, &train_data, model.num_params(), progress.as_ref());
        Ok(Prepared::Ready(Shared {
            cfg,
            progress,
            stop: self.stop,
            text,
            train_data,
            run_dir,
            model,
            optim,
            frozen,
            transform,
            eval_set,
            state,
            total,
            steps_per_epoch,
            _folder: folder,
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
            Prepared::Ready(shared) => Arc::new(shared),
            Prepared::AlreadyDone(outcome) => return Ok(outcome),
        };
        launch::<B::InnerBackend, _, _>(
            &cfg.distributed,
            |i| peer_device::<B::InnerBackend>(&device, &cfg, i),
            move |peers, dev| run_peer::<B>(&shared, peers, dev),
        )
    }
}

/// Counts non-finite steps (each one's update is skipped) and stops the run after
/// `train.max_bad_steps` in a row.
struct BadSteps {
    in_a_row: usize,
    limit: usize,
}

impl BadSteps {
    /// Records whether the step just taken was skipped; returns the error that stops the run.
    fn observe(&mut self, skipped: bool, state: &mut TrainState, run_dir: &Path, progress: &dyn Progress) -> Option<Error> {
        if !skipped {
            self.in_a_row = 0;
            return None;
        }
        self.in_a_row += 1;
        state.bad_steps_total += 1;
        progress.note(&format!("step {}: non-finite loss or gradient, update skipped ({} in a row)", state.step + 1, self.in_a_row));
        (self.in_a_row >= self.limit).then(|| {
            Error::input(
                "train.max_bad_steps",
                format!("{} consecutive non-finite steps; stopping. The last checkpoint in {} is intact", self.in_a_row, run_dir.display()),
            )
        })
    }
}

/// One peer's view of the run: its trainer, its slice of the data stream, and (on the leader)
/// the leader's duties.
struct PeerRun<'a, B: TrainBackend> {
    shared: &'a Shared<B>,
    trainer: Trainer<B>,
    loader: Prefetcher,
    frozen: Frozen<B::InnerBackend>,
    device: B::Device,
    progress: Arc<dyn Progress>,
    leader: Option<Leader>,
    world: usize,
}

impl<'a, B: TrainBackend> PeerRun<'a, B> {
    fn start(shared: &'a Shared<B>, peers: Box<dyn Exchange<B::InnerBackend>>, device: B::Device) -> Result<Self> {
        let (cfg, t) = (&shared.cfg, &shared.cfg.train);
        let (world, rank) = (peers.count(), peers.rank());
        let progress: Arc<dyn Progress> = if rank == 0 { shared.progress.clone() } else { Arc::new(Silent) };
        let leader = (rank == 0)
            .then(|| {
                Leader::open(cfg, shared.run_dir.clone(), progress.clone(), shared.text.clone(), shared.eval_set.clone(), shared.state.step)
            })
            .transpose()?;
        let trainer = Trainer::new(
            shared.model.clone().fork(&device),
            shared.optim.to_device(&device),
            cfg.objectives.clone(),
            StepOptions { clip: t.clip(), seed: t.seed },
            peers,
        );
        let per_peer = t.batch_size / world;
        let loader = Prefetcher::start(
            shared.train_data.clone(),
            shared.text.clone(),
            shared.transform.clone(),
            t.seed,
            shared.state.data_position,
            (t.batch_size, rank * per_peer..(rank + 1) * per_peer),
            cfg.data.prefetch,
        );
        let frozen = shared.frozen.to_device(&device);
        Ok(Self { shared, trainer, loader, frozen, device, progress, leader, world })
    }

    /// The step's micro-batches of this peer's slice, with the data position and skip counts
    /// advanced in `state`.
    fn batches(&mut self, state: &mut TrainState) -> Result<Vec<Stage1Batch<B>>> {
        let cfg = &self.shared.cfg;
        let skip_limit = SkipLimit { max_fraction: cfg.data.max_skip_fraction };
        let mut micro = Vec::with_capacity(cfg.train.grad_accum);
        for _ in 0..cfg.train.grad_accum {
            let hb = self.loader.next_batch()?;
            for s in &hb.skipped {
                self.progress.note(&format!("skipped {s}"));
            }
            // Every peer counts the whole window's positions; skips are this peer's own.
            state.samples_seen += hb.seen * self.world as u64;
            state.samples_skipped += hb.skipped.len() as u64;
            state.data_position = hb.end;
            skip_limit.check_running(state.samples_skipped, state.samples_seen)?;
            let feats = Tensor::<B, 3>::from_inner(self.frozen.features(hb.inputs, &self.device));
            micro.push(self.trainer.batch(feats, hb.text, hb.image_ids, &hb.positions)?);
        }
        Ok(micro)
    }

    fn outcome(&self, state: &TrainState, last: StepMetrics, stopped: bool) -> TrainOutcome {
        let recall = self.leader.as_ref().and_then(|l| l.recall);
        TrainOutcome { run_dir: self.shared.run_dir.clone(), steps: state.step, last, recall, stopped }
    }
}

/// One peer's loop: batches, the step, the bad-step count, the leader's duties, stopping.
fn run_peer<B: TrainBackend>(shared: &Shared<B>, peers: Box<dyn Exchange<B::InnerBackend>>, device: B::Device) -> Result<TrainOutcome> {
    let (cfg, total) = (&shared.cfg, shared.total);
    let mut run = PeerRun::start(shared, peers, device)?;
    let mut state = shared.state.clone();
    let mut bad = BadSteps { in_a_row: 0, limit: cfg.train.max_bad_steps };
    let per_step = (cfg.train.batch_size * cfg.train.grad_accum) as u64;
    let mut last = StepMetrics::default();
    run.progress.start(state.step, total);
    while state.step < total {
        let started = Instant::now();
        let lr = lr_at(&cfg.schedule, cfg.optim.lr, state.step, total, shared.steps_per_epoch);
        let micro = run.batches(&mut state)?;
        let report = run.trainer.step(&micro, lr, shared.stop.load(Ordering::SeqCst))?;
        let failure = bad.observe(report.skipped_update, &mut state, &shared.run_dir, run.progress.as_ref());
        state.step += 1;
        let temp = scalar(run.trainer.model.temp.val().inner());
        last =
            StepMetrics::of_step(state.step, &report, lr, temp, per_step as f64 / started.elapsed().as_secs_f64(), state.samples_skipped);
        last.device_mb = B::device_memory(&run.device).map(|b| b as f64 / 1e6);
        let stopping = report.totals.stop && state.step < total;
        if let Some(leader) = &mut run.leader {
            let end = StepEnd { failing: failure.is_some(), stopping, total };
            leader.after_step(&run.trainer, &run.frozen, &mut state, &mut last, &end)?;
        }
        // The step that trips the bad-step limit is recorded, and no checkpoint is written after it.
        if let Some(e) = failure {
            run.progress.finish();
            return Err(e);
        }
        if stopping {
            run.progress.finish();
            return Ok(run.outcome(&state, last, true));
        }
    }
    run.progress.finish();
    Ok(run.outcome(&state, last, false))
}
