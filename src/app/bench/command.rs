//! The `bench` and `bench-data` command lines: their options as typed values, and the table
//! they print.

use std::process::ExitCode;

use clap::ValueEnum;

use super::{data_throughput, Bench, BenchFeatures, BenchReport};
use crate::app::args::{BackendArg, ConfigArgs};
use crate::data::feature_cache::CacheDtype;
use crate::kernels::backend::dispatch;
use crate::model::precision::Precision;
use crate::model::vit::VitConfig;
use crate::objectives::Objective;
use crate::util::error::{Error, Result};

/// Model shapes the benchmark knows, with the image tokens of their usual encoder.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Preset {
    Tiny,
    Blip2,
}

impl Preset {
    fn name(self) -> &'static str {
        match self {
            Self::Tiny => "tiny",
            Self::Blip2 => "blip2",
        }
    }

    /// The tiny encoder's 64 patches + CLS, ViT-g's 256 + CLS at 224 px.
    fn image_tokens(self) -> usize {
        match self {
            Self::Tiny => 65,
            Self::Blip2 => 257,
        }
    }
}

/// Where each timed step's image features come from (see `--features`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Features {
    Random,
    Encoder,
    CacheF16,
    CacheF32,
}

/// Frozen encoder shapes for `--features encoder`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Encoder {
    EvaG,
    ClipL,
    Tiny,
}

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub backend: BackendArg,
    /// Model shape.
    #[arg(long, value_enum, default_value = "tiny")]
    pub preset: Preset,
    /// Pairs per step.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Image tokens per sample (default: 257 for blip2, 65 for tiny).
    #[arg(long)]
    pub image_tokens: Option<usize>,
    /// Query tokens (default: the preset's, 8 for tiny and 32 for blip2).
    #[arg(long)]
    pub queries: Option<usize>,
    /// Caption length in tokens.
    #[arg(long, default_value_t = 32)]
    pub text_len: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed steps per objective set.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Objective sets separated by ';', e.g. "itc,itm,itg;itc;itm;itg".
    #[arg(long, default_value = "itc,itm,itg;itc;itm;itg")]
    pub sets: String,
    /// Seed of the random features and captions.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Image features per step: random (Q-Former alone), encoder (run the frozen encoder each
    /// step), cache-f16 / cache-f32 (read from a memory-mapped feature cache).
    #[arg(long, value_enum, default_value = "random")]
    pub features: Features,
    /// Encoder shape for --features encoder.
    #[arg(long, value_enum, default_value = "eva-g")]
    pub encoder: Encoder,
    /// Data-parallel peers splitting --batch (threads on CPU backends).
    #[arg(long, default_value_t = 1)]
    pub peers: usize,
    /// The device's peak dense TFLOP/s (e.g. 989 for an H100's bf16, 67 for its f32 without
    /// tensor cores): adds model FLOP utilisation, the step's GFLOP/s against it.
    #[arg(long, value_parser = positive_tflops)]
    pub peak_tflops: Option<f64>,
    /// Precision of the Q-Former's matmuls, as `train.precision`: f32, bf16 or f16 (half needs a
    /// GPU backend).
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: Precision,
}

fn positive_tflops(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a positive number of TFLOP/s")),
    }
}

#[derive(clap::Args)]
pub struct BenchDataArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Batches to time.
    #[arg(long, default_value_t = 20)]
    pub batches: usize,
}

/// `"itc,itm;itg"` as objective sets.
fn parse_sets(sets: &str) -> Result<Vec<Vec<Objective>>> {
    sets.split(';')
        .map(|set| {
            set.split(',')
                .map(|name| {
                    Objective::from_str(name.trim(), false)
                        .map_err(|_| Error::input("--sets", format!("unknown objective `{name}` (itc, itm, itg)")))
                })
                .collect()
        })
        .collect()
}

pub fn run(args: BenchArgs) -> Result<ExitCode> {
    let encoder = args.encoder.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default();
    let (features, label) = match args.features {
        Features::Random => (BenchFeatures::Random, "random".to_string()),
        Features::Encoder => {
            let vit = VitConfig::preset(&encoder).ok_or_else(|| Error::input("--encoder", format!("unknown `{encoder}`")))?;
            (BenchFeatures::Encoder(vit), format!("encoder {encoder}"))
        }
        Features::CacheF16 => (BenchFeatures::Cache(CacheDtype::F16), "cache-f16".to_string()),
        Features::CacheF32 => (BenchFeatures::Cache(CacheDtype::F32), "cache-f32".to_string()),
    };
    let image_tokens = args.image_tokens.unwrap_or(args.preset.image_tokens());
    let job = Bench {
        preset: args.preset.name().to_string(),
        batch: args.batch,
        image_tokens,
        queries: args.queries,
        text_len: args.text_len,
        warmup: args.warmup,
        steps: args.steps,
        sets: parse_sets(&args.sets)?,
        seed: args.seed,
        features,
        peers: args.peers,
        peak_tflops: args.peak_tflops,
        precision: args.precision,
    };
    let backend = args.backend.or_flex();
    if let Some(why) = args.precision.refusal(backend) {
        return Err(Error::input("--precision", why));
    }
    let report = dispatch(backend, job)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).map_err(|e| Error::input("bench", e.to_string()))?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "backend {backend:?} ({:?} matmuls), preset {}, batch {} over {} peer(s), image tokens {image_tokens}, text {}, {} steps, features {label}",
        args.precision,
        args.preset.name(),
        args.batch,
        args.peers,
        args.text_len,
        args.steps
    );
    print!("{}", table(&report, args.peers));
    Ok(ExitCode::SUCCESS)
}

/// The benchmark's table: one row per objective set, then the image K/V saving, the bytes each
/// peer exchanged, and the backend's plain matmul rate.
fn table(report: &BenchReport, peers: usize) -> String {
    let mut out = format!(
        "{:<12} {:>10} {:>10} {:>10} {:>11} {:>12} {:>13} {:>11} {:>9}\n",
        "objectives", "median ms", "min ms", "pairs/s", "forward ms", "backward ms", "optimizer ms", "model GFLOP", "GFLOP/s"
    );
    for r in &report.steps {
        out += &format!(
            "{:<12} {:>10.1} {:>10.1} {:>10.2} {:>11.1} {:>12.1} {:>13.1} {:>11.1} {:>9.1}\n",
            r.objectives, r.median_ms, r.min_ms, r.pairs_per_s, r.forward_ms, r.backward_ms, r.optimizer_ms, r.model_gflop, r.gflops
        );
    }
    for r in &report.steps {
        let device = r.device_mb.map(|mb| format!("device memory {mb:.0} MB"));
        let mfu = r.mfu_percent.map(|p| format!("model FLOP utilisation {p:.1} %"));
        let parts: Vec<String> = device.into_iter().chain(mfu).collect();
        if !parts.is_empty() {
            out += &format!("{}: {}\n", r.objectives, parts.join(", "));
        }
    }
    let kv = &report.image_kv;
    out += &format!(
        "image K/V (ln_vision + cross-attention K/V, fwd+bwd): shared over the step {:.1} ms; per pass as LAVIS (B + 3B images) {:.1} ms; saved {:.1} ms per step\n",
        kv.shared_ms,
        kv.per_pass_ms,
        kv.per_pass_ms - kv.shared_ms
    );
    if peers > 1 {
        for r in &report.steps {
            out += &format!("{}: {:.2} MB all-reduced per peer per step\n", r.objectives, r.bytes_reduced as f64 / 1e6);
        }
    }
    out += &format!("plain 1024^3 f32 matmul through this backend: {:.1} GFLOP/s\n", report.matmul_gflops);
    out
}

pub fn run_data(args: BenchDataArgs) -> Result<ExitCode> {
    let cfg = args.config.load()?;
    let rate = data_throughput(&cfg, args.batches)?;
    println!(
        "data pipeline: {rate:.0} images/s ({} px, batch {}, {} threads)",
        cfg.encoder.image_size,
        cfg.train.batch_size,
        rayon::current_num_threads()
    );
    Ok(ExitCode::SUCCESS)
}
