//! LAVIS import, Hugging Face export and import (fixtures: `tools/make_lavis_fixture.py`,
//! `qformer export --config tests/fixtures/lavis/continue.toml --out tests/fixtures/hf_export`,
//! then `tools/check_hf_export.py`, which loads that export in `transformers` with no missing or
//! unexpected keys and records HF's outputs).
//!
//! Tolerances: tensor mappings are exact; outputs (ITM logits, ITC cosine similarities) within
//! 1e-5 of the largest |value|.

use crate::common;

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use qformer::data::text::TextBatch;
use qformer::eval::scoring::{image_side, itc_similarities, itm_logits, text_embeds};
use qformer::interop::hf::{self, hf_name, sidecar_name};
use qformer::interop::safetensors_io::SafetensorsFile;
use qformer::interop::weights::named_tensors;
use qformer::kernels::backend::{dispatch, BackendKind};
use qformer::train::config::TrainConfig;
use qformer::train::run::TrainJob;
use qformer::train::trained::Trained;

type B = Flex;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(p: &str) -> PathBuf {
    root().join("tests/fixtures").join(p)
}

fn config(overrides: &[String]) -> TrainConfig {
    std::env::set_current_dir(root()).unwrap();
    TrainConfig::load(&fixture("lavis/continue.toml"), overrides).unwrap()
}

fn lavis_model() -> Trained<B> {
    Trained::from_config(config(&[]), &Default::default()).unwrap()
}

fn as_f32(t: &qformer::interop::safetensors_io::OwnedTensor) -> Vec<f32> {
    t.bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[test]
fn lavis_checkpoint_maps_to_hf_names_exactly() {
    let _rng = common::serial();
    let trained = lavis_model();
    let expected = SafetensorsFile::open(&fixture("lavis/expected_hf.safetensors")).unwrap();
    let mut checked = 0;
    for (ours, tensor) in named_tensors(&trained.model) {
        let name = hf_name(&ours).or_else(|| sidecar_name(&ours)).unwrap();
        let (shape, want) = expected.f32(&name).unwrap_or_else(|e| panic!("{ours}: {e}"));
        assert_eq!(tensor.shape, shape, "{ours}");
        assert_eq!(as_f32(&tensor), want, "{ours} differs from LAVIS `{name}`");
        checked += 1;
    }
    assert_eq!(checked, expected.names().unwrap().len(), "every LAVIS Q-Former tensor is used");
}

#[test]
fn export_is_the_one_hf_loaded_and_gives_hf_outputs() {
    let _rng = common::serial();
    let trained = lavis_model();
    let out = common::workdir("export");
    let e = hf::export(&trained.model, &trained.cfg.model, &trained.vit, &trained.cfg.encoder, &out).unwrap();
    assert!(e.vision_included);
    // Byte for byte the tensors and config that tools/check_hf_export.py loaded into HF.
    for file in [hf::MODEL_FILE, hf::SIDECAR_FILE] {
        let (a, b) = (SafetensorsFile::open(&out.join(file)).unwrap(), SafetensorsFile::open(&fixture("hf_export").join(file)).unwrap());
        let mut names = a.names().unwrap();
        names.sort();
        let mut committed = b.names().unwrap();
        committed.sort();
        assert_eq!(names, committed, "{file}");
        for n in &names {
            assert_eq!(a.f32(n).unwrap(), b.f32(n).unwrap(), "{file}: {n}");
        }
        assert_eq!(a.metadata().unwrap().get("format").map(String::as_str), Some("pt"));
    }
    let json = |p: PathBuf| serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(p).unwrap()).unwrap();
    assert_eq!(json(out.join(hf::CONFIG_FILE)), json(fixture("hf_export/config.json")));
    let _ = std::fs::remove_dir_all(&out);

    // Our ITM logits and ITC similarities on the same inputs equal HF's.
    let device = Default::default();
    let inputs = SafetensorsFile::open(&fixture("lavis/inputs.safetensors")).unwrap();
    let (shape, pixels) = inputs.f32("pixel_values").unwrap();
    let (ishape, ids) = inputs.i64("input_ids").unwrap();
    let (_, mask) = inputs.i64("attention_mask").unwrap();
    let rows = |v: &[i64]| v.chunks(ishape[1]).map(<[i64]>::to_vec).collect::<Vec<_>>();
    let text = TextBatch::new(rows(&ids), rows(&mask), trained.cfg.model.vocab_size).unwrap();
    let feats = trained.vit.forward(Tensor::from_data(TensorData::new(pixels, shape), &device));
    let side = image_side(&trained.model, feats);
    let sims = itc_similarities(side.embeds, text_embeds(&trained.model, &text)).into_data().to_vec::<f32>().unwrap();
    let itm = itm_logits(&trained.model, &side.image_kv, &text).into_data().to_vec::<f32>().unwrap();
    let hf_out = SafetensorsFile::open(&fixture("hf_export/hf_outputs.safetensors")).unwrap();
    for (name, ours) in [("itc_similarities", sims), ("itm_logits", itm)] {
        let err = common::max_rel_error(&ours, &hf_out.f32(name).unwrap().1);
        eprintln!("{name}: max error {err:.2e} of the largest value");
        assert!(err < 1e-5, "{name}: {err:e}");
    }
}

#[test]
fn hf_export_imports_back_to_the_same_model() {
    let _rng = common::serial();
    let trained = lavis_model();
    let hf = fixture("hf_export/model.safetensors").display().to_string();
    let back = Trained::<B>::from_config(config(&[format!("init.weights=\"{hf}\"")]), &Default::default()).unwrap();
    assert!(back.messages[0].contains("Hugging Face"), "{:?}", back.messages);
    for ((name, a), (_, b)) in named_tensors(&trained.model).iter().zip(named_tensors(&back.model).iter()) {
        assert_eq!(as_f32(a), as_f32(b), "{name}");
    }
}

#[test]
fn lavis_checkpoint_continues_training() {
    let _rng = common::serial();
    let dir = root().join("target/lavis-continue");
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = config(&[]);
    // The set lives outside the default location, so it is made explicitly (as `qformer synth`).
    qformer::data::synth::generate(&dir.join("shapes"), &qformer::data::synth::SynthConfig::new(24, 8, 1), cfg.encoder.image_size as u32)
        .unwrap();
    let outcome = dispatch(BackendKind::Flex, TrainJob::new(cfg.clone(), "continue", None)).unwrap();
    assert_eq!(outcome.steps, 3);
    assert!(outcome.last.loss.is_finite() && outcome.last.loss_itm.is_some() && outcome.last.loss_itg.is_some());
    let metrics = std::fs::read_to_string(outcome.run_dir.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 3);
    // The checkpoint resumes like any other.
    let more = config(&["train.steps=4".to_string()]);
    let resumed = dispatch(BackendKind::Flex, TrainJob::new(more, "continue", Some(outcome.run_dir.clone()))).unwrap();
    assert_eq!(resumed.steps, 4);
}

/// `eval` takes the weights a user has: a `qformer export` folder or a LAVIS `.pth`, with a config
/// for the encoder, tokenizer and data. Both are the same model, so they score the same; weights
/// without a config are refused, saying what to pass.
#[test]
fn eval_takes_an_export_folder_or_a_lavis_file_with_a_config() {
    let _rng = common::serial();
    let cfg = config(&[]);
    let shapes = root().join("target/lavis-continue/shapes");
    if !shapes.join("train.json").exists() {
        qformer::data::synth::generate(&shapes, &qformer::data::synth::SynthConfig::new(24, 8, 1), cfg.encoder.image_size as u32).unwrap();
    }
    let eval = |weights: &Path, with_config: bool| {
        let mut cmd = common::qformer("eval").arg("--checkpoint").arg(weights).args(["--max-images", "6", "--json"]);
        if with_config {
            cmd = cmd.arg("--config").arg(fixture("lavis/continue.toml"));
        }
        cmd.output()
    };
    let recalls = |weights: &Path| {
        let out = eval(weights, true);
        assert!(out.status.success(), "{}: {}", weights.display(), String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (report["itc"].clone(), report["itm"].clone())
    };
    let exported = recalls(&fixture("hf_export"));
    assert_eq!(exported, recalls(&fixture("lavis/blip2_tiny.pth")));
    assert!(exported.0["i2t_r10"].as_f64().is_some(), "{exported:?}");
    let refused = eval(&fixture("hf_export"), false);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("--config"), "{err}");
}
