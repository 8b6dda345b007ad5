//! Throughput: jobs pulled + tracked + enqueued + accepted per second, durable, with
//! a no-op DAG. 2,000 deliveries are queued in a standalone `hub` first; then a `scheduler`
//! starts against it, and the clock runs from its start until the hub counts every job as
//! accepted (or already finished).

use std::time::{Duration, Instant};

use anyhow::bail;

use super::system::{hub_metric, Home, Polling, StandaloneHub};
use super::{procs, Context, Metric, Target};

const NAME: &str = "throughput_jobs_per_s";
const JOBS: usize = 2_000;
/// Concurrent webhook senders while queueing.
const SENDERS: usize = 4;
const QUEUED: &str = "dispatch_hub_jobs{state=\"queued\"}";
const DONE: [&str; 2] = [
    "dispatch_hub_jobs{state=\"accepted\"}",
    "dispatch_hub_jobs{state=\"finished\"}",
];

pub(crate) fn targets() -> Vec<Metric> {
    vec![Metric::promised(NAME, "jobs/s", Target::AtLeast(500.0))]
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
    let started = Instant::now();
    let mut scheduler = hub.start_scheduler(context, &home, &polling)?;
    let mut first_accept = None;
    let hub_addr = hub.addr;
    let elapsed = procs::wait_for(
        &format!("the hub to count {JOBS} jobs accepted"),
        Duration::from_secs(180),
        Duration::from_millis(20),
        || {
            scheduler.check_alive()?;
            hub.process.check_alive()
        },
        || {
            let done = hub_metric(hub_addr, &DONE).ok()?;
            let now = started.elapsed();
            if done >= 1.0 {
                first_accept.get_or_insert(now);
            }
            (done as usize >= JOBS).then_some(now)
        },
    )?;
    scheduler.stop(Duration::from_secs(10));
    Ok(rows(elapsed, first_accept.unwrap_or(elapsed), queueing))
}

fn rows(elapsed: Duration, first_accept: Duration, queueing: Duration) -> Vec<Metric> {
    let per_second = |jobs: usize, time: Duration| jobs as f64 / time.as_secs_f64().max(1e-9);
    vec![
        targets()
            .remove(0)
            .measured(per_second(JOBS, elapsed))
            .with_note(format!(
                "{JOBS} jobs, scheduler start → all accepted in {:.2}s",
                elapsed.as_secs_f64()
            )),
        Metric::info(
            "throughput_after_first_accept_jobs_per_s",
            per_second(JOBS - 1, elapsed.saturating_sub(first_accept)),
            "jobs/s",
        ),
        Metric::info(
            "throughput_first_accept_ms",
            first_accept.as_secs_f64() * 1e3,
            "ms",
        ),
        Metric::info(
            "hub_webhook_intake_per_s",
            per_second(JOBS, queueing),
            "deliveries/s",
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_the_measured_times() {
        let rows = rows(
            Duration::from_secs(4),
            Duration::from_millis(1_000),
            Duration::from_secs(8),
        );
        assert_eq!(rows[0].name, NAME);
        assert_eq!(rows[0].value, Some(500.0));
        assert_eq!(rows[0].pass(), Some(true));
        assert!((rows[1].value.unwrap() - 1999.0 / 3.0).abs() < 1e-9);
        assert_eq!(rows[2].value, Some(1000.0));
        assert_eq!(rows[3].value, Some(250.0));
    }
}
