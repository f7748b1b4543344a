//! The training loop, readable top to bottom: batch → frozen encoder → stage-one loss → backward
//! → (accumulate) → clip → AdamW → log → evaluate → checkpoint.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use burn::module::{AutodiffModule, Param};
use burn::tensor::Tensor;
use serde::Serialize;

use super::checkpoint::{self, TrainState, MODEL_FILE, OPTIMIZER_FILE};
use super::metrics::{MetricsLog, Progress, StepMetrics};
use super::optim::{AdamW, GradAccumulator};
use super::run_lock::RunLock;
use super::schedule::lr_at;
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
use crate::model::qformer::TEMP_RANGE;
use crate::model::QFormer;
use crate::objectives::{stage1_loss, NegativeSampler, Stage1Batch};
use crate::train::config::TrainConfig;
use crate::train::trained::fresh_model;
use crate::util::error::{Error, Result};
use crate::util::fs::write_atomic;
use crate::util::host::scalar;
use crate::util::report::{Reporter, Silent};
use crate::util::seed::mix;

/// Stream tags that keep the seeds of the different random consumers apart.
const SAMPLER_STREAM: u64 = 0x5a3b_1e00;

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

/// Projects the temperature back into range after an update.
fn clamp_temperature<B: TrainBackend>(mut model: QFormer<B>) -> QFormer<B> {
    let id = model.temp.id;
    let value = model.temp.val().inner().clamp(TEMP_RANGE.0, TEMP_RANGE.1);
    model.temp = Param::initialized(id, Tensor::from_inner(value).require_grad());
    model
}

impl BackendJob for TrainJob {
    type Output = TrainOutcome;

    fn run<B: TrainBackend>(self, device: B::Device) -> Result<TrainOutcome> {
        let cfg = self.cfg;
        let progress = self.progress;
        let (t, seed) = (&cfg.train, cfg.train.seed);
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
        let (frozen, transform, eval_transform) = frozen_source::<B::InnerBackend>(&cfg, &device, progress.as_ref())?;
        let eval_set = match &cfg.data.eval {
            Some(path) => {
                let data = Dataset::load(path, cfg.data.image_root.as_deref())?;
                let set = EvalSet::load(&data, &text, &eval_transform, cfg.eval.max_images)?;
                for s in data.skipped.iter().chain(&set.skipped) {
                    progress.note(&format!("skipped (held-out) {s}"));
                }
                Some(set)
            }
            None => None,
        };

        let run_dir = cfg.checkpoint.dir.join(&self.run_name);
        std::fs::create_dir_all(&run_dir).map_err(|e| Error::io(&run_dir, e))?;
        // Held until the run ends: no other process writes into this folder meanwhile.
        let _lock = RunLock::acquire(&run_dir)?;
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

        let per_step = (t.batch_size * t.grad_accum) as u64;
        let steps_per_epoch = (n_records / per_step).max(1);
        let total = t.steps.unwrap_or_else(|| t.epochs.unwrap_or(1) * steps_per_epoch);

        let (mut model, mut optim, mut state) = match &self.resume {
            Some(path) => {
                let dir = checkpoint::resolve(path)?;
                let state = checkpoint::verify(&dir, &cfg)?;
                let (model, _) = load_weights::<B>(&dir.join(MODEL_FILE), Some(&cfg.model), &device)?;
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
                let (model, lines) = fresh_model::<B>(&cfg, &device)?;
                for line in lines {
                    progress.note(&line);
                }
                let optim = AdamW::new(&cfg.optim, &model);
                (model, optim, TrainState { seed, ..Default::default() })
            }
        };

        // Only now, with the config and any resume checked, does the run write into its folder.
        write_atomic(&run_dir.join(checkpoint::CONFIG_FILE), cfg.to_toml().as_bytes())?;
        let metrics = MetricsLog::open(&run_dir, state.step)?;
        if state.step >= total {
            progress.note(&format!(
                "the run in {} already reached step {} of {total}: nothing left to do (raise train.steps to continue it)",
                run_dir.display(),
                state.step
            ));
            let last = MetricsLog::read(&run_dir).ok().and_then(|mut m| m.pop()).unwrap_or_default();
            return Ok(TrainOutcome { run_dir, steps: state.step, recall: last.retrieval, last, stopped: false });
        }
        if total <= cfg.schedule.warmup_steps {
            progress.note(&format!(
                "warning: train.steps ({total}) is not above schedule.warmup_steps ({}): the whole run is warm-up and never reaches optim.lr ({:e})",
                cfg.schedule.warmup_steps, cfg.optim.lr
            ));
        }
        let mut loader = Prefetcher::start(train_data, text, transform, seed, state.data_position, t.batch_size, cfg.data.prefetch);
        progress.start(state.step, total);
        let objectives = cfg.objectives.clone();
        let accum = t.grad_accum;
        let mut consecutive_bad = 0usize;
        let mut last = StepMetrics::default();
        let mut recall = None;

        while state.step < total {
            let started = Instant::now();
            let lr = lr_at(&cfg.schedule, cfg.optim.lr, state.step, total, steps_per_epoch);
            let mut grads = GradAccumulator::new(&model);
            let (mut loss, mut terms, mut fallbacks, mut finite) = (0.0, [None::<f64>; 3], 0, true);
            for micro in 0..accum {
                let hb = loader.next_batch()?;
                for s in &hb.skipped {
                    progress.note(&format!("skipped {s}"));
                }
                state.samples_seen += hb.seen;
                state.samples_skipped += hb.skipped.len() as u64;
                state.data_position = hb.end;
                skip_limit.check_running(state.samples_skipped, state.samples_seen)?;
                let feats = Tensor::<B, 3>::from_inner(frozen.features(hb.inputs, &device));
                let batch = Stage1Batch::new(feats, hb.text, Some(hb.image_ids))?;
                // Dropout and negatives are drawn from (seed, micro-step): a resumed run repeats them.
                let k = state.step * accum as u64 + micro as u64;
                B::seed(&device, mix(seed, k));
                let out = stage1_loss(&model, &batch, &objectives, &mut NegativeSampler::new(mix(seed ^ SAMPLER_STREAM, k)), true)?;
                fallbacks += out.sampler.fallbacks;
                let value = scalar(out.loss.clone().inner());
                finite &= value.is_finite();
                loss += value / accum as f64;
                for (slot, term) in terms.iter_mut().zip([&out.itc, &out.itm, &out.itg]) {
                    if let Some(t) = term {
                        *slot = Some(slot.unwrap_or(0.0) + scalar(t.clone().inner()) / accum as f64);
                    }
                }
                grads.add(&model, &out.loss.div_scalar(accum as f64).backward());
            }
            let grad_norm = grads.norm();
            let skip_update = !(finite && grad_norm.is_finite());
            let mut stop = None;
            if skip_update {
                consecutive_bad += 1;
                state.bad_steps_total += 1;
                progress
                    .note(&format!("step {}: non-finite loss or gradient, update skipped ({consecutive_bad} in a row)", state.step + 1));
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
                if let Some(clip) = t.clip_grad_norm.filter(|&c| grad_norm > c) {
                    grads.scale(clip / (grad_norm + 1e-6));
                }
                model = clamp_temperature(optim.update(model, &grads, lr));
            }
            state.step += 1;
            last = StepMetrics {
                step: state.step,
                loss,
                loss_itc: terms[0],
                loss_itm: terms[1],
                loss_itg: terms[2],
                lr,
                temp: scalar(model.temp.val().inner()),
                grad_norm,
                pairs_per_s: per_step as f64 / started.elapsed().as_secs_f64(),
                sampler_fallbacks: fallbacks,
                skipped_total: state.samples_skipped,
                skipped_update: skip_update,
                retrieval: None,
                evaluation: None,
            };
            let eval_due = (cfg.eval.every > 0 && state.step % cfg.eval.every == 0) || state.step == total;
            let rerank_due = cfg.eval.rerank_every > 0 && (state.step % cfg.eval.rerank_every == 0 || state.step == total);
            let mut best_candidate = None;
            if let (true, Some(set)) = (eval_due, &eval_set) {
                let valid = model.valid();
                let r = itc_recall(&valid, &frozen, set, 64);
                progress.note(&format!(
                    "step {} held-out retrieval: i2t R@1 {:.1} R@5 {:.1} | t2i R@1 {:.1} R@5 {:.1} ({} images)",
                    state.step, r.i2t_r1, r.i2t_r5, r.t2i_r1, r.t2i_r5, set.images
                ));
                last.retrieval = Some(r);
                recall = Some(r);
                if rerank_due {
                    let report = evaluate(&valid, &frozen, set, &EvalOptions { k_test: cfg.eval.k_test, chunk: 64 });
                    progress.note(&format!(
                        "step {} re-ranked (top {}): i2t R@1 {:.1} | t2i R@1 {:.1}; ITM accuracy {:.1}/{:.1}; ITG perplexity {:.2}",
                        state.step,
                        report.k_test,
                        report.itm.i2t_r1,
                        report.itm.t2i_r1,
                        report.itm_acc_positive,
                        report.itm_acc_negative,
                        report.itg_perplexity
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
            // The step that trips the limit is recorded, and no checkpoint is written after it.
            if let Some(e) = stop {
                progress.finish();
                return Err(e);
            }
            let write_files = |dir: &Path| {
                save_weights(&model, &cfg.model, &dir.join(MODEL_FILE))?;
                let meta = std::collections::HashMap::from([("step".to_string(), optim.step.to_string())]);
                write_safetensors(&dir.join(OPTIMIZER_FILE), optim.state_tensors(), meta)
            };
            if let Some(value) = best_candidate {
                state.best = Some((state.step, value));
                let dir = checkpoint::save_best(&run_dir, &cfg, &state, write_files)?;
                progress.note(&format!(
                    "step {}: best {} so far ({value:.2}), saved to {}",
                    state.step,
                    cfg.eval.best_metric,
                    dir.display()
                ));
            }
            let stop_now = self.stop.load(Ordering::SeqCst) && state.step < total;
            if state.step.is_multiple_of(cfg.checkpoint.every) || state.step == total || stop_now {
                checkpoint::save(&run_dir, &cfg, &state, cfg.checkpoint.keep, write_files)?;
            }
            if stop_now {
                progress.finish();
                return Ok(TrainOutcome { run_dir, steps: state.step, last, recall, stopped: true });
            }
        }
        progress.finish();
        Ok(TrainOutcome { run_dir, steps: state.step, last, recall, stopped: false })
    }
}
