//! Fleet: what waiting schedulers cost one hub. A load client (not 10,000 scheduler processes)
//! activates 10,000 server ids, holds one long-poll open for each, and then sends webhooks one at
//! a time: hub memory per waiting long-poll, hub CPU while they only wait, the time from the
//! hub's 202 to the job's bytes arriving at one waiting client, how the jobs spread over the
//! clients, and what memory the hub gives back once they leave.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::load::{self, LoadClients};
use super::procs::{self, cpu_ticks, rss_kib};
use super::stats::percentile;
use super::system::{hub_metric, StandaloneHub};
use super::{Context, Metric, Target};

const CLIENTS: usize = 10_000;
/// Jobs handed over after the first one (which is reported apart: it meets cold caches), one
/// every [`HANDOVER_GAP`]: enough for a p99 that is not simply the slowest of a few.
const HANDOVERS: usize = 200;
const HANDOVER_GAP: Duration = Duration::from_millis(50);
const IDLE_WINDOW: Duration = Duration::from_secs(10);
/// How long after the clients left the hub's RSS is watched for memory given back.
const GIVE_BACK_WINDOW: Duration = Duration::from_secs(10);

/// The hub's count of waiting pulls woken.
const WOKEN_SERIES: [&str; 2] = [
    "dispatch_hub_pull_wakeups_total{outcome=\"job\"}",
    "dispatch_hub_pull_wakeups_total{outcome=\"nothing\"}",
];

const RSS_PER_WAIT: &str = "fleet_hub_rss_per_waiting_longpoll";
const IDLE_CPU: &str = "fleet_hub_cpu_idle_10k_waiting";
const HANDOVER_P99: &str = "fleet_handover_p99_10k_waiting";

pub(crate) fn targets() -> Vec<Metric> {
    vec![
        Metric::promised(RSS_PER_WAIT, "KiB", Target::AtMost(12.0)),
        Metric::promised(IDLE_CPU, "%", Target::AtMost(1.0)),
        Metric::promised(HANDOVER_P99, "ms", Target::AtMost(10.0)),
    ]
}

pub(crate) fn run(context: &Context) -> anyhow::Result<Vec<Metric>> {
    // The client holds one socket per waiting poll, plus a few for the webhooks and the runtime.
    raise_file_limit(CLIENTS as u64 + 1024)?;
    let mut hub = StandaloneHub::start_with(
        context,
        &context.work,
        &["--max-connections", &(2 * CLIENTS).to_string()],
    )?;
    let pid = hub.process.pid();
    let bodies = load::activate_all(&hub, CLIENTS)?;
    std::thread::sleep(Duration::from_secs(1));
    let base_kib = rss_kib(pid)?;

    let mut clients = LoadClients::start(hub.addr, bodies)?;
    load::wait_until_waiting(&mut hub, CLIENTS, Duration::from_secs(120))?;
    // Let the allocator settle.
    std::thread::sleep(Duration::from_secs(2));
    let waiting_kib = rss_kib(pid)?;
    // The first window still holds the arrival's aftermath: the runtime's blocking threads, idle
    // since, end after 10 s (each flushing its allocator cache), and the allocator returns the
    // pages the requests used. The second is what waiting costs.
    let settling_cpu = cpu_percent_over(pid, IDLE_WINDOW)?;
    let idle_cpu = cpu_percent_over(pid, IDLE_WINDOW)?;

    let woken_before = woken(&hub);
    let sender = hub.sender()?;
    let mut latencies = Vec::with_capacity(HANDOVERS + 1);
    let mut served = HashSet::new();
    for n in 0..=HANDOVERS {
        let handed = clients.hand_over(&sender, n)?;
        latencies.push(handed.latency_ms);
        served.insert(handed.client);
        hub.process.check_alive()?;
        std::thread::sleep(HANDOVER_GAP);
    }
    let woken_per_job = (woken(&hub) - woken_before) / (HANDOVERS + 1) as f64;
    let first = latencies.remove(0);
    clients.stop();
    let left = procs::wait_for(
        "the clients' connections to close",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || hub.process.check_alive(),
        || (open_sockets(pid).ok()? < 100).then_some(()),
    );
    // The allocator gives memory back over a few seconds: the lowest RSS within the window.
    let mut after_kib = rss_kib(pid)?;
    for _ in 0..GIVE_BACK_WINDOW.as_secs() {
        std::thread::sleep(Duration::from_secs(1));
        after_kib = after_kib.min(rss_kib(pid)?);
    }
    hub.process.stop(Duration::from_secs(10));
    left?;

    let per_wait = (waiting_kib.saturating_sub(base_kib)) as f64 / CLIENTS as f64;
    let p50 = percentile(&latencies, 50.0).context("no hand-over samples")?;
    let p99 = percentile(&latencies, 99.0).context("no hand-over samples")?;
    Ok(vec![
        Metric::info(
            "fleet hub RSS before the long-polls",
            base_kib as f64 / 1024.0,
            "MiB",
        ),
        Metric::info(
            format!("fleet hub RSS with {CLIENTS} waiting"),
            waiting_kib as f64 / 1024.0,
            "MiB",
        ),
        Metric::promised(RSS_PER_WAIT, "KiB", Target::AtMost(12.0)).measured(per_wait),
        Metric::info(
            "fleet hub CPU over the 10 s after they arrived",
            settling_cpu,
            "%",
        ),
        Metric::promised(IDLE_CPU, "%", Target::AtMost(1.0)).measured(idle_cpu),
        Metric::info("fleet first hand-over after the idle window", first, "ms"),
        Metric::info(
            format!("fleet hand-over p50, webhook 202 → job at a client ({HANDOVERS} jobs)"),
            p50,
            "ms",
        ),
        Metric::promised(HANDOVER_P99, "ms", Target::AtMost(10.0)).measured(p99),
        Metric::info(
            format!("fleet waiting pulls woken per job ({CLIENTS} waiting)"),
            woken_per_job,
            "",
        ),
        Metric::info(
            format!("fleet distinct clients served by {} jobs", HANDOVERS + 1),
            served.len() as f64,
            "",
        ),
        Metric::info(
            "fleet hub RSS after the clients left",
            after_kib as f64 / 1024.0,
            "MiB",
        )
        .with_note(format!(
            "{:.1} MiB above the RSS before they came",
            after_kib.saturating_sub(base_kib) as f64 / 1024.0
        )),
    ])
}

/// The CPU `pid` used over the next `window`, in % of one core.
fn cpu_percent_over(pid: u32, window: Duration) -> anyhow::Result<f64> {
    let before = cpu_ticks(pid)?;
    let started = Instant::now();
    std::thread::sleep(window);
    let ticks = cpu_ticks(pid)?.saturating_sub(before);
    Ok(
        ticks as f64 / procs::clock_ticks_per_second() as f64 / started.elapsed().as_secs_f64()
            * 100.0,
    )
}

/// Waiting pulls the hub has woken so far (0 when it does not count them).
fn woken(hub: &StandaloneHub) -> f64 {
    WOKEN_SERIES
        .iter()
        .filter_map(|series| hub_metric(hub.addr, &[series]).ok())
        .sum()
}

/// Sockets the process holds open (file descriptors that are sockets).
fn open_sockets(pid: u32) -> anyhow::Result<usize> {
    let dir = format!("/proc/{pid}/fd");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).with_context(|| format!("failed to read `{dir}`"))? {
        let Ok(entry) = entry else { continue };
        if std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
        {
            count += 1;
        }
    }
    Ok(count)
}

/// Raises this process's open-file soft limit to at least `want`, and the hard limit with it when
/// the process may (root); the hub started afterwards inherits both and raises its own soft limit
/// to the hard one.
fn raise_file_limit(want: u64) -> anyhow::Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit failed")?;
    if soft >= want {
        return Ok(());
    }
    if hard >= want || setrlimit(Resource::RLIMIT_NOFILE, want, want).is_ok() {
        return setrlimit(Resource::RLIMIT_NOFILE, want, hard.max(want))
            .context("setrlimit failed");
    }
    bail!("the open-file hard limit is {hard}; the fleet bench needs {want} (raise `ulimit -Hn`)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_its_own_sockets() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let before = open_sockets(std::process::id()).unwrap();
        let _conn = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert!(open_sockets(std::process::id()).unwrap() > before);
    }
}
