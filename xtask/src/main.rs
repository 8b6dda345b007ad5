//! Workspace automation for dispatch, run as `cargo xtask <command>`.
//!
//! Commands live in their own modules; adding one is a new arm in [`run`] and a line in [`USAGE`].
//! This binary is tooling only: no workspace crate depends on it. Of ours it uses only
//! `dispatch-protocol` (to sign bench webhooks as GitHub does) and `dispatch-test-support` (to read
//! the payload fixtures the tests read, to agree with the tests on the variable naming their
//! PostgreSQL server, and to make the bench's PostgreSQL database as theirs are made).

mod bench;
mod ci;
mod command;
mod imports;
mod layering;
mod postgres;
mod postgres_tls;
mod tidy;
mod unicode_table;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  bench [--only GROUP] [--out FILE] [--keep]
                             the README's benchmark numbers (release build, ~5 min): one table and
                             target/bench/results.json; GROUP: tracker, noop, latency, throughput,
                             fleet, postgres, idle, pages, hostile; --keep keeps the scratch homes
                             and logs under target/bench/work; postgres uses the server of
                             DISPATCH_TEST_POSTGRES_URL, else a throw-away cluster
  ci                         fmt check, clippy, tests (with a throw-away PostgreSQL cluster unless
                             DISPATCH_TEST_POSTGRES_URL is set), docs, the layering, tidy and
                             imports checks
  imports                    check that inside each crate files import only downwards (no loops)
  layering                   check that every workspace crate depends only on lower layers
                             (docs/architecture.md)
  postgres                   start the throw-away PostgreSQL cluster `ci` gives the tests, print
                             its DISPATCH_TEST_POSTGRES_URL and keep it until Enter
  tidy                       check that no tracked file refers to a path outside the repository
  unicode-table [DATA_FILE]  regenerate webhook-params' printable-rune table from UnicodeData.txt
                             (default /usr/share/unicode/UnicodeData.txt, Debian package unicode-data)
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> anyhow::Result<()> {
    let root = workspace_root();
    match args.first().map(String::as_str) {
        Some("bench") => bench::run(&root, &args[1..]),
        Some("ci") => ci::run(&root),
        Some("layering") => layering::run(&root),
        Some("postgres") => postgres::run_until_enter(),
        Some("tidy") => tidy::run(&root),
        Some("imports") => imports::run(&root),
        Some("unicode-table") => {
            let data = args
                .get(1)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(unicode_table::DEFAULT_DATA_FILE));
            unicode_table::run(&root, &data)
        }
        Some("help" | "-h" | "--help") => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => anyhow::bail!("unknown command `{other}`\n\n{USAGE}"),
        None => anyhow::bail!("no command given\n\n{USAGE}"),
    }
}

/// The workspace root: xtask always lives one directory below it, so this does not depend on
/// the directory `cargo xtask` was started from. `cargo run` sets `CARGO_MANIFEST_DIR` for the
/// process; it is read at run time because a build reused from another checkout of the same
/// workspace (same target dir) would carry that checkout's compile-time path.
fn workspace_root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The cargo that started us (set by `cargo run`), so nested commands use the same toolchain.
fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}
