//! `/metrics` (Prometheus text format 0.0.4) and `/healthz` on `--metrics-addr`.
//!
//! The numbers come from a [`Probe`] the wiring supplies (worker counters, executor and queue
//! gauges) plus the [`Histogram`] of dispatch latency this module owns.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use dispatch_util::now_ms;
use dispatch_util::prometheus::{Kind, Text};
use tokio_util::sync::CancellationToken;

/// A snapshot of a cumulative histogram.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Histogram {
    /// `(upper bound in seconds, cumulative count)`, the last bound being `+Inf`.
    pub(crate) buckets: Vec<(f64, u64)>,
    pub(crate) count: u64,
    pub(crate) sum_seconds: f64,
}

impl Histogram {
    fn render(&self, out: &mut Text, name: &str, help: &str) {
        out.family(name, Kind::Histogram, help);
        let bucket = format!("{name}_bucket");
        for (bound, count) in &self.buckets {
            let le = if bound.is_infinite() {
                "+Inf".to_owned()
            } else {
                bound.to_string()
            };
            out.sample(&bucket, &[("le", &le)], count);
        }
        if !self
            .buckets
            .last()
            .is_some_and(|(bound, _)| bound.is_infinite())
        {
            out.sample(&bucket, &[("le", "+Inf")], self.count);
        }
        out.sample(&format!("{name}_sum"), &[], self.sum_seconds)
            .sample(&format!("{name}_count"), &[], self.count);
    }
}

/// One reading of the scheduler's counters and gauges.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Reading {
    pub(crate) jobs_pulled: u64,
    pub(crate) jobs_accepted: u64,
    /// `(result status word, count)`.
    pub(crate) jobs_finished: Vec<(String, u64)>,
    pub(crate) pull_errors: u64,
    pub(crate) runs_active: u64,
    pub(crate) queue_depth: u64,
    /// Unix milliseconds of the last pull that got an answer (job or empty); 0 before the first.
    pub(crate) last_pull_ms: u64,
    /// Dispatch latency as the worker measures it.
    pub(crate) dispatch_latency: Histogram,
}

/// Where readings come from; the wiring implements it over the worker, executor and stores.
pub(crate) trait Probe: Send + Sync + 'static {
    fn read(&self) -> Reading;
}

/// Shared state of the metrics server.
pub(crate) struct Metrics {
    probe: Box<dyn Probe>,
    /// Unix milliseconds of the start.
    started_ms: u64,
    /// A pull older than this makes `/healthz` answer 503.
    stale_after: Duration,
}

impl Metrics {
    /// `stale_after` is three poll intervals, where a long-poll's wait counts as the interval
    /// when it is longer (a held pull returns only every `long_poll` seconds).
    pub(crate) fn new(probe: Box<dyn Probe>, poll_interval: Duration, long_poll: Duration) -> Self {
        Self {
            probe,
            started_ms: now_ms(),
            stale_after: poll_interval.max(long_poll) * 3,
        }
    }

    /// Healthy while the last successful pull (or the start, before the first one) is recent.
    pub(crate) fn health(&self, now_ms: u64) -> Result<Duration, Duration> {
        let last = self.probe.read().last_pull_ms;
        let since = if last == 0 { self.started_ms } else { last };
        let age = Duration::from_millis(now_ms.saturating_sub(since));
        if age > self.stale_after {
            Err(age)
        } else {
            Ok(age)
        }
    }

    pub(crate) fn render(&self) -> String {
        let r = self.probe.read();
        let mut out = Text::new();
        out.single(
            "dispatch_jobs_pulled_total",
            Kind::Counter,
            "Dispatch jobs received from pulls.",
            r.jobs_pulled,
        )
        .single(
            "dispatch_jobs_accepted_total",
            Kind::Counter,
            "Dispatch jobs accepted.",
            r.jobs_accepted,
        )
        .single(
            "dispatch_pull_errors_total",
            Kind::Counter,
            "Pulls that failed.",
            r.pull_errors,
        );
        let name = "dispatch_jobs_finished_total";
        out.family(
            name,
            Kind::Counter,
            "Dispatch jobs finished, by result status.",
        );
        for (status, value) in &r.jobs_finished {
            out.sample(name, &[("status", status)], value);
        }
        out.single(
            "dispatch_runs_active",
            Kind::Gauge,
            "DAG runs executing now.",
            r.runs_active,
        )
        .single(
            "dispatch_queue_depth",
            Kind::Gauge,
            "DAG runs waiting in the queues.",
            r.queue_depth,
        );
        let age = if r.last_pull_ms == 0 {
            -1.0
        } else {
            now_ms().saturating_sub(r.last_pull_ms) as f64 / 1000.0
        };
        out.single(
            "dispatch_last_pull_age_seconds",
            Kind::Gauge,
            "Seconds since the last successful pull (-1 before the first).",
            age,
        );
        r.dispatch_latency.render(
            &mut out,
            "dispatch_latency_seconds",
            "Time from a pull answering with a job to its accept answering.",
        );
        out.finish()
    }
}

/// Binds `addr` (so a bad address fails at start) and serves until `cancel`.
pub(crate) async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> std::io::Result<(
    SocketAddr,
    impl std::future::Future<Output = std::io::Result<()>>,
)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(health_handler))
        .with_state(metrics);
    let server = async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await
    };
    Ok((local, server))
}

async fn metrics_handler(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
}

async fn health_handler(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    match metrics.health(now_ms()) {
        Ok(age) => (
            StatusCode::OK,
            format!("ok: last successful pull {}s ago\n", age.as_secs()),
        ),
        Err(age) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: no successful pull for {}s\n", age.as_secs()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    struct Fixed(Mutex<Reading>);
    impl Probe for Arc<Fixed> {
        fn read(&self) -> Reading {
            self.0.lock().unwrap().clone()
        }
    }

    #[test]
    fn renders_every_family() {
        let probe = Arc::new(Fixed(Mutex::new(Reading {
            jobs_pulled: 3,
            jobs_accepted: 2,
            jobs_finished: vec![("succeeded".into(), 1), ("failed".into(), 1)],
            pull_errors: 4,
            runs_active: 1,
            queue_depth: 5,
            last_pull_ms: 0,
            dispatch_latency: Histogram {
                buckets: vec![(0.01, 0), (0.025, 1), (5.0, 2), (f64::INFINITY, 2)],
                count: 2,
                sum_seconds: 3.02,
            },
        })));
        let m = Metrics::new(
            Box::new(probe),
            Duration::from_secs(10),
            Duration::from_secs(0),
        );
        let text = m.render();
        let expected = [
            "dispatch_jobs_pulled_total 3",
            "dispatch_jobs_accepted_total 2",
            "dispatch_jobs_finished_total{status=\"succeeded\"} 1",
            "dispatch_jobs_finished_total{status=\"failed\"} 1",
            "dispatch_pull_errors_total 4",
            "dispatch_runs_active 1",
            "dispatch_queue_depth 5",
            "dispatch_latency_seconds_bucket{le=\"0.01\"} 0",
            "dispatch_latency_seconds_bucket{le=\"0.025\"} 1",
            "dispatch_latency_seconds_bucket{le=\"5\"} 2",
            "dispatch_latency_seconds_bucket{le=\"+Inf\"} 2",
            "dispatch_latency_seconds_count 2",
            "dispatch_latency_seconds_sum 3.02",
        ];
        let missing: Vec<&str> = expected
            .into_iter()
            .filter(|line| !text.lines().any(|l| l == *line))
            .collect();
        assert!(missing.is_empty(), "missing {missing:?} in:\n{text}");
    }

    #[test]
    fn health_counts_from_start_then_from_last_pull() {
        let probe = Arc::new(Fixed(Mutex::new(Reading::default())));
        let m = Metrics::new(
            Box::new(probe.clone()),
            Duration::from_secs(10),
            Duration::from_secs(0),
        );
        let start = m.started_ms;
        assert!(m.health(start + 30_000).is_ok());
        assert_eq!(m.health(start + 31_000), Err(Duration::from_secs(31)));
        probe.0.lock().unwrap().last_pull_ms = start + 40_000;
        assert!(m.health(start + 65_000).is_ok());
        assert!(m.health(start + 71_000).is_err());
    }

    #[test]
    fn long_poll_widens_the_window() {
        let probe = Arc::new(Fixed(Mutex::new(Reading::default())));
        let m = Metrics::new(
            Box::new(probe),
            Duration::from_secs(10),
            Duration::from_secs(30),
        );
        assert!(m.health(m.started_ms + 85_000).is_ok());
        assert!(m.health(m.started_ms + 91_000).is_err());
    }

    #[tokio::test]
    async fn serves_metrics_and_health_over_http() {
        let probe = Arc::new(Fixed(Mutex::new(Reading::default())));
        let m = Arc::new(Metrics::new(
            Box::new(probe),
            Duration::from_secs(10),
            Duration::ZERO,
        ));
        let cancel = CancellationToken::new();
        let (addr, server) = serve("127.0.0.1:0".parse().unwrap(), m, cancel.clone())
            .await
            .unwrap();
        let task = tokio::spawn(server);
        let body = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            body.contains("# TYPE dispatch_latency_seconds histogram"),
            "{body}"
        );
        let health = reqwest::get(format!("http://{addr}/healthz"))
            .await
            .unwrap();
        assert_eq!(health.status(), 200);
        cancel.cancel();
        task.await.unwrap().unwrap();
    }
}
