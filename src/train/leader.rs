//! The run's leader (peer 0 of node 0) and what only it does after a step: held-out evaluation,
//! the best checkpoint, the metrics log, progress and diagnostics, and the checkpoint policy.
//! The other peers hold none of it and only follow the step.

use std::path::PathBuf;
use std::sync::Arc;

use super::checkpoint::{self, trainer_files, TrainState};
use super::config::TrainConfig;
use super::diagnostics::ItmStall;
use super::metrics::{MetricsLog, Progress, StepMetrics};
use super::trainer::Trainer;
use crate::data::eval_set::EvalSet;
use crate::data::loader::{Dataset, Transform};
use crate::data::text::TextEncoder;
use crate::eval::evaluate::{evaluate, EvalOptions, EvalReport};
use crate::eval::retrieval::{itc_recall, Recall};
use crate::kernels::TrainBackend;
use crate::model::frozen::Frozen;
use crate::util::error::Result;

pub struct Leader {
    cfg: TrainConfig,
    run_dir: PathBuf,
    progress: Arc<dyn Progress>,
    metrics: MetricsLog,
    eval_set: Option<Arc<EvalSet>>,
    text: Arc<TextEncoder>,
    itm_stall: ItmStall,
    /// The latest held-out ITC recall.
    pub recall: Option<Recall>,
}

/// What the step just taken asks of the leader.
pub struct StepEnd {
    /// The run stops with an error after this step: it is logged, but not checkpointed.
    pub failing: bool,
    /// The run stops on request after this step, which is checkpointed.
    pub stopping: bool,
    pub total: u64,
}

impl Leader {
    /// Opens the metrics log at the run's step; `eval_set` is the run's held-out set, if any.
    pub fn open(
        cfg: &TrainConfig,
        run_dir: PathBuf,
        progress: Arc<dyn Progress>,
        text: Arc<TextEncoder>,
        eval_set: Option<Arc<EvalSet>>,
        step: u64,
    ) -> Result<Self> {
        Ok(Self {
            metrics: MetricsLog::open(&run_dir, step)?,
            itm_stall: ItmStall::new(cfg.log.itm_stall_steps, cfg.log.itm_stall_margin),
            cfg: cfg.clone(),
            run_dir,
            progress,
            eval_set,
            text,
            recall: None,
        })
    }

    /// Everything after step `state.step`, in order: evaluation when due, the metrics record and
    /// progress line, the ITM stall check, then (unless the run is failing) the best checkpoint
    /// and the periodic, final or stopping checkpoint.
    pub fn after_step<B: TrainBackend>(
        &mut self,
        trainer: &Trainer<B>,
        frozen: &Frozen<B::InnerBackend>,
        state: &mut TrainState,
        last: &mut StepMetrics,
        end: &StepEnd,
    ) -> Result<()> {
        let best = self.evaluate_if_due(trainer, frozen, state, last, end.total)?;
        self.metrics.append(last)?;
        self.progress.step(last, end.total);
        if let Some(warning) = self.itm_stall.observe(last.loss_itm, last.itm_constant) {
            self.progress.note(&format!("step {}: {warning}", state.step));
        }
        if end.failing {
            return Ok(());
        }
        let cfg = &self.cfg;
        let files = trainer_files(&trainer.model, cfg, &trainer.optim);
        if let Some(value) = best {
            state.best = Some((state.step, value));
            let dir = checkpoint::save_best(&self.run_dir, cfg, state, &files)?;
            self.progress.note(&format!(
                "step {}: best {} so far ({value:.2}), saved to {}",
                state.step,
                cfg.eval.best_metric,
                dir.display()
            ));
        }
        if state.step.is_multiple_of(cfg.checkpoint.every) || state.step == end.total || end.stopping {
            checkpoint::save(&self.run_dir, cfg, state, cfg.checkpoint.keep, &files)?;
        }
        Ok(())
    }

    /// Held-out ITC retrieval when due, and the full evaluation when due; returns the value of
    /// `eval.best_metric` when it beats the best so far.
    fn evaluate_if_due<B: TrainBackend>(
        &mut self,
        trainer: &Trainer<B>,
        frozen: &Frozen<B::InnerBackend>,
        state: &TrainState,
        last: &mut StepMetrics,
        total: u64,
    ) -> Result<Option<f64>> {
        let (e, step) = (&self.cfg.eval, state.step);
        let eval_due = (e.every > 0 && step.is_multiple_of(e.every)) || step == total;
        let rerank_due = e.rerank_every > 0 && (step.is_multiple_of(e.rerank_every) || step == total);
        let Some(set) = self.eval_set.as_deref().filter(|_| eval_due) else { return Ok(None) };
        let valid = trainer.valid();
        let r = itc_recall(&valid, frozen, set, e.chunk)?;
        self.progress.note(&format!(
            "step {step} held-out retrieval: i2t R@1 {:.1} R@5 {:.1} | t2i R@1 {:.1} R@5 {:.1} ({} images)",
            r.i2t_r1, r.i2t_r5, r.t2i_r1, r.t2i_r5, set.images
        ));
        last.retrieval = Some(r);
        self.recall = Some(r);
        if rerank_due {
            let opts = EvalOptions { k_test: e.k_test, chunk: e.chunk, seed: e.seed, captions: Some(&self.text) };
            let report = evaluate(&valid, frozen, set, &opts)?;
            self.progress.note(&format!("step {step} {}", full_evaluation_line(&report)));
            last.evaluation = Some(report);
        }
        let Some((rerank, field)) = e.best() else { return Ok(None) };
        let source = if rerank { last.evaluation.as_ref().map(|x| x.itm) } else { Some(r) };
        Ok(source.and_then(|x| x.get(field)).filter(|v| state.best.is_none_or(|(_, b)| *v > b)))
    }
}

/// The run's held-out set (`data.eval`), with its skips reported; `None` when the run has none.
pub fn load_eval_set(cfg: &TrainConfig, text: &TextEncoder, transform: &Transform, progress: &dyn Progress) -> Result<Option<EvalSet>> {
    let Some(path) = &cfg.data.eval else { return Ok(None) };
    let data = Dataset::load(path, cfg.data.image_root.as_deref())?;
    let set = EvalSet::load(&data, text, transform, cfg.eval.max_images)?;
    for s in data.skipped.iter().chain(&set.skipped) {
        progress.note(&format!("skipped (held-out) {s}"));
    }
    Ok(Some(set))
}

/// The full evaluation as one progress note.
fn full_evaluation_line(report: &EvalReport) -> String {
    let (gain_i2t, gain_t2i) = report.rerank_gain();
    format!(
        "re-ranked (top {}): i2t R@1 {:.1} ({gain_i2t:+.1}) | t2i R@1 {:.1} ({gain_t2i:+.1}); ITM accuracy {:.1}/{:.1}; ITG perplexity {:.2}, grounding gap {:.3}{}",
        report.k_test,
        report.itm.i2t_r1,
        report.itm.t2i_r1,
        report.itm_acc_positive,
        report.itm_acc_negative,
        report.itg_perplexity,
        report.itg_grounding_gap,
        report.caption_accuracy.map_or(String::new(), |a| format!("; captions naming both objects {a:.1}%"))
    )
}
