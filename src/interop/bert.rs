//! Q-Former initialisation from a pretrained BERT (HF `BertModel` or `BertForMaskedLM`
//! checkpoints, with or without the `bert.` prefix), as LAVIS starts stage one: embeddings,
//! self-attention and the text FFN from BERT; the query FFN a copy of the text FFN; the LM head's
//! transform and bias from the MLM head when the file has one; cross-attention, query tokens,
//! projections and heads keep their fresh initialisation; the `[DEC]` row is new.

use burn::module::Param;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::source::TensorSource;
use super::weights::{load_mapped, LoadReport, Mapped};
use crate::kernels::Kernels;
use crate::model::{QFormer, QFormerConfig};
use crate::util::error::{Error, Result};

/// What happens to BERT's token-type embedding, which the Q-Former does not have.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenType {
    /// Dropped, as LAVIS does: the initialised trunk is BERT minus that embedding.
    #[default]
    Drop,
    /// Row 0 (the type every BERT text token has) added to every position embedding: the
    /// initialised trunk computes exactly what the pretrained BERT computes on text.
    Fold,
}

/// Our parameter name → BERT's (without prefix), or `None` for what BERT does not have.
fn bert_name(ours: &str) -> Option<(String, bool)> {
    if ours.contains("crossattention") {
        return None;
    }
    if let Some(rest) = ours.strip_prefix("lm_head.") {
        return Some((format!("cls.predictions.{rest}"), rest == "bias"));
    }
    if ours == "qformer.layernorm.weight" || ours == "qformer.layernorm.bias" {
        return Some((ours.replace("qformer.layernorm", "embeddings.LayerNorm"), false));
    }
    if ours.starts_with("embeddings.") {
        return Some((ours.to_string(), true));
    }
    let rest = ours.strip_prefix("qformer.")?;
    Some((rest.replace("attention.attention.", "attention.self.").replace("_query.", "."), false))
}

/// Loads BERT weights into `model`. The trunk's shape must match the checkpoint's (hidden size,
/// FFN width); a Q-Former with fewer layers takes BERT's first ones.
pub fn init_from_bert<B: Kernels>(
    model: QFormer<B>,
    cfg: &QFormerConfig,
    src: &TensorSource,
    token_type: TokenType,
    device: &B::Device,
) -> Result<(QFormer<B>, LoadReport)> {
    let prefix = if src.contains("bert.embeddings.word_embeddings.weight") {
        "bert."
    } else if src.contains("embeddings.word_embeddings.weight") {
        ""
    } else {
        return Err(Error::file(&src.path, "not a BERT checkpoint: no `embeddings.word_embeddings.weight` (with or without `bert.`)"));
    };
    let layers = (0..).take_while(|i| src.contains(&format!("{prefix}encoder.layer.{i}.attention.self.query.weight"))).count();
    if layers < cfg.num_hidden_layers {
        return Err(Error::file(&src.path, format!("has {layers} layers; model.num_hidden_layers is {}", cfg.num_hidden_layers)));
    }
    let has_mlm = src.contains("cls.predictions.transform.dense.weight");
    let map = |ours: &str| {
        let (name, partial_rows) = bert_name(ours)?;
        if name.starts_with("cls.") {
            return has_mlm.then_some(Mapped { name, partial_rows });
        }
        Some(Mapped { name: format!("{prefix}{name}"), partial_rows })
    };
    let (mut model, report) = load_mapped(model, src, map, device)?;
    if token_type == TokenType::Fold {
        let name = format!("{prefix}embeddings.token_type_embeddings.weight");
        let t = src.get(&name)?;
        let d = cfg.hidden_size;
        if t.shape.len() != 2 || t.shape[1] != d {
            return Err(Error::file(&src.path, format!("tensor `{name}` has shape {:?}, expected [types, {d}]", t.shape)));
        }
        let row = Tensor::<B, 2>::from_data(TensorData::new(t.values[..d].to_vec(), [1, d]), device);
        let position = &mut model.embeddings.position.weight;
        let folded = position.val().detach().add(row);
        *position = Param::initialized(position.id, folded.require_grad());
    }
    Ok((model, report))
}
