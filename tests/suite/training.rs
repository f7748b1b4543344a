//! Training runs end to end on a miniature config: exact resume, checkpoint integrity, the frozen
//! encoder staying out of the optimizer, and the ablation table.

use crate::common;

use std::path::{Path, PathBuf};

use burn::tensor::Tensor;
use qformer::app::ablate::{ablate, Start, Sweep, SweepResume};
use qformer::app::report::run_folders;
use qformer::interop::safetensors_io::SafetensorsFile;
use qformer::kernels::backend::{dispatch, BackendKind};
use qformer::model::QFormer;
use qformer::objectives::{Alone, NegativeMode, ObjectiveConfig};
use qformer::train::checkpoint::{self, MODEL_FILE, OPTIMIZER_FILE};
use qformer::train::config::{OptimConfig, TrainConfig};
use qformer::train::optim::AdamW;
use qformer::train::run::{TrainJob, TrainOutcome};
use qformer::train::trainer::{StepOptions, Trainer};

fn workdir(name: &str) -> PathBuf {
    common::workdir(&format!("train-{name}"))
}

/// A miniature config over a generated shapes set in `dir`; `extra` lands in `[train]`.
fn config(dir: &Path, extra: &str) -> PathBuf {
    common::RunConfig { train_extra: extra.into(), ..common::RunConfig::miniature_bert() }.write(dir, "mini")
}

use common::serial;

fn train(cfg_path: &Path, overrides: &[String], resume: Option<PathBuf>) -> qformer::Result<TrainOutcome> {
    train_on(BackendKind::Flex, cfg_path, overrides, resume)
}

fn train_on(backend: BackendKind, cfg_path: &Path, overrides: &[String], resume: Option<PathBuf>) -> qformer::Result<TrainOutcome> {
    let mut cfg = TrainConfig::load(cfg_path, overrides)?;
    cfg.train.backend = backend;
    dispatch(backend, TrainJob::new(cfg, "mini", resume))
}

#[test]
fn resumed_run_is_bit_identical_to_an_uninterrupted_one() {
    resume_matches(BackendKind::Flex, "resume");
}

/// Training steps, checkpoints, evaluation and a resume on a cubecl backend, bit-identical to the
/// uninterrupted run as on flex.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_run_trains_checkpoints_and_resumes() {
    resume_matches(BackendKind::Wgpu, "resume-wgpu");
}

/// Four steps with a checkpoint every two, against a copy cut at step 2 and resumed: weights,
/// optimizer state and every metrics record equal to the bit.
fn resume_matches(backend: BackendKind, name: &str) {
    let _guard = serial();
    let dir = workdir(name);
    let cfg = config(&dir, "grad_accum = 2\nclip_grad_norm = 1.0");
    let train = |overrides: &[String], resume| train_on(backend, &cfg, overrides, resume);
    let full = train(&[], None).unwrap();
    assert_eq!(full.steps, 4);
    assert!(full.recall.is_some());

    // Simulate a run killed after its step-2 checkpoint: a copy without the later state.
    let run = full.run_dir.clone();
    let copy = dir.join("interrupted");
    std::fs::create_dir_all(copy.join("mini")).unwrap();
    for entry in ["step-00000002", "config.toml", "metrics.jsonl"] {
        let from = run.join(entry);
        let to = copy.join("mini").join(entry);
        if from.is_dir() {
            std::fs::create_dir_all(&to).unwrap();
            for f in std::fs::read_dir(&from).unwrap() {
                let f = f.unwrap();
                std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
            }
        } else {
            std::fs::copy(from, to).unwrap();
        }
    }
    std::fs::write(copy.join("mini/latest"), "step-00000002").unwrap();
    let resumed = train(&[format!("checkpoint.dir=\"{}\"", copy.display())], Some(copy.join("mini"))).unwrap();
    assert_eq!(resumed.steps, 4);
    for f in [MODEL_FILE, OPTIMIZER_FILE] {
        let a = SafetensorsFile::open(&run.join("step-00000004").join(f)).unwrap();
        let b = SafetensorsFile::open(&copy.join("mini/step-00000004").join(f)).unwrap();
        assert_eq!(a.names().unwrap().len(), b.names().unwrap().len());
        for name in a.names().unwrap() {
            let (x, y) = (a.f32(&name).unwrap().1, b.f32(&name).unwrap().1);
            assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()), "{backend:?} {f}: {name} differs after resume");
        }
    }
    let metrics = |p: &Path| std::fs::read_to_string(p.join("metrics.jsonl")).unwrap();
    let strip = |s: String| s.lines().map(|l| l.split("\"pairs_per_s\"").next().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(strip(metrics(&run)), strip(metrics(&copy.join("mini"))), "{backend:?}: per-step losses differ after resume");
    // AdamW moves the temperature (initially 0.07) by about the learning rate per step; on wgpu a
    // broken update once sent it to -0.48 after one step, which an exact resume alone would not
    // catch if it were deterministic.
    let temps: Vec<f64> =
        metrics(&run).lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["temp"].as_f64()).collect();
    assert_eq!(temps.len(), 4);
    for temp in temps {
        assert!((temp - 0.07).abs() < 1e-2, "{backend:?}: temperature {temp} after at most 4 steps of lr <= 1e-3");
    }
    // The device's memory is recorded where the backend has a device allocator.
    let with_memory = metrics(&run).lines().filter(|l| l.contains("\"device_mb\"")).count();
    assert_eq!(with_memory, if backend == BackendKind::Flex { 0 } else { 4 }, "{backend:?}");
}

#[test]
fn checkpoints_are_verified_and_writes_are_atomic() {
    let _guard = serial();
    let dir = workdir("ckpt");
    let cfg_path = config(&dir, "");
    let out = train(&cfg_path, &["train.steps=2".into()], None).unwrap();
    let cfg = TrainConfig::load(&cfg_path, &["train.steps=2".into()]).unwrap();
    let step = checkpoint::resolve(&out.run_dir).unwrap();
    assert!(step.ends_with("step-00000002"));
    let state = checkpoint::verify(&step, &cfg).unwrap();
    assert_eq!(state.step, 2);

    // The frozen encoder is in neither the weights nor the optimizer state.
    let model = SafetensorsFile::open(&step.join(MODEL_FILE)).unwrap().names().unwrap();
    let optim = SafetensorsFile::open(&step.join(OPTIMIZER_FILE)).unwrap().names().unwrap();
    assert_eq!(optim.len(), 2 * model.len());
    assert!(model.iter().chain(&optim).all(|n| !n.contains("patch_embed") && !n.contains("blocks")));

    // A write that fails half-way leaves the previous checkpoint current and loadable.
    let state3 = qformer::train::checkpoint::TrainState { step: 3, ..state.clone() };
    let failed = checkpoint::save(&out.run_dir, &cfg, &state3, 5, |d| {
        std::fs::write(d.join(MODEL_FILE), b"partial").unwrap();
        Err(qformer::Error::input("disk", "simulated failure"))
    });
    assert!(failed.is_err());
    assert_eq!(checkpoint::resolve(&out.run_dir).unwrap(), step);
    checkpoint::verify(&step, &cfg).unwrap();
    assert!(!out.run_dir.join("step-00000003").exists());
    assert!(std::fs::read_dir(&out.run_dir).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().contains(".tmp")));

    // A flipped byte, a missing file, another model shape: refused, each with its reason.
    let damaged = dir.join("damaged");
    std::fs::create_dir_all(&damaged).unwrap();
    for f in std::fs::read_dir(&step).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), damaged.join(f.file_name())).unwrap();
    }
    let mut bytes = std::fs::read(damaged.join(MODEL_FILE)).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(damaged.join(MODEL_FILE), &bytes).unwrap();
    let e = checkpoint::verify(&damaged, &cfg).unwrap_err().to_string();
    assert!(e.contains("model.safetensors") && e.contains("checksum"), "{e}");
    std::fs::remove_file(damaged.join(MODEL_FILE)).unwrap();
    let e = checkpoint::verify(&damaged, &cfg).unwrap_err().to_string();
    assert!(e.contains("model.safetensors") && e.contains("missing"), "{e}");
    let other = TrainConfig::load(&cfg_path, &["train.steps=2".into(), "model.intermediate_size=40".into()]).unwrap();
    let e = checkpoint::verify(&step, &other).unwrap_err().to_string();
    assert!(e.contains("model.intermediate_size"), "{e}");
    let other = TrainConfig::load(&cfg_path, &["optim.lr=0.5".into()]).unwrap();
    let e = checkpoint::verify(&step, &other).unwrap_err().to_string();
    assert!(e.contains("different config") && e.contains("optim.lr"), "{e}");
    // Resuming with more steps is allowed.
    let longer = TrainConfig::load(&cfg_path, &["train.steps=9".into()]).unwrap();
    checkpoint::verify(&step, &longer).unwrap();
}

fn sweep(cfg: &Path, variants: &[&str]) -> Sweep {
    Sweep {
        config: cfg.to_path_buf(),
        overrides: vec!["train.steps=2".into()],
        variants: variants.iter().map(|v| v.to_string()).collect(),
        seeds: vec![0],
        resume: None,
        overwrite: false,
    }
}

#[test]
fn ablation_writes_its_table() {
    let _guard = serial();
    let dir = workdir("ablate");
    let cfg = config(&dir, "");
    let train = |cfg, name, start: Start| dispatch(BackendKind::Flex, TrainJob::new(cfg, name, start.resume).overwriting(start.overwrite));
    let (out, md) = ablate(&sweep(&cfg, &["all", "no-itc", "no-itm", "no-itg"]), train).unwrap();
    let csv = std::fs::read_to_string(out.join("ablation.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
    assert!(md.contains("| no-itc | 0 | 2 |"), "{md}");
    // A switched-off objective has no training loss in its row.
    let no_itm = csv.lines().find(|l| l.starts_with("no-itm")).unwrap();
    assert_eq!(no_itm.split(',').nth(5), Some(""), "{no_itm}");

    assert!(!md.contains("Over seeds"), "one seed has no spread: {md}");

    // Several seeds: each variant's mean ± standard deviation, and `report` on the sweep's
    // folder reads every run in it once, however often it is named.
    let mut seeds = sweep(&cfg, &["itm-only"]);
    seeds.seeds = vec![3, 4];
    let (_, md) = ablate(&seeds, train).unwrap();
    let over = md.split("Over seeds").nth(1).unwrap_or_else(|| panic!("{md}"));
    assert!(over.contains("| itm-only | 2 | ") && over.contains(" ± "), "{md}");
    let runs = run_folders(&[out.clone(), out.join("itm-only-seed3"), out.join("../").join(out.file_name().unwrap())]).unwrap();
    let names: Vec<_> = runs.iter().map(|r| r.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["all-seed0", "itm-only-seed3", "itm-only-seed4", "no-itc-seed0", "no-itg-seed0", "no-itm-seed0"]);
    let e = run_folders(std::slice::from_ref(&dir)).unwrap_err().to_string();
    assert!(e.contains("metrics.jsonl"), "{e}");

    // An unknown variant is refused before any variant trains.
    let e = ablate(&sweep(&cfg, &["all", "no-xyz"]), |_, _, _| unreachable!("no variant may train")).unwrap_err().to_string();
    assert!(e.contains("no-xyz"), "{e}");

    // One variant of a new sweep already has a run: refused before the first variant trains,
    // naming that folder.
    let e =
        ablate(&sweep(&cfg, &["itc-only", "itm-only", "no-itg"]), |_, _, _| unreachable!("no variant may train")).unwrap_err().to_string();
    assert!(e.contains("no-itg-seed0") && e.contains("--resume auto"), "{e}");
    assert!(!out.join("itc-only-seed0").exists(), "a refused sweep leaves no folder");

    // `--resume auto` continues the sweep: the finished variant is not trained again, a new
    // one starts fresh, and a damaged checkpoint is passed over for the newest intact one.
    let mut resumed = sweep(&cfg, &["no-itg", "itc-only"]);
    resumed.resume = Some(SweepResume::Auto);
    resumed.overrides = vec!["train.steps=4".into(), "checkpoint.every=1".into()];
    let (_, md) = ablate(&resumed, train).unwrap();
    assert!(md.contains("| no-itg | 0 | 4 |") && md.contains("| itc-only | 0 | 4 |"), "{md}");
    let damaged = out.join("itc-only-seed0/step-00000004/optimizer.safetensors");
    std::fs::write(&damaged, b"torn").unwrap();
    resumed.overrides[0] = "train.steps=5".into();
    let mut starts = Vec::new();
    ablate(&resumed, |cfg, name, start: Start| {
        starts.push(start.resume.clone());
        train(cfg, name, start)
    })
    .unwrap();
    assert_eq!(starts[1].as_deref(), Some(out.join("itc-only-seed0/step-00000003").as_path()), "{starts:?}");
}

fn cache_features(cfg_path: &Path, overrides: &[String]) -> qformer::Result<Vec<qformer::data::feature_cache::BuildSummary>> {
    let cfg = TrainConfig::load(cfg_path, overrides)?;
    dispatch(BackendKind::Flex, qformer::app::cache_features::CacheFeatures { cfg, batch: 7 })
}

#[test]
fn training_from_the_feature_cache_equals_training_from_images() {
    let _guard = serial();
    let dir = workdir("cache");
    let cfg = config(&dir, "");
    let cache = |dtype: &str, views: usize| {
        vec![
            format!("data.cache.dir=\"{}/cache-{dtype}-{views}\"", dir.display()),
            format!("data.cache.dtype=\"{dtype}\""),
            format!("data.cache.views={views}"),
        ]
    };
    let eval_transform = vec!["data.augment.enabled=false".to_string()];
    let with = |a: &[String], b: &[String]| [a, b].concat();
    let built = cache_features(&cfg, &with(&eval_transform, &cache("f32", 0))).unwrap();
    assert_eq!((built[0].split.as_str(), built[0].images, built[0].failed), ("train", 40, 0));
    assert_eq!((built[1].split.as_str(), built[1].images), ("eval", 12));

    let images = train(&cfg, &with(&eval_transform, &["checkpoint.dir=\"{}/a\"".replace("{}", &dir.display().to_string())]), None).unwrap();
    let cached_overrides = with(
        &with(&eval_transform, &cache("f32", 0)),
        &["data.features=\"cache\"".to_string(), format!("checkpoint.dir=\"{}/b\"", dir.display())],
    );
    let cached = train(&cfg, &cached_overrides, None).unwrap();
    let (a, b) = (common::losses(&images.run_dir), common::losses(&cached.run_dir));
    assert_eq!(a.len(), 4);
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-6 * x.abs(), "from images {a:?}, from the cache {b:?}");
    }
    assert_eq!(images.recall, cached.recall, "held-out retrieval from cached eval features");

    // A run whose cache is missing builds it first (both splits) and trains the same.
    let auto_cache =
        [format!("data.cache.dir=\"{}/cache-auto\"", dir.display()), "data.cache.dtype=\"f32\"".into(), "data.cache.views=0".into()];
    let auto_run = ["data.features=\"cache\"".to_string(), format!("checkpoint.dir=\"{}/e\"", dir.display())];
    let auto = train(&cfg, &with(&with(&eval_transform, &auto_cache), &auto_run), None).unwrap();
    assert!(dir.join("cache-auto/train.json").exists() && dir.join("cache-auto/eval.json").exists());
    for (x, y) in a.iter().zip(&common::losses(&auto.run_dir)) {
        assert!((x - y).abs() <= 1e-6 * x.abs(), "from images {a:?}, from the cache the run built: {y}");
    }

    // Half precision and augmented views train too; the f16 losses stay close to f32.
    cache_features(&cfg, &cache("f16", 0).into_iter().chain(eval_transform.clone()).collect::<Vec<_>>()).unwrap();
    let half = train(
        &cfg,
        &with(
            &with(&eval_transform, &cache("f16", 0)),
            &["data.features=\"cache\"".to_string(), format!("checkpoint.dir=\"{}/c\"", dir.display())],
        ),
        None,
    )
    .unwrap();
    for (x, y) in a.iter().zip(&common::losses(&half.run_dir)) {
        assert!((x - y).abs() <= 1e-2 * x.abs(), "f16 cache: {x} vs {y}");
    }
    let views = cache_features(&cfg, &cache("f16", 3)).unwrap();
    assert_eq!(views[0].rows, 120);
    train(&cfg, &with(&cache("f16", 3), &["data.features=\"cache\"".to_string(), format!("checkpoint.dir=\"{}/d\"", dir.display())]), None)
        .unwrap();

    // A cache built for another encoder, or cut short, is refused with the reason.
    let other = with(&cached_overrides, &["encoder.seed=4".to_string()]);
    let err = train(&cfg, &other, None).err().unwrap().to_string();
    assert!(err.contains("different encoder") && err.contains("cache-features"), "{err}");
    let bin = dir.join("cache-f32-0/train.bin");
    let len = std::fs::metadata(&bin).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&bin).unwrap().set_len(len - 4).unwrap();
    let err = train(&cfg, &cached_overrides, None).err().unwrap().to_string();
    assert!(err.contains("train.bin") && err.contains("truncated"), "{err}");
    let err = train(&cfg, &["data.features=\"cache\"".to_string()], None).err().unwrap().to_string();
    assert!(err.contains("data.features"), "{err}");
}

#[test]
fn evaluation_during_training_keeps_the_best_checkpoint_and_reports() {
    let _guard = serial();
    let dir = workdir("evaluate");
    let cfg = config(&dir, "");
    let overrides = ["eval.every=1", "eval.rerank_every=2", "eval.k_test=4", "eval.best_metric=\"itm.mean\""].map(String::from);
    let run = train(&cfg, &overrides, None).unwrap();
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(run.run_dir.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let evaluated: Vec<u64> = lines.iter().filter(|l| l.get("evaluation").is_some()).map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(evaluated, vec![2, 4]);
    assert!(lines.iter().all(|l| l.get("retrieval").is_some()), "ITC retrieval every step");
    let mean = |l: &serde_json::Value| {
        let r = &l["evaluation"]["itm"];
        let f = |k: &str| r[k].as_f64().unwrap();
        (f("i2t_r1") + f("i2t_r5") + f("i2t_r10") + f("t2i_r1") + f("t2i_r5") + f("t2i_r10")) / 6.0
    };
    let (best_step, best_value) = lines
        .iter()
        .filter(|l| l.get("evaluation").is_some())
        .map(|l| (l["step"].as_u64().unwrap(), mean(l)))
        .fold((0, f64::NEG_INFINITY), |a, b| if b.1 > a.1 { b } else { a });
    let best_dir = run.run_dir.join(checkpoint::BEST);
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(best_dir.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["step"].as_u64(), Some(best_step));
    assert!((state["best"][1].as_f64().unwrap() - best_value).abs() < 1e-9);

    // `qformer eval` on the final checkpoint repeats the last in-training evaluation.
    let job = eval_job(&run.run_dir, 4);
    let outcome = dispatch(BackendKind::Flex, job).unwrap();
    assert_eq!((outcome.step, outcome.checkpoint.file_name().unwrap().to_str()), (4, Some("step-00000004")));
    assert!((outcome.means.itc.mean - outcome.report.itc.mean()).abs() < 1e-12);
    let json = serde_json::to_value(&outcome).unwrap();
    assert!(
        json["checkpoint"].is_string()
            && json["step"] == 4
            && json["itc"]["i2t_r1"].is_number()
            && json["means"]["itm"]["mean"].is_number()
    );
    let report = outcome.report;
    let last: qformer::eval::evaluate::EvalReport = serde_json::from_value(lines[3]["evaluation"].clone()).unwrap();
    assert_eq!((report.itc, report.itm, report.itg_perplexity), (last.itc, last.itm, last.itg_perplexity));
    assert!(report.itg_perplexity.is_finite() && report.itg_perplexity > 1.0);
    assert!(report.timing.itm_pairs >= report.images * 4);
    assert!(report.itg_grounding_gap.is_finite());
    // Every ITC miss at R@1 is attributed, in both directions (the set is generated).
    let c = report.confusions.as_ref().expect("a generated set's misses are attributed");
    let misses = |counts: &std::collections::BTreeMap<String, usize>| counts.values().sum::<usize>();
    assert_eq!(misses(&c.itc_i2t), ((100.0 - report.itc.i2t_r1) * report.images as f64 / 100.0).round() as usize);
    assert_eq!(misses(&c.itc_t2i), ((100.0 - report.itc.t2i_r1) * report.texts as f64 / 100.0).round() as usize);
    assert!(
        c.itc_i2t
            .keys()
            .chain(c.itm_negatives.keys())
            .all(|k| k == "same scene" || k.split('+').all(|a| qformer::data::synth::ATTRIBUTES.contains(&a))),
        "{c:?}"
    );
    // Chunks bound device memory and change nothing else: 3 images per forward (a ragged last
    // chunk) gives the same ranking, accuracies and perplexity to f32 rounding.
    let chunked = dispatch(BackendKind::Flex, qformer::app::eval::EvalJob { chunk: Some(3), ..eval_job(&run.run_dir, 4) }).unwrap().report;
    assert_eq!((chunked.itc, chunked.itm), (report.itc, report.itm));
    assert_eq!((chunked.itm_acc_positive, chunked.itm_acc_negative), (report.itm_acc_positive, report.itm_acc_negative));
    assert!((chunked.itg_perplexity - report.itg_perplexity).abs() < 1e-5 * report.itg_perplexity);
    // The shuffled pairing is fixed by the eval seed, not by the chunks.
    assert!(
        (chunked.itg_grounding_gap - report.itg_grounding_gap).abs() < 1e-5,
        "{} vs {}",
        chunked.itg_grounding_gap,
        report.itg_grounding_gap
    );
    // Re-ranking only the top 1 keeps every recall of ITC (the rest stays in ITC order).
    let top1 = dispatch(BackendKind::Flex, eval_job(&run.run_dir, 1)).unwrap().report;
    assert_eq!(top1.itm, top1.itc);
    // The best checkpoint is a checkpoint like any other.
    dispatch(BackendKind::Flex, qformer::app::eval::EvalJob { max_images: 3, ..eval_job(&best_dir, 4) }).unwrap();

    // `qformer caption` captions every readable image and names the one it cannot read.
    let good = dir.join("shapes/images/000000.png");
    let bad = dir.join("broken.png");
    std::fs::write(&bad, b"not an image").unwrap();
    let out = common::qformer("caption")
        .args(["--beams", "1", "--max-len", "5", "--min-len", "1", "--checkpoint"])
        .arg(&run.run_dir)
        .args([&good, &bad, &good])
        .output();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "a failed image makes the exit status non-zero");
    assert_eq!(stdout.lines().filter(|l| l.starts_with(&good.display().to_string())).count(), 2, "{stdout}");
    assert!(stderr.contains("broken.png") && stderr.contains("1 of 3 images"), "{stderr}");

    // The report draws every curve of this run and of a second one, overlaid.
    let other = train(&cfg, &[format!("checkpoint.dir=\"{}/other\"", dir.display()), "objectives.itm.enabled=false".into()], None).unwrap();
    let (png, md) = qformer::app::report::write(&[run.run_dir.clone(), other.run_dir.clone()], &dir.join("report")).unwrap();
    let img = image::open(&png).unwrap();
    assert!(img.width() >= 1600 && img.height() == 760, "{}x{}", img.width(), img.height());
    let md = std::fs::read_to_string(md).unwrap();
    assert_eq!(md.lines().filter(|l| l.starts_with("| mini")).count(), 2, "{md}");
    assert!(md.contains("re-ranking gain") && md.contains("ITG grounding gap") && md.contains("ITM constant"), "{md}");
}

fn eval_job(checkpoint: &Path, k_test: usize) -> qformer::app::eval::EvalJob {
    let model = qformer::app::args::ModelArgs { checkpoint: checkpoint.to_path_buf(), config: None, overrides: Vec::new() };
    qformer::app::eval::EvalJob { model, data: None, k_test: Some(k_test), max_images: 0, chunk: None }
}

/// A run whose ITM sits at the loss of a constant answer warns once, naming the figure; with the
/// check off it does not. The miniature run's ITM has not moved from that loss in 4 steps.
#[test]
fn a_stalled_itm_is_reported_once() {
    let dir = common::workdir("itm_stall");
    let cfg = common::RunConfig::miniature(4).write(&dir, "run");
    let run = |sets: &[&str]| {
        let out = common::qformer("train").config(&cfg).arg("--overwrite").sets(["log.itm_stall_margin=0.1"]).sets(sets).succeed();
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = run(&["log.itm_stall_steps=2"]);
    assert_eq!(stderr.matches("ITM has stayed within 0.1 of").count(), 1, "{stderr}");
    assert!(stderr.contains("step 2: warning"), "{stderr}");
    let records = qformer::train::metrics::MetricsLog::read(&dir.join("checkpoints/run")).unwrap();
    let c = records[0].itm_constant.expect("the constant answer's loss is logged");
    // Batch 6: 6 matching pairs and 12 negatives, one per direction and row.
    assert!((c - (3f64.ln() - 2.0 / 3.0 * 2f64.ln())).abs() < 1e-9, "{c}");
    assert!(!run(&["log.itm_stall_steps=0"]).contains("ITM has stayed"));
}

/// A step reads back a fixed number of values whatever the model's depth: per micro-batch one
/// read for every loss term and one for the similarity rows the negatives are drawn from, then
/// one for the gradient norm. Nothing per parameter, so a GPU syncs the same few times for a
/// 2-layer and a 12-layer model.
#[test]
fn a_step_reads_back_a_fixed_number_of_values() {
    fn read_backs<K: qformer::kernels::TrainBackend>(layers: usize, micro_batches: usize, negatives: NegativeMode) -> u64 {
        let device = Default::default();
        let cfg = qformer::model::QFormerConfig { num_hidden_layers: layers, ..common::small() };
        let model = QFormer::<K>::new(&cfg, &device);
        let optim = AdamW::new(&OptimConfig::default(), &model);
        let objectives = ObjectiveConfig { negatives, ..Default::default() };
        let mut trainer = Trainer::new(model, optim, objectives, StepOptions { clip: Some(1.0), seed: 3 }, Box::new(Alone));
        let micro: Vec<_> = (0..micro_batches)
            .map(|m| {
                let b = common::batch(4, Some(vec![0, 1, 2, 3]), m as u64);
                let feats = Tensor::from_data(b.image_feats.to_data(), &device);
                let text = b.text.clone();
                trainer.batch(feats, text, vec![0, 1, 2, 3], &[4 * m as u64, 4 * m as u64 + 1, 4 * m as u64 + 2, 4 * m as u64 + 3]).unwrap()
            })
            .collect();
        let before = qformer::util::host::read_backs();
        trainer.step(&micro, 1e-4, false).unwrap();
        qformer::util::host::read_backs() - before
    }
    fn check<K: qformer::kernels::TrainBackend>(micro_batches: &[usize]) {
        for &micro in micro_batches {
            let sampled = read_backs::<K>(2, micro, NegativeMode::Sample);
            assert_eq!(sampled, 2 * micro as u64 + 1, "{micro} micro-batch(es)");
            assert_eq!(read_backs::<K>(4, micro, NegativeMode::Sample), sampled, "4 layers read back as often as 2");
        }
    }
    let _guard = serial();
    check::<common::B>(&[1, 2]);
    let explicit = NegativeMode::Explicit { images: vec![1, 2, 3, 0], texts: vec![3, 0, 1, 2] };
    assert_eq!(read_backs::<common::B>(2, 1, explicit), 2, "explicit negatives read no similarities");
    // One micro-batch at two depths on wgpu: each new graph compiles its shaders there (minutes
    // on the software driver), and the count per micro-batch is the same code on every backend.
    #[cfg(feature = "wgpu")]
    check::<burn::backend::Autodiff<burn::backend::Wgpu>>(&[1]);
}

/// The diagnostics tell an image-blind model from one that sees: the same model and captions,
/// trained on one batch whose images are either distinct or all the same (the fusion then cannot
/// tell a caption's own image from another's). The blind one's ITM stays at the constant answer's
/// loss and is warned about, and its ITG grounding gap is 0; the seeing one's ITM learns the pairs
/// unwarned and its decoder reads the image (a clearly positive gap).
#[test]
fn the_diagnostics_tell_an_image_blind_model_from_one_that_sees() {
    use burn::module::AutodiffModule;
    use qformer::eval::evaluate::{evaluate, EvalOptions};
    use qformer::model::frozen::Frozen;

    fn train(blind: bool) -> (Option<String>, f64, f64, f64) {
        let device = Default::default();
        let _guard = serial();
        <common::B as burn::tensor::backend::Backend>::seed(&device, 11);
        // Wider initial weights, as the tiny preset has: the image reaches the fusion early.
        let cfg = qformer::model::QFormerConfig { initializer_range: 0.1, ..common::small() };
        let model = QFormer::<common::B>::new(&cfg, &device);
        let optim = AdamW::new(&OptimConfig::default(), &model);
        let mut trainer = Trainer::new(model, optim, ObjectiveConfig::default(), StepOptions { clip: Some(1.0), seed: 3 }, Box::new(Alone));
        let b = common::batch(8, None, 2);
        let feats = if blind { b.image_feats.clone().narrow(0, 0, 1).repeat_dim(0, 8) } else { b.image_feats.clone() };
        // The seeing matcher leaves the constant answer after about 50 steps (measured).
        let mut watch = qformer::train::diagnostics::ItmStall::new(70, 0.03);
        let (mut warning, mut last) = (None, (0.0, 0.0));
        for step in 0..150u64 {
            // New stream positions each step, as the loader gives: new dropout masks and
            // negatives (with the same masks every step, a matcher could learn them instead).
            let positions: Vec<u64> = (8 * step..8 * step + 8).collect();
            let batch = trainer.batch(feats.clone(), b.text.clone(), (0..8).collect(), &positions).unwrap();
            let t = trainer.step(std::slice::from_ref(&batch), 2e-3, false).unwrap().totals;
            let (itm, constant) = (t.terms[1].unwrap(), t.itm_constant.unwrap());
            warning = warning.or(watch.observe(Some(itm), Some(constant)));
            last = (itm, constant);
        }
        let set = qformer::data::eval_set::EvalSet {
            inputs: qformer::data::eval_set::EvalInputs::Resident(qformer::util::host::to_f32(feats)),
            images: 8,
            captions: b.text.clone(),
            caption_image: (0..8).collect(),
            skipped: vec![],
        };
        let opts = EvalOptions { k_test: 2, chunk: 3, seed: 0, captions: None };
        let gap = evaluate(&trainer.model.valid(), &Frozen::Cache { tokens: 10, width: 48 }, &set, &opts).unwrap().itg_grounding_gap;
        (warning, last.0, last.1, gap)
    }
    let (warning, itm, constant, gap) = train(true);
    assert!(warning.is_some_and(|w| w.contains("ITM has stayed")), "blind: ITM {itm} against {constant}");
    assert!(gap.abs() < 1e-6, "blind: grounding gap {gap}");
    let (warning, itm, constant, gap) = train(false);
    assert!(warning.is_none() && itm < constant - 0.2, "seeing: ITM {itm} against {constant}: {warning:?}");
    assert!(gap > 0.5, "seeing: grounding gap {gap}");
}
