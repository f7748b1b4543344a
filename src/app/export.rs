//! `qformer export`: a trained Q-Former (a checkpoint, or the weights a config's `[init]` names)
//! written for Hugging Face `Blip2ForImageTextRetrieval`.

use std::path::{Path, PathBuf};

use burn::backend::Flex;

use crate::interop::hf::{self, Export};
use crate::train::config::TrainConfig;
use crate::train::trained::Trained;
use crate::util::error::Result;
use crate::util::report::Reporter;

/// Where the weights come from.
pub enum ExportSource {
    /// A run folder (its latest checkpoint) or a step folder.
    Checkpoint(PathBuf),
    /// A config whose `[init]` names the weights (e.g. a LAVIS checkpoint).
    Config(TrainConfig),
}

/// Loads the weights on the CPU and writes the export to `out`.
pub fn run(source: ExportSource, out: &Path, reporter: &dyn Reporter) -> Result<Export> {
    let device = Default::default();
    let trained = match source {
        ExportSource::Checkpoint(dir) => Trained::<Flex>::from_checkpoint(&dir, &device)?,
        ExportSource::Config(cfg) => Trained::<Flex>::from_config(cfg, &device)?,
    };
    for m in &trained.messages {
        reporter.note(m);
    }
    hf::export(&trained.model, &trained.cfg.model, &trained.vit, &trained.cfg.encoder, out)
}
