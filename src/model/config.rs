//! Q-Former shapes. Field names follow Hugging Face `Blip2QFormerConfig` so that the JSON stored in
//! a weights file's metadata reads the same in both ecosystems.

use serde::{Deserialize, Serialize};

use crate::util::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QFormerConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    /// Cross-attention to the image sits in layers where `layer % cross_attention_frequency == 0`.
    pub cross_attention_frequency: usize,
    /// Width of the frozen image encoder's features (1408 for EVA ViT-g).
    pub encoder_hidden_size: usize,
    /// Includes the `[DEC]` token appended to the BERT vocabulary.
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub layer_norm_eps: f64,
    pub num_query_tokens: usize,
    /// Width of the ITC projections (`vision_proj`, `text_proj`).
    pub image_text_hidden_size: usize,
    /// Id of `[DEC]`, which replaces `[CLS]` in the ITG decoder input.
    pub bos_token_id: usize,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// Std of the normal initialisation of the trunk's weights, embeddings and query tokens
    /// (BERT's 0.02; a from-scratch toy model learns sooner with a larger one).
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    /// `ln_vision` keeps PyTorch's default LayerNorm eps, unlike the BERT layers.
    #[serde(default = "default_ln_vision_eps")]
    pub ln_vision_eps: f64,
}

fn default_dropout() -> f64 {
    0.1
}
fn default_init_range() -> f64 {
    0.02
}
fn default_ln_vision_eps() -> f64 {
    1e-5
}

impl QFormerConfig {
    /// BLIP-2's Q-Former (bert-base trunk over EVA ViT-g features).
    pub fn blip2() -> Self {
        Self {
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            cross_attention_frequency: 2,
            encoder_hidden_size: 1408,
            vocab_size: 30523,
            max_position_embeddings: 512,
            layer_norm_eps: 1e-12,
            num_query_tokens: 32,
            image_text_hidden_size: 256,
            bos_token_id: 30522,
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            initializer_range: 0.02,
            ln_vision_eps: 1e-5,
        }
    }

    /// A small Q-Former with the real vocabulary, for tests and CPU runs that finish in minutes.
    pub fn tiny() -> Self {
        Self {
            hidden_size: 256,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 1024,
            cross_attention_frequency: 1,
            encoder_hidden_size: 384,
            num_query_tokens: 8,
            image_text_hidden_size: 128,
            initializer_range: 0.1,
            ..Self::blip2()
        }
    }

    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "blip2" => Some(Self::blip2()),
            "tiny" => Some(Self::tiny()),
            _ => None,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    pub fn has_cross_attention(&self, layer: usize) -> bool {
        layer.is_multiple_of(self.cross_attention_frequency)
    }

    /// Checks every field; `source_name` (a file name or "preset") goes into the error.
    pub fn validate(&self, source_name: &str) -> Result<()> {
        let err = |key: &str, msg: &str| Err(Error::config(format!("model.{key}"), msg, source_name));
        let positive = [
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("cross_attention_frequency", self.cross_attention_frequency),
            ("encoder_hidden_size", self.encoder_hidden_size),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("num_query_tokens", self.num_query_tokens),
            ("image_text_hidden_size", self.image_text_hidden_size),
        ];
        for (key, value) in positive {
            if value == 0 {
                return err(key, "must be > 0");
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return err("hidden_size", "must be a multiple of num_attention_heads");
        }
        if self.bos_token_id >= self.vocab_size {
            return err("bos_token_id", "must be < vocab_size");
        }
        for (key, p) in
            [("hidden_dropout_prob", self.hidden_dropout_prob), ("attention_probs_dropout_prob", self.attention_probs_dropout_prob)]
        {
            if !(0.0..1.0).contains(&p) {
                return err(key, "must be in [0, 1)");
            }
        }
        for (key, eps) in
            [("layer_norm_eps", self.layer_norm_eps), ("ln_vision_eps", self.ln_vision_eps), ("initializer_range", self.initializer_range)]
        {
            if !(eps > 0.0 && eps.is_finite()) {
                return err(key, "must be > 0");
            }
        }
        Ok(())
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("config serialises")
    }
}
