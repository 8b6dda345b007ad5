//! Helpers shared by the crates' tests; used only as a dev-dependency (the layering check
//! enforces it).
//!
//! [`capture_logs`] installs a global tracing subscriber writing into a [`LogBuffer`], so a test
//! can assert that no secret reaches the logs.
//!
//! [`fixture`] reads one of the real GitHub webhook payloads the repository carries under
//! `tests/fixtures/github-webhooks/` (see the README there for their source and license).
//!
//! [`process_gone`] tells whether a process a test killed has ended.
//!
//! [`postgres_database`] gives a test a fresh PostgreSQL database ([`PgDatabase`], dropped with
//! it) on the server named by `DISPATCH_TEST_POSTGRES_URL`, which `cargo xtask ci` starts; without
//! one the test skips, except in CI, where it fails. [`create_postgres_database`] makes one on a
//! server given by URL and returns the error instead of panicking (`cargo xtask bench`).
//!
//! [`test_store_database`] gives a test the PostgreSQL database for its hub store when the run
//! asks for that backend (`DISPATCH_TEST_STORE=postgres`), and `None` on SQLite.
//!
//! [`bench_main`] is the `main` of a crate's `harness = false` bench: a scratch directory, a
//! table on stdout and the results as JSON for `cargo xtask bench`.

mod pg_database;
mod test_store;

pub use pg_database::{
    create_postgres_database, postgres_ca, postgres_database, postgres_url, PgDatabase,
    PgDatabaseError, POSTGRES_CA_VAR, POSTGRES_URL_VAR,
};
pub use test_store::{test_store_database, TEST_STORE_VAR};

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, OnceLock};

/// Everything the capturing subscriber wrote.
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    /// The captured text so far.
    pub fn contents(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Installs (once per test binary) a global subscriber with `filter` (an `EnvFilter` directive)
/// writing to the returned buffer. Global, not `set_default`: tracing caches per-callsite
/// interest, and with tests on several threads a thread-local subscriber can miss events whose
/// callsite another thread registered first. Other tests' logs land in the same buffer, which only
/// widens what a leak check covers. Later calls return the same buffer and ignore `filter`.
pub fn capture_logs(filter: &str) -> LogBuffer {
    static LOGS: OnceLock<LogBuffer> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = LogBuffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(buffer.clone())
            .with_ansi(false)
            .finish();
        // Another subscriber already installed would make the capture silently empty.
        if let Err(e) = tracing::subscriber::set_global_default(subscriber) {
            panic!("capture_logs: a global subscriber is already installed: {e}");
        }
        buffer
    })
    .clone()
}

/// The folder of real GitHub webhook payloads: `tests/fixtures/github-webhooks/` in this
/// repository, found from this crate's own manifest directory (never an absolute path).
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/github-webhooks")
}

/// The bytes of one payload, named by its path below [`fixtures_dir`] (for example
/// `"push/with-new-branch.payload.json"`). Panics naming the file when it cannot be read: a
/// missing fixture is a broken checkout, and the test must say so.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = fixtures_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// [`fixture`] as text.
pub fn fixture_str(name: &str) -> String {
    String::from_utf8(fixture(name)).unwrap_or_else(|e| panic!("fixture {name}: not UTF-8: {e}"))
}

/// A path named `name` in a fresh temporary directory, with the directory's guard: the directory
/// and what the test wrote there go when the guard drops.
pub fn temp_path(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temporary directory: {e}"));
    let path = dir.path().join(name);
    (dir, path)
}

/// True when the process `pid` has ended: it no longer exists, or it is a zombie (or dying)
/// that only waits for its parent to reap it, which a test that killed it cannot hurry. Reads
/// Linux's `/proc/<pid>/stat`.
pub fn process_gone(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // The state follows the command name in parentheses, which may itself hold `)`.
    let state = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .trim_start()
        .chars()
        .next();
    stat.is_empty() || matches!(state, Some('Z' | 'X'))
}

/// Runs a `harness = false` bench: `measure` works in a fresh scratch directory, `print` shows
/// its results, and with `--json <path>` among the arguments they are also written to `path` as
/// a JSON array. Cargo's own `--bench` and other harness flags are ignored. A failure is printed
/// and ends the bench with a failing exit code.
pub fn bench_main<R: serde::Serialize, E: std::fmt::Display>(
    measure: impl FnOnce(&Path) -> Result<Vec<R>, E>,
    print: impl FnOnce(&[R]),
) -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut json_path = None;
    while let Some(arg) = args.next() {
        if arg == "--json" {
            json_path = args.next();
        }
    }
    let scratch = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: failed to create scratch directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    let results = match measure(scratch.path()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    print(&results);
    if let Some(path) = json_path {
        let json = serde_json::to_vec_pretty(&results).unwrap_or_default();
        if let Err(e) = std::fs::write(&path, json) {
            eprintln!("error: failed to write `{path}`: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_fixture_named_in_the_readme_is_there_and_is_json() {
        let readme = std::fs::read_to_string(super::fixtures_dir().join("README.md")).unwrap();
        let mut seen = 0;
        for name in readme
            .split('`')
            .filter(|w| w.ends_with(".json") && w.contains('/'))
        {
            if name.starts_with("api.github.com/") || name.starts_with("ghes-") {
                continue;
            }
            let value: serde_json::Value = serde_json::from_slice(&super::fixture(name)).unwrap();
            assert!(value.is_object(), "{name}");
            seen += 1;
        }
        assert!(seen >= 30, "only {seen} fixtures named in the README");
    }
}
