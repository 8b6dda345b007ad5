//! The hub: the server side of dispatch (SPEC §8).
//!
//! It receives GitHub webhooks, matches them against [`bindings`] and turns each match into a
//! dispatch job; schedulers pull, accept and finish jobs over the cloud API of SPEC §2 (the hub
//! activates their licenses and signs their tokens, SPEC §3); on finish it reports the result to
//! GitHub as a commit status and, for comment commands, a comment. State lives in SQLite under the
//! data directory and survives restarts.
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
//! 1 MiB a scheduler reads (SPEC §2; GitHub sends events up to 25 MiB) is stored already finished
//! as `rejected` with a summary giving the sizes, instead of being handed out and dropped.
//!
//! Not for: running DAGs, talking to a scheduler's tracker, reading env vars or flags (the `hub`
//! binary and the scheduler do that).

pub mod bindings;
pub mod config;
pub mod keys;
pub mod matching;
pub mod report;

mod api;
mod error;
mod metrics;
mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dispatch_protocol::Secret;
use ed25519_dalek::VerifyingKey;
use serde::Deserialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use api::{MAX_WAIT_SECONDS, WEBHOOK_BODY_LIMIT};
pub use bindings::{load_bindings, Binding, Trigger, EXAMPLE_BINDINGS_TOML};
pub use error::HubError;

use store::{blocking, now_ms, Store};

/// File name of the SQLite database under the data directory.
pub const DB_FILE: &str = "hub.sqlite3";

/// A license the hub accepts on activate.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LicenseKey {
    /// License id: the token's `jti` and what bindings name in `license`.
    pub id: String,
    /// The key a scheduler presents on activate.
    pub key: Secret,
    /// Plan name put in the token.
    #[serde(default)]
    pub plan: String,
    /// Features put in the token.
    #[serde(default)]
    pub features: Vec<String>,
}

/// Where and how to report to GitHub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GithubConfig {
    /// API base URL (`https://api.github.com`, or `https://<host>/api/v3` for GitHub Enterprise).
    pub api_url: String,
    /// Token for commit statuses and comments; without one the hub does not report.
    pub token: Option<Secret>,
}

impl Default for GithubConfig {
    fn default() -> Self {
        GithubConfig {
            api_url: "https://api.github.com".to_owned(),
            token: None,
        }
    }
}

/// Everything the hub needs to run.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Address to listen on (port 0 picks a free port; see [`HubHandle::addr`]).
    pub listen: SocketAddr,
    /// Directory for `hub.sqlite3` and `hub_ed25519.key` (created if absent).
    pub data_dir: PathBuf,
    /// The webhook secret configured on GitHub; must not be empty.
    pub webhook_secret: Secret,
    /// Bindings from events to DAGs.
    pub bindings: Vec<Binding>,
    /// Licenses schedulers may activate.
    pub licenses: Vec<LicenseKey>,
    /// GitHub reporting.
    pub github: GithubConfig,
    /// How long a claim may stay unaccepted before the job goes back to the queue (default 60 s).
    pub lease: Duration,
    /// The comment mention (default `@dispatch`).
    pub mention: String,
    /// Lifetime of issued license tokens (default 7 days; schedulers heartbeat every 24 h).
    pub token_ttl: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8780)),
            data_dir: PathBuf::from("data"),
            webhook_secret: Secret::default(),
            bindings: Vec::new(),
            licenses: Vec::new(),
            github: GithubConfig::default(),
            lease: Duration::from_secs(60),
            mention: "@dispatch".to_owned(),
            token_ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl HubConfig {
    /// Checks the settings that files cannot check alone; fills binding ids.
    fn validate(mut self) -> Result<HubConfig, HubError> {
        const ORIGIN: &str = "hub config";
        if self.webhook_secret.is_empty() {
            return Err(HubError::setting(
                ORIGIN,
                "webhook_secret",
                "must not be empty",
            ));
        }
        if self.mention.is_empty() || self.mention.chars().any(char::is_whitespace) {
            return Err(HubError::setting(
                ORIGIN,
                "mention",
                "must be one word, e.g. `@dispatch`",
            ));
        }
        if self.lease.is_zero() {
            return Err(HubError::setting(ORIGIN, "lease", "must be positive"));
        }
        if self.token_ttl < Duration::from_secs(60) {
            return Err(HubError::setting(
                ORIGIN,
                "token_ttl",
                "must be at least 60 seconds",
            ));
        }
        for (i, l) in self.licenses.iter().enumerate() {
            if l.id.trim().is_empty() {
                return Err(HubError::setting(
                    ORIGIN,
                    format!("license[{i}].id"),
                    "must not be empty",
                ));
            }
            if l.key.is_empty() {
                return Err(HubError::setting(
                    ORIGIN,
                    format!("license[{i}].key"),
                    "must not be empty",
                ));
            }
            if self.licenses[..i].iter().any(|o| o.id == l.id) {
                return Err(HubError::setting(
                    ORIGIN,
                    format!("license[{i}].id"),
                    format!("`{}` is used twice", l.id),
                ));
            }
            if self.licenses[..i].iter().any(|o| o.key == l.key) {
                return Err(HubError::setting(
                    ORIGIN,
                    format!("license[{i}].key"),
                    "the same key is used by two licenses",
                ));
            }
        }
        self.bindings = bindings::validate_bindings(self.bindings, ORIGIN)?;
        for (i, b) in self.bindings.iter().enumerate() {
            if !b.license.is_empty() && !self.licenses.iter().any(|l| l.id == b.license) {
                return Err(HubError::setting(
                    ORIGIN,
                    format!("binding[{i}].license"),
                    format!("no license with id `{}` is configured", b.license),
                ));
            }
        }
        Ok(self)
    }
}

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
        std::fs::create_dir_all(&cfg.data_dir).map_err(|source| HubError::Io {
            path: cfg.data_dir.clone(),
            source,
        })?;
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
        let app = api::router(state);
        let shutdown = cancel.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
        });
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
                tracing::warn!(error = %report::error_chain(&e), "lease sweep failed; retrying")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> HubConfig {
        HubConfig {
            webhook_secret: Secret::new("w"),
            licenses: vec![LicenseKey {
                id: "l1".into(),
                key: Secret::new("k1"),
                plan: String::new(),
                features: Vec::new(),
            }],
            ..HubConfig::default()
        }
    }

    #[test]
    fn validate_names_the_bad_setting() {
        let binding = |license: &str| Binding {
            id: String::new(),
            repository: "o/r".into(),
            dag: "d".into(),
            trigger: Trigger::Auto,
            event_name: String::new(),
            action: String::new(),
            branch_pattern: String::new(),
            tag_pattern: String::new(),
            command_alias: String::new(),
            dispatch_event_type: String::new(),
            check_name: String::new(),
            license: license.into(),
        };
        let ok = HubConfig {
            bindings: vec![binding("l1"), binding("")],
            ..cfg()
        };
        let valid = ok.validate().unwrap();
        assert_eq!(valid.bindings[1].id, "o/r/d/auto-2");

        let mut dup = cfg();
        dup.licenses.push(dup.licenses[0].clone());
        let cases: Vec<(HubConfig, &str)> = vec![
            (
                HubConfig {
                    webhook_secret: Secret::default(),
                    ..cfg()
                },
                "webhook_secret",
            ),
            (
                HubConfig {
                    mention: "@a b".into(),
                    ..cfg()
                },
                "mention",
            ),
            (
                HubConfig {
                    lease: Duration::ZERO,
                    ..cfg()
                },
                "lease",
            ),
            (dup, "license[1].id"),
            (
                HubConfig {
                    bindings: vec![binding("nope")],
                    ..cfg()
                },
                "binding[0].license",
            ),
        ];
        for (c, setting) in cases {
            let err = c.validate().unwrap_err();
            assert!(err.is_config(), "{err}");
            assert!(
                err.to_string().contains(&format!("`{setting}`")),
                "{err} should name {setting}"
            );
            assert!(!err.to_string().contains("k1"), "no secret in errors");
        }
    }
}
