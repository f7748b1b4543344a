//! `qformer bench`: times full training steps (stage-one loss, backward, AdamW) on random
//! features at a preset's shapes, for each objective set. Prints median milliseconds and pairs/s.

pub mod command;

use std::time::Instant;

use std::sync::Arc;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Distribution, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::data::feature_cache::{decode_values, encode_values, CacheDtype};
use crate::data::text::TextBatch;
use crate::kernels::backend::BackendJob;
use crate::kernels::TrainBackend;
use crate::model::precision::Precision;
use crate::model::vit::{Vit, VitConfig};
use crate::model::{QFormer, QFormerConfig};
use crate::objectives::{Objective, ObjectiveConfig};
use crate::train::collective::{launch, Exchange};
use crate::train::config::{DistributedConfig, OptimConfig};
use crate::train::optim::AdamW;
use crate::train::trainer::{StepOptions, Trainer};
use crate::util::error::{Error, Result};
use crate::util::seed::mix;

pub struct Bench {
    pub preset: String,
    pub batch: usize,
    /// Image tokens per sample (257 for ViT-g at 224 px).
    pub image_tokens: usize,
    /// Query tokens instead of the preset's.
    pub queries: Option<usize>,
    pub text_len: usize,
    pub warmup: usize,
    pub steps: usize,
    /// Objective sets to time, e.g. `[[Itc, Itm, Itg], [Itc]]`.
    pub sets: Vec<Vec<Objective>>,
    pub seed: u64,
    /// Where each step's image features come from.
    pub features: BenchFeatures,
    /// Data-parallel peers (threads on CPU backends) that split `batch`.
    pub peers: usize,
    /// The device's peak dense TFLOP/s for the step's precision, for the FLOP utilisation.
    pub peak_tflops: Option<f64>,
    /// Precision of the Q-Former's matmuls.
    pub precision: Precision,
}

/// The feature source a benchmark step includes.
#[derive(Clone, Debug)]
pub enum BenchFeatures {
    /// Random features, made outside the timed step (the Q-Former alone).
    Random,
    /// The frozen encoder of this shape (random weights, same compute) run on each batch.
    Encoder(VitConfig),
    /// Features read from a memory-mapped cache file and converted, as `data.features = "cache"`.
    Cache(CacheDtype),
}

/// Produces each step's features inside the timed region (except `Random`).
enum Source<B: TrainBackend> {
    Random,
    Encoder(Vit<B::InnerBackend>, usize),
    Cache(memmap2::Mmap, CacheDtype, std::path::PathBuf),
}

impl<B: TrainBackend> Drop for Source<B> {
    fn drop(&mut self) {
        if let Source::Cache(_, _, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn feature_source<B: TrainBackend>(features: &BenchFeatures, shape: [usize; 3], seed: u64, device: &B::Device) -> Result<Source<B>> {
    let [batch, tokens, width] = shape;
    Ok(match features {
        BenchFeatures::Random => Source::Random,
        BenchFeatures::Encoder(vit) => {
            if vit.width != width || vit.num_tokens() != tokens {
                return Err(Error::config(
                    "encoder",
                    format!(
                        "the encoder gives {} tokens of width {}; the bench shape has {tokens} of {width}",
                        vit.num_tokens(),
                        vit.width
                    ),
                    "command line",
                ));
            }
            Source::Encoder(Vit::random(vit, device), vit.image_size)
        }
        BenchFeatures::Cache(dtype) => {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let values: Vec<f32> = (0..batch * tokens * width).map(|_| rng.random_range(-2.0..2.0)).collect();
            let path = std::env::temp_dir().join(format!("qformer-bench-cache-{}-{seed:x}.bin", std::process::id()));
            std::fs::write(&path, encode_values(&values, *dtype)).map_err(|e| Error::io(&path, e))?;
            let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
            // SAFETY: a private temporary file that nothing else writes.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
            Source::Cache(map, *dtype, path)
        }
    })
}

#[derive(Debug, Serialize)]
pub struct BenchResult {
    pub objectives: String,
    pub median_ms: f64,
    pub min_ms: f64,
    pub pairs_per_s: f64,
    /// Medians of the step's phases: features and forward (loss read back), backward
    /// (gradients gathered), optimizer update.
    pub forward_ms: f64,
    pub backward_ms: f64,
    pub optimizer_ms: f64,
    /// Matmul work of the step as the reference does it ([`model_flops`]), in GFLOP.
    pub model_gflop: f64,
    /// `model_gflop` per second of the median step.
    pub gflops: f64,
    pub peers: usize,
    /// Bytes each peer all-reduced per step (gradients and the loss's exchanges).
    pub bytes_reduced: u64,
    /// Megabytes the device's allocator held after the timed steps: their peak (cubecl
    /// backends only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_mb: Option<f64>,
    /// `gflops` as a percentage of the peak given with `--peak-tflops` (model FLOP utilisation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mfu_percent: Option<f64>,
}

/// Cost of the image side of cross-attention (`ln_vision` + K/V projections, forward and
/// backward): projected once for the batch's `B` images, as qformer does, against once per pass
/// as in LAVIS (`B` in the query pass plus `3B` for the ITM pairs).
#[derive(Debug, Serialize)]
pub struct ImageKvCost {
    pub shared_ms: f64,
    pub per_pass_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub steps: Vec<BenchResult>,
    pub image_kv: ImageKvCost,
    /// A plain 1024 × 1024 × 1024 f32 matmul through the same backend: the machine's practical
    /// peak, against which a step's achieved rate compares.
    pub matmul_gflops: f64,
}

/// GFLOP/s of a square f32 matmul of side `n` (median of `runs`).
fn matmul_gflops<B: TrainBackend>(device: &B::Device, n: usize, runs: usize) -> Result<f64> {
    let a = Tensor::<B::InnerBackend, 2>::random([n, n], Distribution::Normal(0.0, 1.0), device);
    let b = Tensor::<B::InnerBackend, 2>::random([n, n], Distribution::Normal(0.0, 1.0), device);
    let ms = time_ms::<B>(device, runs, || {
        let _ = a.clone().matmul(b.clone()).into_data();
    })?;
    Ok(2.0 * (n as f64).powi(3) / (ms / 1e3) / 1e9)
}

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Median milliseconds of `f` over `runs` calls after one warm-up call.
fn time_ms<B: TrainBackend>(device: &B::Device, runs: usize, mut f: impl FnMut()) -> Result<f64> {
    f();
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        B::sync(device).map_err(|e| Error::input("device", format!("{e:?}")))?;
        let start = Instant::now();
        f();
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(times))
}

fn image_kv_cost<B: TrainBackend>(
    model: &QFormer<B>,
    batch: usize,
    tokens: usize,
    width: usize,
    runs: usize,
    device: &B::Device,
) -> Result<ImageKvCost> {
    let project = |images: usize| {
        let feats = Tensor::<B, 3>::random([images, tokens, width], Distribution::Normal(0.0, 1.0), device);
        let total = model.image_key_values(feats).into_iter().flatten().map(|kv| kv.key.sum() + kv.value.sum()).reduce(|a, b| a + b);
        if let Some(total) = total {
            let _ = GradientsParams::from_grads(total.backward(), model);
        }
    };
    Ok(ImageKvCost {
        shared_ms: time_ms::<B>(device, runs, || project(batch))?,
        per_pass_ms: time_ms::<B>(device, runs, || {
            project(batch);
            project(3 * batch);
        })?,
    })
}

/// Matmul FLOPs of one training step as the reference computes it (forward ×3 for the backward
/// pass, every row at the padded text length, LM logits at every text position, ITM pairs and the
/// image K/V projected per pass counted once): the common yardstick for GFLOP/s, so that work one
/// side skips counts as speed. The frozen encoder is not included.
pub fn model_flops(cfg: &QFormerConfig, batch: usize, image_tokens: usize, text_len: usize, set: &[Objective]) -> f64 {
    let (d, f, q, t) = (cfg.hidden_size as f64, cfg.intermediate_size as f64, cfg.num_query_tokens as f64, text_len as f64);
    let (nv, dv, v) = (image_tokens as f64, cfg.encoder_hidden_size as f64, cfg.vocab_size as f64);
    let layers = cfg.num_hidden_layers as f64;
    let cross = (0..cfg.num_hidden_layers).filter(|&i| cfg.has_cross_attention(i)).count() as f64;
    // One layer for `rows` rows attending to `keys` keys: Q/K/V/O, scores and context, FFN.
    let block = |rows: f64, keys: f64| rows * (8.0 * d * d + 4.0 * keys * d + 4.0 * d * f);
    // Query rows' cross-attention (Q, O, scores, context); the image K/V once per image.
    let cross_rows = |samples: f64| samples * q * (4.0 * d * d + 4.0 * nv * d);
    let image_kv = batch as f64 * cross * 4.0 * nv * dv * d;
    let joint = |samples: f64| samples * layers * block(q + t, q + t) + cross * cross_rows(samples);
    let b = batch as f64;
    let has = |o: Objective| set.contains(&o);
    let mut fwd = image_kv;
    let mut train = image_kv;
    let unimodal = joint(b) + b * (q + 1.0) * 2.0 * d * cfg.image_text_hidden_size as f64;
    fwd += unimodal;
    if has(Objective::Itc) || has(Objective::Itg) {
        train += unimodal;
    }
    if has(Objective::Itm) {
        let itm = joint(3.0 * b) + 3.0 * b * q * 2.0 * d * 2.0;
        fwd += itm;
        train += itm;
    }
    if has(Objective::Itg) {
        let itg = b * layers * block(t, q + t) + b * t * (2.0 * d * d + 2.0 * d * v);
        fwd += itg;
        train += itg;
    }
    fwd + 2.0 * train
}

pub fn objective_names(set: &[Objective]) -> String {
    set.iter()
        .map(|o| match o {
            Objective::Itc => "itc",
            Objective::Itm => "itm",
            Objective::Itg => "itg",
        })
        .collect::<Vec<_>>()
        .join("+")
}

/// Random captions: `[CLS]`, random word pieces, `[SEP]`, padding; lengths vary like real ones.
fn random_text(rng: &mut ChaCha8Rng, batch: usize, len: usize, vocab: usize) -> Result<TextBatch> {
    let mut ids = Vec::with_capacity(batch);
    let mut mask = Vec::with_capacity(batch);
    for _ in 0..batch {
        let real = rng.random_range(len.clamp(2, 8)..=len);
        let row: Vec<i64> = (0..len)
            .map(|i| match i {
                0 => 101,
                i if i + 1 == real => 102,
                i if i < real => rng.random_range(1000..vocab.clamp(1001, 30522)) as i64,
                _ => 0,
            })
            .collect();
        mask.push((0..len).map(|i| i64::from(i < real)).collect());
        ids.push(row);
    }
    TextBatch::new(ids, mask, vocab)
}

/// Uniform values in [-2, 2) on the host, uploaded: bench inputs drawn from a named seed.
fn host_random<B: burn::tensor::backend::Backend, const D: usize>(
    rng: &mut ChaCha8Rng,
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    let n = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Times one objective set on one peer: its slice of every step, through [`Trainer::step`].
fn time_set<B: TrainBackend>(
    bench: &Bench,
    cfg: &QFormerConfig,
    set: &[Objective],
    model: QFormer<B>,
    peers: Box<dyn Exchange<B::InnerBackend>>,
    device: B::Device,
) -> Result<BenchResult> {
    let world = peers.count();
    let rank = peers.rank();
    let batch = bench.batch / world;
    let mut rng = ChaCha8Rng::seed_from_u64(mix(bench.seed, rank as u64));
    let optim = AdamW::new(&OptimConfig::default(), &model);
    let mut trainer =
        Trainer::new(model.fork(&device), optim, ObjectiveConfig::default().only(set), StepOptions { clip: None, seed: bench.seed }, peers);
    let mut times = Vec::with_capacity(bench.steps);
    let mut phases: Vec<[f64; 3]> = Vec::with_capacity(bench.steps);
    let mut bytes = 0;
    let shape = [batch, bench.image_tokens, cfg.encoder_hidden_size];
    let source = feature_source::<B>(&bench.features, shape, mix(bench.seed, rank as u64), &device)?;
    for step in 0..bench.warmup + bench.steps {
        let text = random_text(&mut rng, batch, bench.text_len, cfg.vocab_size)?;
        let random = matches!(source, Source::Random).then(|| host_random::<B, 3>(&mut rng, shape, &device));
        let pixels = match &source {
            Source::Encoder(_, s) => Some(host_random::<B::InnerBackend, 4>(&mut rng, [batch, 3, *s, *s], &device)),
            _ => None,
        };
        B::sync(&device).map_err(|e| Error::input("device", format!("{e:?}")))?;
        let start = Instant::now();
        let feats = match &source {
            Source::Random => random.expect("made above"),
            Source::Encoder(vit, _) => Tensor::from_inner(vit.forward(pixels.expect("made above"))),
            Source::Cache(map, dtype, _) => Tensor::from_data(TensorData::new(decode_values(map, *dtype), shape), &device),
        };
        let first = (step * bench.batch + rank * batch) as u64;
        let positions: Vec<u64> = (first..first + batch as u64).collect();
        let ids = positions.iter().map(|&p| p as i64).collect();
        let micro = trainer.batch(feats, text, ids, &positions)?;
        let report = trainer.step(&[micro], 1e-4, false)?;
        // Reading a value forces the update to finish on asynchronous backends.
        let _ = trainer.model.temp.val().inner().into_data();
        if step >= bench.warmup {
            let total = start.elapsed().as_secs_f64();
            times.push(total * 1e3);
            phases.push([report.phases[0] * 1e3, report.phases[1] * 1e3, (total - report.phases[0] - report.phases[1]) * 1e3]);
            bytes = report.bytes_reduced;
        }
    }
    let min_ms = times.iter().copied().fold(f64::INFINITY, f64::min);
    let median_ms = median(times);
    let phase = |i: usize| median(phases.iter().map(|p| p[i]).collect());
    let model_gflop = model_flops(cfg, bench.batch, bench.image_tokens, bench.text_len, set) / 1e9;
    Ok(BenchResult {
        objectives: objective_names(set),
        median_ms,
        min_ms,
        pairs_per_s: bench.batch as f64 / (median_ms / 1e3),
        forward_ms: phase(0),
        backward_ms: phase(1),
        optimizer_ms: phase(2),
        model_gflop,
        gflops: model_gflop / (median_ms / 1e3),
        peers: world,
        bytes_reduced: bytes,
        device_mb: B::device_memory(&device).map(|b| b as f64 / 1e6),
        mfu_percent: bench.peak_tflops.map(|peak| model_gflop / (median_ms / 1e3) / (peak * 1e3) * 100.0),
    })
}

impl BackendJob for Bench {
    type Output = BenchReport;

    fn run<B: TrainBackend>(self, device: B::Device) -> Result<BenchReport> {
        let mut cfg = QFormerConfig::preset(&self.preset)
            .ok_or_else(|| Error::config("preset", format!("unknown preset `{}` (tiny, blip2)", self.preset), "command line"))?;
        if let Some(queries) = self.queries {
            if queries == 0 {
                return Err(Error::config("queries", "need at least one query token", "command line"));
            }
            cfg.num_query_tokens = queries;
        }
        if self.text_len > cfg.max_position_embeddings || self.text_len < 2 || self.batch == 0 || self.steps == 0 {
            return Err(Error::config("bench", "need batch > 0, steps > 0 and 2 <= text_len <= max positions", "command line"));
        }
        if self.peers == 0 || !self.batch.is_multiple_of(self.peers) {
            return Err(Error::config(
                "peers",
                format!("--batch {} must split evenly over --peers {}", self.batch, self.peers),
                "command line",
            ));
        }
        let dist = DistributedConfig { peers: self.peers, ..Default::default() };
        let bench = Arc::new(self);
        let mut results = Vec::new();
        for set in &bench.sets {
            // Drawn once, before the peers start: every peer holds the same weights.
            B::seed(&device, bench.seed);
            let model = QFormer::<B>::new(&cfg, &device).with_precision(bench.precision);
            let (bench, cfg, set) = (bench.clone(), cfg.clone(), set.clone());
            let dev = device.clone();
            results.push(launch::<B::InnerBackend, _, _>(
                &dist,
                move |_| dev.clone(),
                move |peers, dev| time_set::<B>(&bench, &cfg, &set, model.clone(), peers, dev),
            )?);
        }
        let model = QFormer::<B>::new(&cfg, &device);
        let image_kv = image_kv_cost(&model, bench.batch, bench.image_tokens, cfg.encoder_hidden_size, bench.steps, &device)?;
        let matmul_gflops = matmul_gflops::<B>(&device, 1024, 5)?;
        Ok(BenchReport { steps: results, image_kv, matmul_gflops })
    }
}

/// Images per second the loader delivers (decode, augment, tokenise, on its background threads)
/// when nothing else competes for the CPU: the ceiling the data side puts on a training step.
pub fn data_throughput(cfg: &crate::train::config::TrainConfig, batches: usize) -> Result<f64> {
    use crate::data::loader::{Dataset, Prefetcher, Transform};
    use std::sync::Arc;
    crate::train::run::ensure_data(cfg, &super::console::Console::new(1))?;
    let text = Arc::new(crate::data::text::TextEncoder::load(&cfg.text.tokenizer, cfg.text.max_len, cfg.text.max_words)?);
    let data = Arc::new(Dataset::load(&cfg.data.train, cfg.data.image_root.as_deref())?);
    let transform = Transform {
        image_size: cfg.encoder.image_size as u32,
        max_pixels: cfg.data.max_pixels,
        augment: cfg.data.augment.enabled.then(|| cfg.data.augment.clone()),
        cache: None,
    };
    let batch = cfg.train.batch_size;
    let mut loader = Prefetcher::start(data, text, transform, cfg.train.seed, 0, (batch, 0..batch), cfg.data.prefetch);
    loader.next_batch()?;
    let start = Instant::now();
    let mut images = 0;
    for _ in 0..batches {
        images += loader.next_batch()?.text.batch_size();
    }
    Ok(images as f64 / start.elapsed().as_secs_f64())
}
