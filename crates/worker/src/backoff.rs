//! Exponential backoff with full jitter, kept pure (no clock, injected randomness) so that it is
//! tested without a runtime.

use std::time::Duration;

use rand::Rng as _;

/// Longest `Retry-After` we obey. A server asking for more is most likely wrong; waiting an hour
/// would look like a hung scheduler.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(15 * 60);

/// A source of jitter: each call returns a fraction in `[0, 1]`.
pub(crate) type Jitter = Box<dyn FnMut() -> f64 + Send>;

/// Delays for consecutive failures: the n-th failure (from 0) waits a uniformly random time in
/// `[min, min(max, min * 2^n)]`.
///
/// This is "full jitter" over the growing window, with the floor kept at `min` instead of zero:
/// a zero delay after an error would be a busy loop against a failing server.
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
    jitter: Jitter,
}

impl Backoff {
    /// Backoff from `min` to `max` with random jitter.
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self::with_jitter(
            min,
            max,
            Box::new(|| rand::thread_rng().gen_range(0.0..=1.0)),
        )
    }

    /// Backoff with the given jitter source (tests pass fixed fractions).
    pub(crate) fn with_jitter(min: Duration, max: Duration, jitter: Jitter) -> Self {
        // A zero floor would allow a busy loop; a max below min makes no sense.
        let min = min.max(Duration::from_millis(1));
        let max = max.max(min);
        Self {
            min,
            max,
            failures: 0,
            jitter,
        }
    }

    /// The delay before the next attempt after one more failure. `retry_after` (from a 429/503)
    /// is a lower bound, capped at [`MAX_RETRY_AFTER`].
    pub(crate) fn next_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        let window = self.window();
        self.failures = self.failures.saturating_add(1);
        let raw = (self.jitter)();
        // `Duration::mul_f64` panics on NaN; a broken jitter source must not take the loop down.
        let fraction = if raw.is_nan() {
            0.0
        } else {
            raw.clamp(0.0, 1.0)
        };
        let spread = window.saturating_sub(self.min);
        let delay = self.min + spread.mul_f64(fraction);
        match retry_after {
            Some(wait) => delay.max(wait.min(MAX_RETRY_AFTER)),
            None => delay,
        }
    }

    /// Forgets past failures (after a success).
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    /// Consecutive failures so far.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// Upper end of the window for the next failure: `min * 2^failures`, at most `max`.
    fn window(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(31)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn fixed(fraction: f64) -> Jitter {
        Box::new(move || fraction)
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn upper_end_doubles_up_to_max() {
        let mut b = Backoff::with_jitter(S, 60 * S, fixed(1.0));
        let delays: Vec<u64> = (0..9).map(|_| b.next_delay(None).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(b.failures(), 9);
    }

    #[test]
    fn lower_end_stays_at_min_so_never_a_busy_loop() {
        let mut b = Backoff::with_jitter(S, 60 * S, fixed(0.0));
        for _ in 0..100 {
            assert_eq!(b.next_delay(None), S);
        }
    }

    #[test]
    fn jitter_spreads_over_the_window() {
        let mut b = Backoff::with_jitter(S, 60 * S, fixed(0.5));
        // windows 1, 2, 4, 8 → 1 + (w-1)/2
        let delays: Vec<Duration> = (0..4).map(|_| b.next_delay(None)).collect();
        assert_eq!(
            delays,
            [
                S,
                Duration::from_millis(1500),
                Duration::from_millis(2500),
                Duration::from_millis(4500)
            ]
        );
    }

    #[test]
    fn out_of_range_jitter_is_clamped() {
        let mut b = Backoff::with_jitter(S, 60 * S, fixed(7.0));
        assert_eq!(b.next_delay(None), S);
        assert_eq!(b.next_delay(None), 2 * S);
        let mut b = Backoff::with_jitter(S, 60 * S, fixed(-1.0));
        b.next_delay(None);
        assert_eq!(b.next_delay(None), S);
        let mut b = Backoff::with_jitter(S, 60 * S, fixed(f64::NAN));
        assert!(b.next_delay(None) >= S);
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::with_jitter(S, 60 * S, fixed(1.0));
        for _ in 0..5 {
            b.next_delay(None);
        }
        b.reset();
        assert_eq!(b.failures(), 0);
        assert_eq!(b.next_delay(None), S);
    }

    #[test]
    fn retry_after_is_a_lower_bound_with_a_cap() {
        let mut b = Backoff::with_jitter(S, 60 * S, fixed(1.0));
        assert_eq!(b.next_delay(Some(2 * S)), 2 * S);
        // Window is now 2 s, Retry-After 1 s: the jittered delay wins.
        assert_eq!(b.next_delay(Some(S)), 2 * S);
        assert_eq!(b.next_delay(Some(100 * S)), 100 * S);
        assert_eq!(
            b.next_delay(Some(Duration::from_secs(86_400))),
            MAX_RETRY_AFTER
        );
    }

    #[test]
    fn huge_failure_counts_do_not_overflow() {
        let mut b = Backoff::with_jitter(S, 60 * S, fixed(1.0));
        b.failures = u32::MAX - 1;
        assert_eq!(b.next_delay(None), 60 * S);
        assert_eq!(b.next_delay(None), 60 * S);
        assert_eq!(b.failures(), u32::MAX);
    }

    #[test]
    fn degenerate_bounds_are_fixed_up() {
        let mut b = Backoff::with_jitter(Duration::ZERO, Duration::ZERO, fixed(1.0));
        assert_eq!(b.next_delay(None), Duration::from_millis(1));
        let mut b = Backoff::with_jitter(10 * S, S, fixed(1.0));
        assert_eq!(b.next_delay(None), 10 * S);
    }

    #[test]
    fn default_jitter_stays_in_the_window() {
        let mut b = Backoff::new(S, 60 * S);
        for n in 0..20u32 {
            let d = b.next_delay(None);
            let window = (S * 2u32.pow(n.min(6))).min(60 * S);
            assert!(
                d >= S && d <= window,
                "failure {n}: {d:?} not in [1s, {window:?}]"
            );
        }
        // The jitter source is actually consulted on every call.
        let calls = Arc::new(Mutex::new(0));
        let seen = calls.clone();
        let mut b = Backoff::with_jitter(
            S,
            60 * S,
            Box::new(move || {
                *seen.lock().unwrap() += 1;
                0.0
            }),
        );
        b.next_delay(None);
        b.next_delay(None);
        assert_eq!(*calls.lock().unwrap(), 2);
    }
}
