//! Where the store lives (a SQLite file, or a PostgreSQL database) and the read connections to
//! it.
//!
//! A [`Reader`] is one connection for lookups, behind a lock; the store keeps one and the web
//! pages open their own ([`super::Store::open_reader`]), so a slow page never holds the one the
//! cloud API reads through. SQLite readers are opened read-only.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags};

use super::sql::{Pg, PgSession, Sql};
use crate::error::HubError;

/// Where the store's data is.
#[derive(Clone)]
pub(crate) enum Location {
    /// A SQLite file (the default: `hub.sqlite3` in the data directory).
    Sqlite(PathBuf),
    /// A PostgreSQL database, with the URL's password inside the config (never printed).
    Postgres(Box<postgres::Config>),
}

impl Location {
    /// A PostgreSQL location from a `postgres://` (or `postgresql://`) URL. The reason of an
    /// error never repeats the URL, which may hold a password.
    pub fn postgres(url: &str) -> Result<Location, String> {
        let url = url.trim();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err("must be a postgres:// URL (unset it to keep the SQLite store)".into());
        }
        let cfg: postgres::Config = url
            .parse()
            .map_err(|e: postgres::Error| format!("is not a valid PostgreSQL URL ({e})"))?;
        if cfg.get_dbname().is_none() {
            return Err("must name the database (postgres://user@host/<database>)".into());
        }
        Ok(Location::Postgres(Box::new(cfg)))
    }
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "sqlite `{}`", path.display()),
            Location::Postgres(cfg) => {
                let hosts: Vec<String> = cfg
                    .get_hosts()
                    .iter()
                    .map(|h| match h {
                        postgres::config::Host::Tcp(name) => name.clone(),
                        postgres::config::Host::Unix(path) => path.display().to_string(),
                    })
                    .collect();
                write!(
                    f,
                    "postgres database `{}` on {}",
                    cfg.get_dbname().unwrap_or("(default)"),
                    hosts.join(",")
                )
            }
        }
    }
}

/// A PostgreSQL connection with the statements prepared on it.
pub(crate) struct PgConn {
    pub client: postgres::Client,
    pub prepared: RefCell<HashMap<String, postgres::Statement>>,
}

/// How long a connection attempt to PostgreSQL may take before it is an error.
const PG_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The server ends a session of ours that sits this long inside a transaction waiting for us
/// (`idle_in_transaction_session_timeout`, ms). A write group holds the writers' advisory lock,
/// and with it every replica's writes, until its transaction ends; a replica cut off from the
/// database mid-group without its connection closing (a network partition, a stalled proxy)
/// would otherwise hold it until the server's TCP keepalive gives up, hours later. Our own
/// transactions never wait on us between statements for more than moments.
const PG_IDLE_IN_TRANSACTION_MS: u32 = 30_000;

/// How long data the hub sent may go unacknowledged by the database's machine before the
/// connection is dropped (`TCP_USER_TIMEOUT`), and how soon an idle connection is probed
/// (keepalive after this long, then every [`PG_PROBE_EVERY`], given up after
/// [`PG_PROBES`] unanswered probes). Without them a replica cut off from its database (a network
/// partition, a database machine gone without closing its connections) waits in a call until
/// the kernel gives up, about 15 minutes with data in flight and 2 hours without; with them the
/// call fails within about 30 s, the API answers 503 and the connection is made again. A slow
/// query is not cut: the database's machine acknowledges while the query runs.
const PG_LINK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
const PG_PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
const PG_PROBES: u32 = 3;
/// The kernel's (and the `postgres` crate's) time before the first keepalive probe.
const KEEPALIVE_IDLE_DEFAULT: std::time::Duration = std::time::Duration::from_secs(2 * 60 * 60);

/// `cfg` with the hub's session settings wherever the store URL does not give its own: the
/// connect timeout, the link timeouts ([`PG_LINK_TIMEOUT`]) and
/// `idle_in_transaction_session_timeout`.
fn session_config(cfg: &postgres::Config) -> postgres::Config {
    let mut cfg = cfg.clone();
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(PG_CONNECT_TIMEOUT);
    }
    if cfg.get_tcp_user_timeout().is_none() {
        cfg.tcp_user_timeout(PG_LINK_TIMEOUT);
    }
    if cfg.get_keepalives_idle() == KEEPALIVE_IDLE_DEFAULT {
        cfg.keepalives_idle(PG_LINK_TIMEOUT - PG_PROBE_EVERY * PG_PROBES);
    }
    if cfg.get_keepalives_interval().is_none() {
        cfg.keepalives_interval(PG_PROBE_EVERY);
    }
    if cfg.get_keepalives_retries().is_none() {
        cfg.keepalives_retries(PG_PROBES);
    }
    let given = cfg.get_options().unwrap_or_default();
    if !given.contains("idle_in_transaction_session_timeout") {
        let ours = format!("-c idle_in_transaction_session_timeout={PG_IDLE_IN_TRANSACTION_MS}");
        cfg.options(format!("{given} {ours}").trim_start());
    }
    cfg
}

/// TLS to PostgreSQL: the server's certificate is checked against the web's root authorities
/// (webpki-roots) and its name. The URL's `sslmode` decides whether TLS is used: `require`
/// refuses a server without it, `prefer` (the default) uses it when the server offers it, and
/// `disable` never does (a local socket, a private network).
fn tls() -> Result<tokio_postgres_rustls::MakeRustlsConnect, HubError> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HubError::PgTls {
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

impl PgConn {
    /// Connects, over TLS when the server offers it (see [`tls`]).
    pub fn connect(cfg: &postgres::Config) -> Result<PgConn, HubError> {
        let client = session_config(cfg)
            .connect(tls()?)
            .map_err(HubError::store("connect to PostgreSQL"))?;
        Ok(PgConn {
            client,
            prepared: RefCell::new(HashMap::new()),
        })
    }

    /// A connection whose transactions cannot write, as SQLite's read-only readers.
    pub fn read_only(cfg: &postgres::Config) -> Result<PgConn, HubError> {
        let mut conn = PgConn::connect(cfg)?;
        conn.client
            .batch_execute("SET default_transaction_read_only = on")
            .map_err(HubError::store("make a read connection read-only"))?;
        Ok(conn)
    }

    /// Runs `f` on the connection outside any transaction.
    pub fn with<T>(
        &mut self,
        f: impl FnOnce(&dyn Sql) -> Result<T, HubError>,
    ) -> Result<T, HubError> {
        let pg = Pg::new(PgSession::Client(&mut self.client), &self.prepared);
        f(&pg)
    }
}

/// A read connection, behind a lock.
pub(crate) enum Reader {
    Sqlite(Mutex<Connection>),
    /// The connection (None after it broke, until the next call opens a new one) and how to
    /// open one.
    Postgres(Box<(Mutex<Option<PgConn>>, postgres::Config)>),
}

impl Reader {
    /// Opens a read connection to `at`, read-only on both backends.
    pub fn open(at: &Location) -> Result<Reader, HubError> {
        match at {
            Location::Sqlite(path) => Ok(Reader::Sqlite(Mutex::new(open_read_only(path)?))),
            Location::Postgres(cfg) => Ok(Reader::Postgres(Box::new((
                Mutex::new(Some(PgConn::read_only(cfg)?)),
                (**cfg).clone(),
            )))),
        }
    }

    /// A reader over an open SQLite connection.
    pub fn sqlite(conn: Connection) -> Reader {
        Reader::Sqlite(Mutex::new(conn))
    }

    /// Runs `f` over the connection. A PostgreSQL connection that broke is opened again on the
    /// next call (the error of this one is returned).
    pub fn read<T>(&self, f: impl FnOnce(&dyn Sql) -> Result<T, HubError>) -> Result<T, HubError> {
        // A panic while holding a lock cannot leave a connection in a bad state.
        match self {
            Reader::Sqlite(conn) => f(&*conn.lock().unwrap_or_else(|p| p.into_inner())),
            Reader::Postgres(pg) => {
                let (conn, cfg) = &**pg;
                let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
                if conn.as_ref().is_none_or(|c| c.client.is_closed()) {
                    *conn = None;
                    *conn = Some(PgConn::read_only(cfg)?);
                }
                let Some(c) = conn.as_mut() else {
                    return Err(HubError::StoreClosed);
                };
                c.with(f)
            }
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // The blocking PostgreSQL client closes its connection on a runtime of its own, which
        // panics on a thread that drives async tasks. The last handle on a store or on the web
        // pages' state may well go there (the server's router drops at shutdown), so there the
        // connection is closed on a thread of its own.
        let Reader::Postgres(pg) = self else {
            return;
        };
        let conn = pg.0.get_mut().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(conn) = conn {
            if tokio::runtime::Handle::try_current().is_ok() {
                std::thread::spawn(move || drop(conn));
            }
        }
    }
}

/// A SQLite connection that cannot write, waiting up to 5 s for a writer's lock.
fn open_read_only(path: &Path) -> Result<Connection, HubError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(HubError::store("open a read connection"))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(HubError::store("set the busy timeout"))?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The test server speaks no TLS: `sslmode=require` refuses it, the default falls back to a
    /// plain connection.
    #[test]
    fn sslmode_require_refuses_a_server_without_tls() {
        let Some(url) = dispatch_test_support::postgres_url() else {
            return;
        };
        let sep = if url.contains('?') { '&' } else { '?' };
        let Location::Postgres(strict) =
            Location::postgres(&format!("{url}{sep}sslmode=require")).unwrap()
        else {
            unreachable!("a postgres URL");
        };
        let err = PgConn::connect(&strict)
            .err()
            .expect("no TLS, no connection");
        let chain = dispatch_util::error_chain(&err);
        assert!(chain.contains("TLS"), "{chain}");
        let Location::Postgres(default) = Location::postgres(&url).unwrap() else {
            unreachable!("a postgres URL");
        };
        let mut conn = PgConn::connect(&default).unwrap();
        assert!(conn.client.simple_query("SELECT 1").is_ok());
    }

    #[test]
    fn the_hubs_session_settings_fill_in_what_the_url_leaves_out() {
        let Location::Postgres(bare) = Location::postgres("postgres://u@db/d").unwrap() else {
            unreachable!()
        };
        let ours = session_config(&bare);
        assert_eq!(ours.get_connect_timeout(), Some(&PG_CONNECT_TIMEOUT));
        assert_eq!(ours.get_tcp_user_timeout(), Some(&PG_LINK_TIMEOUT));
        assert_eq!(ours.get_keepalives_idle(), Duration::from_secs(15));
        assert_eq!(ours.get_keepalives_interval(), Some(PG_PROBE_EVERY));
        assert_eq!(ours.get_keepalives_retries(), Some(PG_PROBES));
        assert_eq!(
            ours.get_options(),
            Some("-c idle_in_transaction_session_timeout=30000")
        );
        // What the URL says wins.
        let url = "postgres://u@db/d?connect_timeout=3&tcp_user_timeout=7&keepalives_idle=60\
                   &keepalives_interval=20&keepalives_retries=9\
                   &options=-c%20idle_in_transaction_session_timeout%3D5000";
        let Location::Postgres(given) = Location::postgres(url).unwrap() else {
            unreachable!()
        };
        let kept = session_config(&given);
        assert_eq!(kept.get_connect_timeout(), Some(&Duration::from_secs(3)));
        assert_eq!(kept.get_tcp_user_timeout(), Some(&Duration::from_secs(7)));
        assert_eq!(kept.get_keepalives_idle(), Duration::from_secs(60));
        assert_eq!(
            kept.get_keepalives_interval(),
            Some(Duration::from_secs(20))
        );
        assert_eq!(kept.get_keepalives_retries(), Some(9));
        assert_eq!(
            kept.get_options(),
            Some("-c idle_in_transaction_session_timeout=5000")
        );
    }

    #[test]
    fn a_bad_store_url_is_named_without_its_password() {
        for url in [
            "mysql://u:hunter2@h/db",
            "postgres://u:hunter2@h:notaport/db",
            "postgres://u:hunter2@h:5432",
        ] {
            let reason = Location::postgres(url).err().unwrap();
            assert!(!reason.contains("hunter2"), "{reason}");
        }
    }
}
