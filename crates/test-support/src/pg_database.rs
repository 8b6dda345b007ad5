//! A fresh PostgreSQL database per test, on the server named by [`POSTGRES_URL_VAR`].
//!
//! Each test gets its own database (`CREATE DATABASE`), so tests running at once never see each
//! other's rows, and the database goes (`DROP DATABASE … WITH (FORCE)`) when the test's
//! [`PgDatabase`] drops. `cargo xtask ci` starts a throw-away server and sets the variable; without
//! it a test skips with a printed reason, except in CI (`CI` set), where it fails.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use dispatch_util::error_chain;

/// The environment variable holding the test server's URL, such as
/// `postgres://postgres@127.0.0.1:5432/postgres`. Its user must be allowed to create and drop
/// databases.
pub const POSTGRES_URL_VAR: &str = "DISPATCH_TEST_POSTGRES_URL";

/// How long the helper waits for the server to accept a connection before the test fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A fresh, empty PostgreSQL database for one test, dropped (`WITH (FORCE)`, so connections the
/// test left open do not keep it) when this value is dropped.
#[derive(Debug)]
pub struct PgDatabase {
    /// The server's URL with the database name replaced by [`Self::name`].
    url: String,
    /// The server's URL as given, used to create and drop the database.
    admin_url: String,
    name: String,
}

impl PgDatabase {
    /// The URL of this database, for the code under test to connect to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name, `dispatch_test_<pid>_<counter>_<random>`.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        // A database left behind costs disk space on a developer's server, not a wrong result,
        // so it is a warning rather than a panic (which inside an unwinding test would abort).
        if let Err(e) = run_admin(&self.admin_url, sql) {
            eprintln!(
                "warning: failed to drop test database `{}`: {}",
                self.name,
                error_chain(&e)
            );
        }
    }
}

/// The test server's URL from [`POSTGRES_URL_VAR`]. When it is unset or empty: in CI (`CI` set)
/// this panics, since a test must not skip silently there; elsewhere it prints one line to stderr
/// saying the test is skipped and why, and returns `None`.
pub fn postgres_url() -> Option<String> {
    if let Some(url) = std::env::var(POSTGRES_URL_VAR)
        .ok()
        .filter(|u| !u.is_empty())
    {
        return Some(url);
    }
    let reason = format!(
        "this test needs PostgreSQL: set {POSTGRES_URL_VAR} (postgres://user@host:port/db), or \
         run `cargo xtask ci`, which starts a throw-away cluster from Debian's `postgresql` package"
    );
    assert!(std::env::var_os("CI").is_none(), "CI is set and {reason}");
    match std::thread::current().name().filter(|n| *n != "main") {
        Some(test) => eprintln!("skipped {test}: {reason}"),
        None => eprintln!("skipped: {reason}"),
    }
    None
}

/// The environment variable naming the PEM file of the authority that signed the test server's
/// TLS certificate (`cargo xtask` starts its server with TLS and sets it).
pub const POSTGRES_CA_VAR: &str = "DISPATCH_TEST_POSTGRES_CA";

/// The file of [`POSTGRES_CA_VAR`], for the tests of TLS to the test server. When it is unset or
/// empty the test is skipped, saying why on stderr: a server of one's own
/// ([`POSTGRES_URL_VAR`] set by hand) need not speak TLS, and `cargo xtask`, which starts the
/// server in CI, always sets both (its own tests check that).
pub fn postgres_ca() -> Option<std::path::PathBuf> {
    if let Some(file) = std::env::var_os(POSTGRES_CA_VAR).filter(|f| !f.is_empty()) {
        return Some(file.into());
    }
    match std::thread::current().name().filter(|n| *n != "main") {
        Some(test) => eprint!("skipped {test}: "),
        None => eprint!("skipped: "),
    }
    eprintln!(
        "this test needs a PostgreSQL server with TLS: set {POSTGRES_CA_VAR} to the PEM file of \
         the authority that signed its certificate, or run `cargo xtask ci`, whose throw-away \
         cluster has one"
    );
    None
}

/// A new, empty database on the server of [`postgres_url`], or `None` (with the printed reason)
/// when there is no server outside CI. Panics when the server cannot create it. Safe to call from
/// inside a tokio runtime.
pub fn postgres_database() -> Option<PgDatabase> {
    let admin_url = postgres_url()?;
    match create_postgres_database(&admin_url) {
        Ok(database) => Some(database),
        Err(e) => panic!("{POSTGRES_URL_VAR}: {}", error_chain(&e)),
    }
}

/// A new, empty database on the server at `admin_url` (whose user may create databases), for a
/// caller that reports a failure itself rather than panicking, such as `cargo xtask bench`. Safe
/// to call from inside a tokio runtime.
pub fn create_postgres_database(admin_url: &str) -> Result<PgDatabase, PgDatabaseError> {
    let name = unique_name();
    let url = with_database(admin_url, &name).map_err(PgDatabaseError::Url)?;
    run_admin(admin_url, format!("CREATE DATABASE \"{name}\"")).map_err(|source| {
        PgDatabaseError::Create {
            name: name.clone(),
            source,
        }
    })?;
    Ok(PgDatabase {
        url,
        admin_url: admin_url.to_owned(),
        name,
    })
}

/// Why [`create_postgres_database`] made no database.
#[derive(Debug)]
pub enum PgDatabaseError {
    /// The server's URL is not one the helper can put a database name into.
    Url(String),
    /// The server could not be reached, or refused `CREATE DATABASE`.
    Create {
        /// The database it was asked to create.
        name: String,
        /// What the server or the connection said.
        source: postgres::Error,
    },
}

impl std::fmt::Display for PgDatabaseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PgDatabaseError::Url(reason) => write!(f, "the server URL is not usable: {reason}"),
            PgDatabaseError::Create { name, .. } => {
                write!(f, "failed to create database `{name}` on the server")
            }
        }
    }
}

impl std::error::Error for PgDatabaseError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PgDatabaseError::Url(_) => None,
            PgDatabaseError::Create { source, .. } => Some(source),
        }
    }
}

/// `dispatch_test_<pid>_<counter>_<random>`: the pid and counter keep tests running at once
/// apart; the random part keeps a new run apart from databases an earlier, killed run with the
/// same pid left behind. Only lowercase letters, digits and `_`, so it needs no escaping.
fn unique_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let counter = COUNTER.fetch_add(1, Ordering::Relaxed);
    // `RandomState` is seeded from the operating system's randomness; hashing the time on top
    // gives a new value per call without a random-number crate.
    let random = RandomState::new().hash_one(SystemTime::now()) as u32;
    format!(
        "dispatch_test_{}_{counter}_{random:08x}",
        std::process::id()
    )
}

/// Runs `sql` on a connection to `admin_url`, on a thread of its own: the blocking `postgres`
/// client drives its own tokio runtime and panics on a thread that is already inside one, as an
/// async test's thread is.
fn run_admin(admin_url: &str, sql: String) -> Result<(), postgres::Error> {
    let admin_url = admin_url.to_owned();
    std::thread::spawn(move || {
        let mut config: postgres::Config = admin_url.parse()?;
        config.connect_timeout(CONNECT_TIMEOUT);
        config.connect(postgres::NoTls)?.batch_execute(&sql)
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// `url` with its database name replaced by `name`; scheme, user, password, host, port and the
/// query parameters stay as they are, except a `dbname` parameter, which would override the path.
fn with_database(url: &str, name: &str) -> Result<String, String> {
    let (scheme, rest) = ["postgres://", "postgresql://"]
        .into_iter()
        .find_map(|scheme| Some((scheme, url.strip_prefix(scheme)?)))
        .ok_or("expected a URL starting with `postgres://` or `postgresql://`")?;
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    // User, password and host cannot hold a raw `/` (it would be percent-encoded), so the first
    // one ends them and starts the database name.
    let authority = before_query.split('/').next().unwrap_or_default();
    let mut out = format!("{scheme}{authority}/{name}");
    let kept: Vec<&str> = query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty() && p.split('=').next() != Some("dbname"))
        .collect();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_name_is_replaced_and_the_rest_kept() {
        let cases = [
            (
                "postgres://postgres@127.0.0.1:5432/postgres",
                "postgres://postgres@127.0.0.1:5432/db",
            ),
            ("postgres://u:p%2Fw@h/x", "postgres://u:p%2Fw@h/db"),
            ("postgresql://h:1", "postgresql://h:1/db"),
            ("postgres://h/", "postgres://h/db"),
            (
                "postgres://[::1]:5433/a?sslmode=disable&application_name=t",
                "postgres://[::1]:5433/db?sslmode=disable&application_name=t",
            ),
            ("postgres://h?dbname=a&user=u", "postgres://h/db?user=u"),
            ("postgres://h/a?dbname=a", "postgres://h/db"),
            (
                "postgres://%2Ftmp%2Fsock/postgres?connect_timeout=3",
                "postgres://%2Ftmp%2Fsock/db?connect_timeout=3",
            ),
        ];
        for (url, want) in cases {
            assert_eq!(with_database(url, "db").as_deref(), Ok(want), "{url}");
        }
        assert!(with_database("host=h dbname=a", "db").is_err());
        assert!(with_database("mysql://h/a", "db").is_err());
    }

    #[test]
    fn a_bad_url_or_an_absent_server_is_an_error_not_a_panic() {
        let err = create_postgres_database("mysql://h/a").unwrap_err();
        assert!(matches!(err, PgDatabaseError::Url(_)), "{err:?}");
        assert!(err
            .to_string()
            .starts_with("the server URL is not usable: "));
        // Nothing listens on port 1 of the loopback: the connection is refused at once.
        let err = create_postgres_database("postgres://postgres@127.0.0.1:1/postgres").unwrap_err();
        let PgDatabaseError::Create { name, .. } = &err else {
            panic!("expected a failed CREATE DATABASE, got {err:?}");
        };
        assert!(name.starts_with("dispatch_test_"), "{name}");
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn names_are_unique_and_plain() {
        let (a, b) = (unique_name(), unique_name());
        assert_ne!(a, b);
        for name in [a, b] {
            assert!(name.starts_with("dispatch_test_"), "{name}");
            assert!(
                name.len() <= 63,
                "longer than PostgreSQL's identifier limit: {name}"
            );
            assert!(
                name.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_'),
                "{name}"
            );
        }
    }

    /// Runs `sql` with one text parameter on a fresh connection to `url` and returns the count it
    /// selects, on a thread of its own like the helper's own calls.
    fn count(url: &str, sql: &'static str, param: &str) -> i64 {
        let (url, param) = (url.to_owned(), param.to_owned());
        std::thread::spawn(move || {
            let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            client.query_one(sql, &[&param]).unwrap().get(0)
        })
        .join()
        .unwrap()
    }

    #[test]
    fn each_database_is_new_reachable_apart_and_dropped_with_its_value() {
        // Created inside a runtime, as an async test would, to show the helper works there.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let Some(a) = runtime.block_on(async { postgres_database() }) else {
            return;
        };
        let b = runtime.block_on(async { postgres_database() }).unwrap();
        assert_ne!(a.name(), b.name());
        assert_ne!(a.url(), b.url());

        let url_a = a.url().to_owned();
        // A connection left open on `a` while it drops: `WITH (FORCE)` must end it.
        let open_on_a = std::thread::spawn(move || {
            let mut client = postgres::Client::connect(&url_a, postgres::NoTls).unwrap();
            client
                .batch_execute("CREATE TABLE only_in_a (x int)")
                .unwrap();
            client
        })
        .join()
        .unwrap();
        let current = "SELECT count(*) WHERE current_database() = $1";
        assert_eq!(count(a.url(), current, a.name()), 1);
        assert_eq!(count(b.url(), current, b.name()), 1);
        let table = "SELECT count(*) FROM pg_tables WHERE tablename = $1";
        assert_eq!(count(a.url(), table, "only_in_a"), 1);
        assert_eq!(count(b.url(), table, "only_in_a"), 0, "b sees a's table");

        let admin_url = postgres_url().unwrap();
        let exists = "SELECT count(*) FROM pg_database WHERE datname = $1";
        let names = [a.name().to_owned(), b.name().to_owned()];
        drop((a, b));
        for name in &names {
            assert_eq!(count(&admin_url, exists, name), 0, "{name} still exists");
        }
        drop(open_on_a);
    }
}
