//! Counters exposed on `GET /metrics` in the Prometheus text format, and the bearer token that
//! may guard the page.

use std::collections::BTreeMap;
use std::sync::Mutex;

use dispatch_protocol::Secret;
use dispatch_util::prometheus::{Kind, Text};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::store::JobState;

/// Labelled counters; the label sets are small and fixed, so a map behind a mutex is enough.
#[derive(Default)]
pub(crate) struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

/// Webhook deliveries by outcome.
pub(crate) const WEBHOOKS: &str = "dispatch_hub_webhooks_received_total";
/// Pull calls by outcome.
pub(crate) const PULLS: &str = "dispatch_hub_pulls_total";
/// GitHub reports by result.
pub(crate) const REPORTS: &str = "dispatch_hub_reports_total";
/// Finish calls by outcome (`done`, `repeated`, `not_found`, `conflict`).
pub(crate) const FINISHES: &str = "dispatch_hub_finishes_total";
/// Wake-ups of waiting pulls by what the woken pull found (`job`, `nothing`): one per job that
/// became claimable while pulls waited, not one per waiting pull.
pub(crate) const WAKEUPS: &str = "dispatch_hub_pull_wakeups_total";
/// Pulls waiting for a job now (long-polls).
const PULLS_WAITING: &str = "dispatch_hub_pulls_waiting";
/// Jobs in the store by state (a gauge the store keeps as jobs change; no query per scrape).
const JOBS: &str = "dispatch_hub_jobs";

const HELP: [(&str, &str, &str); 5] = [
    (
        WEBHOOKS,
        "outcome",
        "Webhook deliveries received, by outcome.",
    ),
    (PULLS, "outcome", "Dispatch pull calls, by outcome."),
    (
        WAKEUPS,
        "outcome",
        "Waiting pulls woken for a job, by what they found.",
    ),
    (REPORTS, "result", "GitHub status/comment calls, by result."),
    (
        FINISHES,
        "outcome",
        "Finish calls, by outcome (a repeated finish is idempotent).",
    ),
];

impl Metrics {
    pub fn inc(&self, name: &'static str, label: &'static str) {
        let mut map = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry((name, label)).or_default() += 1;
    }

    /// The counts of the counter `name`, by label (the deliveries page shows the webhooks').
    pub fn counts(&self, name: &str) -> Vec<(&'static str, u64)> {
        let map = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .filter(|((n, _), _)| *n == name)
            .map(|((_, label), count)| (*label, *count))
            .collect()
    }

    /// Renders the counters plus the job gauge `jobs` (state → count; every state is shown, the
    /// ones without jobs as 0).
    pub fn render(&self, jobs: &[(JobState, i64)]) -> String {
        let map = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let mut text = Text::new();
        for (name, label, help) in HELP {
            text.family(name, Kind::Counter, help);
            for ((_, value), count) in map.iter().filter(|((n, _), _)| *n == name) {
                text.sample(name, &[(label, value)], count);
            }
        }
        text.family(JOBS, Kind::Gauge, "Jobs in the store, by state.");
        for state in JobState::ALL {
            let count = jobs
                .iter()
                .find(|(s, _)| *s == state)
                .map_or(0, |(_, c)| *c);
            text.sample(JOBS, &[("state", state.as_str())], count);
        }
        text.finish()
    }
}

/// The gauge of pulls waiting for a job, `waiting` of them, to append to [`Metrics::render`]'s page.
pub(crate) fn waiting_gauge(waiting: usize) -> String {
    let mut text = Text::new();
    text.single(
        PULLS_WAITING,
        Kind::Gauge,
        "Pulls waiting for a job (long-polls).",
        waiting,
    );
    text.finish()
}

/// Whether an `Authorization` header value lets a scraper in: anything goes without a token;
/// with one, exactly `Bearer <token>`. The comparison runs over digests, so its time reveals
/// neither where a guess goes wrong nor the token's length.
pub(crate) fn scrape_allowed(token: Option<&Secret>, authorization: Option<&[u8]>) -> bool {
    let Some(token) = token else { return true };
    let Some(presented) = authorization.and_then(|v| v.strip_prefix(b"Bearer ")) else {
        return false;
    };
    let want = Sha256::digest(token.expose().as_bytes());
    Sha256::digest(presented).ct_eq(&want).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrapes_need_the_exact_bearer_token_when_one_is_set() {
        assert!(scrape_allowed(None, None));
        assert!(scrape_allowed(None, Some(b"Bearer whatever")));
        let token = Secret::new("s3cret");
        let t = Some(&token);
        assert!(scrape_allowed(t, Some(b"Bearer s3cret")));
        for wrong in [
            &b""[..],
            b"s3cret",
            b"Bearer ",
            b"Bearer s3cre",
            b"Bearer s3cret ",
            b"bearer s3cret",
            b"Basic s3cret",
        ] {
            assert!(!scrape_allowed(t, Some(wrong)), "{wrong:?}");
        }
        assert!(!scrape_allowed(t, None));
    }

    #[test]
    fn renders_counters_and_all_job_states() {
        let m = Metrics::default();
        m.inc(WEBHOOKS, "accepted");
        m.inc(WEBHOOKS, "accepted");
        m.inc(PULLS, "empty");
        let text = m.render(&[(JobState::Queued, 3)]);
        assert!(text.contains("dispatch_hub_webhooks_received_total{outcome=\"accepted\"} 2\n"));
        assert!(text.contains("dispatch_hub_pulls_total{outcome=\"empty\"} 1\n"));
        assert!(text.contains("dispatch_hub_jobs{state=\"queued\"} 3\n"));
        assert!(text.contains("dispatch_hub_jobs{state=\"finished\"} 0\n"));
        assert!(text.contains("# TYPE dispatch_hub_pulls_total counter\n"));
        assert!(text.contains(
            "# HELP dispatch_hub_jobs Jobs in the store, by state.\n# TYPE dispatch_hub_jobs gauge\n"
        ));
    }
}
