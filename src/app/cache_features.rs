//! `qformer cache-features`: runs the frozen encoder once over a config's training and held-out
//! images and stores the features in `[data.cache]`, for runs with `data.features = "cache"`.

use std::process::ExitCode;

use super::args::{BackendArg, ConfigArgs};
use super::console::Console;
use crate::data::feature_cache::BuildSummary;
use crate::kernels::backend::{dispatch, BackendJob};
use crate::kernels::TrainBackend;
use crate::train::config::TrainConfig;
use crate::train::frozen_cache::{build_cache, Rebuild};
use crate::train::run::ensure_data;
use crate::util::error::Result;

#[derive(clap::Args)]
pub struct CacheFeaturesArgs {
    #[command(flatten)]
    pub backend: BackendArg,
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Images per encoder forward.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
}

/// Builds the cache of every split and prints one line per split.
pub fn run(args: CacheFeaturesArgs) -> Result<ExitCode> {
    let cfg = args.backend.config(&args.config)?;
    let backend = cfg.train.backend;
    for s in dispatch(backend, CacheFeatures { cfg, batch: args.batch })? {
        let failed =
            if s.failed > 0 { format!(", {} images failed (their records are skipped in training)", s.failed) } else { String::new() };
        println!("{}: {} images, {} rows, {:.1} MB{failed}", s.split, s.images, s.rows, s.bytes as f64 / 1e6);
    }
    Ok(ExitCode::SUCCESS)
}

pub struct CacheFeatures {
    pub cfg: TrainConfig,
    /// Images per encoder forward.
    pub batch: usize,
}

impl BackendJob for CacheFeatures {
    type Output = Vec<BuildSummary>;

    fn run<B: TrainBackend>(self, device: B::Device) -> Result<Vec<BuildSummary>> {
        let console = Console::new(1);
        ensure_data(&self.cfg, &console)?;
        build_cache::<B::InnerBackend>(&self.cfg, &device, self.batch, Rebuild::All, &console)
    }
}
