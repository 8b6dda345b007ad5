//! Counters the scheduler renders as Prometheus metrics. Plain atomics: the loops bump them, a
//! metrics endpoint reads them at any time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dispatch_protocol::RESULT_STATUS_WORDS;

/// Upper bounds (seconds) of the dispatch-latency histogram buckets; a last `+Inf` bucket is
/// implied. Chosen around the latency targets in the README's Benchmarks (p50 ≤ 25 ms,
/// p99 ≤ 100 ms).
pub const LATENCY_BUCKETS_SECONDS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Live counters of one worker. Every getter is a cheap atomic load.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pulled: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    pull_errors: AtomicU64,
    last_pull_ms: AtomicU64,
    finished: [AtomicU64; RESULT_STATUS_WORDS.len()],
    finished_other: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_SECONDS.len() + 1],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
}

/// A snapshot of the dispatch-latency histogram (pull answered → accept answered).
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyHistogram {
    /// `(upper bound in seconds, cumulative count)` for each bucket of
    /// [`LATENCY_BUCKETS_SECONDS`], then `(f64::INFINITY, count)`.
    pub buckets: Vec<(f64, u64)>,
    /// Number of observations.
    pub count: u64,
    /// Sum of the observations, in seconds.
    pub sum_seconds: f64,
}

impl WorkerStats {
    /// Jobs received from pull (each pull answer counts, a re-delivered job too).
    pub fn jobs_pulled(&self) -> u64 {
        self.pulled.load(Ordering::Relaxed)
    }

    /// Successful accept calls.
    pub fn jobs_accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Jobs turned down at intake (bad id or DAG name, unknown DAG, nothing to cancel, enqueue
    /// refused). Each is also counted under `rejected` in [`WorkerStats::jobs_finished`] once its
    /// finish call succeeds.
    pub fn jobs_rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Failed pull calls.
    pub fn pull_errors(&self) -> u64 {
        self.pull_errors.load(Ordering::Relaxed)
    }

    /// Unix milliseconds of the last successful pull (job or no job); 0 before the first.
    pub fn last_successful_pull_ms(&self) -> u64 {
        self.last_pull_ms.load(Ordering::Relaxed)
    }

    /// Successful finish calls with the status word `status`; 0 for an unknown word.
    pub fn jobs_finished(&self, status: &str) -> u64 {
        RESULT_STATUS_WORDS
            .iter()
            .position(|w| *w == status)
            .map_or(0, |i| self.finished[i].load(Ordering::Relaxed))
    }

    /// Successful finish calls per status word, every word listed (zeros included).
    pub fn jobs_finished_by_status(&self) -> Vec<(&'static str, u64)> {
        RESULT_STATUS_WORDS
            .iter()
            .zip(&self.finished)
            .map(|(w, c)| (*w, c.load(Ordering::Relaxed)))
            .collect()
    }

    /// Total successful finish calls.
    pub fn jobs_finished_total(&self) -> u64 {
        self.finished
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum::<u64>()
            + self.finished_other.load(Ordering::Relaxed)
    }

    /// The dispatch-latency histogram: pull answered → accept answered, per accepted pull.
    pub fn dispatch_latency(&self) -> LatencyHistogram {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(LATENCY_BUCKETS_SECONDS.len() + 1);
        let bounds = LATENCY_BUCKETS_SECONDS
            .iter()
            .copied()
            .chain([f64::INFINITY]);
        for (bound, count) in bounds.zip(&self.latency_buckets) {
            cumulative += count.load(Ordering::Relaxed);
            buckets.push((bound, cumulative));
        }
        LatencyHistogram {
            buckets,
            count: self.latency_count.load(Ordering::Relaxed),
            sum_seconds: self.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }

    pub(crate) fn record_pulled(&self, now_ms: u64) {
        self.pulled.fetch_add(1, Ordering::Relaxed);
        self.record_pull_ok(now_ms);
    }

    pub(crate) fn record_pull_ok(&self, now_ms: u64) {
        self.last_pull_ms.fetch_max(now_ms, Ordering::Relaxed);
    }

    pub(crate) fn record_pull_error(&self) {
        self.pull_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_finished(&self, status: &str) {
        match RESULT_STATUS_WORDS.iter().position(|w| *w == status) {
            Some(i) => self.finished[i].fetch_add(1, Ordering::Relaxed),
            None => self.finished_other.fetch_add(1, Ordering::Relaxed),
        };
    }

    pub(crate) fn record_latency(&self, latency: Duration) {
        let seconds = latency.as_secs_f64();
        let index = LATENCY_BUCKETS_SECONDS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS_SECONDS.len());
        self.latency_buckets[index].fetch_add(1, Ordering::Relaxed);
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_sum_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_status_words_are_the_run_statuses_in_numeric_order() {
        for status in dispatch_dag::RunStatus::ALL {
            assert_eq!(
                RESULT_STATUS_WORDS[status.as_i32() as usize],
                status.as_str()
            );
        }
    }

    #[test]
    fn latency_histogram_is_cumulative_with_inf_bucket() {
        let s = WorkerStats::default();
        s.record_latency(Duration::from_micros(500));
        s.record_latency(Duration::from_millis(1));
        s.record_latency(Duration::from_millis(20));
        s.record_latency(Duration::from_secs(30));
        let h = s.dispatch_latency();
        assert_eq!(h.count, 4);
        assert_eq!(h.buckets.len(), LATENCY_BUCKETS_SECONDS.len() + 1);
        assert_eq!(h.buckets[0], (0.001, 2));
        assert_eq!(h.buckets[3], (0.01, 2));
        assert_eq!(h.buckets[4], (0.025, 3));
        assert_eq!(h.buckets[11], (10.0, 3));
        assert_eq!(h.buckets[12], (f64::INFINITY, 4));
        assert!((h.sum_seconds - 30.0215).abs() < 1e-9, "{}", h.sum_seconds);
    }

    #[test]
    fn finished_counts_by_word() {
        let s = WorkerStats::default();
        s.record_finished("succeeded");
        s.record_finished("succeeded");
        s.record_finished("rejected");
        s.record_finished("weird");
        assert_eq!(s.jobs_finished("succeeded"), 2);
        assert_eq!(s.jobs_finished("rejected"), 1);
        assert_eq!(s.jobs_finished("failed"), 0);
        assert_eq!(s.jobs_finished("weird"), 0);
        assert_eq!(s.jobs_finished_total(), 4);
        let all = s.jobs_finished_by_status();
        assert_eq!(all.len(), 9);
        assert!(all.contains(&("succeeded", 2)));
    }

    #[test]
    fn last_pull_only_moves_forward() {
        let s = WorkerStats::default();
        assert_eq!(s.last_successful_pull_ms(), 0);
        s.record_pulled(10);
        s.record_pull_ok(5);
        assert_eq!(s.last_successful_pull_ms(), 10);
        assert_eq!(s.jobs_pulled(), 1);
    }
}
