//! Where a fresh run's Q-Former weights start: random (BERT's init), a pretrained BERT, or a whole
//! Q-Former from a LAVIS, Hugging Face or qformer file (to continue training or evaluate).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::bert::{init_from_bert, TokenType};
use super::hf;
use super::lavis::{is_lavis, lavis_name};
use super::source::TensorSource;
use super::weights::{load_mapped, LoadReport, Mapped};
use crate::kernels::Kernels;
use crate::model::{QFormer, QFormerConfig};
use crate::util::error::{Error, Result};

/// The `[init]` config section.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitConfig {
    /// A BERT checkpoint (`BertModel` / `BertForMaskedLM`, safetensors or PyTorch) for the trunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bert: Option<PathBuf>,
    #[serde(default)]
    pub token_type: TokenType,
    /// A whole Q-Former: LAVIS `.pth`, an HF export / `Blip2ForImageTextRetrieval` file, or a
    /// qformer `model.safetensors`. Every Q-Former tensor must be present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<PathBuf>,
}

impl InitConfig {
    pub fn validate(&self, source: &str) -> Result<()> {
        if self.bert.is_some() && self.weights.is_some() {
            return Err(Error::config("init.weights", "set either init.bert or init.weights, not both", source));
        }
        for (key, path) in [("init.bert", &self.bert), ("init.weights", &self.weights)] {
            if let Some(p) = path.as_ref().filter(|p| !p.exists()) {
                return Err(Error::config(key, format!("file not found: {}", p.display()), source));
            }
        }
        Ok(())
    }
}

/// Applies `init` to a freshly built model; returns log lines saying what was loaded and what
/// kept its initial values.
pub fn apply<B: Kernels>(
    model: QFormer<B>,
    cfg: &QFormerConfig,
    init: &InitConfig,
    device: &B::Device,
) -> Result<(QFormer<B>, Vec<String>)> {
    let describe = |what: &str, path: &std::path::Path, r: &LoadReport| {
        let mut line = format!("init: {what} {} ({} tensors loaded", path.display(), r.loaded);
        if !r.kept.is_empty() {
            line += &format!(", {} kept their initial values", r.kept.len());
        }
        if !r.unused.is_empty() {
            line += &format!(", {} in the file unused", r.unused.len());
        }
        line + ")"
    };
    if let Some(path) = &init.bert {
        let src = TensorSource::open(path)?;
        let (model, report) = init_from_bert(model, cfg, &src, init.token_type, device)?;
        return Ok((model, vec![describe("BERT", path, &report)]));
    }
    let Some(path) = &init.weights else { return Ok((model, Vec::new())) };
    let src = TensorSource::open(path)?;
    let names = src.names();
    let (model, report, what) = if is_lavis(&names) {
        let (m, r) = load_mapped(model, &src, |n| Some(Mapped::exact(lavis_name(n))), device)?;
        (m, r, "LAVIS checkpoint")
    } else if names.iter().any(|n| n == "vision_projection.weight") {
        let (m, r) = hf::import(model, &src, device)?;
        (m, r, "Hugging Face BLIP-2 weights")
    } else {
        let (m, r) = load_mapped(model, &src, |n| Some(Mapped::exact(n)), device)?;
        (m, r, "qformer weights")
    };
    Ok((model, vec![describe(what, path, &report)]))
}
