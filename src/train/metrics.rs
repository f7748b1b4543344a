//! `metrics.jsonl` (one JSON object per step, every loss term separately) and the [`Progress`]
//! interface through which a run reports each step to the application.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::eval::evaluate::EvalReport;
use crate::eval::retrieval::Recall;
use crate::train::checkpoint::METRICS_FILE;
use crate::train::trainer::StepReport;
use crate::util::error::{Error, Result};
use crate::util::fs::write_atomic;
use crate::util::report::{Reporter, Silent};

/// JSON has no NaN: a non-finite value is written as `null` and read back as NaN, so a bad step's
/// record survives a resume. A switched-off objective's term is absent.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StepMetrics {
    pub step: u64,
    #[serde(deserialize_with = "null_is_nan")]
    pub loss: f64,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "null_is_nan_term")]
    pub loss_itc: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "null_is_nan_term")]
    pub loss_itm: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "null_is_nan_term")]
    pub loss_itg: Option<f64>,
    /// The loss a constant answer gets for this step's ITM label mix (ITM's floor when it does
    /// not tell pairs apart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub itm_constant: Option<f64>,
    pub lr: f64,
    pub temp: f64,
    #[serde(deserialize_with = "null_is_nan")]
    pub grad_norm: f64,
    pub pairs_per_s: f64,
    /// Megabytes the device's allocator holds after the step (cubecl backends only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_mb: Option<f64>,
    pub sampler_fallbacks: usize,
    pub skipped_total: u64,
    /// Set on steps whose update was skipped because a loss or gradient was not finite.
    #[serde(default)]
    pub skipped_update: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrieval: Option<Recall>,
    /// Full held-out evaluation (ITM re-ranking, accuracy, perplexity) on `eval.rerank_every`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<EvalReport>,
}

fn null_is_nan<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

fn null_is_nan_term<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<f64>, D::Error> {
    null_is_nan(d).map(Some)
}

impl StepMetrics {
    /// The record of step `step` from its report; evaluation fields are filled by the leader.
    pub fn of_step(step: u64, report: &StepReport, lr: f64, temp: f64, pairs_per_s: f64, skipped_total: u64) -> Self {
        let t = &report.totals;
        Self {
            step,
            loss: t.loss,
            loss_itc: t.terms[0],
            loss_itm: t.terms[1],
            loss_itg: t.terms[2],
            itm_constant: t.itm_constant,
            lr,
            temp,
            grad_norm: report.grad_norm,
            pairs_per_s,
            device_mb: None,
            sampler_fallbacks: t.sampler_fallbacks,
            skipped_total,
            skipped_update: report.skipped_update,
            retrieval: None,
            evaluation: None,
        }
    }

    pub fn summary(&self) -> String {
        let term = |name: &str, v: Option<f64>| v.map_or(String::new(), |v| format!(" {name} {v:.3}"));
        // ITM beside the loss of a constant answer: the gap says whether it tells pairs apart.
        let itm = self.loss_itm.map_or(String::new(), |v| match self.itm_constant {
            Some(c) => format!(" itm {v:.3} (constant {c:.3})"),
            None => format!(" itm {v:.3}"),
        });
        format!(
            "loss {:.3}{}{}{} lr {:.2e} temp {:.4} {:.1} pairs/s{}",
            self.loss,
            term("itc", self.loss_itc),
            itm,
            term("itg", self.loss_itg),
            self.lr,
            self.temp,
            self.pairs_per_s,
            self.device_mb.map_or(String::new(), |mb| format!(" device {mb:.0} MB"))
        )
    }
}

pub struct MetricsLog {
    path: PathBuf,
}

impl MetricsLog {
    /// Opens the run's log, dropping entries after `resume_step` (they belong to a run that was
    /// interrupted before its next checkpoint and will be recomputed identically).
    pub fn open(run_dir: &Path, resume_step: u64) -> Result<Self> {
        let path = run_dir.join(METRICS_FILE);
        if path.exists() {
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let kept: Vec<&str> =
                text.lines().filter(|l| serde_json::from_str::<StepMetrics>(l).is_ok_and(|m| m.step <= resume_step)).collect();
            let mut out = kept.join("\n");
            if !out.is_empty() {
                out.push('\n');
            }
            write_atomic(&path, out.as_bytes())?;
        }
        Ok(Self { path })
    }

    pub fn append(&self, m: &StepMetrics) -> Result<()> {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        writeln!(f, "{}", serde_json::to_string(m).expect("metrics json")).map_err(|e| Error::io(&self.path, e))
    }

    /// Every recorded step. A last line without its newline (a run killed while appending) is
    /// ignored, as resuming drops it.
    pub fn read(run_dir: &Path) -> Result<Vec<StepMetrics>> {
        let path = run_dir.join(METRICS_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| serde_json::from_str(l).map_err(|e| Error::file(&path, format!("line {}: {e}", i + 1))))
            .collect()
    }
}

/// Follows a run step by step. The application shows it (a bar on a terminal, plain lines in a
/// log); the library only calls it.
pub trait Progress: Reporter {
    /// The run starts (or resumes) at `step` of `total`.
    fn start(&self, step: u64, total: u64);
    /// A step finished.
    fn step(&self, m: &StepMetrics, total: u64);
    /// The run ended (finished or stopped).
    fn finish(&self);
}

impl Progress for Silent {
    fn start(&self, _: u64, _: u64) {}
    fn step(&self, _: &StepMetrics, _: u64) {}
    fn finish(&self) {}
}
