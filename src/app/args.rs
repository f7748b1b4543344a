//! Argument groups that several subcommands share, so each is declared and applied once.

use std::path::PathBuf;

use crate::kernels::backend::BackendKind;
use crate::train::config::TrainConfig;
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

    /// Writes the backend named on the command line into `cfg` (so the run records it).
    pub fn apply(self, cfg: &mut TrainConfig) -> BackendKind {
        cfg.train.backend = self.backend.unwrap_or(cfg.train.backend);
        cfg.train.backend
    }
}

/// A run's TOML config and the `--set` overrides on top of it.
#[derive(clap::Args, Clone, Debug)]
pub struct ConfigArgs {
    /// The run's TOML config.
    #[arg(long, default_value = "configs/tiny.toml")]
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

/// A count of at least one, for the options where zero means nothing sensible.
pub fn at_least_one(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        Ok(_) => Err("must be at least 1".into()),
        Err(e) => Err(e.to_string()),
    }
}
