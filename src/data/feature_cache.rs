//! Frozen-feature cache: the frozen encoder's outputs (the input of `ln_vision`) computed once per
//! image and stored in a memory-mapped file, so that training never runs the encoder. Either the
//! eval transform once per image (`views = 0`) or K training-augmented views per image, of which
//! each sample draws one from its (seed, position) stream.
//!
//! On disk, per split (`train`, `eval`): `SPLIT.bin`, rows of `[tokens, width]` values (f16 or
//! f32, little-endian) in image order, and `SPLIT.json`, the index: the encoder config, transform
//! and annotations it was built from, and each image's first row. Both are written to temporary
//! names and renamed, index last, so a half-built cache is never taken for a whole one.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::annotations::{ImageSource, Record};
use super::dataset::Dataset;
use super::images::{decode, eval_transform, train_transform, AugmentConfig};
use crate::model::vit::VitConfig;
use crate::util::error::{Error, Result};
use crate::util::fs::{write_atomic, write_atomic_with};
use crate::util::seed::mix;

/// Where a run's image features come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeatureSource {
    /// Decode images and run the frozen encoder every step.
    #[default]
    Images,
    /// Read features from `data.cache` (built by `qformer cache-features`).
    Cache,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheDtype {
    /// Half the size; features round to about 3 significant digits.
    #[default]
    F16,
    F32,
}

impl CacheDtype {
    fn bytes(self) -> usize {
        match self {
            CacheDtype::F16 => 2,
            CacheDtype::F32 => 4,
        }
    }
}

/// The `[data.cache]` config section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    pub dir: PathBuf,
    #[serde(default)]
    pub dtype: CacheDtype,
    /// 0: the eval transform, once per image. K > 0: K views under `data.augment`.
    #[serde(default)]
    pub views: usize,
    /// Seed of the augmented views.
    #[serde(default)]
    pub seed: u64,
}

/// What a cache was built from; a run whose config differs is refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Provenance {
    encoder: VitConfig,
    annotations: PathBuf,
    views: usize,
    seed: u64,
    augment: Option<AugmentConfig>,
    dtype: CacheDtype,
}

#[derive(Debug, Serialize, Deserialize)]
struct Index {
    version: u32,
    provenance: Provenance,
    tokens: usize,
    width: usize,
    /// Views stored per image (1 for the eval transform).
    views_stored: usize,
    /// Image key → its first row, for images that decoded; others map to the reason.
    rows: HashMap<String, usize>,
    failed: HashMap<String, String>,
}

const VERSION: u32 = 1;

/// The cache key of an image: its path, or shard and offset.
pub fn image_key(source: &ImageSource) -> String {
    match source {
        ImageSource::File(p) => p.display().to_string(),
        ImageSource::TarMember { shard, offset, .. } => format!("{}@{offset}", shard.display()),
    }
}

/// Whether `split` has a cache index in `cache.dir` (built, not necessarily for this config).
pub fn is_built(cache: &CacheConfig, split: &str) -> bool {
    files(&cache.dir, split).1.exists()
}

fn files(dir: &Path, split: &str) -> (PathBuf, PathBuf) {
    (dir.join(format!("{split}.bin")), dir.join(format!("{split}.json")))
}

fn provenance(cache: &CacheConfig, encoder: &VitConfig, annotations: &Path, augment: &AugmentConfig, split: &str) -> Provenance {
    // Held-out images always take the eval transform.
    let views = if split == "eval" { 0 } else { cache.views };
    Provenance {
        encoder: encoder.clone(),
        annotations: annotations.to_path_buf(),
        views,
        seed: cache.seed,
        augment: (views > 0).then(|| augment.clone()),
        dtype: cache.dtype,
    }
}

/// Summary of a build.
#[derive(Debug, Serialize)]
pub struct BuildSummary {
    pub split: String,
    pub images: usize,
    pub rows: usize,
    pub failed: usize,
    pub bytes: u64,
}

/// Runs `encode` (pixels `[n, 3, S, S]` → features `[n, tokens, width]`, flattened) over every
/// distinct image of `data`, `batch` images at a time, and writes the split's files.
#[allow(clippy::too_many_arguments)]
pub fn build(
    cache: &CacheConfig,
    encoder: &VitConfig,
    annotations: &Path,
    augment: &AugmentConfig,
    max_pixels: u64,
    data: &Dataset,
    split: &str,
    batch: usize,
    mut encode: impl FnMut(Vec<f32>, usize) -> Vec<f32>,
    mut progress: impl FnMut(usize, usize),
) -> Result<BuildSummary> {
    std::fs::create_dir_all(&cache.dir).map_err(|e| Error::io(&cache.dir, e))?;
    let prov = provenance(cache, encoder, annotations, augment, split);
    let views = prov.views.max(1);
    let size = encoder.image_size as u32;
    let (tokens, width) = (encoder.num_tokens(), encoder.width);
    let mut seen = HashMap::new();
    let images: Vec<&Record> = data.records.iter().filter(|r| seen.insert(image_key(&r.image), ()).is_none()).collect();
    let (bin, json) = files(&cache.dir, split);
    let (mut rows, mut failed) = (HashMap::new(), HashMap::new());
    let mut next_row = 0;
    // The rows stream into the temporary file, which replaces the split's file when complete.
    write_atomic_with(&bin, |file| {
        let mut out = std::io::BufWriter::new(file);
        for (chunk_no, chunk) in images.chunks(batch.max(1)).enumerate() {
            let first = chunk_no * batch.max(1);
            let prepared: Vec<_> = chunk
                .par_iter()
                .enumerate()
                .map(|(i, r)| {
                    let img = r.image.read().map_err(|e| format!("cannot read image: {e}")).and_then(|b| decode(&b, max_pixels))?;
                    Ok((0..views)
                        .flat_map(|v| match &prov.augment {
                            Some(aug) => train_transform(
                                &img,
                                size,
                                aug,
                                &mut ChaCha8Rng::seed_from_u64(mix(cache.seed, ((first + i) * views + v) as u64)),
                            ),
                            None => eval_transform(&img, size),
                        })
                        .collect::<Vec<f32>>())
                })
                .collect::<Vec<std::result::Result<Vec<f32>, String>>>();
            let mut pixels = Vec::new();
            let mut n = 0;
            for (r, p) in chunk.iter().zip(prepared) {
                match p {
                    Ok(px) => {
                        pixels.extend(px);
                        rows.insert(image_key(&r.image), next_row + n * views);
                        n += 1;
                    }
                    Err(reason) => {
                        failed.insert(image_key(&r.image), format!("{}: {reason}", r.origin));
                    }
                }
            }
            if n > 0 {
                let feats = encode(pixels, n * views);
                debug_assert_eq!(feats.len(), n * views * tokens * width);
                out.write_all(&encode_values(&feats, cache.dtype))?;
                next_row += n * views;
            }
            progress(first + chunk.len(), images.len());
        }
        out.flush()
    })?;
    let summary = BuildSummary {
        split: split.into(),
        images: rows.len(),
        rows: next_row,
        failed: failed.len(),
        bytes: (next_row * tokens * width * cache.dtype.bytes()) as u64,
    };
    let index = Index { version: VERSION, provenance: prov, tokens, width, views_stored: views, rows, failed };
    write_atomic(&json, &serde_json::to_vec(&index).expect("index serialises"))?;
    Ok(summary)
}

/// Values as stored in a cache file.
pub fn encode_values(values: &[f32], dtype: CacheDtype) -> Vec<u8> {
    match dtype {
        CacheDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        CacheDtype::F16 => values.iter().flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes()).collect(),
    }
}

/// Stored values back to f32.
pub fn decode_values(bytes: &[u8], dtype: CacheDtype) -> Vec<f32> {
    match dtype {
        CacheDtype::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        CacheDtype::F16 => bytes.chunks_exact(2).map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect(),
    }
}

/// A cache split opened for reading.
#[derive(Debug)]
pub struct FeatureCache {
    index: Index,
    map: Mmap,
    path: PathBuf,
}

impl FeatureCache {
    /// Opens a split and checks it was built for this encoder, transform and annotation file.
    pub fn open(cache: &CacheConfig, encoder: &VitConfig, annotations: &Path, augment: &AugmentConfig, split: &str) -> Result<Self> {
        let (bin, json) = files(&cache.dir, split);
        let rerun = "; build it with `qformer cache-features --config ...`";
        let text = std::fs::read(&json).map_err(|e| Error::file(&json, format!("no feature cache here ({e}){rerun}")))?;
        let index: Index = serde_json::from_slice(&text).map_err(|e| Error::file(&json, format!("corrupt cache index: {e}")))?;
        if index.version != VERSION {
            return Err(Error::file(&json, format!("cache format {} (this build reads {VERSION}){rerun}", index.version)));
        }
        let want = provenance(cache, encoder, annotations, augment, split);
        if index.provenance != want {
            let what = [
                (index.provenance.encoder != want.encoder, "encoder"),
                (index.provenance.annotations != want.annotations, "annotations"),
                (index.provenance.views != want.views || index.provenance.seed != want.seed, "data.cache.views/seed"),
                (index.provenance.augment != want.augment, "data.augment"),
                (index.provenance.dtype != want.dtype, "data.cache.dtype"),
            ]
            .iter()
            .filter(|(d, _)| *d)
            .map(|(_, n)| *n)
            .collect::<Vec<_>>()
            .join(", ");
            return Err(Error::file(&json, format!("the cache was built with a different {what}{rerun}")));
        }
        let file = std::fs::File::open(&bin).map_err(|e| Error::io(&bin, e))?;
        // SAFETY: the file is only read; a cache rewritten while a run reads it is the user's
        // error, and would show as wrong features, not memory unsafety in safe code paths here.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&bin, e))?;
        let rows = index.rows.values().map(|&r| r + index.views_stored).max().unwrap_or(0);
        let need = rows * index.tokens * index.width * index.provenance.dtype.bytes();
        if map.len() < need {
            return Err(Error::file(&bin, format!("truncated: {} bytes, the index needs {need}{rerun}", map.len())));
        }
        Ok(Self { index, map, path: bin })
    }

    pub fn tokens(&self) -> usize {
        self.index.tokens
    }

    pub fn width(&self) -> usize {
        self.index.width
    }

    /// Views stored per image.
    pub fn views(&self) -> usize {
        self.index.views_stored
    }

    /// Features `[tokens × width]` of `view` of an image, or why it has none.
    pub fn features(&self, source: &ImageSource, view: usize) -> std::result::Result<Vec<f32>, String> {
        let key = image_key(source);
        let Some(&first) = self.index.rows.get(&key) else {
            return Err(self
                .index
                .failed
                .get(&key)
                .cloned()
                .unwrap_or_else(|| format!("not in the feature cache {}", self.path.display())));
        };
        let n = self.index.tokens * self.index.width;
        let b = self.index.provenance.dtype.bytes();
        let start = (first + view % self.index.views_stored) * n * b;
        Ok(decode_values(&self.map[start..start + n * b], self.index.provenance.dtype))
    }

    /// A view drawn from a sample's stream.
    pub fn pick_view(&self, rng: &mut ChaCha8Rng) -> usize {
        use rand::Rng;
        if self.index.views_stored == 1 {
            0
        } else {
            rng.random_range(0..self.index.views_stored)
        }
    }
}
