//! Helpers shared by the integration tests: a small model shape, a deterministic batch, run
//! configs and folders, records and tensors read back, tolerances, and the binary as a command.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Distribution, Tensor};
use qformer::data::text::TextBatch;
use qformer::model::QFormerConfig;
use qformer::objectives::Stage1Batch;

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
        .map(|i| {
            (0..t)
                .map(|j| match j {
                    0 => 101,
                    j if j < 6 + i % 5 => 200 + ((i * 31 + j * 7) % 700) as i64,
                    j if j == 6 + i % 5 => 102,
                    _ => 0,
                })
                .collect()
        })
        .collect::<Vec<Vec<i64>>>();
    let mask = ids.iter().map(|r| r.iter().map(|&x| i64::from(x != 0)).collect()).collect();
    Stage1Batch::new(feats, TextBatch::new(ids, mask, 1000).unwrap(), image_ids).unwrap()
}

/// The backend RNG is process-wide (and all tests share one process): every test that seeds it,
/// draws from it or builds a model in this process (a model's initialisation draws) holds this
/// lock, so that parallel test threads cannot interleave their draws. Tests that only run the
/// binary do not need it.
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

/// One builder for every test run's config: the model and encoder tables, the generated shapes
/// set, and the `[train]`, `[checkpoint]` and `[eval]` values a test needs; [`RunConfig::write`]
/// puts it in a folder as TOML.
pub struct RunConfig {
    /// The `[model]` and `[encoder]` tables.
    pub model: String,
    pub vocab: PathBuf,
    /// Generated training and held-out scenes, and their size in pixels.
    pub synth: (usize, usize),
    pub image_size: u32,
    pub max_len: usize,
    pub batch_size: usize,
    pub steps: u64,
    pub seed: u64,
    /// More `[train]` lines (`grad_accum = 2`, ...).
    pub train_extra: String,
    pub checkpoint_every: u64,
    pub keep: usize,
    /// The `[eval]` table's lines.
    pub eval: String,
    /// Whole sections placed before `[train]` (`[optim]`, `[schedule]`).
    pub sections: String,
}

fn manifest(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

impl RunConfig {
    /// A whole training run in miniature: the 32-word fixture vocabulary, 16 px images, a
    /// checkpoint every step.
    pub fn miniature(steps: u64) -> Self {
        Self {
            model: mini_model(33),
            vocab: manifest("tests/fixtures/lavis/vocab.txt"),
            synth: (48, 8),
            image_size: 16,
            max_len: 14,
            batch_size: 6,
            steps,
            seed: 5,
            train_extra: "grad_accum = 2\nclip_grad_norm = 1.0".into(),
            checkpoint_every: 1,
            keep: 2,
            eval: "every = 0".into(),
            sections: "[optim]\nlr = 1e-3\n\n[log]\nevery = 1".into(),
        }
    }

    /// The miniature model with the real BERT vocabulary: 4 steps of batch 6, checkpoints and
    /// held-out retrieval every 2 steps.
    pub fn miniature_bert() -> Self {
        Self {
            model: mini_model(30523),
            vocab: manifest("data/bert-base-uncased-vocab.txt"),
            synth: (40, 12),
            max_len: 16,
            steps: 4,
            seed: 7,
            train_extra: String::new(),
            checkpoint_every: 2,
            keep: 5,
            eval: "every = 2".into(),
            sections: String::new(),
            ..Self::miniature(4)
        }
    }

    /// A run wide enough to take every parallel path of a CPU step (batch 32; rows of LayerNorm,
    /// attention and elementwise kernels in many chunks; a 4.4M-element tied word embedding,
    /// above the size where flex sums in parallel; matmuls above gemm's threading threshold),
    /// yet a fraction of a second per step: the real 30523-token vocabulary, 144-wide trunk,
    /// 32 px images. Held-out retrieval and the full evaluation run at the last step.
    pub fn wide(steps: u64) -> Self {
        Self {
            model: WIDE_MODEL.into(),
            vocab: manifest("data/bert-base-uncased-vocab.txt"),
            synth: (320, 32),
            image_size: 32,
            max_len: 20,
            batch_size: 32,
            steps,
            seed: 5,
            train_extra: "clip_grad_norm = 1.0".into(),
            checkpoint_every: 1,
            keep: 2,
            eval: format!("every = {steps}\nmax_images = 32\nrerank_every = {steps}\nk_test = 4"),
            sections: "[optim]\nlr = 1e-3\n\n[schedule]\nwarmup_steps = 4\n\n[log]\nevery = 1".into(),
        }
    }

    /// One more `[train]` line.
    pub fn train_line(mut self, line: &str) -> Self {
        self.train_extra = format!("{}\n{line}", self.train_extra);
        self
    }

    /// Writes `dir/<name>.toml`, with the shapes set generated under `dir/shapes` (as
    /// `qformer synth` would) and checkpoints under `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        if !dir.join("shapes/train.json").exists() {
            qformer::data::synth::generate(
                &dir.join("shapes"),
                &qformer::data::synth::SynthConfig::new(self.synth.0, self.synth.1, 1),
                self.image_size,
            )
            .unwrap();
        }
        let d = dir.display();
        let text = format!(
            "{model}\n[data]\ntrain = \"{d}/shapes/train.json\"\neval = \"{d}/shapes/eval.json\"\n\n\
             [text]\ntokenizer = \"{vocab}\"\nmax_len = {max_len}\n\n{sections}\n\n\
             [train]\nbatch_size = {batch}\nsteps = {steps}\nseed = {seed}\n{train_extra}\n\n\
             [checkpoint]\ndir = \"{d}/checkpoints\"\nevery = {every}\nkeep = {keep}\n\n[eval]\n{eval}\n",
            model = self.model,
            vocab = self.vocab.display(),
            max_len = self.max_len,
            sections = self.sections,
            batch = self.batch_size,
            steps = self.steps,
            seed = self.seed,
            train_extra = self.train_extra,
            every = self.checkpoint_every,
            keep = self.keep,
            eval = self.eval,
        );
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }
}

const WIDE_MODEL: &str = r#"[model]
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
"#;

/// A fresh, empty temporary folder for one test (removed first if a previous run left it).
pub fn workdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qformer-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A run's per-step records (`metrics.jsonl`) as JSON text without their wall-clock fields
/// (pairs/s, evaluation timings) and without the top-level keys in `without`: what two runs of
/// the same computation must agree on.
pub fn records(run: &Path, without: &[&str]) -> Vec<String> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|line| {
            let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
            let m = v.as_object_mut().unwrap();
            // Measurements of the machine, not of the run.
            for key in ["pairs_per_s", "device_mb"].iter().chain(without) {
                m.remove(*key);
            }
            if let Some(e) = m.get_mut("evaluation").and_then(|e| e.as_object_mut()) {
                e.remove("timing");
            }
            v.to_string()
        })
        .collect()
}

/// Every tensor of a safetensors file, by name.
pub fn tensors(path: &Path) -> Vec<(String, Vec<f32>)> {
    let f = qformer::interop::safetensors_io::SafetensorsFile::open(path).unwrap();
    let mut names = f.names().unwrap();
    names.sort();
    names.into_iter().map(|n| (n.clone(), f.f32(&n).unwrap().1)).collect()
}

/// Each step's total loss in a run's `metrics.jsonl`.
pub fn losses(run: &Path) -> Vec<f64> {
    qformer::train::metrics::MetricsLog::read(run).unwrap().iter().map(|m| m.loss).collect()
}

/// The largest element-wise difference against the largest reference magnitude.
pub fn max_rel_error(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale
}

/// The `qformer` binary as a command under construction: `qformer("train").config(cfg)
/// .set("train.steps=2").succeed()`.
pub struct Qformer(std::process::Command);

/// `qformer <subcommand>`.
pub fn qformer(subcommand: &str) -> Qformer {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_qformer"));
    c.arg(subcommand);
    Qformer(c)
}

impl Qformer {
    pub fn arg(mut self, a: impl AsRef<std::ffi::OsStr>) -> Self {
        self.0.arg(a);
        self
    }

    pub fn args<S: AsRef<std::ffi::OsStr>>(mut self, a: impl IntoIterator<Item = S>) -> Self {
        self.0.args(a);
        self
    }

    /// `--config PATH`.
    pub fn config(self, path: &Path) -> Self {
        self.arg("--config").arg(path)
    }

    /// `--set ASSIGNMENT` for each one.
    pub fn sets<S: AsRef<str>>(self, assignments: impl IntoIterator<Item = S>) -> Self {
        assignments.into_iter().fold(self, |c, s| c.arg("--set").arg(s.as_ref()))
    }

    /// `--set train.run_name="NAME"`.
    pub fn run_name(self, name: &str) -> Self {
        self.sets([format!("train.run_name=\"{name}\"")])
    }

    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Self {
        self.0.env(key, value);
        self
    }

    /// Stdout discarded and stderr into `log` (a file: a pipe nobody reads could fill).
    pub fn log_to(mut self, log: &Path) -> Self {
        let file = std::fs::File::create(log).unwrap();
        self.0.stdout(file.try_clone().unwrap()).stderr(file);
        self
    }

    pub fn output(mut self) -> std::process::Output {
        self.0.output().unwrap()
    }

    /// Runs to the end and asserts it succeeded (its stderr in the message otherwise).
    pub fn succeed(self) -> std::process::Output {
        let out = self.output();
        assert!(out.status.success(), "qformer failed:\n{}", String::from_utf8_lossy(&out.stderr));
        out
    }

    pub fn spawn(mut self) -> std::process::Child {
        self.0.spawn().unwrap()
    }

    /// The command itself, for what the builder does not cover (other stdio, `status()`).
    pub fn command(self) -> std::process::Command {
        self.0
    }

    /// Runs to the end, asserting success, and returns the peak resident memory in kB (the
    /// kernel's high-water mark `VmHWM`, read until the process exits).
    pub fn peak_rss_kb(mut self) -> u64 {
        let mut child = self.0.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
        let status = format!("/proc/{}/status", child.id());
        let mut peak = 0;
        loop {
            let hwm = std::fs::read_to_string(&status).ok().and_then(|s| {
                s.lines().find_map(|l| l.strip_prefix("VmHWM:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()))
            });
            peak = peak.max(hwm.unwrap_or(0));
            if let Some(exit) = child.try_wait().unwrap() {
                assert!(exit.success(), "qformer failed: {exit}");
                return peak;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
