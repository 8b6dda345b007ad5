//! Pages: what the hub's web pages cost with a full store. A standalone hub with 100 bindings on
//! one repository takes 1,000 push deliveries (100 jobs each: 100,000 jobs, each delivery's
//! payload stored once); then the first jobs page and a job's page are fetched over a kept-alive
//! loopback connection with the bearer token, and their answer times reported. The client is
//! on the same machine, so an answer time is the server's time plus a loopback round trip.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{bail, Context as _};

use super::http;
use super::stats::percentile;
use super::system::StandaloneHub;
use super::{Context, Metric, Target};

const BINDINGS: usize = 100;
const DELIVERIES: usize = 1_000;
/// Threads sending the deliveries (each is one durable write of 100 jobs on the hub).
const SENDERS: usize = 4;
/// Fetches of each page measured, after [`WARM_UP`] that are not.
const FETCHES: usize = 100;
const WARM_UP: usize = 5;
const TOKEN: &str = "bench-ui-token-not-for-production";

const JOBS_PAGE: &str = "pages_jobs_first_page_p50_100k_jobs";
const JOB_PAGE: &str = "pages_job_page_p50_100k_jobs";
const TARGET_MS: f64 = 50.0;

pub(crate) fn targets() -> Vec<Metric> {
    vec![
        Metric::promised(JOBS_PAGE, "ms", Target::Below(TARGET_MS)),
        Metric::promised(JOB_PAGE, "ms", Target::Below(TARGET_MS)),
    ]
}

fn bindings() -> String {
    (0..BINDINGS)
        .map(|i| {
            format!(
                "[[binding]]\nrepository = \"Codertocat/Hello-World\"\ndag = \"dag-{i:03}\"\n\
                 trigger = \"auto\"\nevent_name = \"push\"\n"
            )
        })
        .collect()
}

pub(crate) fn run(context: &Context) -> anyhow::Result<Vec<Metric>> {
    let hub = StandaloneHub::start_with_bindings(
        context,
        &context.work,
        &["--ui-token", TOKEN],
        &bindings(),
    )?;
    let filled = Instant::now();
    let sender = hub.sender()?;
    let next = AtomicUsize::new(0);
    let last_job = std::sync::Mutex::new(String::new());
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..SENDERS)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= DELIVERIES {
                            return Ok(());
                        }
                        let delivered = sender.send(n)?;
                        if delivered.job_ids.len() != BINDINGS {
                            bail!(
                                "delivery {n} made {} jobs, expected {BINDINGS}",
                                delivered.job_ids.len()
                            );
                        }
                        if n == DELIVERIES / 2 {
                            *last_job.lock().unwrap_or_else(|p| p.into_inner()) =
                                delivered.job_ids[BINDINGS / 2].clone();
                        }
                    }
                })
            })
            .collect();
        for worker in workers {
            worker
                .join()
                .map_err(|_| anyhow::anyhow!("a sender thread panicked"))??;
        }
        Ok(())
    })?;
    let fill_s = filled.elapsed().as_secs_f64();
    let job_id = last_job.into_inner().unwrap_or_else(|p| p.into_inner());
    let bearer = format!("Bearer {TOKEN}");
    let fetch = |path: &str, must_hold: &str| -> anyhow::Result<Vec<f64>> {
        let mut times = Vec::with_capacity(FETCHES);
        for i in 0..WARM_UP + FETCHES {
            let started = Instant::now();
            let answer = http::request(hub.addr, "GET", path, &[("Authorization", &bearer)], &[])?;
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            if answer.status != 200 {
                bail!("GET {path} answered {}", answer.status);
            }
            let text = String::from_utf8_lossy(&answer.body);
            if !text.contains(must_hold) {
                bail!("GET {path} does not show `{must_hold}`");
            }
            if i >= WARM_UP {
                times.push(ms);
            }
        }
        Ok(times)
    };
    let jobs_page = fetch("/jobs", "rel=\"next\"").context("the first jobs page")?;
    let job_page = fetch(&format!("/jobs/{job_id}"), &job_id).context("a job's page")?;
    let filtered = fetch("/jobs?dag=dag-042", "dag-042").context("a filtered jobs page")?;
    let row = |name: &str, samples: &[f64], p: f64| {
        Metric::info(name, percentile(samples, p).unwrap_or(f64::NAN), "ms")
    };
    let promised = |name: &str, samples: &[f64]| {
        Metric::promised(name, "ms", Target::Below(TARGET_MS))
            .measured(percentile(samples, 50.0).unwrap_or(f64::NAN))
    };
    Ok(vec![
        Metric::info("pages_store_fill_100k_jobs", fill_s, "s"),
        promised(JOBS_PAGE, &jobs_page),
        row("pages_jobs_first_page_p99_100k_jobs", &jobs_page, 99.0),
        promised(JOB_PAGE, &job_page),
        row("pages_job_page_p99_100k_jobs", &job_page, 99.0),
        row("pages_jobs_filtered_by_dag_p50_100k_jobs", &filtered, 50.0),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hundred_bindings_on_one_repository_each_with_its_own_dag() {
        let text = bindings();
        assert_eq!(text.matches("[[binding]]").count(), BINDINGS);
        assert!(text.contains("dag = \"dag-000\"") && text.contains("dag = \"dag-099\""));
        assert_eq!(
            text.matches("repository = \"Codertocat/Hello-World\"")
                .count(),
            BINDINGS
        );
    }
}
