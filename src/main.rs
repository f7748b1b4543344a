//! The `qformer` command line: thin shells over library functions.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use qformer::app::ablate::ablate;
use qformer::app::bench::{Bench, BenchFeatures};
use qformer::app::cache_features::CacheFeatures;
use qformer::app::check_loss::CheckLoss;
use qformer::app::console::Console;
use qformer::app::eval::{CaptionJob, EvalJob};
use qformer::app::export::{self, ExportSource};
use qformer::data::feature_cache::CacheDtype;
use qformer::data::synth;
use qformer::eval::caption::DecodeOptions;
use qformer::eval::evaluate;
use qformer::interop::hf;
use qformer::kernels::backend::{dispatch, BackendKind};
use qformer::model::vit::VitConfig;
use qformer::objectives::{ItcGradient, Objective};
use qformer::train::checkpoint;
use qformer::train::config::TrainConfig;
use qformer::train::metrics::Progress;
use qformer::train::run::TrainJob;

#[derive(Parser)]
#[command(name = "qformer", version, about = "BLIP-2 Q-Former stage-one trainer")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `--backend`, on the subcommands that compute.
#[derive(clap::Args, Clone, Copy)]
struct Backend {
    /// Compute backend (training: overrides train.backend, and is recorded in the run's config; default flex elsewhere).
    #[arg(long, value_enum)]
    backend: Option<BackendKind>,
}

impl Backend {
    fn or_flex(self) -> BackendKind {
        self.backend.unwrap_or(BackendKind::Flex)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Train a Q-Former from a TOML config (default: the tiny run on generated shapes).
    Train {
        #[command(flatten)]
        backend: Backend,
        /// The run's TOML config.
        #[arg(long, default_value = "configs/tiny.toml")]
        config: PathBuf,
        /// Override a config value: --set section.key=value (repeatable).
        #[arg(long = "set")]
        overrides: Vec<String>,
        /// Continue a run: its folder under checkpoints/, a step folder, `latest` for this config's
        /// run, or `auto`: `latest` when the run has a checkpoint, a fresh start otherwise (one
        /// command line for a job that a scheduler restarts).
        #[arg(long)]
        resume: Option<PathBuf>,
        /// Start afresh in a run folder that already holds a run, removing that run's checkpoints and metrics.
        #[arg(long, conflicts_with = "resume")]
        overwrite: bool,
    },
    /// Run the orchestrator that the nodes of a multi-machine run meet at (`[distributed]`
    /// `orchestrator = "ws://HOST:PORT"`). Start it with the run, and again after a failure.
    Orchestrator {
        /// Port to listen on.
        #[arg(long, default_value_t = 3000)]
        port: u16,
    },
    /// Run objective ablations of a config and write a table of losses and held-out R@1.
    Ablate {
        #[command(flatten)]
        backend: Backend,
        /// The run's TOML config.
        #[arg(long, default_value = "configs/tiny.toml")]
        config: PathBuf,
        /// Variants: all, no-itc, no-itm, no-itg, itc-only, itm-only, itg-only.
        #[arg(long, value_delimiter = ',', default_value = "all,no-itc,no-itm,no-itg")]
        variants: Vec<String>,
        /// Seeds to train each variant with (train.seed), comma separated.
        #[arg(long, value_delimiter = ',', default_value = "0")]
        seeds: Vec<u64>,
        /// Override a config value: --set section.key=value (repeatable).
        #[arg(long = "set")]
        overrides: Vec<String>,
        /// Replace variants' runs left in their folders by an earlier sweep.
        #[arg(long)]
        overwrite: bool,
    },
    /// Measure the data pipeline alone: images/s delivered by the loader for a config.
    BenchData {
        /// The run's TOML config.
        #[arg(long, default_value = "configs/tiny.toml")]
        config: PathBuf,
        /// Override a config value: --set section.key=value (repeatable).
        #[arg(long = "set")]
        overrides: Vec<String>,
        /// Batches to time.
        #[arg(long, default_value_t = 20)]
        batches: usize,
    },
    /// Generate the synthetic shapes data set (train.json, eval.json, images/).
    Synth {
        /// Folder to write train.json, eval.json and images/ into.
        #[arg(long)]
        out: PathBuf,
        /// Training scenes.
        #[arg(long, default_value_t = 4000)]
        n: usize,
        /// Held-out scenes.
        #[arg(long, default_value_t = 500)]
        n_eval: usize,
        /// Image side in pixels.
        #[arg(long, default_value_t = 64)]
        size: u32,
        /// Seed of the scenes (the same seed gives the same set).
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Evaluate the stage-one loss of given weights on a given batch (eval mode) and print JSON.
    CheckLoss {
        #[command(flatten)]
        backend: Backend,
        /// Q-Former weights (safetensors, HF names; shapes from the `config` metadata).
        #[arg(long)]
        weights: PathBuf,
        /// Batch safetensors: image_feats, input_ids, attention_mask [, neg_image_idx, neg_text_idx, image_ids].
        #[arg(long)]
        batch: PathBuf,
        /// The model shape for weights without config metadata: a TOML [model] table or a JSON config (HF config.json too).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Also write d(loss)/d(parameter) for every parameter here.
        #[arg(long)]
        grads: Option<PathBuf>,
        /// Objectives to include, comma separated.
        #[arg(long, default_value = "itc,itm,itg", value_delimiter = ',', value_parser = parse_objective)]
        objectives: Vec<Objective>,
        /// ITC gradient variant: detached (LAVIS) or full.
        #[arg(long, default_value = "detached", value_parser = parse_itc_gradient)]
        itc_gradient: ItcGradient,
        /// Sample negatives with this seed when the batch has none (default: hardest negative).
        #[arg(long)]
        sample_seed: Option<u64>,
    },
    /// Run the frozen encoder once over a config's images and store the features in [data.cache].
    CacheFeatures {
        #[command(flatten)]
        backend: Backend,
        /// The run's TOML config.
        #[arg(long, default_value = "configs/tiny.toml")]
        config: PathBuf,
        /// Override a config value: --set section.key=value (repeatable).
        #[arg(long = "set")]
        overrides: Vec<String>,
        /// Images per encoder forward.
        #[arg(long, default_value_t = 32)]
        batch: usize,
    },
    /// Evaluate a checkpoint on held-out data: ITC and ITM re-ranked retrieval, ITM accuracy, ITG
    /// perplexity.
    Eval {
        #[command(flatten)]
        backend: Backend,
        /// A run folder (its latest checkpoint), a step folder, or `<run>/best`.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Annotations (default: the run's data.eval).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Candidates ITM re-ranks per query (default: the run's eval.k_test).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        k_test: Option<u64>,
        /// Images used (all when 0).
        #[arg(long, default_value_t = 0)]
        max_images: usize,
        /// Images per forward (default: the run's eval.chunk); lower it when the device runs out of memory.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        chunk: Option<u64>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Caption images with the ITG decoder of a checkpoint.
    Caption {
        #[command(flatten)]
        backend: Backend,
        /// A run folder (its latest checkpoint), a step folder, or `<run>/best`.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Image files.
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Beam width; 1 is greedy decoding.
        #[arg(long, default_value_t = 3)]
        beams: usize,
        /// Longest caption, in tokens.
        #[arg(long, default_value_t = 30)]
        max_len: usize,
        /// Shortest caption, in tokens.
        #[arg(long, default_value_t = 10)]
        min_len: usize,
    },
    /// Plot runs' curves (losses, lr, temperature, held-out retrieval) into one PNG, overlaid, with
    /// a markdown summary table.
    Report {
        /// Run folders (each with its metrics.jsonl).
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// Folder for report.png and report.md.
        #[arg(long, default_value = "report")]
        out: PathBuf,
    },
    /// Export a trained Q-Former for Hugging Face `Blip2ForImageTextRetrieval`.
    Export {
        /// A run folder (its latest checkpoint) or a step folder.
        #[arg(long, conflicts_with = "config")]
        checkpoint: Option<PathBuf>,
        /// Or a config whose [init] names the weights (e.g. a LAVIS checkpoint).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override a config value: --set section.key=value (repeatable).
        #[arg(long = "set")]
        overrides: Vec<String>,
        /// Output format; `hf` is the one there is.
        #[arg(long, default_value = "hf", value_parser = ["hf"])]
        format: String,
        /// Folder for the export (model.safetensors, config.json, the sidecar).
        #[arg(long)]
        out: PathBuf,
    },
    /// Time training steps (loss, backward, AdamW) on random features.
    Bench {
        #[command(flatten)]
        backend: Backend,
        /// Model shape: tiny or blip2.
        #[arg(long, default_value = "tiny")]
        preset: String,
        /// Pairs per step.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Image tokens per sample (default: 257 for blip2, 65 for tiny).
        #[arg(long)]
        image_tokens: Option<usize>,
        /// Query tokens (default: the preset's, 8 for tiny and 32 for blip2).
        #[arg(long)]
        queries: Option<usize>,
        /// Caption length in tokens.
        #[arg(long, default_value_t = 32)]
        text_len: usize,
        /// Untimed steps first.
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        /// Timed steps per objective set.
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// Objective sets separated by ';', e.g. "itc,itm,itg;itc;itm;itg".
        #[arg(long, default_value = "itc,itm,itg;itc;itm;itg")]
        sets: String,
        /// Seed of the random features and captions.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Image features per step: random (Q-Former alone), encoder (run the frozen encoder
        /// each step), cache-f16 / cache-f32 (read from a memory-mapped feature cache).
        #[arg(long, default_value = "random", value_parser = ["random", "encoder", "cache-f16", "cache-f32"])]
        features: String,
        /// Encoder shape for --features encoder: eva-g, clip-l or tiny.
        #[arg(long, default_value = "eva-g")]
        encoder: String,
        /// Data-parallel peers splitting --batch (threads on CPU backends).
        #[arg(long, default_value_t = 1)]
        peers: usize,
    },
}

fn parse_objective(s: &str) -> Result<Objective, String> {
    match s.trim() {
        "itc" => Ok(Objective::Itc),
        "itm" => Ok(Objective::Itm),
        "itg" => Ok(Objective::Itg),
        other => Err(format!("unknown objective `{other}` (itc, itm, itg)")),
    }
}

fn parse_itc_gradient(s: &str) -> Result<ItcGradient, String> {
    match s {
        "detached" => Ok(ItcGradient::Detached),
        "full" => Ok(ItcGradient::Full),
        other => Err(format!("unknown ITC gradient variant `{other}` (detached, full)")),
    }
}

/// The run's name: `train.run_name`, else the config file's stem.
fn run_name(cfg: &TrainConfig, config: &std::path::Path) -> String {
    cfg.train.run_name.clone().unwrap_or_else(|| config.file_stem().and_then(|s| s.to_str()).unwrap_or("run").to_string())
}

/// Exit status of a run stopped by SIGINT or SIGTERM after checkpointing its step.
const STOPPED_STATUS: i32 = 130;
/// Exit status when a second signal stops a run at once (its last checkpoint stays intact).
const KILLED_STATUS: i32 = 143;

/// The first SIGINT or SIGTERM sets the returned flag (the run finishes its step, checkpoints and
/// stops); a second one ends the process at once.
fn stop_on_signals() -> Result<Arc<std::sync::atomic::AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        // Registered first, so it sees the flag as the previous signal left it.
        signal_hook::flag::register_conditional_shutdown(signal, KILLED_STATUS, Arc::clone(&stop))?;
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    Ok(stop)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Train { backend, config, overrides, resume, overwrite } => {
            let mut cfg = TrainConfig::load(&config, &overrides)?;
            cfg.train.backend = backend.backend.unwrap_or(cfg.train.backend);
            let name = run_name(&cfg, &config);
            let run_dir = cfg.checkpoint.dir.join(&name);
            let (resume, overwrite) = match resume {
                Some(r) if r.as_os_str() == "latest" => (Some(run_dir), overwrite),
                // Resume when a checkpoint exists; otherwise start fresh, replacing what an
                // attempt that never reached its first checkpoint left.
                Some(r) if r.as_os_str() == "auto" => match checkpoint::resolve(&run_dir) {
                    Ok(_) => (Some(run_dir), false),
                    Err(_) => (None, true),
                },
                other => (other, overwrite),
            };
            let backend = cfg.train.backend;
            let console = Arc::new(Console::new(cfg.log.every));
            let stop = stop_on_signals()?;
            let job = TrainJob::new(cfg, name, resume).reporting(console.clone()).overwriting(overwrite).stopping_on(stop);
            let outcome = dispatch(backend, job);
            console.finish();
            let outcome = outcome.context("training failed")?;
            if outcome.stopped {
                eprintln!("stopped at step {}; resume with --resume latest", outcome.steps);
                std::process::exit(STOPPED_STATUS);
            }
            println!("finished {} steps; run folder {}", outcome.steps, outcome.run_dir.display());
            println!("final: {}", outcome.last.summary());
            if let Some(r) = outcome.recall {
                println!(
                    "held-out retrieval: i2t R@1 {:.1} R@5 {:.1} R@10 {:.1} | t2i R@1 {:.1} R@5 {:.1} R@10 {:.1}",
                    r.i2t_r1, r.i2t_r5, r.i2t_r10, r.t2i_r1, r.t2i_r5, r.t2i_r10
                );
            }
        }
        Command::Ablate { backend: choice, config, variants, seeds, overrides, overwrite } => {
            let (dir, table) = ablate(&config, &overrides, &variants, &seeds, |mut cfg, name| {
                cfg.train.backend = choice.backend.unwrap_or(cfg.train.backend);
                let backend = cfg.train.backend;
                let console = Arc::new(Console::new(cfg.log.every));
                let outcome = dispatch(backend, TrainJob::new(cfg, name, None).reporting(console.clone()).overwriting(overwrite));
                console.finish();
                outcome
            })?;
            println!("{table}");
            println!("written to {0}/ablation.md, ablation.csv, report.png and report.md", dir.display());
        }
        Command::BenchData { config, overrides, batches } => {
            let cfg = TrainConfig::load(&config, &overrides)?;
            let rate = qformer::app::bench::data_throughput(&cfg, batches)?;
            println!(
                "data pipeline: {rate:.0} images/s ({} px, batch {}, {} threads)",
                cfg.encoder.image_size,
                cfg.train.batch_size,
                rayon::current_num_threads()
            );
        }
        Command::Synth { out, n, n_eval, size, seed } => {
            let (train, eval) = synth::generate(&out, n, n_eval, size, seed)?;
            println!("wrote {} and {}", train.display(), eval.display());
        }
        Command::CheckLoss { backend, weights, batch, config, grads, objectives, itc_gradient, sample_seed } => {
            if objectives.is_empty() {
                bail!("--objectives: name at least one of itc, itm, itg");
            }
            let job = CheckLoss { weights, batch, config, grads, objectives, itc_gradient, sample_seed };
            let report = dispatch(backend.or_flex(), job).context("check-loss failed")?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Command::CacheFeatures { backend, config, overrides, batch } => {
            let mut cfg = TrainConfig::load(&config, &overrides)?;
            cfg.train.backend = backend.backend.unwrap_or(cfg.train.backend);
            let backend = cfg.train.backend;
            for s in dispatch(backend, CacheFeatures { cfg, batch }).context("cache-features failed")? {
                println!(
                    "{}: {} images, {} rows, {:.1} MB{}",
                    s.split,
                    s.images,
                    s.rows,
                    s.bytes as f64 / 1e6,
                    if s.failed > 0 {
                        format!(", {} images failed (their records are skipped in training)", s.failed)
                    } else {
                        String::new()
                    }
                );
            }
        }
        Command::Eval { backend, checkpoint, data, k_test, max_images, chunk, json } => {
            let (k_test, chunk) = (k_test.map(|k| k as usize), chunk.map(|c| c as usize));
            let report = dispatch(backend.or_flex(), EvalJob { checkpoint, data, k_test, max_images, chunk }).context("eval failed")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("checkpoint {} (step {})", report.checkpoint.display(), report.step);
                println!("{}", evaluate::table(&report.report));
            }
        }
        Command::Caption { backend, checkpoint, images, beams, max_len, min_len } => {
            let options = DecodeOptions { beams, max_len, min_len, ..DecodeOptions::default() };
            let captions = dispatch(backend.or_flex(), CaptionJob { checkpoint, images, options }).context("caption failed")?;
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
                bail!("{failed} of {} images could not be captioned (named above); the others were", captions.len());
            }
        }
        Command::Report { runs, out } => {
            let (png, md) = qformer::app::report::write(&runs, &out)?;
            println!("wrote {} and {}", png.display(), md.display());
        }
        Command::Export { checkpoint, config, overrides, format: _, out } => {
            let source = match (checkpoint, config) {
                (Some(dir), None) => ExportSource::Checkpoint(dir),
                (None, Some(path)) => ExportSource::Config(TrainConfig::load(&path, &overrides)?),
                _ => bail!("pass --checkpoint DIR or --config FILE"),
            };
            let e = export::run(source, &out, &Console::new(1))?;
            println!(
                "wrote {} ({} tensors, {}), {} and {} ({} tensors: temperature and ITG head)",
                e.dir.join(hf::MODEL_FILE).display(),
                e.hf_tensors,
                if e.vision_included {
                    "vision model included"
                } else {
                    "no vision model: HF's BLIP-2 vision tower cannot hold a CLIP ViT"
                },
                hf::CONFIG_FILE,
                hf::SIDECAR_FILE,
                e.sidecar_tensors
            );
        }
        Command::Orchestrator { port } => {
            eprintln!("orchestrator listening on port {port}; Ctrl-C stops it");
            qformer::app::orchestrator::serve(port).context("orchestrator failed")?;
        }
        Command::Bench {
            backend,
            preset,
            batch,
            image_tokens,
            queries,
            text_len,
            warmup,
            steps,
            sets,
            seed,
            json,
            features,
            encoder,
            peers,
        } => {
            let label = if features == "encoder" { format!("encoder {encoder}") } else { features.clone() };
            let features = match features.as_str() {
                "encoder" => BenchFeatures::Encoder(
                    VitConfig::preset(&encoder).with_context(|| format!("--encoder: unknown `{encoder}` (eva-g, clip-l, tiny)"))?,
                ),
                "cache-f16" => BenchFeatures::Cache(CacheDtype::F16),
                "cache-f32" => BenchFeatures::Cache(CacheDtype::F32),
                _ => BenchFeatures::Random,
            };
            let sets = sets
                .split(';')
                .map(|set| set.split(',').map(parse_objective).collect::<Result<Vec<_>, _>>().map_err(anyhow::Error::msg))
                .collect::<Result<Vec<_>>>()?;
            let image_tokens = image_tokens.unwrap_or(if preset == "blip2" { 257 } else { 65 });
            let job = Bench { preset: preset.clone(), batch, image_tokens, queries, text_len, warmup, steps, sets, seed, features, peers };
            let report = dispatch(backend.or_flex(), job).context("bench failed")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "backend {:?}, preset {preset}, batch {batch} over {peers} peer(s), image tokens {image_tokens}, text {text_len}, {steps} steps, features {label}",
                    backend.or_flex()
                );
                println!(
                    "{:<12} {:>10} {:>10} {:>10} {:>11} {:>12} {:>13} {:>11} {:>9}",
                    "objectives", "median ms", "min ms", "pairs/s", "forward ms", "backward ms", "optimizer ms", "model GFLOP", "GFLOP/s"
                );
                for r in &report.steps {
                    println!(
                        "{:<12} {:>10.1} {:>10.1} {:>10.2} {:>11.1} {:>12.1} {:>13.1} {:>11.1} {:>9.1}",
                        r.objectives,
                        r.median_ms,
                        r.min_ms,
                        r.pairs_per_s,
                        r.forward_ms,
                        r.backward_ms,
                        r.optimizer_ms,
                        r.model_gflop,
                        r.gflops
                    );
                }
                let kv = &report.image_kv;
                println!(
                    "image K/V (ln_vision + cross-attention K/V, fwd+bwd): shared over the step {:.1} ms; per pass as LAVIS (B + 3B images) {:.1} ms; saved {:.1} ms per step",
                    kv.shared_ms,
                    kv.per_pass_ms,
                    kv.per_pass_ms - kv.shared_ms
                );
                if peers > 1 {
                    for r in &report.steps {
                        println!("{}: {:.2} MB all-reduced per peer per step", r.objectives, r.bytes_reduced as f64 / 1e6);
                    }
                }
                println!("plain 1024^3 f32 matmul through this backend: {:.1} GFLOP/s", report.matmul_gflops);
            }
        }
    }
    Ok(())
}
