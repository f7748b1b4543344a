//! `metrics.jsonl` (one JSON object per step, every loss term separately) and the progress display:
//! an indicatif bar on a terminal, plain lines every N steps otherwise (CI, nohup).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::eval::evaluate::EvalReport;
use crate::eval::retrieval::Recall;

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
    pub lr: f64,
    pub temp: f64,
    #[serde(deserialize_with = "null_is_nan")]
    pub grad_norm: f64,
    pub pairs_per_s: f64,
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
    pub fn summary(&self) -> String {
        let term = |name: &str, v: Option<f64>| v.map_or(String::new(), |v| format!(" {name} {v:.3}"));
        format!(
            "loss {:.3}{}{}{} lr {:.2e} temp {:.4} {:.1} pairs/s",
            self.loss,
            term("itc", self.loss_itc),
            term("itm", self.loss_itm),
            term("itg", self.loss_itg),
            self.lr,
            self.temp,
            self.pairs_per_s
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
        let path = run_dir.join("metrics.jsonl");
        if path.exists() {
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let kept: Vec<&str> = text
                .lines()
                .filter(|l| serde_json::from_str::<StepMetrics>(l).is_ok_and(|m| m.step <= resume_step))
                .collect();
            let mut out = kept.join("\n");
            if !out.is_empty() {
                out.push('\n');
            }
            crate::train::checkpoint::write_atomic_text(&path, &out)?;
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
        let path = run_dir.join("metrics.jsonl");
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

pub struct Progress {
    bar: Option<ProgressBar>,
    every: u64,
}

impl Progress {
    pub fn new(start: u64, total: u64, every: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}").expect("template"),
            );
            bar.set_position(start);
            bar
        });
        Self { bar, every }
    }

    pub fn step(&self, m: &StepMetrics, total: u64) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(m.step);
                bar.set_message(m.summary());
            }
            None if m.step % self.every == 0 || m.step == total => eprintln!("step {}/{total} {}", m.step, m.summary()),
            None => {}
        }
    }

    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
