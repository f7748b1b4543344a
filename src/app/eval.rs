//! `qformer eval` and `qformer caption` on a trained checkpoint.

use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;

use super::args::{at_least_one, BackendArg, ModelArgs};
use crate::data::eval_set::EvalSet;
use crate::data::images::{decode, eval_transform};
use crate::data::loader::{Dataset, Transform};
use crate::data::text::TextEncoder;
use crate::eval::caption::{generate, DecodeOptions};
use crate::eval::evaluate::{self, evaluate, EvalOptions, EvalReport};
use crate::eval::retrieval::Recall;
use crate::eval::scoring::image_side;
use crate::kernels::backend::{dispatch, BackendJob};
use crate::kernels::TrainBackend;
use crate::model::frozen::Frozen;
use crate::util::error::{Error, Result};

#[derive(clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub backend: BackendArg,
    #[command(flatten)]
    pub job: EvalJob,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct EvalJob {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Annotations (default: the run's data.eval).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Candidates ITM re-ranks per query (default: the run's eval.k_test).
    #[arg(long, value_parser = at_least_one)]
    pub k_test: Option<usize>,
    /// Images used (all when 0).
    #[arg(long, default_value_t = 0)]
    pub max_images: usize,
    /// Images per forward (default: the run's eval.chunk); lower it when the device runs out of memory.
    #[arg(long, value_parser = at_least_one)]
    pub chunk: Option<usize>,
}

pub fn run_eval(args: EvalArgs) -> Result<ExitCode> {
    let report = dispatch(args.backend.or_flex(), args.job)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).map_err(|e| Error::input("eval", e.to_string()))?);
    } else {
        println!("checkpoint {} (step {})", report.checkpoint.display(), report.step);
        println!("{}", evaluate::table(&report.report));
    }
    Ok(ExitCode::SUCCESS)
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
        let trained = self.model.load::<B::InnerBackend>(&device)?;
        let (checkpoint, step) = trained.checkpoint.clone().unwrap_or_else(|| (self.model.checkpoint.clone(), 0));
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

#[derive(clap::Args)]
pub struct CaptionArgs {
    #[command(flatten)]
    pub backend: BackendArg,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Image files.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Beam width; 1 is greedy decoding.
    #[arg(long, default_value_t = 3, value_parser = at_least_one)]
    pub beams: usize,
    /// Longest caption, in tokens.
    #[arg(long, default_value_t = 30)]
    pub max_len: usize,
    /// Shortest caption, in tokens.
    #[arg(long, default_value_t = 10)]
    pub min_len: usize,
}

/// Prints one tab-separated line per captioned image; fails naming how many could not be.
pub fn run_caption(args: CaptionArgs) -> Result<ExitCode> {
    if args.min_len > args.max_len {
        return Err(Error::input("--min-len", format!("{} is above --max-len ({})", args.min_len, args.max_len)));
    }
    let options = DecodeOptions { beams: args.beams, max_len: args.max_len, min_len: args.min_len, ..DecodeOptions::default() };
    let captions = dispatch(args.backend.or_flex(), CaptionJob { model: args.model, images: args.images, options })?;
    let mut failed = 0;
    for c in &captions {
        match &c.caption {
            Ok(caption) => println!("{}\t{caption}", c.image.display()),
            Err(reason) => {
                eprintln!("{}: cannot caption: {reason}", c.image.display());
                failed += 1;
            }
        }
    }
    if failed > 0 {
        return Err(Error::input(
            "images",
            format!("{failed} of {} images could not be captioned (named above); the others were", captions.len()),
        ));
    }
    Ok(ExitCode::SUCCESS)
}

pub struct CaptionJob {
    pub model: ModelArgs,
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
        let trained = self.model.load::<B::InnerBackend>(&device)?;
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
