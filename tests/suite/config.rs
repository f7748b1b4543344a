//! Configs: training configs name the key and where it was set (file or command line) in every
//! error; model shapes from TOML and from weights metadata agree with the presets, and a bad file
//! is refused with the key and file named; distributed settings are checked at load.

use crate::common;

use std::path::Path;

use qformer::interop::hf_config::{model_config_file, model_config_from_json};
use qformer::model::QFormerConfig;

fn write(name: &str, text: &str) -> std::path::PathBuf {
    let p = common::workdir(&format!("cfg-{name}")).join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn shipped_configs_are_the_presets() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert_eq!(model_config_file(&root.join("configs/tiny.toml")).unwrap(), QFormerConfig::tiny());
    assert_eq!(model_config_file(&root.join("configs/blip2.toml")).unwrap(), QFormerConfig::blip2());
}

#[test]
fn errors_name_the_key_and_file() {
    let base = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/tiny.toml")).unwrap();
    let p = write("unknown.toml", &base.replace("[model]\n", "[model]\nhidden_sise = 3\n"));
    let e = model_config_file(&p).unwrap_err().to_string();
    assert!(e.contains("hidden_sise") && e.contains("unknown.toml"), "{e}");

    let p = write("heads.toml", &base.replace("num_attention_heads = 4", "num_attention_heads = 3"));
    let e = model_config_file(&p).unwrap_err().to_string();
    assert!(e.contains("model.hidden_size") && e.contains("heads.toml"), "{e}");

    let p = write("type.toml", &base.replace("num_query_tokens = 8", "num_query_tokens = \"many\""));
    let e = model_config_file(&p).unwrap_err().to_string();
    assert!(e.contains("num_query_tokens"), "{e}");

    let p = write("bos.toml", &base.replace("bos_token_id = 30522", "bos_token_id = 40000"));
    let e = model_config_file(&p).unwrap_err().to_string();
    assert!(e.contains("model.bos_token_id"), "{e}");
}

#[test]
fn json_metadata_round_trips() {
    let cfg = QFormerConfig::blip2();
    assert_eq!(model_config_from_json(&cfg.to_json(), "x").unwrap(), cfg);
    assert!(model_config_from_json("{\"hidden_size\": 1}", "w.safetensors").unwrap_err().to_string().contains("w.safetensors"));
}

#[test]
fn every_shipped_config_loads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::env::set_current_dir(root).unwrap();
    let mut files: Vec<_> = std::fs::read_dir(root.join("configs")).unwrap().map(|e| e.unwrap().path()).collect();
    files.extend(std::fs::read_dir(root.join("configs/ablations")).unwrap().map(|e| e.unwrap().path()));
    let mut loaded = 0;
    for f in files.iter().filter(|f| f.extension().is_some_and(|e| e == "toml") && !f.ends_with("blip2.toml")) {
        let cfg = qformer::train::config::TrainConfig::load(f, &[]).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        if f.ends_with("tiny.toml") {
            assert_eq!(cfg.encoder, qformer::model::vit::VitConfig::preset("tiny").unwrap(), "bench's tiny encoder is configs/tiny.toml's");
        }
        if f.ends_with("lavis_stage1.toml") {
            let eva = qformer::model::vit::VitConfig::preset("eva-g").unwrap();
            assert_eq!((cfg.encoder.width, cfg.encoder.depth, cfg.encoder.mlp_hidden()), (eva.width, eva.depth, 6144));
        }
        if f.ends_with("lavis_stage1_vitL.toml") {
            assert_eq!((cfg.encoder.kind, cfg.model.encoder_hidden_size), (qformer::model::vit::VitKind::Clip, 1024));
        }
        loaded += 1;
    }
    assert!(loaded >= 12, "{loaded}");
}

/// The stage-one losses of the parity fixture's batch under the weights in `weights` (their
/// config read however the file carries it), as exact bits.
fn fixture_losses(weights: &Path) -> Vec<u32> {
    use qformer::interop::batch_file::read_batch;
    use qformer::interop::weights::load_weights;
    use qformer::objectives::{stage1_loss, NegativeMode, NegativeSampler, ObjectiveConfig};
    type B = burn::backend::Autodiff<burn::backend::Flex>;
    let device = Default::default();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/xattn_every_layer");
    let (model, cfg) = load_weights::<B>(weights, None, &device).unwrap();
    let file = read_batch::<B>(&fixture.join("batch.safetensors"), &cfg, &device).unwrap();
    let (images, texts) = file.negatives.unwrap();
    let objectives = ObjectiveConfig { negatives: NegativeMode::Explicit { images, texts }, ..Default::default() };
    let out = stage1_loss(&model, &file.batch, &objectives, &NegativeSampler::new(0), false).unwrap();
    [Some(out.loss), out.itc, out.itm, out.itg].into_iter().map(|t| t.unwrap().into_scalar().to_bits()).collect()
}

/// The fixture's weights written again with `config` metadata `config` (none when `None`).
fn restamped(name: &str, config: Option<&str>) -> std::path::PathBuf {
    use qformer::interop::safetensors_io::{write_safetensors, OwnedTensor, SafetensorsFile};
    let src =
        SafetensorsFile::open(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/xattn_every_layer/weights.safetensors")).unwrap();
    let tensors = src.names().unwrap().into_iter().map(|n| {
        let (shape, values) = src.f32(&n).unwrap();
        (n, OwnedTensor::f32(shape, &values))
    });
    let mut meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    if let Some(c) = config {
        meta.insert("config".into(), c.to_string());
    }
    let path = common::workdir(&format!("hf-{name}")).join("model.safetensors");
    write_safetensors(&path, tensors.collect(), meta).unwrap();
    path
}

fn hf_fixture(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf_config").join(name)).unwrap()
}

#[test]
fn transformers_configs_give_the_same_losses_as_the_minimal_one() {
    let minimal = fixture_losses(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/xattn_every_layer/weights.safetensors"));
    // A full Blip2QFormerConfig dictionary (with qformer's extra shapes) as the metadata.
    assert_eq!(fixture_losses(&restamped("qformer", Some(&hf_fixture("qformer_config.json")))), minimal);
    // No metadata, and a whole Blip2Config as config.json beside the weights (an HF export).
    let bare = restamped("blip2", None);
    std::fs::write(bare.with_file_name("config.json"), hf_fixture("blip2_config.json")).unwrap();
    assert_eq!(fixture_losses(&bare), minimal);
    // The same file given as a model config (check-loss --config).
    let cfg = model_config_file(&bare.with_file_name("config.json")).unwrap();
    assert_eq!((cfg.hidden_size, cfg.num_query_tokens, cfg.image_text_hidden_size, cfg.bos_token_id), (32, 4, 16, 63));
}

#[test]
fn transformers_fields_that_change_the_function_are_checked_by_name() {
    let base: serde_json::Value = serde_json::from_str(&hf_fixture("qformer_config.json")).unwrap();
    let with = |key: &str, value: serde_json::Value| {
        let mut v = base.clone();
        v[key] = value;
        model_config_from_json(&v.to_string(), "model.safetensors").unwrap_err().to_string()
    };
    for (key, value) in [
        ("hidden_act", serde_json::json!("relu")),
        ("position_embedding_type", serde_json::json!("relative_key")),
        ("pad_token_id", serde_json::json!(3)),
        ("pruned_heads", serde_json::json!({"0": [1]})),
        ("hidden_sise", serde_json::json!(3)),
    ] {
        let e = with(key, value);
        assert!(e.contains(&format!("model.{key}")) && e.contains("model.safetensors"), "{key}: {e}");
    }
    let mut whole: serde_json::Value = serde_json::from_str(&hf_fixture("blip2_config.json")).unwrap();
    whole["qformer_config"]["hidden_act"] = serde_json::json!("relu");
    let e = model_config_from_json(&whole.to_string(), "config.json").unwrap_err().to_string();
    assert!(e.contains("model.hidden_act"), "{e}");
    whole["not_a_field"] = serde_json::json!(1);
    assert!(model_config_from_json(&whole.to_string(), "config.json").unwrap_err().to_string().contains("config.not_a_field"));
}

#[test]
fn distributed_settings_are_validated_with_the_key_named() {
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/tiny.toml");
    let error = |sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        qformer::train::config::TrainConfig::load(&cfg, &sets).unwrap_err().to_string()
    };
    let ok = qformer::train::config::TrainConfig::load(&cfg, &["distributed.peers=4".into()]).unwrap();
    assert_eq!(ok.distributed.world(), 4);
    let e = error(&["distributed.peers=3"]);
    assert!(e.starts_with("train.batch_size:") && e.contains("3 peers"), "{e}");
    let e = error(&["distributed.nodes=2", "distributed.node=2"]);
    assert!(e.starts_with("distributed.node:"), "{e}");
    let e = error(&["distributed.nodes=2"]);
    assert!(e.starts_with("distributed.orchestrator:"), "{e}");
    let e = error(&["distributed.nodes=2", "distributed.orchestrator=\"ws://10.0.0.1:3000\"", "distributed.address=\"ws://10.0.0.2\""]);
    assert!(e.starts_with("distributed.address:"), "{e}");
    // Addresses are parsed when the config loads, not when the nodes meet.
    let two_nodes = ["distributed.nodes=2", "distributed.address=\"ws://10.0.0.2:3001\""];
    for bad in ["10.0.0.1:3000", "ws://10.0.0.1", "ws://:3000", "ws://10.0.0.1:0", "ws://10.0.0.1:70000", "http://10.0.0.1:3000"] {
        let e = error(&[&two_nodes[..], &[&format!("distributed.orchestrator=\"{bad}\"")]].concat());
        assert!(e.starts_with("distributed.orchestrator:") && e.contains(bad), "{bad}: {e}");
    }
    let ok = qformer::train::config::TrainConfig::load(
        &cfg,
        &[&two_nodes[..], &["distributed.orchestrator=\"wss://head:3000/\""]].concat().iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    );
    assert!(ok.is_ok(), "{:?}", ok.err());
    let e = error(&["distributed.peers=2", "distributed.devices=[0]"]);
    assert!(e.starts_with("distributed.devices:"), "{e}");
    let e = error(&["distributed.peers=2", "objectives.itc_gradient=\"full\""]);
    assert!(e.starts_with("objectives.itc_gradient:"), "{e}");
    let e = error(&["distributed.timeout_s=0"]);
    assert!(e.contains("distributed.timeout_s"), "{e}");
}

#[test]
fn config_errors_name_key_and_file() {
    let cfg = common::RunConfig::miniature_bert().write(&common::workdir("config"), "mini");
    let e = |o: &str| qformer::train::config::TrainConfig::load(&cfg, &[o.to_string()]).unwrap_err().to_string();
    // A key the command line set is blamed on the command line, not on the file.
    let unknown = e("train.batch_sise=3");
    assert!(unknown.contains("batch_sise") && unknown.contains("command line: --set train.batch_sise=3"), "{unknown}");
    assert!(!unknown.contains("mini.toml"), "{unknown}");
    let wrong_type = e("train.batch_size=\"big\"");
    assert!(wrong_type.contains("batch_size"), "{wrong_type}");
    let range = e("optim.lr=-1");
    assert!(range.contains("optim.lr must be > 0") || (range.contains("optim.lr") && range.contains("> 0")), "{range}");
    assert!(range.contains("--set optim.lr=-1") && !range.contains("mini.toml"), "{range}");
    let width = e("encoder.width=30");
    assert!(width.contains("encoder.width"), "{width}");
    let positions = e("encoder.position_std=-0.5");
    assert!(positions.contains("encoder.position_std") && positions.contains("--set encoder.position_std=-0.5"), "{positions}");
    assert!(e("bad").contains("section.key=value"));
    // A key from the file is still blamed on the file.
    std::fs::write(&cfg, std::fs::read_to_string(&cfg).unwrap().replace("[train]\n", "[train]\nbatch_sise = 3\n")).unwrap();
    let from_file = qformer::train::config::TrainConfig::load(&cfg, &[]).unwrap_err().to_string();
    assert!(from_file.contains("batch_sise") && from_file.contains("mini.toml"), "{from_file}");
}

/// Settings a file sets can be changed from the command line: a run length given there replaces
/// the file's (steps for epochs and back), `clip_grad_norm = 0` switches clipping off, and an
/// error names the key that is wrong.
#[test]
fn command_line_settings_replace_what_a_file_sets() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let load = |sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        qformer::train::config::TrainConfig::load(&root.join("configs/lavis_stage1.toml"), &sets)
    };
    let by_epochs = load(&[]).unwrap();
    assert_eq!((by_epochs.train.steps, by_epochs.train.epochs), (None, Some(10)));
    let by_steps = load(&["train.steps=50"]).unwrap();
    assert_eq!((by_steps.train.steps, by_steps.train.epochs), (Some(50), None));
    let e = load(&["train.epochs=0"]).unwrap_err().to_string();
    assert!(e.contains("train.epochs") && !e.contains("train.steps"), "{e}");
    let e = load(&["train.steps=5", "train.epochs=2"]).unwrap_err().to_string();
    assert!(e.contains("exactly one"), "{e}");
    let mini = common::RunConfig::miniature(2).write(&common::workdir("config-clip"), "mini");
    let clipped = qformer::train::config::TrainConfig::load(&mini, &[]).unwrap();
    assert_eq!(clipped.train.clip(), Some(1.0));
    let off = qformer::train::config::TrainConfig::load(&mini, &["train.clip_grad_norm=0".into()]).unwrap();
    assert_eq!(off.train.clip(), None);
    let e = qformer::train::config::TrainConfig::load(&mini, &["train.clip_grad_norm=-1".into()]).unwrap_err().to_string();
    assert!(e.contains("train.clip_grad_norm"), "{e}");
}

#[test]
fn half_precision_is_refused_on_cpu_backends_by_key() {
    use qformer::model::precision::Precision;
    use qformer::train::config::TrainConfig;
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/tiny.toml");
    for key in ["train.precision", "encoder.precision"] {
        let e = TrainConfig::load(&tiny, &[format!("{key}=f16")]).unwrap_err().to_string();
        assert!(e.contains(key) && e.contains("GPU backend") && e.contains("command line"), "{e}");
    }
    let e = TrainConfig::load(&tiny, &["train.precision=f8".into()]).unwrap_err().to_string();
    assert!(e.contains("train.precision") || e.contains("f8"), "{e}");
    let e = TrainConfig::load(&tiny, &["train.precision=bf16".into(), "train.backend=wgpu".into()]).unwrap_err().to_string();
    assert!(e.contains("train.precision") && e.contains("no bf16"), "{e}");
    let wgpu = TrainConfig::load(&tiny, &["train.precision=f16".into(), "train.backend=wgpu".into()]).unwrap();
    assert_eq!(wgpu.train.precision, Precision::F16);
    let cuda = TrainConfig::load(&tiny, &["train.precision=bf16".into(), "train.backend=cuda".into()]).unwrap();
    assert_eq!(cuda.train.precision, Precision::Bf16);
    assert_eq!(TrainConfig::load(&tiny, &[]).unwrap().train.precision, Precision::F32);
}
