//! When a run gives up on bad records (`data.max_skip_fraction`). A whole annotation file is a
//! complete count, judged by its fraction. The stream of training samples is judged while it
//! grows, and a fraction over the first few records says little: one undecodable image among the
//! first nine is 11%, on a data set that is 99.9% clean. So the stream is judged from its
//! 100th record on, and stops only when the skip rate is above the limit with 99.9% confidence
//! (the lower end of the one-sided Wilson score interval): a clean data set with an early bad
//! record keeps going, while one that is really above the limit stops within a few hundred
//! records (at the 100th when 5% are bad against a 1% limit).

use crate::util::error::{Error, Result};

/// z of a one-sided 99.9% bound.
const Z: f64 = 3.09;
/// Records seen before the stream is judged at all.
pub const MIN_RECORDS: u64 = 100;

#[derive(Clone, Copy, Debug)]
pub struct SkipLimit {
    pub max_fraction: f64,
}

/// The lower end of the Wilson score interval for `k` successes in `n` trials at `z`.
pub fn wilson_lower(k: u64, n: u64, z: f64) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let (n, p) = (n as f64, k as f64 / n as f64);
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n);
    let spread = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre - spread) / (1.0 + z2 / n)).max(0.0)
}

impl SkipLimit {
    /// A complete count (every line of an annotation file): its fraction against the limit.
    pub fn check_complete(&self, skipped: u64, total: u64) -> Result<()> {
        if total > 0 && skipped as f64 / total as f64 > self.max_fraction {
            return Err(self.error(skipped, total, "of the annotation lines"));
        }
        Ok(())
    }

    /// A count that is still growing (training samples drawn so far): from [`MIN_RECORDS`] on,
    /// stops when the skip rate is above the limit with 99.9% confidence.
    pub fn check_running(&self, skipped: u64, seen: u64) -> Result<()> {
        if seen >= MIN_RECORDS && wilson_lower(skipped, seen, Z) > self.max_fraction {
            return Err(self.error(skipped, seen, "so far: the rate is above the limit with 99.9% confidence"));
        }
        Ok(())
    }

    fn error(&self, skipped: u64, seen: u64, how: &str) -> Error {
        Error::input(
            "data.max_skip_fraction",
            format!(
                "{skipped} of {seen} records skipped ({:.1}%) {how}; the limit data.max_skip_fraction is {:.1}%. See the skipped records above",
                100.0 * skipped as f64 / seen as f64,
                100.0 * self.max_fraction
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: SkipLimit = SkipLimit { max_fraction: 0.01 };

    #[test]
    fn one_bad_record_early_in_a_clean_stream_does_not_stop_it() {
        // The 5th of 10 000 records is bad, and one in a thousand after it.
        let mut skipped = 0;
        for seen in 1..=10_000u64 {
            skipped += u64::from(seen == 5 || seen % 1000 == 0);
            DEFAULT.check_running(skipped, seen).unwrap();
        }
    }

    #[test]
    fn a_stream_above_the_limit_stops_within_hundreds_of_records() {
        let mut skipped = 0;
        let stopped = (1..=10_000u64).find(|&seen| {
            skipped += u64::from(seen % 20 == 0); // 5% bad
            DEFAULT.check_running(skipped, seen).is_err()
        });
        let at = stopped.expect("5% bad must stop the run");
        assert!((100..400).contains(&at), "stopped after {at} records");
        let message = DEFAULT.check_running(skipped, at).unwrap_err().to_string();
        assert!(message.contains("data.max_skip_fraction") && message.contains("1.0%"), "{message}");
        // Everything bad stops it as soon as it is judged.
        assert!(DEFAULT.check_running(99, 99).is_ok());
        assert!(DEFAULT.check_running(100, 100).is_err());
    }

    #[test]
    fn a_complete_count_is_judged_by_its_fraction() {
        assert!(DEFAULT.check_complete(1, 100).is_ok());
        assert!(DEFAULT.check_complete(2, 100).is_err());
    }

    #[test]
    fn the_wilson_bound_matches_a_hand_computation() {
        // k = 50, n = 1000, z = 3.09: (0.05 + 0.004774 − 3.09·√(4.75e-5 + 2.387e-6)) / 1.009548.
        let want = (0.05 + 3.09f64 * 3.09 / 2000.0 - 3.09 * (0.05 * 0.95 / 1000.0 + 3.09f64.powi(2) / 4e6).sqrt())
            / (1.0 + 3.09f64.powi(2) / 1000.0);
        assert!((wilson_lower(50, 1000, 3.09) - want).abs() < 1e-15);
        assert!((0.032..0.033).contains(&want), "{want}");
        assert_eq!(wilson_lower(0, 0, 3.09), 0.0);
    }
}
