//! The hub: the server side of dispatch (its contract with schedulers is `docs/protocol.md`).
//!
//! It receives GitHub webhooks, matches them against [`bindings`] and turns each match into a
//! dispatch job; schedulers pull, accept and finish jobs over the cloud API (the hub activates
//! their licenses and signs their tokens; both in `docs/protocol.md`); on finish it reports the
//! result to GitHub as a commit status and, for comment commands, a comment. State lives in SQLite
//! under the data directory and survives restarts.
//!
//! Main types: [`HubConfig`], [`Hub::start`] → [`HubHandle`], [`Binding`], [`HubError`]; config
//! files via [`load_bindings`] and [`config::load_hub_config`].
//!
//! Job states: `queued` → `claimed` (by one server, for [`HubConfig::lease`]; a claim not accepted
//! in time goes back to `queued`) → `accepted` → `finished`. Accept and finish repeated by the same
//! server are idempotent (204); finishing again with a *different* status is a 409 and keeps the
//! first one. A scheduler whose lease ran out may still accept the job as long as no other server
//! has claimed it. A job claimed five times without an accept is finished as `rejected`, so one
//! job no scheduler can take cannot block the queue. A job whose pull answer would exceed the
//! 1 MiB a scheduler reads (`docs/protocol.md`; GitHub sends events up to 25 MiB) is stored
//! already finished as `rejected` with a summary giving the sizes, instead of being handed out and
//! dropped.
//!
//! Modules import only downwards, bottom to top: `error`; `files`; `bindings`, `keys`; `matching`;
//! `trust`; `limits`; `config`; `store` (inside: `state`, `gauges`, `writer`, `schema`,
//! `integrity`, `reports`, `activations`, `jobs`, `approvals`, `cancels`, `retention`, then its
//! `mod.rs`); `activation`; `metrics`; `housekeeping`; `report`; `gate`; `body`; `intake`; `api`;
//! `server`; this file.
//!
//! Not for: running DAGs, talking to a scheduler's tracker, reading env vars or flags (the `hub`
//! binary and the scheduler do that).

pub mod bindings;
pub mod config;
pub mod github;
pub mod keys;
pub mod limits;
pub mod matching;
pub mod report;

mod activation;
mod api;
mod body;
mod error;
mod files;
mod gate;
mod housekeeping;
mod intake;
mod metrics;
mod server;
mod store;
mod trust;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use activation::{list_servers, revoke_server};
pub use api::{MAX_WAIT_SECONDS, WEBHOOK_BODY_LIMIT};
pub use bindings::{load_bindings, Binding, ForkPolicy, Trigger, EXAMPLE_BINDINGS_TOML};
pub use config::{GithubApp, GithubConfig, HubConfig, LicenseKey};
pub use error::HubError;
pub use limits::ServeLimits;
pub use store::{ServerInfo, DB_FILE};

use store::{blocking, now_ms, Store};

/// The running hub.
pub struct Hub;

/// Handle to a started hub.
pub struct HubHandle {
    /// The address the server listens on.
    pub addr: SocketAddr,
    /// The key that verifies the tokens this hub signs.
    pub public_key: VerifyingKey,
    server: tokio::task::JoinHandle<Result<(), std::io::Error>>,
    tasks: TaskTracker,
}

impl HubHandle {
    /// Waits until the hub has stopped (after its cancellation token is cancelled): the server has
    /// answered its in-flight requests and the background tasks have ended.
    pub async fn join(self) -> Result<(), HubError> {
        let served = self.server.await;
        self.tasks.close();
        self.tasks.wait().await;
        match served {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(HubError::Serve(e)),
            Err(e) => Err(HubError::Task(e)),
        }
    }
}

impl Hub {
    /// Opens the store and key under `cfg.data_dir`, binds `cfg.listen` and serves until `cancel`.
    pub async fn start(cfg: HubConfig, cancel: CancellationToken) -> Result<HubHandle, HubError> {
        let cfg = cfg.validate()?;
        files::private_dir(&cfg.data_dir)?;
        let db_path = cfg.data_dir.join(DB_FILE);
        let data_dir = cfg.data_dir.clone();
        let (store, signing_key) = tokio::task::spawn_blocking(move || {
            Ok::<_, HubError>((
                Store::open(&db_path)?,
                keys::load_or_create_signing_key(&data_dir)?,
            ))
        })
        .await
        .map_err(HubError::Task)??;
        let store = Arc::new(store);
        let client = reqwest::Client::builder()
            .user_agent(concat!("dispatch-hub/", env!("CARGO_PKG_VERSION")))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(HubError::HttpClient)?;
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| HubError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| HubError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let public_key = signing_key.verifying_key();
        let metrics = Arc::new(metrics::Metrics::default());
        let report_wake = Arc::new(Notify::new());
        let state = Arc::new(api::AppState {
            cfg: cfg.clone(),
            store: store.clone(),
            signing_key,
            jobs_ready: Notify::new(),
            report_wake: report_wake.clone(),
            metrics: metrics.clone(),
            cancel: cancel.clone(),
        });
        let tasks = TaskTracker::new();
        if let Some(token) = cfg.github.token.clone().filter(|t| !t.is_empty()) {
            let reporter = report::Reporter {
                store: store.clone(),
                client,
                api_url: cfg.github.api_url.clone(),
                token,
                wake: report_wake,
                metrics,
            };
            tasks.spawn(reporter.run(cancel.clone()));
        }
        tasks.spawn(lease_sweep(state.clone(), cancel.clone()));
        tasks.spawn(housekeeping::retention(
            store.clone(),
            cfg.retention,
            cancel.clone(),
        ));
        tasks.spawn(housekeeping::flush_seen(store.clone(), cancel.clone()));
        let app = api::router(state);
        let server = server::spawn(listener, app, cfg.limits, cancel.clone());
        tracing::info!(%addr, webhook = %format!("http://{addr}/webhooks/github"), "hub listening");
        Ok(HubHandle {
            addr,
            public_key,
            server,
            tasks,
        })
    }
}

/// Puts expired claims back in the queue and wakes waiting pulls. Pulls requeue too; the sweep
/// makes sure a long-polling scheduler hears about a requeued job without polling again.
async fn lease_sweep(state: Arc<api::AppState>, cancel: CancellationToken) {
    let period = (state.cfg.lease / 4).clamp(Duration::from_millis(50), Duration::from_secs(15));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        match blocking(&state.store, |s| s.requeue_expired(now_ms())).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(jobs = n, "claims expired; jobs back in the queue");
                state.jobs_ready.notify_waiters();
            }
            Err(e) => {
                tracing::warn!(error = %dispatch_util::error_chain(&e), "lease sweep failed; retrying")
            }
        }
    }
}
