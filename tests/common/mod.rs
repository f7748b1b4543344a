//! Helpers shared by the integration tests: a small model shape and a deterministic batch.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Distribution, Tensor};
use qformer::model::QFormerConfig;
use qformer::objectives::{Stage1Batch, TextBatch};

pub type B = Autodiff<Flex>;

pub fn small() -> QFormerConfig {
    QFormerConfig {
        hidden_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 128,
        encoder_hidden_size: 48,
        num_query_tokens: 8,
        image_text_hidden_size: 32,
        vocab_size: 1000,
        bos_token_id: 999,
        ..QFormerConfig::blip2()
    }
}

pub fn batch(b: usize, image_ids: Option<Vec<i64>>, seed: u64) -> Stage1Batch<B> {
    let device = Default::default();
    <B as burn::tensor::backend::Backend>::seed(&device, seed);
    let feats = Tensor::<B, 3>::random([b, 10, 48], Distribution::Normal(0.0, 1.0), &device);
    let t = 12;
    let ids = (0..b)
        .map(|i| (0..t).map(|j| match j { 0 => 101, j if j < 6 + i % 5 => 200 + ((i * 31 + j * 7) % 700) as i64, j if j == 6 + i % 5 => 102, _ => 0 }).collect())
        .collect::<Vec<Vec<i64>>>();
    let mask = ids.iter().map(|r| r.iter().map(|&x| i64::from(x != 0)).collect()).collect();
    Stage1Batch::new(feats, TextBatch::new(ids, mask, 1000).unwrap(), image_ids).unwrap()
}


/// The backend RNG is process-wide: tests that seed it and draw from it hold this lock so that
/// parallel test threads cannot interleave their draws.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The `[model]` and `[encoder]` tables of the miniature test runs, for a vocabulary whose last
/// id is `[DEC]`.
pub fn mini_model(vocab_size: usize) -> String {
    format!(
        r#"[model]
hidden_size = 32
num_hidden_layers = 2
num_attention_heads = 2
intermediate_size = 48
cross_attention_frequency = 2
encoder_hidden_size = 24
vocab_size = {vocab_size}
max_position_embeddings = 32
layer_norm_eps = 1e-12
num_query_tokens = 4
image_text_hidden_size = 16
bos_token_id = {bos}

[encoder]
image_size = 16
patch_size = 8
width = 24
depth = 1
heads = 2
mlp_ratio = 2.0
seed = 3
"#,
        bos = vocab_size - 1
    )
}

/// A whole training run in miniature (the 32-word fixture vocabulary, 16 px images, checkpoint every
/// step), written to `dir/run.toml`; `extra` lands in `[train]`.
pub fn run_config(dir: &Path, steps: u64, extra: &str) -> PathBuf {
    let vocab = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lavis/vocab.txt");
    let text = format!(
        r#"
{model}
[data]
train = "{d}/shapes/train.json"
eval = "{d}/shapes/eval.json"
synth = {{ train = 48, eval = 8, seed = 1 }}

[text]
tokenizer = "{vocab}"
max_len = 14

[optim]
lr = 1e-3

[train]
batch_size = 6
steps = {steps}
grad_accum = 2
clip_grad_norm = 1.0
seed = 5
{extra}

[checkpoint]
dir = "{d}/checkpoints"
every = 1
keep = 2

[log]
every = 1

[eval]
every = 0
"#,
        d = dir.display(),
        vocab = vocab.display(),
        model = mini_model(33)
    );
    let path = dir.join("run.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A run wide enough to take every parallel path of a CPU step (batch 32; rows of LayerNorm,
/// attention and elementwise kernels in many chunks; a 4.4M-element tied word embedding, above
/// the size where flex sums in parallel; matmuls above gemm's threading threshold), yet a fraction
/// of a second per step: the real 30523-token vocabulary, 144-wide trunk, 32 px images. Held-out
/// retrieval and the full evaluation run at the last step. Written to `dir/run.toml`.
pub fn wide_run_config(dir: &Path, steps: u64) -> PathBuf {
    let vocab = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/bert-base-uncased-vocab.txt");
    let text = format!(
        r#"
[model]
hidden_size = 144
num_hidden_layers = 2
num_attention_heads = 4
intermediate_size = 288
cross_attention_frequency = 1
encoder_hidden_size = 48
vocab_size = 30523
max_position_embeddings = 32
layer_norm_eps = 1e-12
num_query_tokens = 8
image_text_hidden_size = 32
bos_token_id = 30522
initializer_range = 0.1

[encoder]
image_size = 32
patch_size = 8
width = 48
depth = 1
heads = 2
mlp_ratio = 2.0
seed = 3

[data]
train = "{d}/shapes/train.json"
eval = "{d}/shapes/eval.json"
synth = {{ train = 320, eval = 32, seed = 1 }}

[text]
tokenizer = "{vocab}"
max_len = 20

[optim]
lr = 1e-3

[schedule]
warmup_steps = 4

[train]
batch_size = 32
steps = {steps}
clip_grad_norm = 1.0
seed = 5

[checkpoint]
dir = "{d}/checkpoints"
every = 1
keep = 2

[log]
every = 1

[eval]
every = {steps}
max_images = 32
rerank_every = {steps}
k_test = 4
"#,
        d = dir.display(),
        vocab = vocab.display(),
    );
    let path = dir.join("run.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A fresh, empty temporary folder for one test (removed first if a previous run left it).
pub fn workdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qformer-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every tensor of a safetensors file, by name.
pub fn tensors(path: &Path) -> Vec<(String, Vec<f32>)> {
    let f = qformer::interop::safetensors_io::SafetensorsFile::open(path).unwrap();
    let mut names = f.names().unwrap();
    names.sort();
    names.into_iter().map(|n| (n.clone(), f.f32(&n).unwrap().1)).collect()
}
