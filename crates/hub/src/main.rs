//! `hub`: the dispatch hub as a standalone server.
//!
//! `hub serve --config hub.toml` serves until SIGINT/SIGTERM; `hub print-public-key --data-dir D`
//! prints the PEM public key that verifies the hub's license tokens (creating the key if absent).
//! Exit codes: 0 clean stop, 2 bad config (naming the setting), 1 any other failure.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use dispatch_hub::{
    config::load_hub_config, keys::load_or_create_signing_key, Hub, HubError, ServeLimits,
};
use dispatch_protocol::Secret;
use tokio_util::sync::CancellationToken;

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
        /// Log format.
        #[arg(long, env = "DISPATCH_HUB_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
        log_format: String,
    },
    /// Print the public key of the hub's token signing key (for `--license-public-key`).
    PrintPublicKey {
        /// The hub's data directory.
        #[arg(long, env = "DISPATCH_HUB_DATA_DIR")]
        data_dir: PathBuf,
        /// `pem` (SPKI) or `base64` (the 32 raw bytes).
        #[arg(long, default_value = "pem", value_parser = ["pem", "base64"])]
        format: String,
    },
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
        Command::PrintPublicKey { data_dir, format } => {
            let key = load_or_create_signing_key(&data_dir)?.verifying_key();
            if format == "base64" {
                println!("{}", dispatch_protocol::token::public_key_base64(&key));
            } else {
                print!("{}", dispatch_protocol::token::public_key_pem(&key));
            }
            Ok(())
        }
        Command::Serve {
            config,
            listen,
            data_dir,
            webhook_secret,
            github_token,
            limits,
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
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(serve(cfg))
        }
    }
}

async fn serve(cfg: dispatch_hub::HubConfig) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    // Handlers are installed before the hub announces itself, so a signal sent as soon as the
    // address is printed is already handled gracefully.
    let mut signals = Signals::install()?;
    let handle = Hub::start(cfg, cancel.clone()).await?;
    // A closed stdout (say, a supervisor that stopped reading) must not stop the hub.
    let _ = writeln!(
        std::io::stdout(),
        "hub listening on http://{addr}\nwebhook endpoint: http://{addr}/webhooks/github",
        addr = handle.addr
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
