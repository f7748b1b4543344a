//! Hard-negative sampling for ITM: one negative image per text and one negative text per image,
//! drawn from the softmax of the ITC logits with every positive excluded. Runs on the host in f32;
//! each row's draw is a pure function of (sampler seed, the row's sample key, direction), so it is
//! reproducible, resumable, and the same whichever peer holds the row. It never fails: a row whose
//! weights are unusable falls back to a uniform draw over its valid negatives and is counted.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::util::error::{Error, Result};
use crate::util::seed::mix;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NegativeMode {
    /// Draw from `softmax(logits)` over the non-positive columns (LAVIS).
    Sample,
    /// Take the hardest non-positive column (deterministic; for tests and debugging).
    Argmax,
    /// Use these indices, checked not to be positives: `images[b]` is the negative image of text
    /// `b`, `texts[b]` the negative text of image `b`. Given by batch files, not configs.
    #[serde(skip)]
    Explicit { images: Vec<usize>, texts: Vec<usize> },
}

/// Which negative is being picked (selects the list of an explicit mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    ImageForText,
    TextForImage,
}

impl Direction {
    fn stream(self) -> u64 {
        match self {
            Direction::ImageForText => 1,
            Direction::TextForImage => 2,
        }
    }

    /// The batch-file tensor that holds explicit indices for this direction.
    pub fn name(self) -> &'static str {
        match self {
            Direction::ImageForText => "neg_image_idx",
            Direction::TextForImage => "neg_text_idx",
        }
    }
}

/// Counts reported with every step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerStats {
    pub rows: usize,
    /// Rows whose weights had NaN/inf or no mass, drawn uniformly instead.
    pub fallbacks: usize,
    /// Rows with no valid negative at all (batch of one, or one image throughout); their pair is
    /// left out of the ITM loss.
    pub without_negative: usize,
}

impl std::ops::AddAssign for SamplerStats {
    fn add_assign(&mut self, o: Self) {
        self.rows += o.rows;
        self.fallbacks += o.fallbacks;
        self.without_negative += o.without_negative;
    }
}

#[derive(Clone, Copy, Debug)]
pub struct NegativeSampler {
    seed: u64,
}

impl NegativeSampler {
    pub fn new(seed: u64) -> Self {
        Self { seed }
    }

    /// Picks one column per row of `logits` (`rows × cols`, row-major) that is not a positive;
    /// `keys[r]` names row `r`'s sample. `logits` may be empty in explicit mode.
    pub fn pick(
        &self,
        mode: &NegativeMode,
        direction: Direction,
        logits: &[f32],
        positives: &[Vec<bool>],
        keys: &[u64],
    ) -> Result<(Vec<Option<usize>>, SamplerStats)> {
        if keys.len() != positives.len() {
            return Err(Error::input("keys", format!("{} sample keys for {} rows", keys.len(), positives.len())));
        }
        let rows = positives.len();
        let cols = positives.first().map_or(0, Vec::len);
        let mut stats = SamplerStats { rows, ..Default::default() };
        let mut out = Vec::with_capacity(rows);
        for (r, pos) in positives.iter().enumerate() {
            let row = logits.get(r * cols..(r + 1) * cols).unwrap_or(&[]);
            let valid: Vec<usize> = (0..cols).filter(|&c| !pos[c]).collect();
            let choice = match mode {
                NegativeMode::Explicit { images, texts } => {
                    let indices = match direction {
                        Direction::ImageForText => images,
                        Direction::TextForImage => texts,
                    };
                    let c = *indices.get(r).ok_or_else(|| Error::input(direction.name(), format!("no index for row {r}")))?;
                    if c >= cols || pos[c] {
                        return Err(Error::input(direction.name(), format!("row {r}: index {c} is out of range or a positive")));
                    }
                    Some(c)
                }
                _ if valid.is_empty() => {
                    stats.without_negative += 1;
                    None
                }
                NegativeMode::Argmax => Some(match argmax(row, &valid) {
                    Some(c) => c,
                    None => {
                        stats.fallbacks += 1;
                        valid[0]
                    }
                }),
                NegativeMode::Sample => {
                    let mut rng = ChaCha8Rng::seed_from_u64(mix(mix(self.seed, keys[r]), direction.stream()));
                    Some(match draw(row, &valid, &mut rng) {
                        Some(c) => c,
                        None => {
                            stats.fallbacks += 1;
                            valid[rng.random_range(0..valid.len())]
                        }
                    })
                }
            };
            out.push(choice);
        }
        Ok((out, stats))
    }
}

/// A draw from the softmax over `valid`, or `None` when the weights are unusable.
fn draw(row: &[f32], valid: &[usize], rng: &mut ChaCha8Rng) -> Option<usize> {
    if valid.iter().any(|&c| !row[c].is_finite()) {
        return None;
    }
    let max = valid.iter().map(|&c| row[c]).fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f32> = valid.iter().map(|&c| (row[c] - max).exp()).collect();
    let total: f32 = weights.iter().sum();
    if !(total.is_finite() && total > 0.0) {
        return None;
    }
    let mut u = rng.random::<f32>() * total;
    for (&c, &w) in valid.iter().zip(&weights) {
        if u < w {
            return Some(c);
        }
        u -= w;
    }
    // Rounding left `u` past the end: the last column with weight.
    valid.iter().zip(&weights).rev().find(|(_, &w)| w > 0.0).map(|(&c, _)| c)
}

fn argmax(row: &[f32], valid: &[usize]) -> Option<usize> {
    valid.iter().copied().filter(|&c| !row[c].is_nan()).max_by(|&a, &b| row[a].total_cmp(&row[b]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Direction = Direction::ImageForText;

    /// Sample keys of draw `round` for `n` rows: each round names new samples.
    fn keys(n: usize, round: usize) -> Vec<u64> {
        (0..n).map(|r| (round * n + r) as u64).collect()
    }

    fn diag(n: usize) -> Vec<Vec<bool>> {
        (0..n).map(|i| (0..n).map(|j| i == j).collect()).collect()
    }

    #[test]
    fn never_returns_a_positive() {
        let s = NegativeSampler::new(7);
        // The positive has by far the largest logit.
        let logits = vec![50.0, 0.0, 0.0, 0.0, 50.0, 0.0, 0.0, 0.0, 50.0];
        for round in 0..500 {
            let (picks, stats) = s.pick(&NegativeMode::Sample, D, &logits, &diag(3), &keys(3, round)).unwrap();
            for (r, p) in picks.iter().enumerate() {
                assert_ne!(p.unwrap(), r);
            }
            assert_eq!(stats.fallbacks, 0);
        }
    }

    #[test]
    fn duplicate_captions_are_excluded_with_image_ids() {
        // Samples 0 and 1 are captions of one image.
        let pos = vec![vec![true, true, false], vec![true, true, false], vec![false, false, true]];
        let logits = vec![9.0, 9.0, -9.0, 9.0, 9.0, -9.0, 0.0, 0.0, 9.0];
        let s = NegativeSampler::new(1);
        for round in 0..200 {
            let (picks, _) = s.pick(&NegativeMode::Sample, D, &logits, &pos, &keys(3, round)).unwrap();
            assert_eq!(picks[0], Some(2));
            assert_eq!(picks[1], Some(2));
            assert!(matches!(picks[2], Some(0) | Some(1)));
        }
    }

    #[test]
    fn non_finite_rows_fall_back_and_are_counted() {
        let logits = vec![0.0, f32::INFINITY, 1.0, f32::NAN, 0.0, 1.0, 1.0, f32::NEG_INFINITY, 1.0];
        let s = NegativeSampler::new(3);
        let (picks, stats) = s.pick(&NegativeMode::Sample, D, &logits, &diag(3), &keys(3, 0)).unwrap();
        assert_eq!(stats.fallbacks, 3);
        for (r, p) in picks.iter().enumerate() {
            assert_ne!(p.unwrap(), r);
        }
        let (picks, _) = s.pick(&NegativeMode::Argmax, D, &logits, &diag(3), &keys(3, 0)).unwrap();
        assert_eq!(picks, vec![Some(1), Some(2), Some(0)]);
    }

    #[test]
    fn tiny_batches() {
        let s = NegativeSampler::new(0);
        let (picks, stats) = s.pick(&NegativeMode::Sample, D, &[1.0], &diag(1), &keys(1, 0)).unwrap();
        assert_eq!(picks, vec![None]);
        assert_eq!(stats.without_negative, 1);
        let (picks, _) = s.pick(&NegativeMode::Sample, D, &[1.0, -1e30, f32::MAX, 1.0], &diag(2), &keys(2, 0)).unwrap();
        assert_eq!(picks, vec![Some(1), Some(0)]);
    }

    #[test]
    fn follows_the_softmax() {
        // Row 0: weights e^0 : e^ln3 = 1 : 3 over columns 1 and 2.
        let logits = vec![0.0, 0.0, 3f32.ln(), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let s = NegativeSampler::new(11);
        let n = 20000;
        let mut col2 = 0;
        for round in 0..n {
            let (picks, _) = s.pick(&NegativeMode::Sample, D, &logits, &diag(3), &keys(3, round)).unwrap();
            col2 += usize::from(picks[0] == Some(2));
        }
        let frac = col2 as f64 / n as f64;
        assert!((frac - 0.75).abs() < 0.015, "fraction {frac}");
    }

    #[test]
    fn explicit_indices_are_checked() {
        let s = NegativeSampler::new(0);
        let mode = NegativeMode::Explicit { images: vec![1, 1], texts: vec![1, 0] };
        let err = s.pick(&mode, D, &[], &diag(2), &keys(2, 0)).unwrap_err().to_string();
        assert!(err.contains("neg_image_idx") && err.contains("row 1"), "{err}");
        let (picks, _) = s.pick(&mode, Direction::TextForImage, &[], &diag(2), &keys(2, 0)).unwrap();
        assert_eq!(picks, vec![Some(1), Some(0)]);
    }

    #[test]
    fn a_draw_depends_on_the_row_key_not_the_row_position() {
        let logits = vec![0.0f32; 64];
        let s = NegativeSampler::new(5);
        let k = keys(8, 3);
        let (all, _) = s.pick(&NegativeMode::Sample, D, &logits, &diag(8), &k).unwrap();
        // The same samples in the opposite row order (another split of the batch across peers).
        let reversed: Vec<u64> = k.iter().rev().copied().collect();
        let rev_pos: Vec<Vec<bool>> = (0..8).map(|i| (0..8).map(|j| j == 7 - i).collect()).collect();
        let (picks, _) = s.pick(&NegativeMode::Sample, D, &logits, &rev_pos, &reversed).unwrap();
        // Row 7 - r holds sample r now, with the same positive column and the same weights.
        for r in 0..8 {
            assert_eq!(all[r], picks[7 - r]);
        }
        let (again, _) = NegativeSampler::new(5).pick(&NegativeMode::Sample, D, &logits, &diag(8), &k).unwrap();
        assert_eq!(all, again, "a pure function of its inputs");
        let (other, _) = NegativeSampler::new(6).pick(&NegativeMode::Sample, D, &logits, &diag(8), &k).unwrap();
        assert_ne!(all, other, "another seed, other draws");
    }
}
