//! Command-line surface. Every setting of `start` is optional here so that a flag or its
//! `DISPATCH_*` variable can win over the config file, and the file over the defaults
//! (see [`crate::config::Settings::resolve`]).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use dispatch_protocol::Secret;

/// Run your own workflows on your own machines when things happen on GitHub.
#[derive(Parser)]
#[command(name = "scheduler", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Run the scheduler: pull dispatch jobs and run their DAGs until SIGINT/SIGTERM.
    /// Without `--cloud-url`, a hub is embedded on loopback and the worker pulls from it.
    Start(Box<StartArgs>),
    /// Run the whole loop on bundled real GitHub payloads in a temporary home.
    Demo(DemoArgs),
    /// Run one DAG now, in the foreground, printing each step's output with its name.
    ///
    /// Exits 0 when the run succeeded (or partially succeeded), 1 when it failed, was aborted
    /// (Ctrl-C stops it; a second Ctrl-C at once) or the DAG does not load.
    Run(RunArgs),
    /// Check DAG files without running them.
    ///
    /// Prints every error of every file and `ok <file>` for good ones; exits 0 when all are
    /// valid, 1 otherwise.
    Validate(ValidateArgs),
}

/// Output format of the logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Flags of `scheduler start`. Secrets are parsed straight into [`Secret`] so they never
/// show up in `Debug` output, and `hide_env_values` keeps them out of `--help`.
#[derive(Args, Default)]
pub(crate) struct StartArgs {
    /// TOML config file (keys = flag names with `_` for `-`); default `<home>/config.toml` if present.
    #[arg(long, env = "DISPATCH_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Home directory holding dags, data, logs, bindings and secrets [default: ~/.dispatch].
    #[arg(long, env = "DISPATCH_HOME", value_name = "DIR")]
    pub(crate) home: Option<PathBuf>,
    /// Directory of DAG YAML files [default: HOME/dags, HOME being --home].
    #[arg(long, env = "DISPATCH_DAGS_DIR", value_name = "DIR")]
    pub(crate) dags_dir: Option<PathBuf>,
    /// Data directory: runs, queue, tracker, license, embedded hub [default: HOME/data].
    #[arg(long, env = "DISPATCH_DATA_DIR", value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Directory of run logs [default: HOME/logs].
    #[arg(long, env = "DISPATCH_LOG_DIR", value_name = "DIR")]
    pub(crate) log_dir: Option<PathBuf>,
    /// Base URL of the dispatch hub/cloud. Without it a hub is embedded on loopback.
    #[arg(long, env = "DISPATCH_CLOUD_URL", value_name = "URL")]
    pub(crate) cloud_url: Option<String>,
    /// License key to activate with the cloud.
    #[arg(long, env = "DISPATCH_LICENSE_KEY", hide_env_values = true, value_parser = parse_secret, value_name = "KEY")]
    pub(crate) license_key: Option<Secret>,
    /// Ed25519 public key verifying license tokens: PEM, base64 of the 32 raw bytes, or a path
    /// to a file holding either.
    #[arg(long, env = "DISPATCH_LICENSE_PUBLIC_KEY", value_name = "KEY|FILE")]
    pub(crate) license_public_key: Option<String>,
    /// Seconds between pulls when the queue is empty [default: 10].
    #[arg(long, env = "DISPATCH_POLL_INTERVAL", value_name = "SECONDS")]
    pub(crate) poll_interval: Option<String>,
    /// Seconds between report passes over tracked jobs [default: 10].
    #[arg(long, env = "DISPATCH_REPORT_INTERVAL", value_name = "SECONDS")]
    pub(crate) report_interval: Option<String>,
    /// Long-poll wait in seconds (0–60, 0 = off) [default: 30].
    #[arg(long, env = "DISPATCH_LONG_POLL", value_name = "SECONDS")]
    pub(crate) long_poll: Option<String>,
    /// Most DAG runs executing at once [default: number of CPUs].
    #[arg(long, env = "DISPATCH_MAX_CONCURRENT_RUNS", value_name = "N")]
    pub(crate) max_concurrent_runs: Option<String>,
    /// Seconds running DAG runs may go on after SIGINT/SIGTERM before they are stopped [default: 30].
    #[arg(long, env = "DISPATCH_SHUTDOWN_GRACE", value_name = "SECONDS")]
    pub(crate) shutdown_grace: Option<String>,
    /// Serve `/metrics` and `/healthz` on this address (e.g. 127.0.0.1:9090).
    #[arg(long, env = "DISPATCH_METRICS_ADDR", value_name = "ADDR")]
    pub(crate) metrics_addr: Option<String>,
    /// Log format [default: text]. `RUST_LOG` sets the filter.
    #[arg(long, env = "DISPATCH_LOG_FORMAT", value_name = "FORMAT")]
    pub(crate) log_format: Option<String>,
    /// Listen address of the embedded hub (only without `--cloud-url`) [default: 127.0.0.1:8787].
    #[arg(long, env = "DISPATCH_HUB_LISTEN", value_name = "ADDR")]
    pub(crate) hub_listen: Option<String>,
    /// Days the embedded hub keeps finished jobs and their payloads [default: 30].
    #[arg(long, env = "DISPATCH_HUB_RETENTION_DAYS", value_name = "DAYS")]
    pub(crate) hub_retention_days: Option<String>,
    /// Days an activation on the embedded hub lasts without a pull or heartbeat [default: 30].
    #[arg(long, env = "DISPATCH_HUB_ACTIVATION_EXPIRY_DAYS", value_name = "DAYS")]
    pub(crate) hub_activation_expiry_days: Option<String>,
    /// MiB of step logs the embedded hub keeps per job, 1 to 1024; past it a job's log is cut
    /// [default: 10].
    #[arg(long, env = "DISPATCH_HUB_JOB_LOG_CAP_MIB", value_name = "MIB")]
    pub(crate) hub_job_log_cap_mib: Option<String>,
    /// Bearer token the embedded hub's `/metrics` then requires.
    #[arg(long, env = "DISPATCH_HUB_METRICS_TOKEN", hide_env_values = true, value_parser = parse_secret, value_name = "TOKEN")]
    pub(crate) hub_metrics_token: Option<Secret>,
    /// Admin token of the embedded hub's web pages (default: a random one kept in
    /// `<home>/ui_token`, 0600; the banner prints the login link).
    #[arg(long, env = "DISPATCH_HUB_UI_TOKEN", hide_env_values = true, value_parser = parse_secret, value_name = "TOKEN")]
    pub(crate) hub_ui_token: Option<Secret>,
    /// GitHub API base URL the embedded hub reports to (GitHub Enterprise: `https://HOST/api/v3`).
    #[arg(
        long,
        env = "DISPATCH_GITHUB_API_URL",
        value_name = "URL",
        help = "GitHub API base URL the embedded hub reports to [default: https://api.github.com]"
    )]
    pub(crate) github_api_url: Option<String>,
    /// GitHub token the embedded hub reports with (commit statuses, comments).
    #[arg(long, env = "DISPATCH_GITHUB_TOKEN", hide_env_values = true, value_parser = parse_secret, value_name = "TOKEN")]
    pub(crate) github_token: Option<Secret>,
    /// The embedded hub's address as GitHub and browsers reach it: the webhook URL of its GitHub
    /// App manifest and of the banner, and the job links on GitHub (default: `http://` and the
    /// `--hub-listen` address).
    #[arg(long, env = "DISPATCH_HUB_PUBLIC_URL", value_name = "URL")]
    pub(crate) public_url: Option<String>,
    /// GitHub App the embedded hub reports as, with check runs (docs/github-app.md); needs
    /// `--github-app-key-file`.
    #[arg(long, env = "DISPATCH_HUB_GITHUB_APP_ID", value_name = "ID")]
    pub(crate) github_app_id: Option<String>,
    /// The GitHub App's private key file (PEM).
    #[arg(long, env = "DISPATCH_HUB_GITHUB_APP_KEY_FILE", value_name = "FILE")]
    pub(crate) github_app_key_file: Option<PathBuf>,
    /// Days finished runs and their logs are kept, for DAGs without `hist_retention_days`
    /// [default: 30].
    #[arg(long, env = "DISPATCH_HIST_RETENTION_DAYS", value_name = "DAYS")]
    pub(crate) hist_retention_days: Option<String>,
}

/// Flags of `scheduler demo`.
#[derive(Args, Default)]
pub(crate) struct DemoArgs {
    /// Keep the temporary home after the demo (its path is printed) instead of deleting it.
    #[arg(long)]
    pub(crate) keep: bool,
    /// Keep the embedded hub up after the table, so its web pages can be browsed (the login
    /// link is printed), until Ctrl-C.
    #[arg(long)]
    pub(crate) serve: bool,
    /// Log format of the scheduler logs shown during the demo (they go to stderr, filtered by
    /// `RUST_LOG`, default `warn`).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
}

/// Flags of `scheduler run`.
#[derive(Args, Default)]
pub(crate) struct RunArgs {
    /// A DAG file, or the name of a DAG in `<home>/dags/` (a file is anything with a `/` or a
    /// `.yaml`/`.yml` ending, or an existing file).
    #[arg(value_name = "DAG")]
    pub(crate) dag: String,
    /// Keep the run's record and logs in this home (as `scheduler start --home` would, refused
    /// while a scheduler runs on it) and look DAG names up in its `dags/`. Without it the run
    /// happens in a temporary home removed at the end, and names are looked up in the default
    /// home (`DISPATCH_HOME`, else `~/.dispatch`).
    #[arg(long, value_name = "DIR")]
    pub(crate) home: Option<PathBuf>,
    /// Params after `--`: `NAME=value` or positional values, merged into the DAG's defaults as
    /// a webhook's runtime params are.
    #[arg(last = true, value_name = "PARAMS")]
    pub(crate) params: Vec<String>,
}

/// Flags of `scheduler validate`.
#[derive(Args, Default)]
pub(crate) struct ValidateArgs {
    /// DAG files to check.
    #[arg(required = true, value_name = "FILE")]
    pub(crate) files: Vec<PathBuf>,
}

fn parse_secret(value: &str) -> Result<Secret, std::convert::Infallible> {
    Ok(Secret::new(value))
}

/// Socket address helper shared by config checks and tests.
pub(crate) fn parse_addr(value: &str) -> Result<SocketAddr, String> {
    value
        .trim()
        .parse::<SocketAddr>()
        .map_err(|_| format!("`{value}` is not an address like 127.0.0.1:9090"))
}
