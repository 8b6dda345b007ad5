//! Replicas: the long-poll hand-over when the hub runs as several processes on one PostgreSQL
//! store. Two `hub serve` replicas, A and B, share a fresh database; a load client activates
//! [`CLIENTS`] server ids on B and holds one long-poll open on B for each. Signed webhooks go one
//! at a time, in turn to B (the pulls' own replica) and to A (whose job reaches B as a `NOTIFY`),
//! each timed from the 202 to the job's bytes arriving at the client that got it. Beside them the
//! same with one hub on SQLite, as a hub without `store_url` runs. No figure has a target: they
//! are read side by side.
//!
//! The PostgreSQL server is the one [`POSTGRES_URL_VAR`] names, or else a throw-away cluster
//! from the machine's binaries with its commits synced (see [`crate::postgres`]); either way the
//! replicas get a database of their own, dropped at the end.

use std::time::Duration;

use anyhow::Context as _;
use dispatch_test_support::{create_postgres_database, POSTGRES_URL_VAR};

use super::http::WebhookSender;
use super::load::{self, LoadClients};
use super::stats::latency_rows;
use super::system::StandaloneHub;
use super::{Context, Metric};
use crate::postgres::{self, Cluster, Durability};

/// Pulls waiting on the replica the jobs are handed to.
const CLIENTS: usize = 50;
/// Measured hand-overs per figure.
const HANDOVERS: usize = 200;
/// Unmeasured hand-overs per figure first: the clients' first pulls, cold caches.
const WARMUP: usize = 3;
/// Pause after each hand-over, so the client that took the job is back in line (behind the
/// others) before the next one comes.
const HANDOVER_GAP: Duration = Duration::from_millis(50);
/// How long the clients may take to be waiting on their hub.
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(60);

/// Row name prefixes of the three figures.
const SQLITE: &str = "handover_sqlite_one_hub";
const SAME_REPLICA: &str = "handover_postgres_same_replica";
const ACROSS_REPLICAS: &str = "handover_postgres_across_replicas";

/// The p50 and p99 of each figure, as measurements without a target.
pub(crate) fn promised() -> Vec<Metric> {
    [SQLITE, SAME_REPLICA, ACROSS_REPLICAS]
        .into_iter()
        .flat_map(|prefix| {
            [
                Metric::measurement(&format!("{prefix}_p50_ms"), "ms"),
                Metric::measurement(&format!("{prefix}_p99_ms"), "ms"),
            ]
        })
        .collect()
}

pub(crate) fn run(context: &Context) -> anyhow::Result<Vec<Metric>> {
    let server = Server::prepare().context("the postgres group needs a PostgreSQL server")?;
    let database = create_postgres_database(server.url())
        .context("failed to create the replicas' database")?;
    let sqlite = one_hub(context)?;
    let [same, across] = two_replicas(context, database.url())?;
    drop(database);

    let mut rows = Vec::new();
    rows.extend(noted(
        latency_rows(&sqlite, SQLITE),
        format!("webhook and {CLIENTS} waiting pulls on one hub on SQLite"),
    ));
    rows.extend(noted(
        latency_rows(&same, SAME_REPLICA),
        format!(
            "webhook and {CLIENTS} waiting pulls on replica B; {}",
            server.describe()
        ),
    ));
    rows.extend(noted(
        latency_rows(&across, ACROSS_REPLICAS),
        format!(
            "webhook to replica A, {CLIENTS} waiting pulls on B; {}",
            server.describe()
        ),
    ));
    Ok(rows)
}

/// `rows` with `note` on the first one (the p50), which says what was measured.
fn noted(mut rows: Vec<Metric>, note: String) -> Vec<Metric> {
    if let Some(first) = rows.first_mut() {
        first.note = Some(note);
    }
    rows
}

/// One hub on SQLite with the clients waiting on it; the latency of each hand-over (ms).
fn one_hub(context: &Context) -> anyhow::Result<Vec<f64>> {
    let mut hub = StandaloneHub::start(context, &context.work.join("sqlite"))?;
    let mut clients = LoadClients::start(hub.addr, load::activate_all(&hub, CLIENTS)?)?;
    load::wait_until_waiting(&mut hub, CLIENTS, ARRIVAL_TIMEOUT)?;
    let sender = hub.sender()?;
    let [samples] = hand_overs(&mut clients, [&sender], &mut [&mut hub])?;
    clients.stop();
    hub.process.stop(Duration::from_secs(10));
    Ok(samples)
}

/// Replicas A and B on the PostgreSQL database at `store_url`, the clients waiting on B; the
/// latencies (ms) of the jobs delivered to B and of those delivered to A, in turn, so that both
/// figures see the same state of the machine.
fn two_replicas(context: &Context, store_url: &str) -> anyhow::Result<[Vec<f64>; 2]> {
    let store = ["--store-url", store_url];
    // One after the other: the first applies the schema to the fresh database.
    let mut a = StandaloneHub::start_with(context, &context.work.join("replica-a"), &store)?;
    let mut b = StandaloneHub::start_with(context, &context.work.join("replica-b"), &store)?;
    let mut clients = LoadClients::start(b.addr, load::activate_all(&b, CLIENTS)?)?;
    load::wait_until_waiting(&mut b, CLIENTS, ARRIVAL_TIMEOUT)?;
    let (to_b, to_a) = (b.sender()?, a.sender()?);
    let samples = hand_overs(&mut clients, [&to_b, &to_a], &mut [&mut a, &mut b])?;
    clients.stop();
    for hub in [&mut a, &mut b] {
        hub.process.stop(Duration::from_secs(10));
    }
    Ok(samples)
}

/// [`WARMUP`] + [`HANDOVERS`] rounds, each handing one job over through every sender in turn,
/// while every one of `hubs` stays up; the measured latencies (ms) of each sender.
fn hand_overs<const N: usize>(
    clients: &mut LoadClients,
    senders: [&WebhookSender; N],
    hubs: &mut [&mut StandaloneHub],
) -> anyhow::Result<[Vec<f64>; N]> {
    let mut samples: [Vec<f64>; N] = std::array::from_fn(|_| Vec::with_capacity(HANDOVERS));
    for round in 0..WARMUP + HANDOVERS {
        for (index, sender) in senders.iter().enumerate() {
            let handed = clients.hand_over(sender, round * N + index)?;
            if round >= WARMUP {
                samples[index].push(handed.latency_ms);
            }
            for hub in hubs.iter_mut() {
                hub.process.check_alive()?;
            }
            std::thread::sleep(HANDOVER_GAP);
        }
    }
    Ok(samples)
}

/// The PostgreSQL server of the run.
enum Server {
    /// The server [`POSTGRES_URL_VAR`] names.
    Given(String),
    /// A throw-away cluster, stopped and removed when this value drops.
    Started(Cluster),
}

impl Server {
    /// The server the environment names, else a new cluster; an error saying how to get one when
    /// there are no PostgreSQL binaries either, since a group asked for must not quietly measure
    /// nothing.
    fn prepare() -> anyhow::Result<Server> {
        if let Some(url) = std::env::var(POSTGRES_URL_VAR)
            .ok()
            .filter(|u| !u.is_empty())
        {
            return Ok(Server::Given(url));
        }
        let bin = postgres::binaries()?;
        Ok(Server::Started(Cluster::start(&bin, Durability::Synced)?))
    }

    fn url(&self) -> &str {
        match self {
            Server::Given(url) => url,
            Server::Started(cluster) => cluster.url(),
        }
    }

    /// For the rows' notes: whose server, and, for ours, that its commits are synced.
    fn describe(&self) -> String {
        match self {
            Server::Given(_) => format!("PostgreSQL of {POSTGRES_URL_VAR}"),
            Server::Started(_) => "throw-away PostgreSQL cluster, fsync on".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promises_p50_and_p99_of_each_figure_without_targets() {
        let names: Vec<String> = promised().into_iter().map(|m| m.name).collect();
        assert_eq!(
            names,
            [
                "handover_sqlite_one_hub_p50_ms",
                "handover_sqlite_one_hub_p99_ms",
                "handover_postgres_same_replica_p50_ms",
                "handover_postgres_same_replica_p99_ms",
                "handover_postgres_across_replicas_p50_ms",
                "handover_postgres_across_replicas_p99_ms",
            ]
        );
        assert!(promised().iter().all(|m| m.target.is_none()));
        // The rows the group produces carry the promised names.
        let produced: Vec<String> = latency_rows(&[1.0], ACROSS_REPLICAS)
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert!(produced.contains(&"handover_postgres_across_replicas_p99_ms".to_owned()));
    }

    #[test]
    fn the_note_goes_on_the_first_row() {
        let rows = noted(latency_rows(&[1.0, 2.0], SQLITE), "what".to_owned());
        assert_eq!(rows[0].note.as_deref(), Some("what"));
        assert!(rows[1..].iter().all(|r| r.note.is_none()));
    }
}
