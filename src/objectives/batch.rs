//! A stage-one batch: frozen image features on the device, tokenised captions on the host (masks
//! and negative pairs are built from them there).

use burn::tensor::{Int, Tensor, TensorData};

use crate::error::{Error, Result};
use crate::kernels::Kernels;

/// Token ids and padding mask, `[B][T]`, every row the same length.
#[derive(Clone, Debug, PartialEq)]
pub struct TextBatch {
    pub ids: Vec<Vec<i64>>,
    pub mask: Vec<Vec<i64>>,
}

impl TextBatch {
    /// Checks shapes and that ids fit the vocabulary.
    pub fn new(ids: Vec<Vec<i64>>, mask: Vec<Vec<i64>>, vocab_size: usize) -> Result<Self> {
        if ids.is_empty() {
            return Err(Error::input("input_ids", "empty batch"));
        }
        let t = ids[0].len();
        if t == 0 {
            return Err(Error::input("input_ids", "zero-length captions"));
        }
        if mask.len() != ids.len() || ids.iter().chain(&mask).any(|r| r.len() != t) {
            return Err(Error::input("attention_mask", "must have the shape of input_ids"));
        }
        if let Some(bad) = ids.iter().flatten().find(|&&id| id < 0 || id as usize >= vocab_size) {
            return Err(Error::input("input_ids", format!("id {bad} outside the vocabulary of {vocab_size}")));
        }
        if let Some(row) = mask.iter().position(|r| r[0] == 0) {
            return Err(Error::input("attention_mask", format!("row {row} masks its first token ([CLS])")));
        }
        Ok(Self { ids, mask })
    }

    pub fn batch_size(&self) -> usize {
        self.ids.len()
    }

    pub fn seq_len(&self) -> usize {
        self.ids[0].len()
    }

    /// The rows in the given order (texts of ITM pairs).
    pub fn select(&self, rows: &[usize]) -> Self {
        Self {
            ids: rows.iter().map(|&r| self.ids[r].clone()).collect(),
            mask: rows.iter().map(|&r| self.mask[r].clone()).collect(),
        }
    }

    pub fn ids_tensor<B: Kernels>(&self, device: &B::Device) -> Tensor<B, 2, Int> {
        int_tensor(&self.ids, device)
    }
}

pub(crate) fn int_tensor<B: Kernels>(rows: &[Vec<i64>], device: &B::Device) -> Tensor<B, 2, Int> {
    let t = rows.first().map_or(0, Vec::len);
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), t]), device)
}

pub(crate) fn index_tensor<B: Kernels>(indices: &[usize], device: &B::Device) -> Tensor<B, 1, Int> {
    let v: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
    Tensor::from_data(TensorData::new(v, [indices.len()]), device)
}

#[derive(Clone, Debug)]
pub struct Stage1Batch<B: Kernels> {
    /// Frozen encoder output `[B, Nv, Dv]`, without gradient.
    pub image_feats: Tensor<B, 3>,
    pub text: TextBatch,
    /// Samples sharing an id are captions of one image: never negatives of each other, and all
    /// positives in ITC.
    pub image_ids: Option<Vec<i64>>,
}

impl<B: Kernels> Stage1Batch<B> {
    pub fn new(image_feats: Tensor<B, 3>, text: TextBatch, image_ids: Option<Vec<i64>>) -> Result<Self> {
        let [b, _, _] = image_feats.dims();
        if b != text.batch_size() {
            return Err(Error::input("image_feats", format!("{b} images for {} captions", text.batch_size())));
        }
        if image_ids.as_ref().is_some_and(|ids| ids.len() != b) {
            return Err(Error::input("image_ids", format!("must have {b} entries")));
        }
        Ok(Self { image_feats: image_feats.detach(), text, image_ids })
    }

    pub fn batch_size(&self) -> usize {
        self.text.batch_size()
    }

    /// `positives[i][j]`: caption `j` describes image `i` (the diagonal, or equal image ids).
    pub fn positives(&self) -> Vec<Vec<bool>> {
        let n = self.batch_size();
        (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| match &self.image_ids {
                        Some(ids) => ids[i] == ids[j],
                        None => i == j,
                    })
                    .collect()
            })
            .collect()
    }
}
