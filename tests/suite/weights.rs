//! Weights files: HF names and layout, exact round trip, and refusal of damaged or mismatched files.

use crate::common;

use std::collections::HashMap;
use std::path::PathBuf;

use burn::backend::Flex;
use qformer::interop::hf_config::model_config_from_json;
use qformer::interop::safetensors_io::{write_safetensors, OwnedTensor, SafetensorsFile};
use qformer::interop::weights::{load_weights, param_names, save_weights};
use qformer::model::{QFormer, QFormerConfig};

type B = Flex;

fn cfg() -> QFormerConfig {
    QFormerConfig {
        hidden_size: 16,
        num_hidden_layers: 3,
        num_attention_heads: 2,
        intermediate_size: 24,
        encoder_hidden_size: 12,
        num_query_tokens: 3,
        image_text_hidden_size: 8,
        vocab_size: 50,
        bos_token_id: 49,
        max_position_embeddings: 10,
        ..QFormerConfig::blip2()
    }
}

fn tmp(name: &str) -> PathBuf {
    common::workdir(&format!("weights-{name}")).join(name)
}

fn saved(name: &str) -> (QFormer<B>, PathBuf) {
    let model = QFormer::<B>::new(&cfg(), &Default::default());
    let path = tmp(name);
    save_weights(&model, &cfg(), &path).unwrap();
    (model, path)
}

/// Rewrites `src` with `edit` applied to its tensor list.
fn rewrite(src: &std::path::Path, dst: &str, edit: impl FnOnce(&mut Vec<(String, OwnedTensor)>)) -> PathBuf {
    let f = SafetensorsFile::open(src).unwrap();
    let mut tensors: Vec<(String, OwnedTensor)> = f
        .names()
        .unwrap()
        .into_iter()
        .map(|n| {
            let (shape, v) = f.f32(&n).unwrap();
            (n, OwnedTensor::f32(shape, &v))
        })
        .collect();
    edit(&mut tensors);
    let out = tmp(dst);
    write_safetensors(&out, tensors, f.metadata().unwrap()).unwrap();
    out
}

#[test]
fn names_and_layout_follow_hugging_face() {
    let _rng = common::serial();
    let (_, path) = saved("layout.safetensors");
    let f = SafetensorsFile::open(&path).unwrap();
    let meta = f.metadata().unwrap();
    assert_eq!(meta.get("format").map(String::as_str), Some("pt"));
    assert_eq!(model_config_from_json(&meta["config"], "meta").unwrap(), cfg());
    // Linear weights [out, in]; the key projection of cross-attention reads the image width.
    assert_eq!(f.f32("qformer.encoder.layer.0.crossattention.attention.key.weight").unwrap().0, vec![16, 12]);
    assert_eq!(f.f32("qformer.encoder.layer.0.intermediate_query.dense.weight").unwrap().0, vec![24, 16]);
    assert_eq!(f.f32("temp").unwrap().0, Vec::<usize>::new());
    assert_eq!(f.f32("query_tokens").unwrap().0, vec![1, 3, 16]);
    // Cross-attention in layers 0 and 2 only; the tied decoder weight is not stored twice.
    assert!(!f.contains("qformer.encoder.layer.1.crossattention.output.dense.weight").unwrap());
    assert!(f.contains("qformer.encoder.layer.2.crossattention.output.dense.weight").unwrap());
    assert!(f.names().unwrap().iter().all(|n| !n.contains("decoder")));
    // 32 tensors per cross-attention layer, 22 per other layer, 19 outside the layers.
    assert_eq!(f.names().unwrap().len(), 2 * 32 + 22 + 19);
}

#[test]
fn round_trip_is_exact() {
    let _rng = common::serial();
    let (model, path) = saved("roundtrip.safetensors");
    let (loaded, loaded_cfg) = load_weights::<B>(&path, None, &Default::default()).unwrap();
    assert_eq!(loaded_cfg, cfg());
    let again = tmp("roundtrip2.safetensors");
    save_weights(&loaded, &cfg(), &again).unwrap();
    let (a, b) = (SafetensorsFile::open(&path).unwrap(), SafetensorsFile::open(&again).unwrap());
    for name in a.names().unwrap() {
        assert_eq!(a.f32(&name).unwrap(), b.f32(&name).unwrap(), "{name}");
    }
    assert_eq!(param_names(&model), param_names(&loaded));
}

#[test]
fn damaged_or_mismatched_files_are_refused_by_name() {
    let _rng = common::serial();
    let (_, path) = saved("good.safetensors");
    let device = Default::default();
    let err = |p: &PathBuf| match load_weights::<B>(p, None, &device) {
        Ok(_) => panic!("{} must be refused", p.display()),
        Err(e) => e.to_string(),
    };

    let bytes = std::fs::read(&path).unwrap();
    let cut = tmp("truncated.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    assert!(err(&cut).contains("not a valid safetensors"), "{}", err(&cut));

    let missing = rewrite(&path, "missing.safetensors", |t| t.retain(|(n, _)| n != "itm_head.bias"));
    assert!(err(&missing).contains("missing tensor `itm_head.bias`"), "{}", err(&missing));

    let extra =
        rewrite(&path, "extra.safetensors", |t| t.push(("cls.predictions.decoder.weight".into(), OwnedTensor::f32(vec![1], &[0.0]))));
    assert!(err(&extra).contains("cls.predictions.decoder.weight"), "{}", err(&extra));

    let shape = rewrite(&path, "shape.safetensors", |t| {
        let i = t.iter().position(|(n, _)| n == "vision_proj.weight").unwrap();
        t[i].1 = OwnedTensor::f32(vec![16, 8], &[0.0; 128]);
    });
    assert!(err(&shape).contains("`vision_proj.weight` has shape [16, 8], the model needs [8, 16]"), "{}", err(&shape));

    // Another model shape given explicitly: refused at the first tensor that does not fit.
    let other = QFormerConfig { hidden_size: 32, ..cfg() };
    let e = load_weights::<B>(&path, Some(&other), &device).err().unwrap().to_string();
    assert!(e.contains("query_tokens"), "{e}");

    let no_meta = tmp("nometa.safetensors");
    write_safetensors(&no_meta, vec![("query_tokens".into(), OwnedTensor::f32(vec![1], &[0.0]))], HashMap::new()).unwrap();
    assert!(err(&no_meta).contains("--config"), "{}", err(&no_meta));
}
