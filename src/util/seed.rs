//! Seeds for every random draw, derived from (seed, counter) pairs so that a draw is a function of
//! positions one can name (step, sample, view), never of a process-wide RNG.

/// SplitMix64 finaliser: decorrelates seeds built from (seed, counter) pairs.
pub fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_add(0x9e37_79b9_7f4a_7c15).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
