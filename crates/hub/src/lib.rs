//! The hub: the server side of dispatch (its contract with schedulers is `docs/protocol.md`).
//!
//! It receives GitHub webhooks, matches them against [`bindings`] and turns each match into a
//! dispatch job; schedulers pull, accept and finish jobs over the cloud API (the hub activates
//! their licenses and signs their tokens; both in `docs/protocol.md`); it reports each job's life
//! to GitHub (stored, accepted, finished) as commit statuses with a token, or as check runs when
//! it is a GitHub App ([`github`], `docs/github-app.md`), and answers comment commands with a
//! comment. State lives in SQLite under the data directory and survives restarts.
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
//! Modules import only downwards, bottom to top: `error`; `github`; `files`; `bindings`, `keys`;
//! `matching`; `trust`; `limits`; `config`; `store` (inside: `state`, `gauges`, `writer`,
//! `schema`, `integrity`, `reports`, `activations`, `jobs`, `approvals`, `cancels`,
//! `check_runs`, `retention`, `waiting`, then its `mod.rs`); `activation`; `waiters`; `metrics`;
//! `housekeeping`; `report`; `lifecycle`; `reporter`; `check_events`; `gate`; `body`; `intake`;
//! `handler`; `batch_pull`, `progress`; `api`; `web` (the pages for people); `server`; this file.
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
mod batch_pull;
mod body;
mod check_events;
mod error;
mod files;
mod gate;
mod handler;
mod housekeeping;
mod intake;
mod lifecycle;
mod metrics;
mod progress;
mod reporter;
mod server;
mod store;
mod toml_file;
mod trust;
mod waiters;
mod web;

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
pub use store::{
    JobProgress, LogSlice, ProgressChanges, ServerInfo, SqlError, StepRow, UnknownJobState, DB_FILE,
};

use store::{now_ms, Location, Store};

/// The running hub.
pub struct Hub;

/// Handle to a started hub.
pub struct HubHandle {
    /// The address the server listens on.
    pub addr: SocketAddr,
    /// The key that verifies the tokens this hub signs.
    pub public_key: VerifyingKey,
    /// The configured [`HubConfig::public_url`] as checked (no trailing `/`); None when it was
    /// not set, and the hub's links use `http://` and [`addr`](Self::addr).
    pub public_url: Option<String>,
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
        let mut cfg = cfg.validate()?;
        let app_key = match cfg.github.app.clone() {
            // Read now, so that a missing or wrong key stops the hub at start, naming the file.
            Some(app) => Some(
                tokio::task::spawn_blocking(move || {
                    github::app_key::AppKey::load(app.app_id, &app.private_key_file)
                })
                .await
                .map_err(HubError::Task)?
                .map_err(HubError::GithubApp)?,
            ),
            None => None,
        };
        files::private_dir(&cfg.data_dir)?;
        let location = store_location(&cfg)?;
        let data_dir = cfg.data_dir.clone();
        let (store, signing_key) = tokio::task::spawn_blocking(move || {
            let store = Store::open_at(&location)?;
            let key = match location {
                Location::Sqlite(_) => keys::load_or_create_signing_key(&data_dir)?,
                Location::Postgres(_) => keys::shared_signing_key(&store)?,
            };
            Ok::<_, HubError>((store, key))
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
        let configured_url = cfg.public_url.clone();
        let base_url = cfg
            .public_url
            .get_or_insert_with(|| format!("http://{addr}"));
        // What GitHub must be given: behind a proxy or a tunnel, not where the hub listens.
        let webhook_url = format!("{base_url}{}", github::manifest::WEBHOOK_PATH);
        let lifecycle = lifecycle::Lifecycle::for_config(&cfg);
        store.report_with(Arc::new(lifecycle.clone()));
        let public_key = signing_key.verifying_key();
        let metrics = Arc::new(metrics::Metrics::default());
        let report_wake = Arc::new(Notify::new());
        let state = Arc::new(handler::AppState {
            cfg: cfg.clone(),
            store: store.clone(),
            signing_key,
            waiters: Arc::default(),
            report_wake: report_wake.clone(),
            metrics: metrics.clone(),
            cancel: cancel.clone(),
        });
        waiters::listen_to_replicas(&store, state.waiters.clone(), cancel.clone()).map_err(
            |source| HubError::Io {
                path: "hub-replica-listener".into(),
                source,
            },
        )?;
        let tasks = TaskTracker::new();
        let clock: github::installations::Clock = Arc::new(now_ms);
        let auth = match (app_key, cfg.github.token.clone().filter(|t| !t.is_empty())) {
            (Some(key), _) => Some(github::client::Auth::App(Box::new(
                github::installations::Installations::new(
                    client.clone(),
                    &cfg.github.api_url,
                    key,
                    clock.clone(),
                ),
            ))),
            (None, Some(token)) => Some(github::client::Auth::Token(token)),
            (None, None) => None,
        };
        if let Some(auth) = auth {
            let reporter = reporter::Reporter {
                store: store.clone(),
                github: github::client::GithubClient::new(client, &cfg.github.api_url, auth, clock),
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
        // Opening a connection may wait on the network (PostgreSQL): not on the runtime.
        let pages_reader = store::blocking(&store, |s| s.open_reader()).await?;
        let pages = web::router(state.clone(), pages_reader)?;
        let app = api::router(state).merge(pages);
        let server = server::spawn(listener, app, cfg.limits, cancel.clone());
        tracing::info!(%addr, webhook = %webhook_url, "hub listening");
        Ok(HubHandle {
            addr,
            public_key,
            public_url: configured_url,
            server,
            tasks,
        })
    }
}

/// Puts expired claims back in the queue and wakes waiting pulls. Pulls requeue too; the sweep
/// makes sure a long-polling scheduler hears about a requeued job without polling again.
async fn lease_sweep(state: Arc<handler::AppState>, cancel: CancellationToken) {
    let period = (state.cfg.lease / 4).clamp(Duration::from_millis(50), Duration::from_secs(15));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        // Each job put back wakes one waiting pull that may take it.
        match waiters::sweep(&state.store, &state.waiters, period).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(jobs = n, "claims expired; jobs back in the queue");
                // Jobs given up on are reported.
                state.report_wake.notify_one();
            }
            Err(e) => {
                tracing::warn!(error = %dispatch_util::error_chain(&e), "lease sweep failed; retrying")
            }
        }
    }
}

/// Checks a `store_url` (`postgres://…`) without connecting; the error never repeats the URL.
pub fn check_store_url(url: &str) -> Result<(), HubError> {
    Location::postgres(url)
        .map(drop)
        .map_err(|reason| HubError::setting("the command line", "store-url", reason))
}

/// Brings the schema of the hub's store (`store_url`, or `hub.sqlite3` in `data_dir`) up to date
/// without serving (`hub migrate`); the hub does the same when it starts.
pub fn migrate_store(cfg: &HubConfig) -> Result<(), HubError> {
    let location = store_location(cfg)?;
    if let Location::Sqlite(_) = &location {
        files::private_dir(&cfg.data_dir)?;
    }
    Store::migrate_only(&location)
}

/// The public half of the key the hub at `cfg` signs license tokens with (`hub
/// print-public-key`), created as the hub would create it when there is none. On PostgreSQL
/// this is the key every replica shares, in the store: an empty database is set up first, one
/// of an older schema refused (`hub migrate` first), never changed under running replicas.
/// Blocking: call it outside an async runtime.
pub fn hub_public_key(cfg: &HubConfig) -> Result<ed25519_dalek::VerifyingKey, HubError> {
    let location = store_location(cfg)?;
    let key = match &location {
        Location::Sqlite(_) => keys::load_or_create_signing_key(&cfg.data_dir)?,
        Location::Postgres(_) => {
            keys::shared_signing_key(&Store::open_without_migrating(&location)?)?
        }
    };
    Ok(key.verifying_key())
}

/// Where the hub's store lives: `store_url` when set (checked by the config), else
/// `hub.sqlite3` in the data directory.
pub(crate) fn store_location(cfg: &HubConfig) -> Result<Location, HubError> {
    match &cfg.store_url {
        Some(url) => Location::postgres(url.expose())
            .map_err(|reason| HubError::setting("hub config", "store_url", reason)),
        None => Ok(Location::Sqlite(cfg.data_dir.join(DB_FILE))),
    }
}
