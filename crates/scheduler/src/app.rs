//! Wiring of `scheduler start` (and of the demo, which starts the same system in a temporary
//! home): embedded hub (optional) → license manager → cloud client → worker → enqueue/executor
//! → stores, tracker at `<data>/tracker`, metrics server, history retention.
//!
//! Shutdown order matters: the worker stops first (it finishes in-flight calls and gives running
//! DAG runs their grace period, then the executor stops them); only then do the license manager,
//! the metrics server and the embedded hub stop, because the worker's last accept/finish calls
//! may still go to that hub.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dispatch_dag::{FileStoreConfig, FileStoreOptions, Stores};
use dispatch_executor::{Executor, ExecutorConfig, ExecutorHandle};
use dispatch_hub::{GithubConfig, Hub, HubConfig, HubError, LicenseKey};
use dispatch_license::{ClientConfig, CloudClient, LicenseConfig, LicenseManager};
use dispatch_protocol::Secret;
use dispatch_tracker::Tracker;
use dispatch_worker::{Worker, WorkerConfig, WorkerDeps, WorkerStats};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{CloudTarget, ConfigError, Settings};
use crate::error::AppError;
use crate::metrics::{Histogram, Metrics, Probe, Reading};
use crate::retention::Retention;

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The license id the embedded hub gives its own scheduler.
const EMBEDDED_LICENSE_ID: &str = "embedded";

/// Where to find the embedded hub.
#[derive(Debug, Clone)]
pub(crate) struct EmbeddedHub {
    /// Address it listens on.
    pub(crate) addr: SocketAddr,
    /// Where it takes webhooks on this machine, `http://<addr>/webhooks/github` (over loopback
    /// when it listens on every address): where the demo sends, and where the proxy or tunnel
    /// behind `public_url` must lead.
    pub(crate) local_webhook_url: String,
    /// The webhook secret (for the demo, which signs its own deliveries).
    pub(crate) webhook_secret: Secret,
    /// The file holding the secret.
    pub(crate) secret_path: PathBuf,
    /// Its address as GitHub and browsers reach it (`public_url`, else `http://<addr>`), without
    /// a trailing `/`: the base of its web pages and of the webhook URL GitHub is given.
    pub(crate) public_url: String,
    /// The web pages' admin token.
    pub(crate) ui_token: Secret,
    /// The file holding it, when the scheduler made it (None: the configured `hub_ui_token`).
    pub(crate) ui_token_path: Option<PathBuf>,
}

impl EmbeddedHub {
    /// The webhook URL to enter on GitHub: `<public_url>/webhooks/github`.
    pub(crate) fn webhook_url(&self) -> String {
        format!(
            "{}{}",
            self.public_url,
            dispatch_hub::github::manifest::WEBHOOK_PATH
        )
    }

    /// The page of job `id`.
    pub(crate) fn job_url(&self, id: &str) -> String {
        format!("{}/jobs/{id}", self.public_url)
    }

    /// The link that logs a browser in to the web pages. It holds the token: print it only to
    /// the terminal, never to a log.
    pub(crate) fn login_url(&self) -> String {
        let page = format!("{}/login", self.public_url);
        // The token is a query value: whatever its characters, they are percent-encoded.
        match reqwest::Url::parse_with_params(&page, [("token", self.ui_token.expose())]) {
            Ok(url) => url.into(),
            Err(_) => page,
        }
    }

    /// How to log in to the web pages, for the banner: the login link when stdout is a
    /// terminal (a person reads it there, as Jupyter prints its link); else the login page and
    /// where the token is, so that a journal or a container's log never holds it.
    pub(crate) fn login_hint(&self, terminal: bool) -> String {
        if terminal {
            return self.login_url();
        }
        match &self.ui_token_path {
            Some(path) => format!(
                "{}/login (the token is in {})",
                self.public_url,
                path.display()
            ),
            None => format!("{}/login (the token is hub_ui_token)", self.public_url),
        }
    }

    /// The banner's lines about the hub (`terminal`: stdout is one, see
    /// [`login_hint`](Self::login_hint)). With a `public_url`, the webhook URL is the one GitHub
    /// must use, and the next line names the one the hub listens on.
    fn banner(&self, terminal: bool, bindings: &Path) -> Vec<String> {
        let webhook_url = self.webhook_url();
        let mut lines = vec![
            format!("  embedded hub on {}", self.addr),
            format!("  webhook URL:    {webhook_url}"),
        ];
        if webhook_url != self.local_webhook_url {
            lines.push(format!(
                "  listening on:   {} (public_url must lead here)",
                self.local_webhook_url
            ));
        }
        lines.extend([
            format!("  webhook secret: stored in {}", self.secret_path.display()),
            // The one place the token may be shown, and only to a terminal.
            format!("  web pages:      {}", self.login_hint(terminal)),
            format!("  bindings:       {}", bindings.display()),
        ]);
        lines
    }
}

type WorkerTask = tokio::task::JoinHandle<Result<(), dispatch_worker::WorkerError>>;
type Started = (Option<EmbeddedHub>, Stores, Option<SocketAddr>, WorkerTask);

/// A started scheduler.
pub(crate) struct System {
    pub(crate) hub: Option<EmbeddedHub>,
    pub(crate) stores: Stores,
    pub(crate) metrics_addr: Option<SocketAddr>,
    worker: WorkerTask,
    /// Cancelled once the worker has stopped: license manager, metrics server, embedded hub.
    after_worker: CancellationToken,
    tasks: TaskTracker,
}

impl System {
    /// Starts everything; returns once the worker is running. `shutdown` stops it. When a part
    /// fails to start, the parts already running (embedded hub, license manager) are stopped
    /// before the error is returned.
    pub(crate) async fn start(
        settings: &Settings,
        shutdown: &CancellationToken,
    ) -> Result<System, AppError> {
        let after_worker = CancellationToken::new();
        let tasks = TaskTracker::new();
        match Self::start_parts(settings, shutdown, &after_worker, &tasks).await {
            Ok((hub, stores, metrics_addr, worker)) => Ok(System {
                hub,
                stores,
                metrics_addr,
                worker,
                after_worker,
                tasks,
            }),
            Err(err) => {
                after_worker.cancel();
                tasks.close();
                tasks.wait().await;
                Err(err)
            }
        }
    }

    async fn start_parts(
        settings: &Settings,
        shutdown: &CancellationToken,
        after_worker: &CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Started, AppError> {
        // First: the tracker's lock keeps a second scheduler off the same data directory, before
        // anything else (the embedded hub's database) is touched.
        let (tracker, stores) = open_home(settings)?;
        let tracker = Arc::new(tracker);

        let (base_url, license_key, public_key, hub) = match &settings.cloud {
            CloudTarget::Remote(url) => (
                url.to_string(),
                settings.license_key.clone(),
                settings.license_public_key,
                None,
            ),
            CloudTarget::Embedded {
                listen,
                github_api_url,
                github_token,
                ..
            } => {
                if settings.license_public_key.is_some() {
                    tracing::info!("--license-public-key is ignored with the embedded hub: its own key verifies its tokens");
                }
                let started = start_embedded_hub(
                    settings,
                    *listen,
                    github_api_url,
                    github_token,
                    after_worker,
                    tasks,
                )
                .await?;
                (
                    format!("http://{}", started.connect_addr),
                    Some(started.license_key),
                    Some(started.public_key),
                    Some(started.info),
                )
            }
        };

        let has_key = license_key.is_some();
        let client =
            CloudClient::new(ClientConfig::new(base_url.clone(), VERSION)).map_err(|err| {
                AppError::component(format!("set up the cloud client for `{base_url}`"), err)
            })?;
        let license = LicenseManager::start(
            LicenseConfig {
                data_dir: settings.data_dir.clone(),
                license_key,
                public_key,
                machine_name: machine_name(),
                client_version: VERSION.to_owned(),
                ..LicenseConfig::new(&settings.data_dir)
            },
            client.clone(),
        )
        .await
        .map_err(|err| AppError::component("start the license manager", err))?;
        tracing::info!(cloud = %base_url, license = %license.status_summary(), "license");
        if !has_key {
            tracing::warn!("no --license-key: the worker stays idle until a license is activated");
        }
        tasks.spawn(license.clone().run(after_worker.clone()));

        let mut executor_config = ExecutorConfig::default();
        if let Some(n) = settings.max_concurrent_runs {
            executor_config.max_concurrent_runs = n;
        }
        // The executor stops taking new runs on the first signal; the worker then shuts it down
        // after the grace period.
        let executor = Executor::start(executor_config, stores.clone(), shutdown.clone())
            .map_err(|err| AppError::component("start the executor", err))?;

        let worker = Worker::new(
            WorkerConfig {
                idle_delay: settings.poll_interval,
                report_interval: settings.report_interval,
                long_poll: settings.long_poll,
                shutdown_grace: settings.shutdown_grace,
                // Overlapping pulls while a burst is queued; idle, only one pull is open.
                pull_concurrency: 4,
                ..WorkerConfig::default()
            },
            WorkerDeps {
                client,
                credentials: license,
                tracker: tracker.clone(),
                stores: stores.clone(),
                executor: executor.clone(),
            },
        );
        let stats = worker.stats();

        let metrics_addr = match settings.metrics_addr {
            Some(addr) => {
                let probe = WiredProbe {
                    stats: stats.clone(),
                    executor,
                    stores: stores.clone(),
                };
                let metrics = Arc::new(Metrics::new(
                    Box::new(probe),
                    settings.poll_interval,
                    settings.long_poll,
                ));
                let (local, server) = crate::metrics::serve(addr, metrics, after_worker.clone())
                    .await
                    .map_err(|err| AppError::component(format!("serve metrics on {addr}"), err))?;
                tasks.spawn(async move {
                    if let Err(err) = server.await {
                        tracing::error!(error = %err, "metrics server failed");
                    }
                });
                tracing::info!(addr = %local, "metrics on http://{local}/metrics, health on /healthz");
                Some(local)
            }
            None => None,
        };

        let retention = Retention {
            stores: stores.clone(),
            tracker,
            default_days: settings.hist_retention_days,
        };
        tasks.spawn(retention.run(crate::retention::INTERVAL, shutdown.clone()));

        let worker = tasks.spawn(worker.run(shutdown.clone()));
        Ok((hub, stores, metrics_addr, worker))
    }

    /// Waits for the worker to stop (after `shutdown` fires), then stops the rest.
    pub(crate) async fn wait(self) -> Result<(), AppError> {
        let result = self.worker.await;
        self.after_worker.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(AppError::component("run the dispatch worker", err)),
            Err(err) => Err(AppError::component("run the dispatch worker", err)),
        }
    }
}

/// How long a queue item stays in memory only (see `open_home`).
const QUEUE_WRITE_DELAY: std::time::Duration = std::time::Duration::from_secs(10);

/// Creates the home's directories, takes the tracker (whose lock keeps any other scheduler,
/// or `scheduler run --home`, off this data directory) and opens the DAG, run and queue stores.
/// Shared by `scheduler start` and `scheduler run --home`.
pub(crate) fn open_home(settings: &Settings) -> Result<(Tracker, Stores), AppError> {
    for (dir, what) in [
        (&settings.home, "home"),
        (&settings.data_dir, "data"),
        (&settings.dags_dir, "DAGs"),
        (&settings.log_dir, "log"),
    ] {
        std::fs::create_dir_all(dir).map_err(|err| {
            AppError::component(
                format!("create the {what} directory `{}`", dir.display()),
                err,
            )
        })?;
    }
    let tracker_dir = settings.data_dir.join("tracker");
    let tracker = Tracker::open(&tracker_dir).map_err(|err| {
        AppError::component(
            format!("open the tracker at `{}`", tracker_dir.display()),
            err,
        )
    })?;
    // The tracker's lock gives this process the home to itself, and its executor consumes the
    // queues it fills: queue items can stay in memory while they wait (a run that starts within
    // the delay never has a queue file to create and remove; after a crash, recovery enqueues
    // the queued runs again).
    let stores = Stores::open_files_with(
        FileStoreConfig {
            dags_dir: settings.dags_dir.clone(),
            data_dir: settings.data_dir.clone(),
            log_dir: settings.log_dir.clone(),
        },
        FileStoreOptions {
            queue_write_delay: QUEUE_WRITE_DELAY,
        },
    )
    .map_err(|err| AppError::component("open the DAG, run and queue stores", err))?;
    Ok((tracker, stores))
}

struct StartedHub {
    info: EmbeddedHub,
    connect_addr: SocketAddr,
    license_key: Secret,
    public_key: ed25519_dalek::VerifyingKey,
}

async fn start_embedded_hub(
    settings: &Settings,
    listen: SocketAddr,
    github_api_url: &reqwest::Url,
    github_token: &Option<Secret>,
    cancel: &CancellationToken,
    tasks: &TaskTracker,
) -> Result<StartedHub, AppError> {
    let home = &settings.home;
    let secret_path = home.join("webhook_secret");
    let webhook_secret =
        crate::embedded::load_or_create_secret(&secret_path, "", 32).map_err(|err| {
            AppError::component(
                format!(
                    "load or create the webhook secret `{}`",
                    secret_path.display()
                ),
                err,
            )
        })?;
    // A key given by the user is honoured so the same key works against a remote hub later.
    let license_key = match &settings.license_key {
        Some(key) => key.clone(),
        None => {
            let path = home.join("embedded_license_key");
            crate::embedded::load_or_create_secret(&path, "dispatch-embedded-", 24).map_err(
                |err| {
                    AppError::component(
                        format!(
                            "load or create the embedded license key `{}`",
                            path.display()
                        ),
                        err,
                    )
                },
            )?
        }
    };
    let bindings_path = bindings_path(home);
    if crate::embedded::write_if_absent(&bindings_path, dispatch_hub::EXAMPLE_BINDINGS_TOML)
        .map_err(|err| {
            AppError::component(
                format!("write the example bindings `{}`", bindings_path.display()),
                err,
            )
        })?
    {
        tracing::info!(path = %bindings_path.display(), "wrote an example bindings file (all bindings commented out)");
    }
    let (github_app, public_url) = match &settings.cloud {
        CloudTarget::Embedded {
            github_app,
            public_url,
            ..
        } => (github_app.clone(), public_url.clone()),
        CloudTarget::Remote(_) => (None, None),
    };
    let bindings = dispatch_hub::load_bindings(&bindings_path)
        .map_err(|err| hub_error(err, "load the bindings"))?;
    if bindings.is_empty() {
        tracing::warn!(path = %bindings_path.display(), "no bindings: webhooks will not start any DAG until you add some");
    }
    let storage = match &settings.cloud {
        CloudTarget::Embedded { storage, .. } => Some(storage.clone()),
        CloudTarget::Remote(_) => None,
    };
    let (ui_token, ui_token_path) = match storage.as_ref().and_then(|s| s.ui_token.clone()) {
        Some(token) => (token, None),
        None => {
            let path = home.join("ui_token");
            let token = crate::embedded::load_or_create_secret(&path, "", 32).map_err(|err| {
                AppError::component(
                    format!("load or create the web pages' token `{}`", path.display()),
                    err,
                )
            })?;
            (token, Some(path))
        }
    };
    let defaults = HubConfig::default();
    let hub = Hub::start(
        HubConfig {
            listen,
            retention: storage.as_ref().map_or(defaults.retention, |s| s.retention),
            activation_expiry: storage
                .as_ref()
                .map_or(defaults.activation_expiry, |s| s.activation_expiry),
            job_log_cap: storage
                .as_ref()
                .map_or(defaults.job_log_cap, |s| s.job_log_cap),
            metrics_token: storage.and_then(|s| s.metrics_token),
            data_dir: settings.data_dir.join("hub"),
            webhook_secret: webhook_secret.clone(),
            bindings,
            licenses: vec![LicenseKey {
                id: EMBEDDED_LICENSE_ID.to_owned(),
                key: license_key.clone(),
                plan: "embedded".to_owned(),
                features: Vec::new(),
            }],
            github: GithubConfig {
                api_url: github_api_url.to_string(),
                token: github_token.clone(),
                app: github_app,
            },
            public_url,
            ui_token: Some(ui_token.clone()),
            ..HubConfig::default()
        },
        cancel.clone(),
    )
    .await
    .map_err(|err| hub_error(err, "start the embedded hub"))?;
    let addr = hub.addr;
    let public_key = hub.public_key;
    let configured_url = hub.public_url.clone();
    tasks.spawn(async move {
        if let Err(err) = hub.join().await {
            tracing::error!(error = %err, "embedded hub failed");
        }
    });
    // A hub bound to 0.0.0.0 or [::] is reached over loopback by its own worker.
    let connect_addr = if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    let info = EmbeddedHub {
        addr,
        local_webhook_url: format!(
            "http://{connect_addr}{}",
            dispatch_hub::github::manifest::WEBHOOK_PATH
        ),
        webhook_secret,
        secret_path,
        public_url: configured_url.unwrap_or_else(|| format!("http://{connect_addr}")),
        ui_token,
        ui_token_path,
    };
    tracing::info!(
        %addr,
        webhook_url = %info.webhook_url(),
        secret_file = %info.secret_path.display(),
        bindings = %bindings_path.display(),
        "embedded hub listening"
    );
    Ok(StartedHub {
        info,
        connect_addr,
        license_key,
        public_key,
    })
}

/// A hub error caused by its configuration (bindings file, settings) is a config error: exit 2.
fn hub_error(err: HubError, action: &str) -> AppError {
    if err.is_config() {
        AppError::Config(ConfigError::Hub(err))
    } else {
        AppError::component(action, err)
    }
}

fn machine_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Reads the metrics from the worker's counters, the executor and the queue store.
struct WiredProbe {
    stats: Arc<WorkerStats>,
    executor: ExecutorHandle,
    stores: Stores,
}

impl Probe for WiredProbe {
    fn read(&self) -> Reading {
        let queue_depth = match self.stores.queue.queues() {
            Ok(queues) => queues
                .iter()
                .map(|q| {
                    self.stores
                        .queue
                        .list(q)
                        .map_or(0, |items| items.len() as u64)
                })
                .sum(),
            Err(err) => {
                tracing::debug!(error = %err, "cannot list queues for metrics");
                0
            }
        };
        let latency = self.stats.dispatch_latency();
        Reading {
            jobs_pulled: self.stats.jobs_pulled(),
            jobs_accepted: self.stats.jobs_accepted(),
            jobs_finished: self
                .stats
                .jobs_finished_by_status()
                .into_iter()
                .map(|(status, n)| (status.to_owned(), n))
                .collect(),
            pull_errors: self.stats.pull_errors(),
            runs_active: self.executor.active_runs() as u64,
            queue_depth,
            last_pull_ms: self.stats.last_successful_pull_ms(),
            dispatch_latency: Histogram {
                buckets: latency.buckets,
                count: latency.count,
                sum_seconds: latency.sum_seconds,
            },
        }
    }
}

/// Prints where the embedded hub listens and where its secret is (never the secret itself).
pub(crate) fn print_banner(system: &System, settings: &Settings) {
    say!("dispatch scheduler {VERSION}");
    say!("  DAGs:     {}", settings.dags_dir.display());
    say!("  data:     {}", settings.data_dir.display());
    say!("  logs:     {}", settings.log_dir.display());
    match &system.hub {
        Some(hub) => {
            let terminal = std::io::stdout().is_terminal();
            for line in hub.banner(terminal, &bindings_path(&settings.home)) {
                say!("{line}");
            }
        }
        None => {
            if let CloudTarget::Remote(url) = &settings.cloud {
                say!("  cloud:    {url}");
            }
        }
    }
    if let Some(addr) = system.metrics_addr {
        say!("  metrics:  http://{addr}/metrics  health: http://{addr}/healthz");
    }
}

/// `<home>/bindings.toml`, read by the embedded hub.
fn bindings_path(home: &Path) -> PathBuf {
    home.join("bindings.toml")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(token: &str, token_path: Option<&str>) -> EmbeddedHub {
        EmbeddedHub {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            local_webhook_url: "http://127.0.0.1:8080/webhooks/github".into(),
            webhook_secret: Secret::new("w"),
            secret_path: PathBuf::from("home/webhook_secret"),
            public_url: "http://127.0.0.1:8080".into(),
            ui_token: Secret::new(token),
            ui_token_path: token_path.map(PathBuf::from),
        }
    }

    #[test]
    fn the_login_link_encodes_the_token_and_goes_only_to_a_terminal() {
        let made = hub("a b&c=d+é#", Some("home/ui_token"));
        assert_eq!(
            made.login_url(),
            "http://127.0.0.1:8080/login?token=a+b%26c%3Dd%2B%C3%A9%23"
        );
        assert_eq!(made.login_hint(true), made.login_url());
        assert_eq!(
            made.login_hint(false),
            "http://127.0.0.1:8080/login (the token is in home/ui_token)"
        );
        let configured = hub("configured-token-123", None);
        let hint = configured.login_hint(false);
        assert!(!hint.contains("configured-token-123"), "{hint}");
        assert!(hint.contains("hub_ui_token"), "{hint}");
    }

    #[test]
    fn the_banner_gives_github_the_public_url_and_names_where_the_hub_listens() {
        let bindings = Path::new("home/bindings.toml");
        let local = hub("t", Some("home/ui_token"));
        assert_eq!(
            local.banner(false, bindings),
            [
                "  embedded hub on 127.0.0.1:8080",
                "  webhook URL:    http://127.0.0.1:8080/webhooks/github",
                "  webhook secret: stored in home/webhook_secret",
                "  web pages:      http://127.0.0.1:8080/login (the token is in home/ui_token)",
                "  bindings:       home/bindings.toml",
            ]
        );
        let proxied = EmbeddedHub {
            public_url: "https://hub.example.com".into(),
            ..hub("t", Some("home/ui_token"))
        };
        assert_eq!(
            proxied.banner(false, bindings),
            [
                "  embedded hub on 127.0.0.1:8080",
                "  webhook URL:    https://hub.example.com/webhooks/github",
                "  listening on:   http://127.0.0.1:8080/webhooks/github (public_url must lead here)",
                "  webhook secret: stored in home/webhook_secret",
                "  web pages:      https://hub.example.com/login (the token is in home/ui_token)",
                "  bindings:       home/bindings.toml",
            ]
        );
        assert_eq!(
            proxied.job_url("j1"),
            "https://hub.example.com/jobs/j1",
            "job links go to the public address too"
        );
    }
}
