//! The load client of the groups that need many waiting schedulers: server ids activated on a
//! hub, one task per id holding a long-poll open (reqwest on two threads in the xtask, not a
//! scheduler process each), and the hand-over of one job, timed from the hub's 202 for a signed
//! webhook to the job's bytes arriving at the client that got it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::sync::mpsc;

use super::http::{unix_ns, WebhookSender};
use super::procs;
use super::system::{hub_metric, StandaloneHub};

const PULL: &str = "/api/v1/github/dispatch/pull";
/// Threads activating server ids (each activation is one durable write on the hub).
const ACTIVATORS: usize = 8;
/// How long a client's pull waits for a job before the hub answers without one.
const WAIT_SECONDS: u64 = 60;
/// How long a hand-over may take before the job counts as lost.
const HAND_OVER_TIMEOUT: Duration = Duration::from_secs(30);

/// The hub's gauge of pulls waiting for a job.
const WAITING_SERIES: &str = "dispatch_hub_pulls_waiting";

/// Activates one server id per client on `hub`, [`ACTIVATORS`] at a time; the pull body of each,
/// in the order of the clients.
pub(crate) fn activate_all(
    hub: &StandaloneHub,
    clients: usize,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let next = AtomicUsize::new(0);
    let results: Vec<anyhow::Result<Vec<(usize, serde_json::Value)>>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..ACTIVATORS)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        if index >= clients {
                            return Ok(mine);
                        }
                        let body = hub.activate(&server_id(index))?;
                        let mut body: serde_json::Value = serde_json::from_slice(&body)?;
                        body["wait_seconds"] = serde_json::json!(WAIT_SECONDS);
                        mine.push((index, body));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("an activator thread panicked")))
            })
            .collect()
    });
    let mut all = Vec::with_capacity(clients);
    for part in results {
        all.extend(part.context("activating the load clients' server ids failed")?);
    }
    all.sort_by_key(|(index, _)| *index);
    Ok(all.into_iter().map(|(_, body)| body).collect())
}

/// A UUID-shaped server id unique to `index` (version 4 and variant bits set).
fn server_id(index: usize) -> String {
    format!("f1ee7000-0000-4000-8000-{index:012x}")
}

/// Waits until `hub`'s own gauge counts `clients` pulls read, authenticated and waiting.
pub(crate) fn wait_until_waiting(
    hub: &mut StandaloneHub,
    clients: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let addr = hub.addr;
    procs::wait_for(
        &format!("{clients} long-polls waiting on the hub at {addr}"),
        timeout,
        Duration::from_millis(200),
        || hub.process.check_alive(),
        || (hub_metric(addr, &[WAITING_SERIES]).ok()? >= clients as f64).then_some(()),
    )
}

/// A job as a waiting client received it.
struct Received {
    client: usize,
    job_id: String,
    at_ns: u128,
}

/// One job handed over to a waiting client.
pub(crate) struct HandOver {
    /// From the sender having the hub's 202 to the job's bytes at the client.
    pub(crate) latency_ms: f64,
    /// Which client got it (its index in the pull bodies).
    pub(crate) client: usize,
}

/// The waiting clients, each pulling again as soon as it has accepted a job; they stop with
/// [`LoadClients::stop`] (or when dropped).
pub(crate) struct LoadClients {
    runtime: tokio::runtime::Runtime,
    received: mpsc::UnboundedReceiver<Received>,
}

impl LoadClients {
    /// Starts one client per pull body, all pulling from the hub at `hub`.
    pub(crate) fn start(
        hub: SocketAddr,
        bodies: Vec<serde_json::Value>,
    ) -> anyhow::Result<LoadClients> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("failed to start the load client's runtime")?;
        let (tx, received) = mpsc::unbounded_channel::<Received>();
        // The client holds one connection per waiting poll; more than that are never idle.
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2 * WAIT_SECONDS))
            .pool_max_idle_per_host(bodies.len())
            .build()
            .context("failed to build the load client")?;
        for (index, body) in bodies.into_iter().enumerate() {
            runtime.spawn(long_poll_forever(
                client.clone(),
                hub,
                index,
                body,
                tx.clone(),
            ));
        }
        Ok(LoadClients { runtime, received })
    }

    /// Delivers webhook `n` through `sender` and waits for a client to receive its (first) job.
    pub(crate) fn hand_over(
        &mut self,
        sender: &WebhookSender,
        n: usize,
    ) -> anyhow::Result<HandOver> {
        let delivered = sender.send(n)?;
        let job_id = delivered.job_ids.first().cloned().unwrap_or_default();
        let received = &mut self.received;
        let received = self.runtime.block_on(async {
            tokio::time::timeout(HAND_OVER_TIMEOUT, async {
                while let Some(r) = received.recv().await {
                    if r.job_id == job_id {
                        return Some(r);
                    }
                }
                None
            })
            .await
        });
        let Ok(Some(received)) = received else {
            bail!(
                "job {job_id} reached no waiting client within {} s",
                HAND_OVER_TIMEOUT.as_secs()
            );
        };
        Ok(HandOver {
            latency_ms: received.at_ns.saturating_sub(delivered.answered_ns) as f64 / 1e6,
            client: received.client,
        })
    }

    /// Ends every client, closing their connections.
    pub(crate) fn stop(self) {
        self.runtime.shutdown_timeout(Duration::from_secs(5));
    }
}

/// One waiting scheduler: pulls with a long wait, takes (accepts) any job it is handed, pulls
/// again. Ends when the runtime shuts down.
async fn long_poll_forever(
    client: reqwest::Client,
    hub: SocketAddr,
    index: usize,
    body: serde_json::Value,
    received: mpsc::UnboundedSender<Received>,
) {
    let url = format!("http://{hub}{PULL}");
    loop {
        let answer = client.post(&url).json(&body).send().await;
        let Ok(answer) = answer else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        if answer.status() != reqwest::StatusCode::OK {
            continue;
        }
        let Ok(bytes) = answer.bytes().await else {
            continue;
        };
        let at_ns = unix_ns();
        let job: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let Some(job_id) = job["id"].as_str().map(str::to_owned) else {
            continue;
        };
        let accept = serde_json::json!({
            "license_id": body["license_id"],
            "server_id": body["server_id"],
            "secret": body["heartbeat_secret"],
            "dag_run_id": job_id,
        });
        let _ = client
            .post(format!(
                "http://{hub}/api/v1/github/dispatch/{job_id}/accept"
            ))
            .json(&accept)
            .send()
            .await;
        let _ = received.send(Received {
            client: index,
            job_id,
            at_ns,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_ids_are_distinct_uuids() {
        let a = server_id(0);
        let b = server_id(9_999);
        assert_ne!(a, b);
        for id in [a, b] {
            assert_eq!(id.len(), 36);
            assert_eq!(id.as_bytes()[14], b'4');
            assert!(id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
        }
    }
}
