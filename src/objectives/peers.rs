//! The other peers of a data-parallel step, as the loss sees them: each holds a slice of the
//! global batch, and the loss needs the whole batch's ids, captions, frozen features (hard
//! negatives may live on another peer) and ITC features (every similarity row spans the global
//! batch). The one primitive is an element-wise sum over peers; a gather is a sum of zero-padded
//! slices, which is exact (each element has a single non-zero contributor).

use crate::util::error::{Error, Result};

/// A group of peers that can sum equal-length host vectors. The training layer implements it on
/// burn-collective; [`Alone`] is the single-device case.
pub trait Peers: Sync {
    /// This peer's index, `0..count()`.
    fn rank(&self) -> usize;
    fn count(&self) -> usize;
    /// The element-wise sum of `values` over every peer (the same length on each).
    fn all_sum(&self, values: Vec<f32>) -> Result<Vec<f32>>;
}

/// One device: every sum is the identity.
pub struct Alone;

impl Peers for Alone {
    fn rank(&self) -> usize {
        0
    }

    fn count(&self) -> usize {
        1
    }

    fn all_sum(&self, values: Vec<f32>) -> Result<Vec<f32>> {
        Ok(values)
    }
}

/// How the global batch is split: rows per peer, in peer order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    pub rows: Vec<usize>,
    pub rank: usize,
}

impl Split {
    /// Exchanges the local row counts (one small sum).
    pub fn exchange(peers: &dyn Peers, local_rows: usize) -> Result<Self> {
        let rank = peers.rank();
        let mut slots = vec![0.0f32; peers.count()];
        slots[rank] = local_rows as f32;
        let rows = peers.all_sum(slots)?.into_iter().map(|v| v as usize).collect();
        Ok(Self { rows, rank })
    }

    /// The first global row of this peer.
    pub fn offset(&self) -> usize {
        self.rows[..self.rank].iter().sum()
    }

    pub fn local(&self) -> usize {
        self.rows[self.rank]
    }

    pub fn total(&self) -> usize {
        self.rows.iter().sum()
    }

    /// Every peer's `rows × width` block, concatenated in peer order.
    pub fn gather(&self, peers: &dyn Peers, local: &[f32], width: usize) -> Result<Vec<f32>> {
        if local.len() != self.local() * width {
            return Err(Error::input("peers", format!("{} values for {} rows of {width}", local.len(), self.local())));
        }
        let mut padded = vec![0.0f32; self.total() * width];
        let start = self.offset() * width;
        padded[start..start + local.len()].copy_from_slice(local);
        peers.all_sum(padded)
    }
}

/// An `i64` as four exact 16-bit pieces in `f32` (a gather carries floats).
pub fn id_to_floats(id: i64) -> [f32; 4] {
    let u = id as u64;
    std::array::from_fn(|i| ((u >> (16 * i)) & 0xffff) as f32)
}

pub fn id_from_floats(v: &[f32]) -> i64 {
    v.iter().take(4).enumerate().fold(0u64, |acc, (i, &x)| acc | ((x as u64) << (16 * i))) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_survive_the_float_encoding() {
        for id in [0, 1, -1, 42, i64::MAX, i64::MIN, 0x1234_5678_9abc_def0] {
            assert_eq!(id_from_floats(&id_to_floats(id)), id);
        }
    }

    #[test]
    fn alone_gathers_itself() {
        let split = Split::exchange(&Alone, 3).unwrap();
        assert_eq!((split.offset(), split.total()), (0, 3));
        assert_eq!(split.gather(&Alone, &[1.0, 2.0, 3.0], 1).unwrap(), vec![1.0, 2.0, 3.0]);
        assert!(split.gather(&Alone, &[1.0], 1).is_err());
    }
}
