//! Hugging Face `Blip2ForImageTextRetrieval` export and import. HF holds the Q-Former, the query
//! tokens, `ln_vision` (as `vision_model.post_layernorm`), the projections, the ITM head and an
//! EVA-shaped vision model; it has no place for the temperature or the ITG head, which go to a
//! sidecar file (`qformer_extra.safetensors`) under BERT's MLM-head names so nothing is lost.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::safetensors_io::{write_safetensors, OwnedTensor};
use super::source::TensorSource;
use super::weights::{load_mapped, named_tensors, LoadReport, Mapped};
use crate::kernels::Kernels;
use crate::model::vit::{Vit, VitConfig, VitKind};
use crate::model::{QFormer, QFormerConfig};
use crate::util::error::{Error, Result};

pub const MODEL_FILE: &str = "model.safetensors";
pub const CONFIG_FILE: &str = "config.json";
pub const SIDECAR_FILE: &str = "qformer_extra.safetensors";

/// Our name → HF's, for what HF can hold.
pub fn hf_name(ours: &str) -> Option<String> {
    if ours == "temp" || ours.starts_with("lm_head.") {
        return None;
    }
    Some(if let Some(rest) = ours.strip_prefix("ln_vision.") {
        format!("vision_model.post_layernorm.{rest}")
    } else if let Some(rest) = ours.strip_prefix("vision_proj.") {
        format!("vision_projection.{rest}")
    } else if let Some(rest) = ours.strip_prefix("text_proj.") {
        format!("text_projection.{rest}")
    } else {
        ours.to_string()
    })
}

/// Our name → the sidecar's, for what HF cannot hold.
pub fn sidecar_name(ours: &str) -> Option<String> {
    if ours == "temp" {
        return Some("temp".into());
    }
    ours.strip_prefix("lm_head.").map(|rest| format!("cls.predictions.{rest}"))
}

/// The `config.json` HF needs to build the model (`use_qformer_text_input` creates the text FFN;
/// the vocabulary includes `[DEC]`).
pub fn config_json(cfg: &QFormerConfig, vit: &VitConfig) -> serde_json::Value {
    json!({
        "architectures": ["Blip2ForImageTextRetrieval"],
        "model_type": "blip-2",
        "num_query_tokens": cfg.num_query_tokens,
        "image_text_hidden_size": cfg.image_text_hidden_size,
        "initializer_range": cfg.initializer_range,
        "torch_dtype": "float32",
        "qformer_config": {
            "model_type": "blip_2_qformer",
            "vocab_size": cfg.vocab_size,
            "use_qformer_text_input": true,
            "cross_attention_frequency": cfg.cross_attention_frequency,
            "encoder_hidden_size": cfg.encoder_hidden_size,
            "hidden_size": cfg.hidden_size,
            "num_hidden_layers": cfg.num_hidden_layers,
            "num_attention_heads": cfg.num_attention_heads,
            "intermediate_size": cfg.intermediate_size,
            "layer_norm_eps": cfg.layer_norm_eps,
            "max_position_embeddings": cfg.max_position_embeddings,
            "hidden_dropout_prob": cfg.hidden_dropout_prob,
            "attention_probs_dropout_prob": cfg.attention_probs_dropout_prob,
            "hidden_act": "gelu",
            "pad_token_id": 0,
        },
        "vision_config": {
            "model_type": "blip_2_vision_model",
            "hidden_size": vit.width,
            "intermediate_size": vit.mlp_hidden(),
            "num_hidden_layers": vit.depth,
            "num_attention_heads": vit.heads,
            "patch_size": vit.patch_size,
            "image_size": vit.image_size,
            "layer_norm_eps": vit.eps(),
            "qkv_bias": true,
            "hidden_act": "gelu",
        },
    })
}

/// What an export wrote.
#[derive(Debug)]
pub struct Export {
    pub dir: PathBuf,
    pub hf_tensors: usize,
    pub sidecar_tensors: usize,
    /// False for CLIP encoders, which HF's BLIP-2 vision model cannot represent.
    pub vision_included: bool,
}

/// Writes `model.safetensors` (metadata `format: pt`), `config.json` and the sidecar to `out`.
pub fn export<B: Kernels>(model: &QFormer<B>, cfg: &QFormerConfig, vit: &Vit<B>, vit_cfg: &VitConfig, out: &Path) -> Result<Export> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let (mut hf, mut extra) = (Vec::new(), Vec::new());
    for (name, tensor) in named_tensors(model) {
        match (hf_name(&name), sidecar_name(&name)) {
            (Some(n), _) => hf.push((n, tensor)),
            (None, Some(n)) => extra.push((n, tensor)),
            (None, None) => unreachable!("every parameter has a home"),
        }
    }
    let vision_included = vit_cfg.kind == VitKind::Eva;
    if vision_included {
        hf.extend(super::vit::hf_blip2_tensors(vit).into_iter().map(|(n, shape, v)| (n, OwnedTensor::f32(shape, &v))));
    }
    let summary = Export { dir: out.to_path_buf(), hf_tensors: hf.len(), sidecar_tensors: extra.len(), vision_included };
    let pt = HashMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors(&out.join(MODEL_FILE), hf, pt.clone())?;
    let mut meta = pt;
    meta.insert("config".into(), cfg.to_json());
    write_safetensors(&out.join(SIDECAR_FILE), extra, meta)?;
    let text = serde_json::to_string_pretty(&config_json(cfg, vit_cfg)).expect("json");
    std::fs::write(out.join(CONFIG_FILE), text).map_err(|e| Error::io(out.join(CONFIG_FILE), e))?;
    Ok(summary)
}

/// Loads an HF export (or any `Blip2ForImageTextRetrieval` file) into `model`; the temperature
/// and ITG head come from the sidecar beside it when there is one, and keep their values if not.
pub fn import<B: Kernels>(model: QFormer<B>, src: &TensorSource, device: &B::Device) -> Result<(QFormer<B>, LoadReport)> {
    let (model, mut report) = load_mapped(model, src, |n| hf_name(n).map(Mapped::exact), device)?;
    report.unused.retain(|n| !n.starts_with("vision_model.") || n.starts_with("vision_model.post_layernorm"));
    let sidecar = src.path.with_file_name(SIDECAR_FILE);
    if !sidecar.exists() {
        return Ok((model, report));
    }
    let side = TensorSource::open(&sidecar)?;
    let (model, side_report) = load_mapped(model, &side, |n| sidecar_name(n).map(Mapped::exact), device)?;
    report.loaded += side_report.loaded;
    report.kept.retain(|n| sidecar_name(n).is_none());
    Ok((model, report))
}
