//! Dropout masks as pure functions of positions one can name: a key per batch row (the caller
//! derives it from the run seed, the sample and the pass), a path of sites (layer, block), and the
//! element's index within its row. No process-wide RNG is read, so concurrent peers, thread timing
//! and the split of a batch across peers leave every mask unchanged.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, ElementConversion, Int, Shape, Tensor, TensorData};
use rayon::prelude::*;

use super::math::{hash, vectorized, CHUNK};
use crate::util::seed::mix;

/// One key per batch row of a pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropoutKeys(Vec<u64>);

impl DropoutKeys {
    pub fn new(rows: Vec<u64>) -> Self {
        Self(rows)
    }

    /// The root site of the pass; sub-sites come from [`DropoutSite::at`].
    pub fn site(&self) -> DropoutSite<'_> {
        DropoutSite { rows: &self.0, path: 0 }
    }
}

/// One place in the model where dropout acts, for the rows of one pass.
#[derive(Clone, Copy, Debug)]
pub struct DropoutSite<'a> {
    rows: &'a [u64],
    path: u64,
}

impl DropoutSite<'_> {
    /// A sub-site (a layer, then a block within it): every path draws an independent mask.
    pub fn at(self, index: u64) -> Self {
        Self { path: mix(self.path, index), ..self }
    }

    /// The mask values for a tensor of `shape` whose first dimension is the batch: `1/keep` where
    /// `hash(mix(row key, path), index in row) < keep · 2³²`, else 0.
    ///
    /// # Panics
    /// When the first dimension differs from the number of row keys (a caller's bug).
    pub fn mask(&self, shape: &Shape, keep: f64) -> Vec<f32> {
        let rows = shape[0];
        assert_eq!(rows, self.rows.len(), "dropout keys for {} rows, tensor of {rows}", self.rows.len());
        let n = shape.num_elements();
        let inner = n / rows.max(1);
        let seeds = self.row_seeds();
        let (threshold, scale) = (threshold(keep), (1.0 / keep) as f32);
        let mut mask = vec![0.0f32; n];
        mask.par_chunks_mut(CHUNK).enumerate().for_each(|(c, out)| {
            vectorized(|| {
                let start = c * CHUNK;
                let (mut row, mut j) = (start / inner, start % inner);
                for v in out.iter_mut() {
                    *v = if hash(seeds[row], j as u32) < threshold { scale } else { 0.0 };
                    j += 1;
                    if j == inner {
                        (row, j) = (row + 1, 0);
                    }
                }
            })
        });
        mask
    }

    /// The same mask computed on the device, from the same hash in unsigned 32-bit integer ops
    /// (the host sends one pair of words per row, nothing per element), as a `[rows, inner]`
    /// tensor to reshape to the caller's shape. For the GPU backends, where uploading a host mask
    /// per site would cost a transfer the size of the activation.
    ///
    /// # Panics
    /// As [`DropoutSite::mask`].
    pub fn device_mask<B: Backend>(&self, shape: &Shape, keep: f64, device: &B::Device) -> Tensor<B, 2> {
        let rows = shape[0];
        assert_eq!(rows, self.rows.len(), "dropout keys for {} rows, tensor of {rows}", self.rows.len());
        let inner = shape.num_elements() / rows.max(1);
        let seeds = self.row_seeds();
        let words = |f: fn(u64) -> u32| {
            let data = TensorData::new(seeds.iter().map(|&s| f(s)).collect::<Vec<u32>>(), [rows, 1]);
            Tensor::<B, 2, Int>::from_data(data, (device, DType::U32)).expand([rows, inner])
        };
        let (low, high) = (words(|s| s as u32), words(|s| (s >> 32) as u32));
        let index = Tensor::<B, 1, Int>::arange(0..inner as i64, device).cast(DType::U32).reshape([1, inner]).expand([rows, inner]);
        // hash(seed, j) = mix(mix(j · 0x9e3779b9 ^ low) ^ high), as in `math::hash`.
        let h = finalize(index.mul_scalar(0x9e37_79b9u32).bitwise_xor(low));
        let h = finalize(h.bitwise_xor(high));
        h.lower_elem(threshold(keep)).float().mul_scalar((1.0 / keep) as f32)
    }

    fn row_seeds(&self) -> Vec<u64> {
        self.rows.iter().map(|&r| mix(r, self.path)).collect()
    }
}

/// Kept when the element's 32-bit hash is below this.
fn threshold(keep: f64) -> u32 {
    (keep * 4_294_967_296.0).min(u32::MAX as f64) as u32
}

/// MurmurHash3's 32-bit finaliser (`math::mix`) on unsigned 32-bit integer tensors.
fn finalize<B: Backend>(h: Tensor<B, 2, Int>) -> Tensor<B, 2, Int> {
    let shifted = |h: &Tensor<B, 2, Int>, k: u32| h.clone().bitwise_right_shift_scalar(k.elem());
    let h = h.clone().bitwise_xor(shifted(&h, 16)).mul_scalar(0x85eb_ca6bu32);
    let h = h.clone().bitwise_xor(shifted(&h, 13)).mul_scalar(0xc2b2_ae35u32);
    h.clone().bitwise_xor(shifted(&h, 16))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_mask_depends_on_its_key_alone() {
        let keys = DropoutKeys::new(vec![11, 22, 33]);
        let shape = Shape::new([3, 5, 7]);
        let all = keys.site().at(4).mask(&shape, 0.9);
        // The same row key at another batch position (another peer, another batch split).
        let alone = DropoutKeys::new(vec![22]);
        let one = alone.site().at(4).mask(&Shape::new([1, 5, 7]), 0.9);
        assert_eq!(&all[35..70], &one[..]);
        assert_ne!(keys.site().at(5).mask(&shape, 0.9), all, "another site, another mask");
    }

    #[test]
    fn keeps_the_expected_fraction() {
        let keys = DropoutKeys::new((0..64).collect());
        let mask = keys.site().mask(&Shape::new([64, 4096]), 0.9);
        let kept = mask.iter().filter(|&&v| v > 0.0).count() as f64 / mask.len() as f64;
        assert!((kept - 0.9).abs() < 0.003, "kept {kept}");
        assert!(mask.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
    }
}
