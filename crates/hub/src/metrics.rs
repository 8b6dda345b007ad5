//! Counters exposed on `GET /metrics` in the Prometheus text format.

use std::collections::BTreeMap;
use std::sync::Mutex;

use dispatch_util::prometheus::{Kind, Text};

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
/// Jobs in the store by state (a gauge, read from the store on each scrape).
const JOBS: &str = "dispatch_hub_jobs";

const HELP: [(&str, &str, &str); 4] = [
    (
        WEBHOOKS,
        "outcome",
        "Webhook deliveries received, by outcome.",
    ),
    (PULLS, "outcome", "Dispatch pull calls, by outcome."),
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

#[cfg(test)]
mod tests {
    use super::*;

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
