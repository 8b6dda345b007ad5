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

use super::sql::{Pg, PgSession, Sql, SqlError};
use crate::error::HubError;

/// Where the store's data is.
#[derive(Clone)]
pub(crate) enum Location {
    /// A SQLite file (the default: `hub.sqlite3` in the data directory).
    Sqlite(PathBuf),
    /// A PostgreSQL database, with the URL's password inside the config (never printed).
    Postgres(Box<postgres::Config>),
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

impl PgConn {
    /// Connects (plain TCP or a Unix socket: TLS to the database is left to the network, as with
    /// a local socket or a private network).
    pub fn connect(cfg: &postgres::Config) -> Result<PgConn, HubError> {
        let mut cfg = cfg.clone();
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(PG_CONNECT_TIMEOUT);
        }
        let client = cfg
            .connect(postgres::NoTls)
            .map_err(HubError::store("connect to PostgreSQL"))?;
        Ok(PgConn {
            client,
            prepared: RefCell::new(HashMap::new()),
        })
    }

    /// Runs `f` on the connection outside any transaction.
    pub fn with<T>(
        &mut self,
        f: impl FnOnce(&dyn Sql) -> Result<T, HubError>,
    ) -> Result<T, HubError> {
        let pg = Pg::new(PgSession::Client(&mut self.client), &self.prepared);
        f(&pg)
    }

    /// Runs `f` in a transaction of its own, committed when it returns Ok.
    pub fn transaction<T>(
        &mut self,
        f: impl FnOnce(&dyn Sql) -> Result<T, HubError>,
    ) -> Result<T, HubError> {
        let mut tx = self
            .client
            .transaction()
            .map_err(HubError::store("begin a transaction"))?;
        let value = {
            let pg = Pg::new(PgSession::Tx(&mut tx), &self.prepared);
            f(&pg)?
        };
        tx.commit()
            .map_err(HubError::store("commit a transaction"))?;
        Ok(value)
    }
}

/// A read connection, behind a lock.
pub(crate) enum Reader {
    Sqlite(Mutex<Connection>),
    Postgres(Mutex<PgConn>),
}

impl Reader {
    /// Opens a read connection to `at`; a SQLite file is opened read-only.
    pub fn open(at: &Location) -> Result<Reader, HubError> {
        match at {
            Location::Sqlite(path) => Ok(Reader::Sqlite(Mutex::new(open_read_only(path)?))),
            Location::Postgres(cfg) => Ok(Reader::Postgres(Mutex::new(PgConn::connect(cfg)?))),
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
            Reader::Postgres(conn) => {
                let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
                conn.with(f)
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

/// Whether `err` says the PostgreSQL connection is gone (the server went away, the network
/// broke): the caller opens a new one.
pub(crate) fn connection_lost(err: &SqlError) -> bool {
    matches!(err, SqlError::Postgres(e) if e.is_closed())
}
