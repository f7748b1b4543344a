//! Model configs as users have them. A Q-Former's shape arrives as our own JSON (a weights file's
//! `config` metadata), as a Hugging Face `Blip2QFormerConfig` dictionary (`to_dict()`, with every
//! `PretrainedConfig` field `transformers` writes), as a whole HF `config.json` (`Blip2Config`:
//! `qformer_config`, `num_query_tokens`, `image_text_hidden_size`), or as a TOML `[model]` table.
//! HF's fields that change the function are checked and refused by name when they ask for
//! something qformer does not compute; its bookkeeping fields are ignored; any other key is
//! refused by name.

use std::path::Path;

use serde_json::{Map, Value};

use crate::model::QFormerConfig;
use crate::util::error::{Error, Result};

/// Our own fields (HF `Blip2QFormerConfig` names where HF has them).
const OURS: [&str; 16] = [
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "cross_attention_frequency",
    "encoder_hidden_size",
    "vocab_size",
    "max_position_embeddings",
    "layer_norm_eps",
    "num_query_tokens",
    "image_text_hidden_size",
    "bos_token_id",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "initializer_range",
    "ln_vision_eps",
];

/// `PretrainedConfig` and `Blip2Config` fields that describe generation, export or the other
/// sub-models, not the Q-Former's function.
const BOOKKEEPING: [&str; 62] = [
    "return_dict",
    "output_hidden_states",
    "output_attentions",
    "torchscript",
    "torch_dtype",
    "use_bfloat16",
    "tf_legacy_loss",
    "tie_word_embeddings",
    "chunk_size_feed_forward",
    "is_encoder_decoder",
    "is_decoder",
    "cross_attention_hidden_size",
    "add_cross_attention",
    "tie_encoder_decoder",
    "max_length",
    "min_length",
    "do_sample",
    "early_stopping",
    "num_beams",
    "num_beam_groups",
    "diversity_penalty",
    "temperature",
    "top_k",
    "top_p",
    "typical_p",
    "repetition_penalty",
    "length_penalty",
    "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size",
    "bad_words_ids",
    "num_return_sequences",
    "output_scores",
    "return_dict_in_generate",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "remove_invalid_values",
    "exponential_decay_length_penalty",
    "suppress_tokens",
    "begin_suppress_tokens",
    "architectures",
    "finetuning_task",
    "id2label",
    "label2id",
    "tokenizer_class",
    "prefix",
    "eos_token_id",
    "sep_token_id",
    "decoder_start_token_id",
    "task_specific_params",
    "problem_type",
    "_name_or_path",
    "_attn_implementation_autoset",
    "_attn_implementation",
    "transformers_version",
    "model_type",
    "use_qformer_text_input",
    "initializer_factor",
    "image_token_index",
    "use_decoder_only_language_model",
    "vision_config",
    "text_config",
    "qformer_config",
];

/// HF fields that change the function, and the one value qformer computes.
fn check_functional(key: &str, value: &Value, source: &str) -> Result<()> {
    let refuse =
        |want: &str| Err(Error::config(format!("model.{key}"), format!("{value} is not supported: qformer computes {want}"), source));
    match key {
        "hidden_act" if value != "gelu" => refuse("\"gelu\" (the exact, erf GELU of BERT and LAVIS)"),
        "position_embedding_type" if value != "absolute" => refuse("\"absolute\" position embeddings"),
        "pad_token_id" if !(value.is_null() || value == 0) => refuse("pad_token_id 0 (the [PAD] row of the BERT vocabulary)"),
        "pruned_heads" if value.as_object().is_some_and(|m| !m.is_empty()) => refuse("every attention head (no pruned heads)"),
        _ => Ok(()),
    }
}

const FUNCTIONAL: [&str; 4] = ["hidden_act", "position_embedding_type", "pad_token_id", "pruned_heads"];

/// Parses a model config in any of the JSON shapes above.
pub fn model_config_from_json(text: &str, source: &str) -> Result<QFormerConfig> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| Error::config("config", format!("invalid model config JSON: {e}"), source))?;
    let Value::Object(top) = value else {
        return Err(Error::config("config", "the model config is not a JSON object", source));
    };
    // A whole Blip2Config: the Q-Former's own dictionary plus the two shapes kept at the top.
    let fields = match top.get("qformer_config") {
        Some(Value::Object(inner)) => {
            let mut fields = inner.clone();
            for key in ["num_query_tokens", "image_text_hidden_size"] {
                if let Some(v) = top.get(key) {
                    fields.insert(key.to_string(), v.clone());
                }
            }
            let known = |k: &str| OURS.contains(&k) || BOOKKEEPING.contains(&k) || FUNCTIONAL.contains(&k);
            if let Some(key) = top.keys().find(|k| !known(k)) {
                return Err(Error::config(
                    format!("config.{key}"),
                    "unknown field: neither a Blip2Config field nor one of qformer's",
                    source,
                ));
            }
            fields
        }
        Some(_) => return Err(Error::config("config.qformer_config", "must be an object", source)),
        None => top,
    };
    model_config_from_fields(fields, source)
}

fn model_config_from_fields(fields: Map<String, Value>, source: &str) -> Result<QFormerConfig> {
    let mut ours = Map::new();
    for (key, value) in fields {
        if FUNCTIONAL.contains(&key.as_str()) {
            check_functional(&key, &value, source)?;
        } else if OURS.contains(&key.as_str()) {
            // HF leaves `bos_token_id` unset; [DEC], the last row of the vocabulary, is ours.
            if key == "bos_token_id" && value.is_null() {
                continue;
            }
            let is_float = key.ends_with("_eps") || key.ends_with("_prob") || key == "initializer_range";
            if !(if is_float { value.is_number() } else { value.is_u64() }) {
                let want = if is_float { "a number" } else { "a non-negative integer" };
                return Err(Error::config(format!("model.{key}"), format!("{value} is not {want}"), source));
            }
            ours.insert(key, value);
        } else if !BOOKKEEPING.contains(&key.as_str()) {
            return Err(Error::config(
                format!("model.{key}"),
                "unknown field: neither a Blip2QFormerConfig field nor one of qformer's",
                source,
            ));
        }
    }
    if !ours.contains_key("bos_token_id") {
        if let Some(vocab) = ours.get("vocab_size").and_then(Value::as_u64) {
            ours.insert("bos_token_id".into(), Value::from(vocab.saturating_sub(1)));
        }
    }
    let cfg: QFormerConfig =
        serde_json::from_value(Value::Object(ours)).map_err(|e| Error::config("model", format!("invalid model config: {e}"), source))?;
    cfg.validate(source)?;
    Ok(cfg)
}

/// A model config file: a JSON file in any shape [`model_config_from_json`] reads (an HF
/// `config.json` among them), or a TOML file's `[model]` table.
pub fn model_config_file(path: &Path) -> Result<QFormerConfig> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    if path.extension().is_some_and(|e| e == "json") {
        return model_config_from_json(&text, &name);
    }
    let value: toml::Table = toml::from_str(&text).map_err(|e| Error::config("toml", e.to_string(), &name))?;
    let model = value.get("model").cloned().ok_or_else(|| Error::config("model", "missing [model] table", &name))?;
    let json = serde_json::to_value(model).map_err(|e| Error::config("model", e.to_string(), &name))?;
    match json {
        Value::Object(fields) => model_config_from_fields(fields, &name),
        _ => Err(Error::config("model", "must be a table", &name)),
    }
}
