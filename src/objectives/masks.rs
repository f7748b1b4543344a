//! The three stage-one self-attention masks over the sequence `[queries; text]`, each combined
//! with the text padding. They are plain values (who may attend whom) so they can be printed and
//! tested; `to_additive` turns one into the additive form the attention adds to its scores.

use crate::kernels::Kernels;
use burn::tensor::{Tensor, TensorData};

/// Added to the scores of forbidden keys, as BERT and LAVIS do (not -inf: a fully masked row stays
/// finite instead of turning into NaN).
pub const MASKED_SCORE: f32 = -10000.0;

/// `allowed[b][i][j]`: row `i` of sample `b` may attend to key `j`.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionMask {
    pub batch: usize,
    pub rows: usize,
    pub cols: usize,
    allowed: Vec<bool>,
}

/// Which objective's rule to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaskKind {
    /// ITC: queries see only queries; text sees only (non-pad) text.
    Unimodal,
    /// ITM: everything sees everything that is not padding.
    Bidirectional,
    /// ITG: queries see only queries; text token `i` sees every query and non-pad text `j <= i`.
    MultimodalCausal,
}

impl AttentionMask {
    /// Builds the `[B, Q+T, Q+T]` mask for `kind`. `text_mask` is `[B][T]`, 1 for real tokens.
    pub fn new(kind: MaskKind, num_query: usize, text_mask: &[Vec<i64>]) -> Self {
        let batch = text_mask.len();
        let t = text_mask.first().map_or(0, Vec::len);
        let s = num_query + t;
        let mut allowed = Vec::with_capacity(batch * s * s);
        for sample in text_mask {
            for i in 0..s {
                for j in 0..s {
                    let row_is_query = i < num_query;
                    let key_is_query = j < num_query;
                    let key_valid = key_is_query || sample[j - num_query] != 0;
                    let rule = match kind {
                        MaskKind::Unimodal => row_is_query == key_is_query,
                        MaskKind::Bidirectional => true,
                        MaskKind::MultimodalCausal => {
                            if row_is_query {
                                key_is_query
                            } else {
                                key_is_query || j <= i
                            }
                        }
                    };
                    allowed.push(rule && key_valid);
                }
            }
        }
        Self { batch, rows: s, cols: s, allowed }
    }

    pub fn unimodal(num_query: usize, text_mask: &[Vec<i64>]) -> Self {
        Self::new(MaskKind::Unimodal, num_query, text_mask)
    }
    pub fn bidirectional(num_query: usize, text_mask: &[Vec<i64>]) -> Self {
        Self::new(MaskKind::Bidirectional, num_query, text_mask)
    }
    pub fn multimodal_causal(num_query: usize, text_mask: &[Vec<i64>]) -> Self {
        Self::new(MaskKind::MultimodalCausal, num_query, text_mask)
    }

    pub fn allows(&self, b: usize, i: usize, j: usize) -> bool {
        self.allowed[(b * self.rows + i) * self.cols + j]
    }

    /// Keeps rows `start..start + len`: the ITG pass computes only the text rows, attending to the
    /// cached query keys plus its own.
    pub fn select_rows(&self, start: usize, len: usize) -> Self {
        let mut allowed = Vec::with_capacity(self.batch * len * self.cols);
        for b in 0..self.batch {
            let from = (b * self.rows + start) * self.cols;
            allowed.extend_from_slice(&self.allowed[from..from + len * self.cols]);
        }
        Self { batch: self.batch, rows: len, cols: self.cols, allowed }
    }

    /// `[B, 1, rows, cols]`: 0 where allowed, [`MASKED_SCORE`] elsewhere.
    pub fn to_additive<B: Kernels>(&self, device: &B::Device) -> Tensor<B, 4> {
        let values: Vec<f32> = self.allowed.iter().map(|&a| if a { 0.0 } else { MASKED_SCORE }).collect();
        Tensor::from_data(TensorData::new(values, [self.batch, 1, self.rows, self.cols]), device)
    }
}

impl std::fmt::Display for AttentionMask {
    /// One block per sample, `1` where attention is allowed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in 0..self.batch {
            writeln!(f, "sample {b}:")?;
            for i in 0..self.rows {
                let row: String = (0..self.cols).map(|j| if self.allows(b, i, j) { '1' } else { '.' }).collect();
                writeln!(f, "  {row}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Two queries, three text slots; sample 0 has all text, sample 1 pads the last slot.
    fn text() -> Vec<Vec<i64>> {
        vec![vec![1, 1, 1], vec![1, 1, 0]]
    }

    fn expect(mask: &AttentionMask, b: usize, rows: &[&str]) {
        for (i, row) in rows.iter().enumerate() {
            for (j, c) in row.chars().enumerate() {
                assert_eq!(mask.allows(b, i, j), c == '1', "sample {b} row {i} key {j}\n{mask}");
            }
        }
    }

    #[test]
    fn unimodal_separates_queries_and_text() {
        let m = AttentionMask::unimodal(2, &text());
        expect(&m, 0, &["11000", "11000", "00111", "00111", "00111"]);
        expect(&m, 1, &["11000", "11000", "00110", "00110", "00110"]);
    }

    #[test]
    fn bidirectional_masks_only_padding() {
        let m = AttentionMask::bidirectional(2, &text());
        expect(&m, 0, &["11111"; 5]);
        expect(&m, 1, &["11110"; 5]);
    }

    #[test]
    fn multimodal_causal_is_prefix_lm() {
        let m = AttentionMask::multimodal_causal(2, &text());
        expect(&m, 0, &["11000", "11000", "11100", "11110", "11111"]);
        expect(&m, 1, &["11000", "11000", "11100", "11110", "11110"]);
    }

    #[test]
    fn text_rows_of_causal_mask() {
        let m = AttentionMask::multimodal_causal(2, &text()).select_rows(2, 3);
        assert_eq!((m.rows, m.cols), (3, 5));
        expect(&m, 1, &["11100", "11110", "11110"]);
    }

    #[test]
    fn additive_form() {
        type B = burn::backend::Flex;
        let m = AttentionMask::unimodal(1, &[vec![1, 0]]);
        let add = m.to_additive::<B>(&Default::default()).into_data().to_vec::<f32>().unwrap();
        let z = 0.0;
        let x = MASKED_SCORE;
        assert_eq!(add, vec![z, x, x, x, z, x, x, z, x]);
    }
}
