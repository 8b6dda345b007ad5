//! Scheduler idle cost: RSS and CPU over 30 s without jobs, long-poll on (default
//! 30 s). Two setups share the window: `scheduler start` with its embedded hub (one process),
//! and `scheduler start --cloud-url` against a standalone `hub` (the hub is reported as context).
//! The targets apply to the scheduler process in both.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::http::{get_text, prometheus_value};
use super::procs::{self, Proc};
use super::system::{Embedded, Home, Polling, StandaloneHub};
use super::{Context, Metric, Target};

const WINDOW: Duration = Duration::from_secs(30);
/// Let start-up (activation, first pull, allocator warm-up) pass before the window opens.
const SETTLE: Duration = Duration::from_secs(3);
const POLLING: Polling = Polling {
    long_poll_s: 30,
    idle_delay_s: 10,
};
const RSS_MIB: f64 = 20.0;
const CPU_PERCENT: f64 = 1.0;

pub(crate) fn targets() -> Vec<Metric> {
    vec![
        Metric::promised("idle_rss_mib", "MiB", Target::AtMost(RSS_MIB)),
        Metric::promised("idle_cpu_percent", "%", Target::Below(CPU_PERCENT)),
        Metric::promised("idle_rss_mib_remote", "MiB", Target::AtMost(RSS_MIB)),
        Metric::promised("idle_cpu_percent_remote", "%", Target::Below(CPU_PERCENT)),
    ]
}

/// One process watched during the window.
struct Watched<'a> {
    /// Row name suffix: `""`, `_remote`, `_remote_hub`.
    suffix: &'static str,
    process: &'a mut Proc,
    /// The hub it pulls from (or is), to count the pulls that happened during the window.
    hub: SocketAddr,
    targeted: bool,
}

/// What the window showed for one process.
#[derive(Debug, PartialEq)]
struct Usage {
    max_rss_kib: u64,
    cpu_ticks: u64,
    pulls: Option<f64>,
}

pub(crate) fn run(context: &Context) -> anyhow::Result<Vec<Metric>> {
    let mut embedded = Embedded::start(context, &context.work.join("embedded"), &POLLING)?;
    let mut rows = Vec::new();
    // The remote setup is optional: if it cannot start, the embedded numbers still count.
    let remote = (|| -> anyhow::Result<(StandaloneHub, Proc)> {
        let hub = StandaloneHub::start(context, &context.work.join("remote"))?;
        let home = Home::create(&context.work.join("remote-scheduler"))?;
        let scheduler = hub.start_scheduler(context, &home, &POLLING)?;
        Ok((hub, scheduler))
    })();
    let mut remote = match remote {
        Ok(pair) => Some(pair),
        Err(err) => {
            let note = format!("not measured: remote setup failed: {err:#}");
            rows.extend(
                targets()
                    .into_iter()
                    .filter(|m| m.name.ends_with("_remote"))
                    .map(|m| m.with_note(note.clone())),
            );
            None
        }
    };

    std::thread::sleep(SETTLE);
    let embedded_hub = embedded.hub;
    let mut watched = vec![Watched {
        suffix: "",
        process: &mut embedded.scheduler,
        hub: embedded_hub,
        targeted: true,
    }];
    if let Some((hub, scheduler)) = remote.as_mut() {
        let addr = hub.addr;
        watched.push(Watched {
            suffix: "_remote",
            process: scheduler,
            hub: addr,
            targeted: true,
        });
        watched.push(Watched {
            suffix: "_remote_hub",
            process: &mut hub.process,
            hub: addr,
            targeted: false,
        });
    }
    let usages = observe(&mut watched)?;
    let ticks_per_second = procs::clock_ticks_per_second() as f64;
    for (w, usage) in watched.iter().zip(usages) {
        rows.extend(usage_rows(w.suffix, w.targeted, &usage, ticks_per_second));
    }
    Ok(rows)
}

/// Samples RSS every second over the window and CPU time at both ends.
fn observe(watched: &mut [Watched<'_>]) -> anyhow::Result<Vec<Usage>> {
    let mut pulls_before = Vec::new();
    let mut ticks_before = Vec::new();
    let mut max_rss = vec![0u64; watched.len()];
    for w in watched.iter_mut() {
        w.process.check_alive()?;
        pulls_before.push(pulls(w.hub));
        ticks_before.push(procs::cpu_ticks(w.process.pid())?);
    }
    let opened = Instant::now();
    loop {
        for (w, max) in watched.iter_mut().zip(max_rss.iter_mut()) {
            w.process.check_alive()?;
            *max = (*max).max(procs::rss_kib(w.process.pid())?);
        }
        if opened.elapsed() >= WINDOW {
            break;
        }
        std::thread::sleep(Duration::from_secs(1).min(WINDOW.saturating_sub(opened.elapsed())));
    }
    watched
        .iter_mut()
        .zip(max_rss)
        .zip(pulls_before.into_iter().zip(ticks_before))
        .map(|((w, max_rss_kib), (pulls_start, ticks_start))| {
            let ticks = procs::cpu_ticks(w.process.pid())?;
            let pulls_end = pulls(w.hub);
            Ok(Usage {
                max_rss_kib,
                cpu_ticks: ticks.saturating_sub(ticks_start),
                pulls: pulls_start.zip(pulls_end).map(|(a, b)| b - a),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()
        .context("failed to read the processes after the window")
}

/// Pulls the hub has answered so far (any outcome).
fn pulls(hub: SocketAddr) -> Option<f64> {
    let text = get_text(hub, "/metrics").ok()?;
    Some(
        ["empty", "job", "unauthorized"]
            .iter()
            .filter_map(|o| {
                prometheus_value(
                    &text,
                    &format!("dispatch_hub_pulls_total{{outcome=\"{o}\"}}"),
                )
            })
            .sum(),
    )
}

fn usage_rows(suffix: &str, targeted: bool, usage: &Usage, ticks_per_second: f64) -> Vec<Metric> {
    let rss = usage.max_rss_kib as f64 / 1024.0;
    let cpu = usage.cpu_ticks as f64 / ticks_per_second / WINDOW.as_secs_f64() * 100.0;
    let (rss_row, cpu_row) = if targeted {
        (
            Metric::promised(
                &format!("idle_rss_mib{suffix}"),
                "MiB",
                Target::AtMost(RSS_MIB),
            )
            .measured(rss),
            Metric::promised(
                &format!("idle_cpu_percent{suffix}"),
                "%",
                Target::Below(CPU_PERCENT),
            )
            .measured(cpu),
        )
    } else {
        (
            Metric::info(format!("idle_rss_mib{suffix}"), rss, "MiB"),
            Metric::info(format!("idle_cpu_percent{suffix}"), cpu, "%"),
        )
    };
    let rss_row = rss_row.with_note("max VmRSS sampled each second");
    let cpu_row = cpu_row.with_note(format!(
        "utime+stime {} ticks over {}s",
        usage.cpu_ticks,
        WINDOW.as_secs()
    ));
    let mut rows = vec![rss_row, cpu_row];
    if suffix != "_remote_hub" {
        let pulls_row = match usage.pulls {
            Some(n) => Metric::info(format!("idle_pulls_answered{suffix}"), n, "count"),
            None => Metric::info(format!("idle_pulls_answered{suffix}"), f64::NAN, "count")
                .with_note("hub /metrics unreadable"),
        };
        rows.push(pulls_row.with_note_if_empty(
            "long-polls the hub answered in the window (≥ 1: the worker is pulling)",
        ));
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_becomes_rss_in_mib_and_cpu_percent_of_the_window() {
        let usage = Usage {
            max_rss_kib: 15 * 1024,
            cpu_ticks: 15,
            pulls: Some(1.0),
        };
        let rows = usage_rows("", true, &usage, 100.0);
        assert_eq!(rows[0].name, "idle_rss_mib");
        assert_eq!(rows[0].value, Some(15.0));
        assert_eq!(rows[0].pass(), Some(true));
        assert_eq!(rows[1].name, "idle_cpu_percent");
        assert!((rows[1].value.unwrap() - 0.5).abs() < 1e-9);
        assert_eq!(rows[1].pass(), Some(true));
        assert_eq!(rows[2].name, "idle_pulls_answered");
        assert_eq!(rows[2].value, Some(1.0));
    }

    #[test]
    fn over_budget_fails_and_hub_rows_are_context() {
        let usage = Usage {
            max_rss_kib: 21 * 1024,
            cpu_ticks: 30,
            pulls: None,
        };
        let rows = usage_rows("_remote", true, &usage, 100.0);
        assert_eq!(rows[0].pass(), Some(false));
        assert_eq!(rows[1].pass(), Some(false));
        assert_eq!(rows[2].note.as_deref(), Some("hub /metrics unreadable"));
        let hub = usage_rows("_remote_hub", false, &usage, 100.0);
        assert_eq!(hub.len(), 2);
        assert!(hub.iter().all(|r| r.pass().is_none()));
    }
}
