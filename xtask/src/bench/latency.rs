//! Dispatch latency: from the sender receiving the hub's 202 for a signed webhook to
//! the first step process of the resulting run starting, through the real `scheduler` binary
//! and its embedded hub. Deliveries go one at a time, each after the previous run started.

use std::path::Path;
use std::time::Duration;

use super::http::{unix_ns, WebhookSender};
use super::procs::{self, Profile};
use super::report;
use super::stats::{latency_rows, Jitter};
use super::system::{Embedded, Polling};
use super::{Context, Metric, Target};

const P50: &str = "dispatch_latency_p50_ms";
const P99: &str = "dispatch_latency_p99_ms";
/// Deliveries measured with long-poll on.
const SAMPLES: usize = 200;
/// Deliveries measured with long-poll off; each costs up to the idle delay.
const SAMPLES_NO_LONG_POLL: usize = 10;
const IDLE_DELAY_S: u64 = 10;
/// Unmeasured deliveries first: license activation, first pull, cold caches.
const WARMUP: usize = 3;

pub(crate) fn targets() -> Vec<Metric> {
    vec![
        Metric::promised(P50, "ms", Target::AtMost(5.0)),
        Metric::promised(P99, "ms", Target::AtMost(10.0)),
    ]
}

/// How long to wait before the next delivery once the previous run has started.
#[derive(Clone, Copy)]
enum Spacing {
    /// A short random gap, so the worker is back in its long-poll and runs do not overlap.
    Short,
    /// A random point within the idle delay, as webhooks arrive in real life.
    WithinIdleDelay,
}

impl Spacing {
    fn gap(self, jitter: &mut Jitter) -> Duration {
        match self {
            Spacing::Short => Duration::from_millis(20 + (jitter.next_unit() * 30.0) as u64),
            Spacing::WithinIdleDelay => {
                Duration::from_secs_f64(jitter.next_unit() * IDLE_DELAY_S as f64)
            }
        }
    }
}

pub(crate) fn run(context: &Context) -> anyhow::Result<Vec<Metric>> {
    let long_poll = measure(
        context,
        &context.work.join("long-poll"),
        &Polling {
            long_poll_s: 30,
            idle_delay_s: IDLE_DELAY_S,
        },
        SAMPLES,
        Spacing::Short,
    )?;
    let mut rows = summarize(&long_poll, "dispatch_latency", true);

    let suffix = "dispatch_latency_no_long_poll";
    match measure(
        context,
        &context.work.join("no-long-poll"),
        &Polling {
            long_poll_s: 0,
            idle_delay_s: IDLE_DELAY_S,
        },
        SAMPLES_NO_LONG_POLL,
        Spacing::WithinIdleDelay,
    ) {
        Ok(samples) => rows.extend(summarize(&samples, suffix, false)),
        Err(err) => rows.push(Metric {
            name: format!("{suffix}_p50_ms"),
            value: None,
            unit: "ms".into(),
            target: None,
            note: Some(format!("not measured: {err:#}")),
        }),
    }
    Ok(rows)
}

/// p50, p99, mean, max and count of `samples` (ms) as rows named `<prefix>_*`; with
/// `targeted`, p50 and p99 carry the README's targets.
fn summarize(samples: &[f64], prefix: &str, targeted: bool) -> Vec<Metric> {
    let rows = latency_rows(samples, prefix);
    if targeted {
        report::complete(rows, targets(), "not reported")
    } else {
        rows
    }
}

/// Starts a scheduler with `polling` and returns the latency of `count` deliveries in ms.
fn measure(
    context: &Context,
    dir: &Path,
    polling: &Polling,
    count: usize,
    spacing: Spacing,
) -> anyhow::Result<Vec<f64>> {
    let mut system = Embedded::start(context, dir, polling)?;
    let profiler = match &context.profile {
        Some(profile) => profile.attach(system.scheduler.pid(), &dir.join("profile.log"))?,
        None => None,
    };
    let sender = system.sender()?;
    // The first pull may only come after license activation and, with long-poll off, after a
    // whole idle delay.
    let first_wait = Duration::from_secs(30 + polling.idle_delay_s);
    for n in 0..WARMUP {
        deliver(&mut system, &sender, n, first_wait)?;
    }
    let mut jitter = Jitter::new(unix_ns() as u64);
    let mut samples = Vec::with_capacity(count);
    for n in WARMUP..WARMUP + count {
        std::thread::sleep(spacing.gap(&mut jitter));
        samples.push(deliver(&mut system, &sender, n, first_wait)?);
    }
    if let Some(profiler) = profiler {
        profiler.finish();
    }
    system
        .scheduler
        .stop(Profile::grace(context.profile.as_ref()));
    Ok(samples)
}

/// Delivers webhook `n` and waits for its run's first step; the latency in ms.
fn deliver(
    system: &mut Embedded,
    sender: &WebhookSender,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<f64> {
    let delivered = sender.send(n)?;
    let job = delivered.job_ids[0].clone();
    let started_ns = procs::wait_for(
        &format!("the first step of job `{job}` (delivery {n})"),
        timeout,
        Duration::from_millis(2),
        || system.scheduler.check_alive(),
        || system.home.stamp(&job),
    )?;
    Ok((started_ns as i128 - delivered.answered_ns as i128) as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targeted_summary_carries_spec_targets() {
        let samples: Vec<f64> = (1..=200).map(f64::from).collect();
        let rows = summarize(&samples, "dispatch_latency", true);
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                P50,
                P99,
                "dispatch_latency_mean_ms",
                "dispatch_latency_max_ms",
                "dispatch_latency_samples"
            ]
        );
        assert_eq!(rows[0].value, Some(100.0));
        assert_eq!(rows[0].pass(), Some(false));
        assert_eq!(rows[1].value, Some(198.0));
        assert_eq!(rows[1].pass(), Some(false));
        assert_eq!(rows[3].value, Some(200.0));
        assert_eq!(rows[4].value, Some(200.0));
    }

    #[test]
    fn contrast_summary_has_no_targets() {
        let rows = summarize(&[5000.0, 7000.0], "dispatch_latency_no_long_poll", false);
        assert!(rows.iter().all(|r| r.pass().is_none()));
        assert_eq!(rows[0].name, "dispatch_latency_no_long_poll_p50_ms");
        assert_eq!(rows[0].value, Some(5000.0));
    }

    #[test]
    fn empty_samples_fail_the_targets() {
        let rows = summarize(&[], "dispatch_latency", true);
        assert_eq!(rows[0].pass(), Some(false));
        assert_eq!(rows[1].pass(), Some(false));
    }

    #[test]
    fn gaps_stay_within_their_bounds() {
        let mut jitter = Jitter::new(7);
        for _ in 0..100 {
            let short = Spacing::Short.gap(&mut jitter);
            assert!(short >= Duration::from_millis(20) && short <= Duration::from_millis(50));
            let long = Spacing::WithinIdleDelay.gap(&mut jitter);
            assert!(long < Duration::from_secs(IDLE_DELAY_S));
        }
    }
}
