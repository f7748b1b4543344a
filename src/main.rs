//! The `qformer` command line: one line per subcommand, dispatching to its job in `app/`.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use qformer::app::{ablate, bench, cache_features, check_loss, eval, export, orchestrator, report, synth, train};

#[derive(Parser)]
#[command(name = "qformer", version, about = "BLIP-2 Q-Former stage-one trainer")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a Q-Former from a TOML config (default: the tiny run on generated shapes).
    Train(train::TrainArgs),
    /// Run the orchestrator that the nodes of a multi-machine run meet at (`[distributed]`
    /// `orchestrator = "ws://HOST:PORT"`). Start it with the run, and again after a failure.
    Orchestrator(orchestrator::OrchestratorArgs),
    /// Run objective ablations of a config and write a table of losses and held-out R@1.
    Ablate(ablate::AblateArgs),
    /// Measure the data pipeline alone: images/s delivered by the loader for a config.
    BenchData(bench::command::BenchDataArgs),
    /// Generate the synthetic shapes data set (train.json, eval.json, images/).
    Synth(synth::SynthArgs),
    /// Evaluate the stage-one loss of given weights on a given batch (eval mode) and print JSON.
    CheckLoss(check_loss::CheckLossArgs),
    /// Run the frozen encoder once over a config's images and store the features in [data.cache].
    CacheFeatures(cache_features::CacheFeaturesArgs),
    /// Evaluate a checkpoint on held-out data: ITC and ITM re-ranked retrieval, ITM accuracy, ITG
    /// perplexity.
    Eval(eval::EvalArgs),
    /// Caption images with the ITG decoder of a checkpoint.
    Caption(eval::CaptionArgs),
    /// Plot runs' curves (losses, lr, temperature, held-out retrieval) into one PNG, overlaid, with
    /// a markdown summary table.
    Report(report::ReportArgs),
    /// Export a trained Q-Former for Hugging Face `Blip2ForImageTextRetrieval`.
    Export(export::ExportArgs),
    /// Time training steps (loss, backward, AdamW) on random features.
    Bench(bench::command::BenchArgs),
}

fn main() -> Result<ExitCode> {
    let cli = Cli::parse();
    qformer::app::console::init_logging();
    let status = match cli.command {
        Command::Train(args) => train::run(args).context("training failed")?,
        Command::Orchestrator(args) => orchestrator::run(args).context("orchestrator failed")?,
        Command::Ablate(args) => ablate::run(args).context("ablation failed")?,
        Command::BenchData(args) => bench::command::run_data(args).context("bench-data failed")?,
        Command::Synth(args) => synth::run(args).context("synth failed")?,
        Command::CheckLoss(args) => check_loss::run(args).context("check-loss failed")?,
        Command::CacheFeatures(args) => cache_features::run(args).context("cache-features failed")?,
        Command::Eval(args) => eval::run_eval(args).context("eval failed")?,
        Command::Caption(args) => eval::run_caption(args).context("caption failed")?,
        Command::Report(args) => report::run(args).context("report failed")?,
        Command::Export(args) => export::run(args).context("export failed")?,
        Command::Bench(args) => bench::command::run(args).context("bench failed")?,
    };
    Ok(status)
}
