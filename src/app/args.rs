//! Argument groups that several subcommands share, so each is declared and applied once.

use std::path::PathBuf;

use crate::kernels::backend::BackendKind;
use crate::kernels::Kernels;
use crate::train::config::TrainConfig;
use crate::train::trained::Trained;
use crate::util::error::Result;

/// `--backend`, on the subcommands that compute.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct BackendArg {
    /// Compute backend (a run's config records it; default: train.backend for configs, flex
    /// for checkpoints and benchmarks).
    #[arg(long, value_enum)]
    pub backend: Option<BackendKind>,
}

impl BackendArg {
    /// The backend for work that has no config: the one named, else flex.
    pub fn or_flex(self) -> BackendKind {
        self.backend.unwrap_or(BackendKind::Flex)
    }

    /// `overrides`, then `--backend` as one more (`train.backend`): the config is validated for
    /// the backend the run will use (half precision, devices), and the run records it.
    pub fn overrides(self, overrides: &[String]) -> Vec<String> {
        let mut all = overrides.to_vec();
        all.extend(self.backend.map(|b| format!("train.backend={}", b.name())));
        all
    }

    /// The config of a subcommand that computes ([`BackendArg::overrides`]).
    pub fn config(self, args: &ConfigArgs) -> Result<TrainConfig> {
        TrainConfig::load(&args.config, &self.overrides(&args.overrides))
    }
}

/// A run's TOML config and the `--set` overrides on top of it.
#[derive(clap::Args, Clone, Debug)]
pub struct ConfigArgs {
    /// The run's TOML config.
    #[arg(long, default_value = "configs/shapes.toml")]
    pub config: PathBuf,
    /// Override a config value: --set section.key=value (repeatable).
    #[arg(long = "set")]
    pub overrides: Vec<String>,
}

impl ConfigArgs {
    pub fn load(&self) -> Result<TrainConfig> {
        TrainConfig::load(&self.config, &self.overrides)
    }
}

/// The model an inference subcommand (`eval`, `caption`) runs: a qformer checkpoint, or weights
/// from elsewhere with a config that supplies the rest (encoder, tokenizer, data).
#[derive(clap::Args, Clone, Debug)]
pub struct ModelArgs {
    /// A run folder (its latest checkpoint), a step folder or `<run>/best`; or weights with
    /// --config: a `qformer export` folder, a LAVIS `.pth`, an HF or qformer `model.safetensors`.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// For weights that are not a qformer checkpoint: the config of the model, encoder,
    /// tokenizer and data (its `[init]` is replaced by the weights).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override a value of --config: --set section.key=value (repeatable).
    #[arg(long = "set", requires = "config")]
    pub overrides: Vec<String>,
}

impl ModelArgs {
    pub fn load<B: Kernels>(&self, device: &B::Device) -> Result<Trained<B>> {
        let config = self.config.as_ref().map(|c| TrainConfig::load(c, &self.overrides)).transpose()?;
        Trained::load(&self.checkpoint, config, device)
    }
}

/// A count of at least one, for the options where zero means nothing sensible.
pub fn at_least_one(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        Ok(_) => Err("must be at least 1".into()),
        Err(e) => Err(e.to_string()),
    }
}
