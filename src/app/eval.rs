//! `qformer eval` and `qformer caption` on a trained checkpoint.

use std::path::PathBuf;

use serde::Serialize;

use crate::data::images::{decode, eval_transform};
use crate::data::loader::{Dataset, EvalSet, Transform};
use crate::data::text::TextEncoder;
use crate::eval::caption::{generate, DecodeOptions};
use crate::eval::evaluate::{evaluate, EvalOptions, EvalReport};
use crate::eval::retrieval::Recall;
use crate::eval::scoring::image_side;
use crate::kernels::backend::BackendJob;
use crate::kernels::TrainBackend;
use crate::model::frozen::Frozen;
use crate::train::trained::Trained;
use crate::util::error::{Error, Result};

pub struct EvalJob {
    pub checkpoint: PathBuf,
    /// Annotations to evaluate on (default: the run's `data.eval`).
    pub data: Option<PathBuf>,
    /// Candidates ITM re-ranks per query (default: the run's `eval.k_test`); at least 1.
    pub k_test: Option<usize>,
    /// Images used (all when 0).
    pub max_images: usize,
    /// Images per forward (default: the run's `eval.chunk`); bounds device memory.
    pub chunk: Option<usize>,
}

/// What `qformer eval` reports: which checkpoint (folder and step), the evaluation, and the means
/// of its recalls (LAVIS's `txt_r_mean`, `img_r_mean`, `r_mean`).
#[derive(Debug, Serialize)]
pub struct EvalOutcome {
    pub checkpoint: PathBuf,
    pub step: u64,
    #[serde(flatten)]
    pub report: EvalReport,
    pub means: Means,
}

#[derive(Debug, Serialize)]
pub struct Means {
    pub itc: RecallMeans,
    pub itm: RecallMeans,
}

#[derive(Debug, Serialize)]
pub struct RecallMeans {
    pub i2t_mean: f64,
    pub t2i_mean: f64,
    pub mean: f64,
}

impl From<&Recall> for RecallMeans {
    fn from(r: &Recall) -> Self {
        Self { i2t_mean: r.i2t_mean(), t2i_mean: r.t2i_mean(), mean: r.mean() }
    }
}

impl BackendJob for EvalJob {
    type Output = EvalOutcome;

    fn run<B: TrainBackend>(self, device: B::Device) -> Result<EvalOutcome> {
        let trained = Trained::<B::InnerBackend>::from_checkpoint(&self.checkpoint, &device)?;
        let (checkpoint, step) = trained.checkpoint.clone().expect("loaded from a checkpoint");
        for m in &trained.messages {
            eprintln!("{m}");
        }
        let cfg = &trained.cfg;
        let k_test = self.k_test.unwrap_or(cfg.eval.k_test);
        if k_test == 0 {
            return Err(Error::config("--k-test", "must be at least 1", "command line"));
        }
        let path = self
            .data
            .or_else(|| cfg.data.eval.clone())
            .ok_or_else(|| Error::config("data.eval", "the run has no held-out set: pass --data", "command line"))?;
        let text = TextEncoder::load(&cfg.text.tokenizer, cfg.text.max_len, cfg.text.max_words)?;
        let data = Dataset::load(&path, cfg.data.image_root.as_deref())?;
        let transform =
            Transform { image_size: cfg.encoder.image_size as u32, max_pixels: cfg.data.max_pixels, augment: None, cache: None };
        let set = EvalSet::load(&data, &text, &transform, self.max_images)?;
        for s in data.skipped.iter().chain(&set.skipped) {
            eprintln!("skipped {s}");
        }
        let frozen = Frozen::Encoder { vit: trained.vit, image_size: cfg.encoder.image_size };
        let opts = EvalOptions {
            k_test: k_test.max(1),
            chunk: self.chunk.unwrap_or(cfg.eval.chunk).max(1),
            seed: cfg.eval.seed,
            captions: Some(&text),
        };
        let report = evaluate(&trained.model, &frozen, &set, &opts)?;
        let means = Means { itc: (&report.itc).into(), itm: (&report.itm).into() };
        Ok(EvalOutcome { checkpoint, step, report, means })
    }
}

pub struct CaptionJob {
    pub checkpoint: PathBuf,
    pub images: Vec<PathBuf>,
    pub options: DecodeOptions,
}

/// One image's caption, or why it has none (an unreadable image does not stop the others).
#[derive(Debug, Serialize)]
pub struct Caption {
    pub image: PathBuf,
    pub caption: std::result::Result<String, String>,
}

impl BackendJob for CaptionJob {
    type Output = Vec<Caption>;

    fn run<B: TrainBackend>(self, device: B::Device) -> Result<Vec<Caption>> {
        let trained = Trained::<B::InnerBackend>::from_checkpoint(&self.checkpoint, &device)?;
        let cfg = &trained.cfg;
        let text = TextEncoder::load(&cfg.text.tokenizer, cfg.text.max_len, cfg.text.max_words)?;
        let eos = text.token_id("[SEP]").ok_or_else(|| Error::file(&cfg.text.tokenizer, "vocabulary lacks [SEP]"))?;
        let size = cfg.encoder.image_size;
        let frozen = Frozen::Encoder { vit: trained.vit, image_size: size };
        let mut out = Vec::with_capacity(self.images.len());
        for image in self.images {
            let img = match std::fs::read(&image).map_err(|e| e.to_string()).and_then(|bytes| decode(&bytes, cfg.data.max_pixels)) {
                Ok(img) => img,
                Err(reason) => {
                    out.push(Caption { image, caption: Err(reason) });
                    continue;
                }
            };
            let side = image_side(&trained.model, frozen.features(eval_transform(&img, size as u32), &device));
            let ids = generate(&trained.model, &side.query_kv, eos, &self.options);
            out.push(Caption { image, caption: Ok(text.decode(&ids)?) });
        }
        Ok(out)
    }
}
