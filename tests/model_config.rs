//! Model shapes from TOML and from weights metadata: presets agree with the shipped files, and a
//! bad file is refused with the key and file named.

use std::path::Path;

use qformer::check_loss::model_config_from_toml;
use qformer::model::QFormerConfig;

fn write(name: &str, text: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("qformer-cfg-{}-{name}", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn shipped_configs_are_the_presets() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert_eq!(model_config_from_toml(&root.join("configs/tiny.toml")).unwrap(), QFormerConfig::tiny());
    assert_eq!(model_config_from_toml(&root.join("configs/blip2.toml")).unwrap(), QFormerConfig::blip2());
}

#[test]
fn errors_name_the_key_and_file() {
    let base = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/tiny.toml")).unwrap();
    let p = write("unknown.toml", &base.replace("[model]\n", "[model]\nhidden_sise = 3\n"));
    let e = model_config_from_toml(&p).unwrap_err().to_string();
    assert!(e.contains("hidden_sise") && e.contains("unknown.toml"), "{e}");

    let p = write("heads.toml", &base.replace("num_attention_heads = 4", "num_attention_heads = 3"));
    let e = model_config_from_toml(&p).unwrap_err().to_string();
    assert!(e.contains("model.hidden_size") && e.contains("heads.toml"), "{e}");

    let p = write("type.toml", &base.replace("num_query_tokens = 8", "num_query_tokens = \"many\""));
    let e = model_config_from_toml(&p).unwrap_err().to_string();
    assert!(e.contains("num_query_tokens"), "{e}");

    let p = write("bos.toml", &base.replace("bos_token_id = 30522", "bos_token_id = 40000"));
    let e = model_config_from_toml(&p).unwrap_err().to_string();
    assert!(e.contains("model.bos_token_id"), "{e}");
}

#[test]
fn json_metadata_round_trips() {
    let cfg = QFormerConfig::blip2();
    assert_eq!(QFormerConfig::from_json(&cfg.to_json(), "x").unwrap(), cfg);
    assert!(QFormerConfig::from_json("{\"hidden_size\": 1}", "w.safetensors").unwrap_err().to_string().contains("w.safetensors"));
}

#[test]
fn every_shipped_config_loads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::env::set_current_dir(root).unwrap();
    let mut files: Vec<_> = std::fs::read_dir(root.join("configs")).unwrap().map(|e| e.unwrap().path()).collect();
    files.extend(std::fs::read_dir(root.join("configs/ablations")).unwrap().map(|e| e.unwrap().path()));
    let mut loaded = 0;
    for f in files.iter().filter(|f| f.extension().is_some_and(|e| e == "toml") && !f.ends_with("blip2.toml")) {
        let cfg = qformer::config::TrainConfig::load(f, &[]).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        if f.ends_with("tiny.toml") {
            assert_eq!(cfg.encoder, qformer::model::vit::VitConfig::preset("tiny").unwrap(), "bench's tiny encoder is the default run's");
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
