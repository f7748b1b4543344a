//! LAVIS stage-one checkpoints (`blip2_pretrained.pth` names: `Qformer.bert.*`, `Qformer.cls.*`,
//! `query_tokens`, `ln_vision`, projections, `temp`), read from PyTorch pickles without executing
//! code. The frozen `visual_encoder.*` in the same file is read by the encoder loader
//! (`encoder.weights` may name the same file).

/// Our name → LAVIS's. Every parameter has one.
pub fn lavis_name(ours: &str) -> String {
    if let Some(rest) = ours.strip_prefix("lm_head.") {
        return format!("Qformer.cls.predictions.{rest}");
    }
    if let Some(rest) = ours.strip_prefix("qformer.layernorm.") {
        return format!("Qformer.bert.embeddings.LayerNorm.{rest}");
    }
    if ours.starts_with("embeddings.") {
        return format!("Qformer.bert.{ours}");
    }
    match ours.strip_prefix("qformer.") {
        Some(rest) => format!("Qformer.bert.{}", rest.replace("attention.attention.", "attention.self.")),
        None => ours.to_string(),
    }
}

/// Whether a file's keys are LAVIS's.
pub fn is_lavis(names: &[String]) -> bool {
    names.iter().any(|n| n == "Qformer.bert.embeddings.word_embeddings.weight")
}
