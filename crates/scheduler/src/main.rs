//! `scheduler`: the dispatch scheduler binary (the README says how to run it).
//!
//! A thin binary: it reads settings (flags, `DISPATCH_*` env, TOML file), sets up logs, signals
//! and metrics, and wires the library crates together — license manager → cloud client →
//! worker → enqueue/executor → stores, with the tracker under `<data>/tracker`. Without a cloud
//! URL it embeds the hub on loopback and pulls from it over HTTP. `scheduler demo` runs the
//! whole loop on bundled real GitHub payloads; `scheduler run` runs one DAG by hand and
//! `scheduler validate` checks DAG files.
//!
//! Not for: business logic. Anything a test of a library could cover lives in that library.

/// `println!` that ignores a closed stdout (`scheduler demo | head`) instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod app;
mod cli;
mod config;
mod demo;
mod embedded;
mod error;
mod follow;
mod logging;
mod metrics;
mod retention;
mod run;
mod run_error;
mod signals;
mod validate;

use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::{Cli, Command};
use crate::config::{ConfigError, Settings};
use crate::error::{exit_code, AppError};

fn main() -> ExitCode {
    exit_code(run())
}

fn run() -> Result<(), AppError> {
    let cli = Cli::try_parse().map_err(ConfigError::Cli)?;
    match cli.command {
        Command::Start(args) => {
            let user_home = std::env::var_os("HOME").map(std::path::PathBuf::from);
            let settings = Settings::resolve(*args, user_home.as_deref())?;
            logging::init(settings.log_format, "info");
            runtime()?.block_on(start(settings))
        }
        Command::Demo(args) => {
            logging::init(args.log_format, "warn");
            runtime()?.block_on(demo::run(args))
        }
        Command::Run(args) => {
            logging::init(cli::LogFormat::Text, "warn");
            let user_home = std::env::var_os("HOME").map(std::path::PathBuf::from);
            let env = run::Env {
                user_home: user_home.as_deref(),
                dispatch_home: std::env::var_os("DISPATCH_HOME").map(std::path::PathBuf::from),
            };
            runtime()?.block_on(run::run(args, env))
        }
        Command::Validate(args) => validate::validate(&args),
    }
}

async fn start(settings: Settings) -> Result<(), AppError> {
    let shutdown = tokio_util::sync::CancellationToken::new();
    signals::install(shutdown.clone())
        .map_err(|err| AppError::component("install signal handlers", err))?;
    let system = app::System::start(&settings, &shutdown).await?;
    app::print_banner(&system, &settings);
    tracing::info!("scheduler running; SIGINT/SIGTERM to stop");
    system.wait().await?;
    tracing::info!("scheduler stopped");
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime, AppError> {
    // Two workers are plenty for a process that mostly waits on HTTP and child processes, and
    // keep the idle footprint small (the README's idle benchmark).
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|err| AppError::component("start the async runtime", err))
}
