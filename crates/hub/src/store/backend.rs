//! Where the store lives (a SQLite file, or a PostgreSQL database) and the read connections to
//! it.
//!
//! A [`Reader`] is one connection for lookups, behind a lock; the store keeps one and the web
//! pages open their own ([`super::Store::open_reader`]), so a slow page never holds the one the
//! cloud API reads through. SQLite readers are opened read-only.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags};

use super::pg_conn::{PgConn, PgTarget};
use super::sql::Sql;
use crate::error::HubError;

/// Where the store's data is.
#[derive(Clone)]
pub(crate) enum Location {
    /// A SQLite file (the default: `hub.sqlite3` in the data directory).
    Sqlite(PathBuf),
    /// A PostgreSQL database, with the URL's password inside (never printed).
    Postgres(Box<PgTarget>),
}

impl Location {
    /// A PostgreSQL location from a `postgres://` (or `postgresql://`) URL
    /// ([`PgTarget::parse`]). The reason of an error never repeats the URL, which may hold a
    /// password.
    pub fn postgres(url: &str) -> Result<Location, String> {
        PgTarget::parse(url).map(|target| Location::Postgres(Box::new(target)))
    }
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "sqlite `{}`", path.display()),
            Location::Postgres(target) => {
                let cfg = target.config();
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

/// A read connection, behind a lock.
pub(crate) enum Reader {
    Sqlite(Mutex<Connection>),
    /// The connection (None after it broke, until the next call opens a new one) and how to
    /// open one.
    Postgres(Box<(Mutex<Option<PgConn>>, PgTarget)>),
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
