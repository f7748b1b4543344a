//! A stage-one batch: frozen image features on the device, tokenised captions on the host (masks
//! and negative pairs are built from them there).

use burn::tensor::Tensor;

use crate::data::text::TextBatch;
use crate::kernels::{DropoutKeys, Kernels};
use crate::util::error::{Error, Result};
use crate::util::seed::mix;

#[derive(Clone, Debug)]
pub struct Stage1Batch<B: Kernels> {
    /// Frozen encoder output `[B, Nv, Dv]`, without gradient.
    pub image_feats: Tensor<B, 3>,
    pub text: TextBatch,
    /// Samples sharing an id are captions of one image: never negatives of each other, and all
    /// positives in ITC.
    pub image_ids: Option<Vec<i64>>,
    /// Names each row's sample for its random draws (dropout masks, its hard negatives). Training
    /// derives it from the run seed and the sample's stream position, so a draw is the same on
    /// any peer and after a resume; by default the row index.
    pub keys: Vec<u64>,
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
        Ok(Self { image_feats: image_feats.detach(), text, image_ids, keys: (0..b as u64).collect() })
    }

    /// Sets the sample keys (one per row).
    pub fn keyed(self, keys: Vec<u64>) -> Result<Self> {
        if keys.len() != self.batch_size() {
            return Err(Error::input("keys", format!("{} sample keys for {} rows", keys.len(), self.batch_size())));
        }
        Ok(Self { keys, ..self })
    }

    /// Dropout keys of one pass over the batch's rows: each sample key mixed with the pass's tag.
    pub fn dropout_keys(&self, pass: u64) -> DropoutKeys {
        DropoutKeys::new(self.keys.iter().map(|&k| mix(k, pass)).collect())
    }

    pub fn batch_size(&self) -> usize {
        self.text.batch_size()
    }
}
