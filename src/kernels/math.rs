//! Branch-free f32 `exp`, GELU and a counter-based hash, written so that the compiler vectorises
//! the loops that call them (libm's scalar `expf`/`erff` were ~12 % of a CPU step), and a way to
//! run such loops with AVX2/FMA when the CPU has them (the default x86-64 target is SSE2 only).

use rayon::prelude::*;

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in two so that `x − n·ln 2` is exact in f32 for the `n` that occur.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5 · 2²³: adding it rounds an f32 below 2²² to the nearest integer, kept in the low bits.
const ROUND: f32 = 12_582_912.0;

/// `eˣ` within 2 ulp over [−87, 88] (inputs are clamped to that range, so very negative inputs
/// give ~1e-38 rather than 0, which no sum here can tell apart).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let int = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1) * r + 5.000_000_1e-1;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((int + 127) << 23) as u32)
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// `(Φ(x), e^{−x²/2})`: the normal CDF by Abramowitz & Stegun 7.1.26 (|error of erf| ≤ 1.5e-7),
/// sharing the exponential that the GELU gradient needs too.
#[inline(always)]
fn normal_cdf(x: f32) -> (f32, f32) {
    let a = x.abs() * FRAC_1_SQRT_2;
    let e = exp(-0.5 * x * x);
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = ((((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_7) * t - 0.284_496_74) * t + 0.254_829_6) * t;
    let erf_abs = 1.0 - poly * e;
    let erf = if x < 0.0 { -erf_abs } else { erf_abs };
    (0.5 * (1.0 + erf), e)
}

/// `x · Φ(x)`.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    x * normal_cdf(x).0
}

/// `g · (Φ(x) + x · φ(x))`.
#[inline(always)]
pub fn gelu_grad(x: f32, g: f32) -> f32 {
    let (cdf, e) = normal_cdf(x);
    g * (cdf + x * e * INV_SQRT_2PI)
}

/// A 32-bit finaliser (MurmurHash3's): every input bit affects every output bit.
#[inline(always)]
fn mix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// A uniform 32-bit value for element `index` of the stream `seed`.
#[inline(always)]
pub fn hash(seed: u64, index: u32) -> u32 {
    mix(mix(index.wrapping_mul(0x9e37_79b9) ^ seed as u32) ^ (seed >> 32) as u32)
}

/// Runs `f` compiled for AVX2 + FMA when the CPU has them.
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the features were detected on this CPU.
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// Elements per parallel task: large enough that scheduling is noise, small enough to balance.
pub const CHUNK: usize = 1 << 14;

/// Combines per-chunk partial results in a fixed pairwise tree (neighbours first, an odd last one
/// carried up). Callers compute one partial per fixed-size chunk and collect them in chunk order,
/// so the order of every floating-point addition depends on the data's shape alone: never on the
/// number of threads or on which thread finished first (rayon's `reduce`/`sum` split adaptively).
pub fn tree_reduce<T>(mut parts: Vec<T>, combine: impl Fn(T, T) -> T) -> Option<T> {
    while parts.len() > 1 {
        let mut next = Vec::with_capacity(parts.len().div_ceil(2));
        let mut it = parts.into_iter();
        while let Some(a) = it.next() {
            next.push(match it.next() {
                Some(b) => combine(a, b),
                None => a,
            });
        }
        parts = next;
    }
    parts.pop()
}

/// `Σ f(x)` over `a` in [`CHUNK`]-sized parallel pieces combined by [`tree_reduce`]: the same
/// bits at any thread count.
pub fn fixed_sum(a: &[f32], f: impl Fn(f32) -> f32 + Sync) -> f32 {
    let parts: Vec<f32> = a.par_chunks(CHUNK).map(|c| vectorized(|| lane_sum(c, &f))).collect();
    tree_reduce(parts, |x, y| x + y).unwrap_or(0.0)
}

const LANES: usize = 8;

/// `Σ f(a[i])` with eight independent partial sums (vectorisable, and the order is fixed).
#[inline(always)]
pub fn lane_sum(a: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    lane_sum2(a, a, |x, _| f(x))
}

/// `Σ f(a[i], b[i])` with eight independent partial sums.
#[inline(always)]
pub fn lane_sum2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..LANES {
            acc[k] += f(x[k], y[k]);
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(&x, &y)| f(x, y)).sum();
    acc.iter().sum::<f32>() + tail
}

/// `out[i] = f(a[i])`, split over the thread pool.
pub fn map(a: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0.0f32; a.len()];
    out.par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK)).for_each(|(o, a)| vectorized(|| o.iter_mut().zip(a).for_each(|(o, &a)| *o = f(a))));
    out
}

/// `out[i] = f(a[i], b[i])`, split over the thread pool.
pub fn zip_map(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0.0f32; a.len()];
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(o, (a, b))| vectorized(|| o.iter_mut().zip(a.iter().zip(b)).for_each(|(o, (&a, &b))| *o = f(a, b))));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn erf64(x: f64) -> f64 {
        // erf by its Maclaurin series (converges fast for the |x| ≤ 3 tested), independent of
        // the approximation under test.
        let mut term = x;
        let mut sum = x;
        for n in 1..200 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn exp_is_within_two_ulp() {
        for i in -8600..8800 {
            let x = i as f32 * 0.01;
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            assert!(((got - want) / want).abs() < 2.5e-7, "exp({x}) = {got}, want {want}");
        }
    }

    #[test]
    fn gelu_and_its_gradient_match_the_exact_formula() {
        for i in -600..600 {
            let x = i as f32 * 0.005;
            let xd = x as f64;
            let cdf = 0.5 * (1.0 + erf64(xd / std::f64::consts::SQRT_2));
            let pdf = (-0.5 * xd * xd).exp() / (2.0 * std::f64::consts::PI).sqrt();
            assert!((gelu(x) as f64 - xd * cdf).abs() < 3e-7 * (1.0 + xd.abs()), "gelu({x})");
            assert!((gelu_grad(x, 1.0) as f64 - (cdf + xd * pdf)).abs() < 3e-7 * (1.0 + xd.abs()), "gelu'({x})");
        }
        assert_eq!(gelu(-30.0), 0.0);
        assert_eq!(gelu(30.0), 30.0);
    }

    #[test]
    fn tree_reduce_pairs_neighbours_in_a_fixed_order() {
        let order = tree_reduce((0..5).map(|i| i.to_string()).collect(), |a, b| format!("({a}+{b})"));
        assert_eq!(order.as_deref(), Some("(((0+1)+(2+3))+4)"));
        assert_eq!(tree_reduce(Vec::<f32>::new(), |a, b| a + b), None);
    }

    #[test]
    fn fixed_sum_is_the_same_bits_in_any_thread_pool() {
        let a: Vec<f32> = (0..(5 * CHUNK + 123)).map(|i| ((i as f32) * 0.37).sin() * 1e3).collect();
        let in_pool = |threads| rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(|| fixed_sum(&a, |v| v * v));
        let one = in_pool(1);
        for threads in [2, 3, 4, 7] {
            assert_eq!(in_pool(threads).to_bits(), one.to_bits(), "{threads} threads");
        }
        let exact: f64 = a.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        assert!((f64::from(one) - exact).abs() < 1e-6 * exact, "{one} vs {exact}");
    }

    #[test]
    fn hash_bits_are_balanced_and_seeded() {
        let n = 1 << 16;
        let below: usize = (0..n).filter(|&i| hash(7, i) < u32::MAX / 10).count();
        assert!((below as f64 / n as f64 - 0.1).abs() < 0.005, "{below}");
        assert_ne!(hash(7, 0), hash(8, 0));
        assert_ne!(hash(7 << 32, 0), hash(8 << 32, 0));
    }
}
