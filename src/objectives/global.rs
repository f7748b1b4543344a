//! The global batch as one peer sees it: every row's image id and caption (ITC targets, negative
//! exclusion and ITG's token count span the whole batch), and, when hard negatives are mined
//! across peers, every row's frozen features, so that a negative image held by another peer is
//! run through `ln_vision` and the cross-attention projections here, with the gradient it would
//! get on one device. Every term of the loss is then this peer's share of the global mean: the
//! shares of all peers sum to the one-device loss of the whole batch.

use std::ops::Range;

use burn::tensor::{Tensor, TensorData};

use super::itg;
use super::peers::{id_from_floats, id_to_floats, Peers, Split};
use super::Stage1Batch;
use crate::data::text::TextBatch;
use crate::kernels::Kernels;
use crate::util::error::{Error, Result};
use crate::util::host::to_f32;

/// Token ids travel as `f32`: exact below 2²⁴.
const MAX_EXACT_ID: i64 = 1 << 24;

pub struct GlobalBatch {
    pub split: Split,
    /// Image id of every row; without ids, the row's global index (each sample its own image).
    pub ids: Vec<i64>,
    pub text: TextBatch,
    /// Frozen features of every row (`[N, tokens, width]`, host), when gathered.
    feats: Option<(Vec<f32>, [usize; 2])>,
}

impl GlobalBatch {
    /// Gathers the batch from every peer; `with_features` also gathers the frozen features.
    /// One device gathers nothing.
    pub fn exchange<B: Kernels>(batch: &Stage1Batch<B>, peers: &dyn Peers, with_features: bool) -> Result<Self> {
        let b = batch.batch_size();
        let split = Split::exchange(peers, b)?;
        let offset = split.offset();
        let local_ids: Vec<i64> = match &batch.image_ids {
            Some(ids) => ids.clone(),
            None => (offset..offset + b).map(|i| i as i64).collect(),
        };
        if peers.count() == 1 {
            return Ok(Self { split, ids: local_ids, text: batch.text.clone(), feats: None });
        }
        let t = batch.text.seq_len();
        let width = 4 + 2 * t;
        let mut rows = Vec::with_capacity(b * width);
        for (i, id) in local_ids.iter().enumerate() {
            rows.extend(id_to_floats(*id));
            for &v in batch.text.ids[i].iter().chain(&batch.text.mask[i]) {
                if !(0..MAX_EXACT_ID).contains(&v) {
                    return Err(Error::input("input_ids", format!("token id {v} cannot be exchanged between peers")));
                }
                rows.push(v as f32);
            }
        }
        let all = split.gather(peers, &rows, width)?;
        let (mut ids, mut text_ids, mut mask) = (Vec::new(), Vec::new(), Vec::new());
        for row in all.chunks(width) {
            ids.push(id_from_floats(&row[..4]));
            text_ids.push(row[4..4 + t].iter().map(|&v| v as i64).collect());
            mask.push(row[4 + t..].iter().map(|&v| v as i64).collect());
        }
        let feats = if with_features {
            let [_, tokens, dim] = batch.image_feats.dims();
            Some((split.gather(peers, &to_f32(batch.image_feats.clone()), tokens * dim)?, [tokens, dim]))
        } else {
            None
        };
        Ok(Self { split, ids, text: TextBatch { ids: text_ids, mask }, feats })
    }

    /// This peer's rows in the global batch.
    pub fn local_rows(&self) -> Range<usize> {
        let offset = self.split.offset();
        offset..offset + self.split.local()
    }

    /// The local index of global row `g`, when this peer holds it.
    pub fn local_index(&self, g: usize) -> Option<usize> {
        let rows = self.local_rows();
        rows.contains(&g).then(|| g - rows.start)
    }

    /// `positives[i][n]`: local row `i` and global row `n` show the same image.
    pub fn positives(&self) -> Vec<Vec<bool>> {
        self.local_rows().map(|i| self.ids.iter().map(|&id| id == self.ids[i]).collect()).collect()
    }

    /// ITM pairs of the whole batch: every positive, and two negatives for each row whose image id
    /// is not the batch's only one.
    pub fn itm_pairs(&self) -> usize {
        let with_negative = self.ids.iter().filter(|&&id| self.ids.iter().any(|&other| other != id)).count();
        self.ids.len() + 2 * with_negative
    }

    /// ITG targets (predicted tokens) of the whole batch.
    pub fn itg_tokens(&self) -> usize {
        itg::targets(&self.text).0.len()
    }

    /// Frozen features of global `rows` (held by other peers), on `device`.
    pub fn features<B: Kernels>(&self, rows: &[usize], device: &B::Device) -> Result<Tensor<B, 3>> {
        let (values, [tokens, dim]) = self.feats.as_ref().ok_or_else(|| Error::input("peers", "frozen features were not gathered"))?;
        let width = tokens * dim;
        let picked: Vec<f32> = rows.iter().flat_map(|&r| values[r * width..(r + 1) * width].iter().copied()).collect();
        Ok(Tensor::from_data(TensorData::new(picked, [rows.len(), *tokens, *dim]), device))
    }
}
