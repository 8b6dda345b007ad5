//! Throughput: jobs pulled + tracked + enqueued + accepted per second, durable, with
//! a no-op DAG. 2,000 deliveries are queued in a standalone `hub` first; then a `scheduler`
//! starts against it, and the clock runs from its start until the hub counts every job as
//! accepted (or already finished). The same run goes on until the hub counts every job
//! finished (each DAG run at its final status and reported): the end-to-end rate.
//!
//! Beside the rates, the CPU each process used per job (the scheduler's own threads, the step
//! processes it ran, the hub), so that a reader can tell which component a change moved.

use std::time::{Duration, Instant};

use anyhow::bail;

use super::procs::{self, CpuUsage, Profile};
use super::system::{hub_metric, Home, Polling, StandaloneHub};
use super::{Context, Metric, Target};

const NAME: &str = "throughput_jobs_per_s";
const JOBS: usize = 2_000;
/// Concurrent webhook senders while queueing.
const SENDERS: usize = 4;
const QUEUED: &str = "dispatch_hub_jobs{state=\"queued\"}";
const FINISHED: &str = "dispatch_hub_jobs{state=\"finished\"}";
const DONE: [&str; 2] = ["dispatch_hub_jobs{state=\"accepted\"}", FINISHED];

pub(crate) fn targets() -> Vec<Metric> {
    vec![Metric::promised(NAME, "jobs/s", Target::AtLeast(2_000.0))]
}

pub(crate) fn run(context: &Context) -> anyhow::Result<Vec<Metric>> {
    let mut hub = StandaloneHub::start(context, &context.work)?;
    let sender = hub.sender()?;
    let queueing = Instant::now();
    let failures: Vec<anyhow::Error> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..SENDERS)
            .map(|k| {
                let sender = &sender;
                scope.spawn(move || {
                    (k..JOBS)
                        .step_by(SENDERS)
                        .filter_map(|n| sender.send(n).err())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    });
    let queueing = queueing.elapsed();
    if let Some(first) = failures.first() {
        bail!(
            "{} of {JOBS} deliveries failed; first: {first:#}",
            failures.len()
        );
    }
    let queued = hub_metric(hub.addr, &[QUEUED])? as usize;
    if queued != JOBS {
        bail!("hub holds {queued} queued jobs after {JOBS} deliveries");
    }

    let home = Home::create(&context.work.join("scheduler"))?;
    let polling = Polling {
        long_poll_s: 30,
        idle_delay_s: 10,
    };
    // A profiled scheduler runs many times slower.
    let patience = if context.profile.is_some() { 20 } else { 1 };
    let hub_cpu_start = procs::cpu_usage(hub.process.pid())?;
    let started = Instant::now();
    let mut scheduler = hub.start_scheduler(context, &home, &polling)?;
    let profiler = match &context.profile {
        Some(profile) => profile.attach(scheduler.pid(), &context.work.join("profile.log"))?,
        None => None,
    };
    let mut first_accept = None;
    let (hub_addr, hub_pid, scheduler_pid) = (hub.addr, hub.process.pid(), scheduler.pid());
    let mut alive = || -> anyhow::Result<()> {
        scheduler.check_alive()?;
        hub.process.check_alive()
    };
    // Polls the hub's count of the jobs in `series` every `every` until it reaches JOBS (for at
    // most `limit`); `counted` sees each count with the time since the start. Returns the time
    // it was reached.
    let mut count_all = |what: &str,
                         series: &[&str],
                         limit: Duration,
                         every: Duration,
                         counted: &mut dyn FnMut(f64, Duration)| {
        procs::wait_for(
            &format!("the hub to count {JOBS} jobs {what}"),
            limit,
            every,
            &mut alive,
            || {
                let count = hub_metric(hub_addr, series).ok()?;
                let now = started.elapsed();
                counted(count, now);
                (count as usize >= JOBS).then_some(now)
            },
        )
    };
    let (minute, ms) = (Duration::from_secs(60), Duration::from_millis(1));
    let accepted = count_all(
        "accepted",
        &DONE,
        3 * minute * patience,
        20 * ms,
        &mut |done, now| {
            if done >= 1.0 {
                first_accept.get_or_insert(now);
            }
        },
    )?;
    let at_accepted = Usage::now(scheduler_pid, hub_pid, hub_cpu_start)?;
    let finished = count_all(
        "finished",
        &[FINISHED],
        10 * minute * patience,
        50 * ms,
        &mut |_, _| {},
    )?;
    let at_finished = Usage::now(scheduler_pid, hub_pid, hub_cpu_start)?;
    if let Some(profiler) = profiler {
        profiler.finish();
    }
    scheduler.stop(Profile::grace(context.profile.as_ref()));
    let ticks = procs::clock_ticks_per_second() as f64;
    Ok(rows(
        &Times {
            accepted,
            first_accept: first_accept.unwrap_or(accepted),
            queueing,
            finished,
        },
        &[("accepted", at_accepted), ("finished", at_finished)],
        ticks,
    ))
}

/// The instants the rates come from, measured from the scheduler's start (`queueing` apart).
struct Times {
    accepted: Duration,
    first_accept: Duration,
    queueing: Duration,
    finished: Duration,
}

/// CPU used since the scheduler started, in clock ticks.
#[derive(Debug, Clone, Copy)]
struct Usage {
    scheduler: CpuUsage,
    hub: CpuUsage,
}

impl Usage {
    fn now(scheduler: u32, hub: u32, hub_start: CpuUsage) -> anyhow::Result<Usage> {
        Ok(Usage {
            scheduler: procs::cpu_usage(scheduler)?,
            hub: procs::cpu_usage(hub)?.since(hub_start),
        })
    }
}

fn rows(times: &Times, usage: &[(&str, Usage)], ticks_per_second: f64) -> Vec<Metric> {
    let per_second = |jobs: usize, time: Duration| jobs as f64 / time.as_secs_f64().max(1e-9);
    let ms_per_job = |ticks: u64| ticks as f64 / ticks_per_second * 1e3 / JOBS as f64;
    let mut rows = vec![
        targets()
            .remove(0)
            .measured(per_second(JOBS, times.accepted))
            .with_note(format!(
                "{JOBS} jobs, scheduler start → all accepted in {:.2}s",
                times.accepted.as_secs_f64()
            )),
        Metric::info(
            "throughput_after_first_accept_jobs_per_s",
            per_second(JOBS - 1, times.accepted.saturating_sub(times.first_accept)),
            "jobs/s",
        ),
        Metric::info(
            "throughput_first_accept_ms",
            times.first_accept.as_secs_f64() * 1e3,
            "ms",
        ),
        Metric::info(
            "throughput_end_to_end_jobs_per_s",
            per_second(JOBS, times.finished),
            "jobs/s",
        )
        .with_note(format!(
            "scheduler start → every DAG run final and its job finished on the hub in {:.2}s",
            times.finished.as_secs_f64()
        )),
        Metric::info(
            "hub_webhook_intake_per_s",
            per_second(JOBS, times.queueing),
            "deliveries/s",
        ),
    ];
    for (phase, usage) in usage {
        let s = usage.scheduler;
        rows.extend([
            Metric::info(
                format!("cpu_per_job_until_{phase}_scheduler_ms"),
                ms_per_job(s.own()),
                "ms",
            )
            .with_note(format!(
                "user {:.3} + system {:.3}",
                ms_per_job(s.user),
                ms_per_job(s.system)
            )),
            Metric::info(
                format!("cpu_per_job_until_{phase}_step_processes_ms"),
                ms_per_job(s.children),
                "ms",
            ),
            Metric::info(
                format!("cpu_per_job_until_{phase}_hub_ms"),
                ms_per_job(usage.hub.own()),
                "ms",
            )
            .with_note(format!(
                "user {:.3} + system {:.3}",
                ms_per_job(usage.hub.user),
                ms_per_job(usage.hub.system)
            )),
        ]);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_the_measured_times() {
        let usage = Usage {
            scheduler: CpuUsage {
                user: 100,
                system: 300,
                children: 200,
            },
            hub: CpuUsage {
                user: 50,
                system: 50,
                children: 0,
            },
        };
        let rows = rows(
            &Times {
                accepted: Duration::from_secs(1),
                first_accept: Duration::from_millis(200),
                queueing: Duration::from_secs(8),
                finished: Duration::from_secs(4),
            },
            &[("accepted", usage)],
            100.0,
        );
        assert_eq!(rows[0].name, NAME);
        assert_eq!(rows[0].value, Some(2000.0));
        assert_eq!(rows[0].pass(), Some(true));
        assert!((rows[1].value.unwrap() - 1999.0 / 0.8).abs() < 1e-6);
        assert_eq!(rows[2].value, Some(200.0));
        assert_eq!(rows[3].name, "throughput_end_to_end_jobs_per_s");
        assert_eq!(rows[3].value, Some(500.0));
        assert_eq!(rows[4].value, Some(250.0));
        // 400 ticks of 10 ms over 2,000 jobs: 2 ms each.
        assert_eq!(rows[5].name, "cpu_per_job_until_accepted_scheduler_ms");
        assert!((rows[5].value.unwrap() - 2.0).abs() < 1e-9);
        assert!((rows[6].value.unwrap() - 1.0).abs() < 1e-9);
        assert!((rows[7].value.unwrap() - 0.5).abs() < 1e-9);
    }
}
