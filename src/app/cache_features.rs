//! `qformer cache-features`: runs the frozen encoder once over a config's training and held-out
//! images and stores the features in `[data.cache]`, for runs with `data.features = "cache"`.

use burn::tensor::{Tensor, TensorData};

use std::process::ExitCode;

use super::args::{BackendArg, ConfigArgs};
use super::console::Console;
use crate::data::feature_cache::{build, BuildSummary};
use crate::data::loader::Dataset;
use crate::interop::vit::build_encoder;
use crate::kernels::backend::{dispatch, BackendJob};
use crate::kernels::TrainBackend;
use crate::train::config::TrainConfig;
use crate::train::run::ensure_data;
use crate::util::error::{Error, Result};
use crate::util::host::to_f32;

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
        let cfg = self.cfg;
        let d = &cfg.data;
        let cache = d.cache.as_ref().ok_or_else(|| Error::config("data.cache", "no [data.cache] section (dir, dtype, views)", "config"))?;
        ensure_data(&cfg, &Console::new(1))?;
        let (vit, report) = build_encoder::<B::InnerBackend>(&cfg.encoder, &device)?;
        if let Some(r) = report {
            eprintln!("{}", r.summary());
        }
        let s = cfg.encoder.image_size;
        let mut out = Vec::new();
        let splits = [("train", Some(&d.train)), ("eval", d.eval.as_ref())];
        for (split, path) in splits.into_iter().filter_map(|(n, p)| p.map(|p| (n, p))) {
            let data = Dataset::load(path, d.image_root.as_deref())?;
            for skip in &data.skipped {
                eprintln!("skipped {skip}");
            }
            let mut last_report = 0;
            let summary = build(
                cache,
                &cfg.encoder,
                path,
                &d.augment,
                d.max_pixels,
                &data,
                split,
                self.batch,
                |pixels, n| {
                    let feats = vit.forward(Tensor::from_data(TensorData::new(pixels, [n, 3, s, s]), &device));
                    to_f32(feats)
                },
                |done, total| {
                    if done * 10 / total.max(1) > last_report || done == total {
                        last_report = done * 10 / total.max(1);
                        eprintln!("{split}: {done}/{total} images");
                    }
                },
            )?;
            out.push(summary);
        }
        Ok(out)
    }
}
