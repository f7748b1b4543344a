//! Builds the frozen-feature cache that `[data.cache]` names: the encoder run once over every
//! image of the training and held-out splits. `qformer cache-features` builds it on request; a
//! single-node run with `data.features = "cache"` builds the splits whose cache is missing, so
//! that a cached run is one command like any other.

use burn::tensor::{Tensor, TensorData};

use crate::data::feature_cache::{build, is_built, BuildSummary};
use crate::data::loader::Dataset;
use crate::interop::vit::build_encoder;
use crate::kernels::Kernels;
use crate::train::config::TrainConfig;
use crate::util::error::{Error, Result};
use crate::util::host::to_f32;
use crate::util::report::Reporter;

/// Which splits to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rebuild {
    /// Every split, replacing what is there.
    All,
    /// Only the splits with no cache yet; an existing one is left to be checked when opened.
    Missing,
}

/// Runs the frozen encoder over the training and held-out images, `batch` images per forward,
/// and writes each split's cache; one summary per split built.
pub fn build_cache<B: Kernels>(
    cfg: &TrainConfig,
    device: &B::Device,
    batch: usize,
    which: Rebuild,
    reporter: &dyn Reporter,
) -> Result<Vec<BuildSummary>> {
    let d = &cfg.data;
    let cache = d.cache.as_ref().ok_or_else(|| Error::config("data.cache", "no [data.cache] section (dir, dtype, views)", "config"))?;
    let splits: Vec<_> = [("train", Some(&d.train)), ("eval", d.eval.as_ref())]
        .into_iter()
        .filter_map(|(n, p)| p.map(|p| (n, p)))
        .filter(|(n, _)| which == Rebuild::All || !is_built(cache, n))
        .collect();
    if splits.is_empty() {
        return Ok(Vec::new());
    }
    let (vit, report) = build_encoder::<B>(&cfg.encoder, device)?;
    if let Some(r) = report {
        reporter.note(&r.summary());
    }
    let s = cfg.encoder.image_size;
    let mut out = Vec::new();
    for (split, path) in splits {
        let data = Dataset::load(path, d.image_root.as_deref())?;
        for skip in &data.skipped {
            reporter.note(&format!("skipped {skip}"));
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
            batch,
            |pixels, n| to_f32(vit.forward(Tensor::from_data(TensorData::new(pixels, [n, 3, s, s]), device))),
            |done, total| {
                if done * 10 / total.max(1) > last_report || done == total {
                    last_report = done * 10 / total.max(1);
                    reporter.note(&format!("feature cache, {split}: {done}/{total} images"));
                }
            },
        )?;
        out.push(summary);
    }
    Ok(out)
}
