//! `qformer export`: a trained Q-Former (a checkpoint, or the weights a config's `[init]` names)
//! written for Hugging Face `Blip2ForImageTextRetrieval`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use burn::backend::Flex;

use super::args::ConfigArgs;
use super::console::Console;
use crate::interop::hf::{self, Export};
use crate::train::config::TrainConfig;
use crate::train::trained::Trained;
use crate::util::error::{Error, Result};
use crate::util::report::Reporter;

#[derive(clap::Args)]
pub struct ExportArgs {
    /// A run folder (its latest checkpoint) or a step folder.
    #[arg(long, conflicts_with = "config")]
    pub checkpoint: Option<PathBuf>,
    /// Or a config whose [init] names the weights (e.g. a LAVIS checkpoint).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override a config value: --set section.key=value (repeatable).
    #[arg(long = "set")]
    pub overrides: Vec<String>,
    /// Output format; `hf` is the one there is.
    #[arg(long, default_value = "hf", value_parser = ["hf"])]
    pub format: String,
    /// Folder for the export (model.safetensors, config.json, the sidecar).
    #[arg(long)]
    pub out: PathBuf,
}

/// Writes the export and prints what it holds.
pub fn run(args: ExportArgs) -> Result<ExitCode> {
    let source = match (args.checkpoint, args.config) {
        (Some(dir), None) => ExportSource::Checkpoint(dir),
        (None, Some(path)) => ExportSource::Config(ConfigArgs { config: path, overrides: args.overrides }.load()?),
        _ => return Err(Error::input("export", "pass --checkpoint DIR or --config FILE")),
    };
    let e = write(source, &args.out, &Console::new(1))?;
    let vision =
        if e.vision_included { "vision model included" } else { "no vision model: HF's BLIP-2 vision tower cannot hold a CLIP ViT" };
    println!(
        "wrote {} ({} tensors, {vision}), {} and {} ({} tensors: temperature and ITG head)",
        e.dir.join(hf::MODEL_FILE).display(),
        e.hf_tensors,
        hf::CONFIG_FILE,
        hf::SIDECAR_FILE,
        e.sidecar_tensors
    );
    Ok(ExitCode::SUCCESS)
}

/// Where the weights come from.
pub enum ExportSource {
    /// A run folder (its latest checkpoint) or a step folder.
    Checkpoint(PathBuf),
    /// A config whose `[init]` names the weights (e.g. a LAVIS checkpoint).
    Config(TrainConfig),
}

/// Loads the weights on the CPU and writes the export to `out`.
pub fn write(source: ExportSource, out: &Path, reporter: &dyn Reporter) -> Result<Export> {
    let device = Default::default();
    let trained = match source {
        ExportSource::Checkpoint(dir) => Trained::<Flex>::from_checkpoint(&dir, &device)?,
        ExportSource::Config(cfg) => Trained::<Flex>::from_config(cfg, &device)?,
    };
    if let Some((dir, step)) = &trained.checkpoint {
        reporter.note(&format!("checkpoint {} (step {step})", dir.display()));
    }
    for m in &trained.messages {
        reporter.note(m);
    }
    hf::export(&trained.model, &trained.cfg.model, &trained.vit, &trained.cfg.encoder, out)
}
