//! ITG: captioning loss of a text decoder that sees every query (through the query pass's cached
//! keys/values) and the earlier text, under the multimodal causal mask.

use burn::tensor::Tensor;

use super::masks::AttentionMask;
use crate::data::text::TextBatch;
use crate::kernels::{gather_rows, DropoutKeys, Kernels};
use crate::model::{KeyValue, Pass, QFormer};
use crate::util::host::int_tensor;

/// Decoder input: `[DEC]` replaces `[CLS]` at position 0.
pub fn decoder_ids(text: &TextBatch, bos: usize) -> Vec<Vec<i64>> {
    text.ids
        .iter()
        .map(|row| {
            let mut r = row.clone();
            r[0] = bos as i64;
            r
        })
        .collect()
}

/// Positions that predict a real token: `(flat row index b*T + i, label ids[b][i+1])` for every
/// non-pad target; padding is ignored, the `[DEC]` slot is never a target.
pub fn targets(text: &TextBatch) -> (Vec<usize>, Vec<i64>) {
    let t = text.seq_len();
    let mut rows = Vec::new();
    let mut labels = Vec::new();
    for (b, (ids, mask)) in text.ids.iter().zip(&text.mask).enumerate() {
        for i in 0..t.saturating_sub(1) {
            if mask[i + 1] != 0 {
                rows.push(b * t + i);
                labels.push(ids[i + 1]);
            }
        }
    }
    (rows, labels)
}

/// `query_kv`: per-layer self-attention keys/values of the query rows, `[B, H, Q, head_dim]`.
/// Token-mean cross-entropy with label smoothing; the LM head runs only on target rows.
pub fn itg_loss<B: Kernels>(
    model: &QFormer<B>,
    query_kv: &[KeyValue<B>],
    text: &TextBatch,
    bos: usize,
    label_smoothing: f64,
    dropout: Option<&DropoutKeys>,
) -> Tensor<B, 1> {
    let device = model.query_tokens.device();
    let (b, t, q) = (text.batch_size(), text.seq_len(), model.num_query);
    let (rows, labels) = targets(text);
    if rows.is_empty() {
        return Tensor::zeros([1], &device);
    }
    let mask = AttentionMask::multimodal_causal(q, &text.mask).select_rows(q, t).to_additive::<B>(&device);
    let embeds = model.embed(None, Some(int_tensor(&decoder_ids(text, bos), &device)), dropout);
    let hidden = model.encode(Pass::after_queries(embeds, mask, query_kv).dropout(dropout)).hidden;
    let [_, _, d] = hidden.dims();
    let picked = gather_rows(hidden.reshape([b * t, d]), &rows);
    let labels: Vec<usize> = labels.iter().map(|&l| l as usize).collect();
    model.lm_loss(picked, &labels, label_smoothing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifted_labels_skip_padding() {
        let text = TextBatch::new(vec![vec![101, 7, 8, 102], vec![101, 9, 102, 0]], vec![vec![1, 1, 1, 1], vec![1, 1, 1, 0]], 200).unwrap();
        let (rows, labels) = targets(&text);
        assert_eq!(rows, vec![0, 1, 2, 4, 5]);
        assert_eq!(labels, vec![7, 8, 102, 9, 102]);
        assert_eq!(decoder_ids(&text, 150)[1], vec![150, 9, 102, 0]);
    }
}
