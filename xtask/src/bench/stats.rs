//! Summaries of samples.

use super::Metric;

/// p50, p99, mean, max and count of latency `samples` (ms) as rows without targets, named
/// `<prefix>_p50_ms`, `_p99_ms`, `_mean_ms`, `_max_ms` and `_samples`; NaN where there are none.
pub(crate) fn latency_rows(samples: &[f64], prefix: &str) -> Vec<Metric> {
    let nan = f64::NAN;
    let max = samples.iter().copied().fold(nan, f64::max);
    vec![
        Metric::info(
            format!("{prefix}_p50_ms"),
            percentile(samples, 50.0).unwrap_or(nan),
            "ms",
        ),
        Metric::info(
            format!("{prefix}_p99_ms"),
            percentile(samples, 99.0).unwrap_or(nan),
            "ms",
        ),
        Metric::info(
            format!("{prefix}_mean_ms"),
            mean(samples).unwrap_or(nan),
            "ms",
        ),
        Metric::info(format!("{prefix}_max_ms"), max, "ms"),
        Metric::info(format!("{prefix}_samples"), samples.len() as f64, "count"),
    ]
}

/// Nearest-rank percentile (the smallest sample with at least `p` % of the samples at or below
/// it), so every reported percentile is a value that was actually observed. `None` when empty.
pub(crate) fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() || !(0.0..=100.0).contains(&p) {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Arithmetic mean; `None` when empty.
pub(crate) fn mean(samples: &[f64]) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    Some(samples.iter().sum::<f64>() / samples.len() as f64)
}

/// A small, seedable generator for send offsets; the bench needs spread, not cryptography.
pub(crate) struct Jitter(u64);

impl Jitter {
    pub(crate) fn new(seed: u64) -> Jitter {
        // xorshift has a fixed point at zero.
        Jitter(seed | 1)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn next_unit(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<f64> = (1..=200).rev().map(f64::from).collect();
        assert_eq!(percentile(&samples, 50.0), Some(100.0));
        assert_eq!(percentile(&samples, 99.0), Some(198.0));
        assert_eq!(percentile(&samples, 100.0), Some(200.0));
        assert_eq!(percentile(&samples, 0.0), Some(1.0));
        // With 10 samples p99 is the largest one, not an interpolation past it.
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&ten, 99.0), Some(10.0));
        assert_eq!(percentile(&ten, 50.0), Some(5.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
    }

    #[test]
    fn empty_or_out_of_range_has_no_percentile() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[1.0], 101.0), None);
        assert_eq!(mean(&[]), None);
        assert_eq!(mean(&[1.0, 2.0, 6.0]), Some(3.0));
    }

    #[test]
    fn latency_rows_are_named_after_their_prefix() {
        let samples: Vec<f64> = (1..=200).map(f64::from).collect();
        let rows = latency_rows(&samples, "x");
        let named: Vec<(&str, Option<f64>)> =
            rows.iter().map(|r| (r.name.as_str(), r.value)).collect();
        assert_eq!(
            named,
            [
                ("x_p50_ms", Some(100.0)),
                ("x_p99_ms", Some(198.0)),
                ("x_mean_ms", Some(100.5)),
                ("x_max_ms", Some(200.0)),
                ("x_samples", Some(200.0)),
            ]
        );
        assert!(rows.iter().all(|r| r.target.is_none()));
        let empty = latency_rows(&[], "x");
        assert!(empty[..4].iter().all(|r| r.value.is_some_and(f64::is_nan)));
        assert_eq!(empty[4].value, Some(0.0));
    }

    #[test]
    fn jitter_stays_in_the_unit_interval_and_spreads() {
        let mut jitter = Jitter::new(0);
        let values: Vec<f64> = (0..1000).map(|_| jitter.next_unit()).collect();
        assert!(values.iter().all(|v| (0.0..1.0).contains(v)));
        assert!(values.iter().any(|v| *v < 0.1));
        assert!(values.iter().any(|v| *v > 0.9));
    }
}
