//! `hub`: the dispatch hub as a standalone server.
//!
//! `hub serve --config hub.toml` serves until SIGINT/SIGTERM; `hub print-public-key --data-dir D`
//! prints the PEM public key that verifies the hub's license tokens (creating the key if absent);
//! `hub github-app manifest` and `hub github-app convert` set up the GitHub App the hub reports as
//! (`docs/github-app.md`); `hub servers list` and `hub servers revoke <server-id>` show and revoke
//! the servers that activated (while the hub runs, too); `hub migrate` brings the store's schema
//! up to date and exits.
//! Exit codes: 0 clean stop, 2 bad config (naming the setting), 1 any other failure.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use dispatch_hub::{config::load_hub_config, Hub, HubError, ServeLimits};
use dispatch_protocol::Secret;
use tokio_util::sync::CancellationToken;

mod cli_servers;
#[cfg(not(target_env = "msvc"))]
mod memory;

/// Threads for the store's calls (`spawn_blocking`). Its reads take turns on one connection and
/// its writes on one writer thread, so more threads do not make it faster: with tokio's default
/// of 512, 10,000 schedulers pulling at once started ~170 threads, idle ten seconds later and
/// then ended. 64 still lets that many writes share one group commit.
const BLOCKING_THREADS: usize = 64;

#[derive(Parser)]
#[command(
    name = "hub",
    version,
    about = "dispatch hub: GitHub webhooks in, dispatch jobs out"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // Parsed once at start: boxing `Serve` would only add noise.
enum Command {
    /// Serve webhooks and the cloud API until interrupted.
    Serve {
        /// Path of hub.toml.
        #[arg(long, env = "DISPATCH_HUB_CONFIG")]
        config: PathBuf,
        /// Listen address (overrides `listen`).
        #[arg(long, env = "DISPATCH_HUB_LISTEN")]
        listen: Option<SocketAddr>,
        /// Data directory (overrides `data_dir`).
        #[arg(long, env = "DISPATCH_HUB_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Webhook secret (overrides `webhook_secret`).
        #[arg(long, env = "DISPATCH_HUB_WEBHOOK_SECRET", hide_env_values = true)]
        webhook_secret: Option<String>,
        /// GitHub token for reporting (overrides `[github] token`).
        #[arg(long, env = "DISPATCH_HUB_GITHUB_TOKEN", hide_env_values = true)]
        github_token: Option<String>,
        #[command(flatten)]
        limits: LimitFlags,
        #[command(flatten)]
        store: cli_servers::StoreFlags,
        #[command(flatten)]
        app: AppFlags,
        /// Log format.
        #[arg(long, env = "DISPATCH_HUB_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
        log_format: String,
    },
    /// Print the public key of the hub's token signing key (for `--license-public-key`).
    ///
    /// With a PostgreSQL store (`--store-url`, or `store_url` in `--config`) it is the key every
    /// replica shares, read from the store; else the key file in the data directory.
    PrintPublicKey {
        #[command(flatten)]
        store: cli_servers::StoreLocation,
        /// `pem` (SPKI) or `base64` (the 32 raw bytes).
        #[arg(long, default_value = "pem", value_parser = ["pem", "base64"])]
        format: String,
    },
    /// Bring the store's schema up to date and exit (the hub also does this when it starts;
    /// run it alone before starting new replicas on PostgreSQL).
    Migrate {
        #[command(flatten)]
        store: cli_servers::StoreLocation,
    },
    /// List or revoke the servers that activated licenses on this hub.
    Servers {
        #[command(subcommand)]
        command: cli_servers::ServersCommand,
    },
    /// Set up the GitHub App the hub reports as (docs/github-app.md).
    GithubApp {
        #[command(subcommand)]
        command: GithubAppCommand,
    },
}

#[derive(Subcommand)]
enum GithubAppCommand {
    /// Print the App manifest as JSON (stderr names the GitHub page it is posted to), or with
    /// `--html` a page whose button creates the App on GitHub.
    Manifest {
        /// hub.toml, for `public_url` and `[github] api_url`.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The hub's address as GitHub reaches it (overrides `public_url`).
        #[arg(long, env = "DISPATCH_HUB_PUBLIC_URL")]
        public_url: Option<String>,
        /// The App's name (GitHub wants it unique; it can be changed on the form).
        #[arg(long, default_value = "dispatch-hub")]
        name: String,
        /// Create the App under this organization instead of your account.
        #[arg(long)]
        org: Option<String>,
        /// Print an HTML page with a button that posts the manifest to GitHub.
        #[arg(long)]
        html: bool,
    },
    /// Finish creating the App: trade the code GitHub sent your browser back with for the App's
    /// id, private key (written to `--key-file`, 0600) and webhook secret.
    Convert {
        /// hub.toml, for `[github] api_url`.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The `code` of the page GitHub sent you to after creating the App.
        #[arg(long)]
        code: String,
        /// Where to write the private key (a new file).
        #[arg(long)]
        key_file: PathBuf,
    },
}

/// Overrides of the GitHub App settings (docs/github-app.md).
#[derive(clap::Args)]
struct AppFlags {
    /// The hub's address as GitHub and browsers reach it (overrides `public_url`).
    #[arg(long, value_name = "URL", env = "DISPATCH_HUB_PUBLIC_URL")]
    public_url: Option<String>,
    /// Admin token of the web pages: open `<public_url>/login?token=<token>` (overrides
    /// `ui_token`; none set: the pages answer that the web UI is disabled).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "DISPATCH_HUB_UI_TOKEN",
        hide_env_values = true
    )]
    ui_token: Option<String>,
    /// GitHub App id (overrides `[github] app_id`).
    #[arg(long, value_name = "ID", env = "DISPATCH_HUB_GITHUB_APP_ID")]
    github_app_id: Option<u64>,
    /// GitHub App private key, PEM (overrides `[github] app_private_key_file`).
    #[arg(long, value_name = "FILE", env = "DISPATCH_HUB_GITHUB_APP_KEY_FILE")]
    github_app_key_file: Option<PathBuf>,
}

impl AppFlags {
    fn apply(self, cfg: &mut dispatch_hub::HubConfig) -> Result<(), HubError> {
        if let Some(url) = self.public_url.filter(|u| !u.is_empty()) {
            cfg.public_url = Some(url);
        }
        if let Some(token) = self.ui_token.filter(|t| !t.is_empty()) {
            cfg.ui_token = Some(Secret::new(token));
        }
        let current = cfg.github.app.take();
        let app_id = self.github_app_id.or(current.as_ref().map(|a| a.app_id));
        let key = self
            .github_app_key_file
            .or(current.map(|a| a.private_key_file));
        cfg.github.app = match (app_id, key) {
            (Some(app_id), Some(private_key_file)) => Some(dispatch_hub::GithubApp {
                app_id,
                private_key_file,
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(HubError::InvalidSetting {
                    origin: "the command line".into(),
                    setting: "github-app-key-file".into(),
                    reason: "is needed with `--github-app-id`".into(),
                })
            }
            (None, Some(_)) => {
                return Err(HubError::InvalidSetting {
                    origin: "the command line".into(),
                    setting: "github-app-id".into(),
                    reason: "is needed with `--github-app-key-file`".into(),
                })
            }
        };
        Ok(())
    }
}

/// Overrides of the `[limits]` table (docs/security.md, "Hostile traffic").
#[derive(clap::Args)]
struct LimitFlags {
    /// Seconds a client has to send a request's headers; also the keep-alive idle time (at most 30).
    #[arg(long, value_name = "SECONDS", env = "DISPATCH_HUB_HEADER_TIMEOUT")]
    header_timeout: Option<u64>,
    /// Seconds a client has to send a whole request body.
    #[arg(long, value_name = "SECONDS", env = "DISPATCH_HUB_BODY_TIMEOUT")]
    body_timeout: Option<u64>,
    /// Open connections at most; more are answered 503 and closed.
    #[arg(long, value_name = "N", env = "DISPATCH_HUB_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// MiB of request bodies held at once over all connections; more are answered 503.
    #[arg(long, value_name = "MIB", env = "DISPATCH_HUB_BODY_BUDGET_MIB")]
    body_budget_mib: Option<usize>,
}

impl LimitFlags {
    fn apply(self, limits: &mut ServeLimits) {
        if let Some(s) = self.header_timeout {
            limits.header_timeout = Duration::from_secs(s);
        }
        if let Some(s) = self.body_timeout {
            limits.body_timeout = Duration::from_secs(s);
        }
        if let Some(n) = self.max_connections {
            limits.max_connections = n;
        }
        if let Some(mib) = self.body_budget_mib {
            limits.body_budget = mib.saturating_mul(1024 * 1024);
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hub: {e:#}");
            exit_code(&e)
        }
    }
}

/// The one place that maps errors to exit codes.
fn exit_code(e: &anyhow::Error) -> ExitCode {
    match e.downcast_ref::<HubError>() {
        Some(h) if h.is_config() => ExitCode::from(2),
        _ => ExitCode::from(1),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::PrintPublicKey { store, format } => {
            let key = dispatch_hub::hub_public_key(&store.resolve()?)?;
            if format == "base64" {
                println!("{}", dispatch_protocol::token::public_key_base64(&key));
            } else {
                print!("{}", dispatch_protocol::token::public_key_pem(&key));
            }
            Ok(())
        }
        Command::GithubApp { command } => github_app(command),
        Command::Servers { command } => cli_servers::run(command),
        Command::Migrate { store } => {
            init_logs("text");
            let cfg = store.resolve()?;
            dispatch_hub::migrate_store(&cfg)?;
            println!("hub store schema is up to date");
            Ok(())
        }
        Command::Serve {
            config,
            listen,
            data_dir,
            webhook_secret,
            github_token,
            limits,
            store,
            app,
            log_format,
        } => {
            init_logs(&log_format);
            let mut cfg = load_hub_config(&config)?;
            if let Some(listen) = listen {
                cfg.listen = listen;
            }
            if let Some(dir) = data_dir {
                cfg.data_dir = dir;
            }
            if let Some(secret) = webhook_secret {
                cfg.webhook_secret = Secret::new(secret);
            }
            if let Some(token) = github_token.filter(|t| !t.is_empty()) {
                cfg.github.token = Some(Secret::new(token));
            }
            limits.apply(&mut cfg.limits);
            store.apply(&mut cfg)?;
            app.apply(&mut cfg)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .max_blocking_threads(BLOCKING_THREADS)
                .build()?;
            runtime.block_on(serve(cfg))
        }
    }
}

fn github_app(command: GithubAppCommand) -> anyhow::Result<()> {
    use dispatch_hub::github::{convert, manifest};
    let settings = |config: Option<PathBuf>| match config {
        Some(path) => load_hub_config(&path),
        None => Ok(dispatch_hub::HubConfig::default()),
    };
    match command {
        GithubAppCommand::Manifest {
            config,
            public_url,
            name,
            org,
            html,
        } => {
            let cfg = settings(config)?;
            let public_url = public_url
                .or(cfg.public_url)
                .unwrap_or_else(|| format!("http://{}", cfg.listen));
            let app = manifest::manifest(&name, &public_url);
            let url = manifest::creation_url(&cfg.github.api_url, org.as_deref());
            if html {
                print!("{}", manifest::form_html(&app, &url));
            } else {
                println!("{}", serde_json::to_string_pretty(&app)?);
                eprintln!("post this manifest as the form field `manifest` to {url}");
            }
            eprintln!(
                "GitHub will deliver webhooks to {}{}: it must reach the hub there",
                public_url.trim_end_matches('/'),
                manifest::WEBHOOK_PATH
            );
            Ok(())
        }
        GithubAppCommand::Convert {
            config,
            code,
            key_file,
        } => {
            let cfg = settings(config)?;
            let runtime = tokio::runtime::Runtime::new()?;
            let app = runtime.block_on(convert::convert(&cfg.github.api_url, &code))?;
            convert::write_key_file(&key_file, &app.pem)?;
            println!(
                "# GitHub App `{}` (id {}) created; its key is in {}. Add to hub.toml:\n\
                 webhook_secret = \"{}\"\n\n[github]\napp_id = {}\napp_private_key_file = \"{}\"\n\n\
                 # Then install the App on your repositories: {}/installations/new",
                app.slug,
                app.id,
                key_file.display(),
                app.webhook_secret.expose(),
                app.id,
                key_file.display(),
                app.html_url
            );
            Ok(())
        }
    }
}

async fn serve(cfg: dispatch_hub::HubConfig) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    // Handlers are installed before the hub announces itself, so a signal sent as soon as the
    // address is printed is already handled gracefully.
    let mut signals = Signals::install()?;
    let handle = Hub::start(cfg, cancel.clone()).await?;
    // The webhook endpoint is where GitHub must send: `public_url`'s when one is set (a proxy or
    // a tunnel in front of the hub), else the address the hub listens on.
    let base_url = handle
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", handle.addr));
    // A closed stdout (say, a supervisor that stopped reading) must not stop the hub.
    let _ = writeln!(
        std::io::stdout(),
        "hub listening on http://{addr}\nwebhook endpoint: {base_url}{path}",
        addr = handle.addr,
        path = dispatch_hub::github::manifest::WEBHOOK_PATH,
    );
    let stop = cancel.clone();
    tokio::spawn(async move {
        signals.next().await;
        tracing::info!("shutting down");
        stop.cancel();
        signals.next().await;
        tracing::warn!("second signal; exiting now");
        std::process::exit(1);
    });
    handle.join().await?;
    Ok(())
}

/// SIGINT and SIGTERM.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => {}
                _ = self.int.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DISPATCH_HUB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a terminal: a log file or a collector gets plain text, never escape codes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
