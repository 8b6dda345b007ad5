//! The store's one writer: a thread that owns the write connection and commits in groups.
//!
//! Group commit: the writer takes every write waiting in its channel (up to [`MAX_BATCH`]), runs
//! each in its own savepoint inside one `BEGIN IMMEDIATE` transaction, commits once (one fsync) and
//! only then answers the callers. A write that fails rolls back its savepoint alone. Concurrent
//! webhooks and pulls thus share fsyncs instead of queueing behind one another, while every
//! answer still waits for its own data to be durable.

use std::path::Path;
use std::sync::mpsc::{Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, TransactionBehavior};

use super::pg_conn::{PgConn, PgTarget};
use super::sql::{Pg, PgSession, Sql, SqlError};
use crate::error::HubError;

/// The key of the PostgreSQL advisory lock every write group holds (any fixed number; this one
/// spells "dispatch" in ASCII).
pub(super) const WRITE_LOCK: i64 = 0x6469_7370_6174_6368;

/// Most writes committed together.
const MAX_BATCH: usize = 64;

/// Opens a connection in the mode every store connection uses: WAL, `synchronous = FULL`, and a
/// busy timeout so that several hub processes sharing the file wait for each other.
pub(super) fn open_connection(path: &Path) -> Result<Connection, HubError> {
    let conn = Connection::open(path).map_err(HubError::store("open the database"))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(HubError::store("set the busy timeout"))?;
    // Only a database without tables takes this at once (switching WAL on first would already
    // count as content); an older one is switched by a schema step's `VACUUM`.
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
        .map_err(HubError::store("set incremental auto-vacuum"))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(HubError::store("enable WAL mode"))?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(HubError::store("set synchronous mode"))?;
    Ok(conn)
}

/// Whether a write must be on disk before its caller hears back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Durability {
    /// Fsynced with its group (`synchronous = FULL`).
    Full,
    /// Committed without an fsync of its own: it survives a crash of the hub process, not a power
    /// cut, until the next durable commit fsyncs the WAL. Only for lease claims, which the
    /// protocol already treats as revocable.
    Revocable,
}

/// The sending side of the writer thread.
pub(super) struct Writer {
    ops: Mutex<Sender<Box<dyn WriteOp>>>,
}

impl Writer {
    /// Starts the writer thread on `conn`; it ends when the [`Writer`] is dropped.
    pub fn start(conn: Connection, path: &Path) -> Result<Writer, HubError> {
        Writer::spawn(WriteConn::Sqlite(conn), path)
    }

    /// Starts the writer thread on a PostgreSQL connection; `cfg` opens a new one when it breaks.
    pub fn start_postgres(conn: PgConn, cfg: PgTarget) -> Result<Writer, HubError> {
        Writer::spawn(
            WriteConn::Postgres(Box::new((Some(conn), cfg))),
            Path::new("postgres"),
        )
    }

    fn spawn(conn: WriteConn, name: &Path) -> Result<Writer, HubError> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("hub-store-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(|source| HubError::Io {
                path: name.to_owned(),
                source,
            })?;
        Ok(Writer {
            ops: Mutex::new(tx),
        })
    }

    /// Runs `f` in the writer's next group commit and waits until that commit is done.
    pub fn write<T: Send + 'static>(
        &self,
        durability: Durability,
        f: impl FnOnce(&dyn Sql) -> Result<T, HubError> + Send + 'static,
    ) -> Result<T, HubError> {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        let op: Box<dyn WriteOp> = Box::new(Op {
            durability,
            f: Some(f),
            result: None,
            reply,
        });
        self.ops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(op)
            .map_err(|_| HubError::StoreClosed)?;
        answer.recv().map_err(|_| HubError::StoreClosed)?
    }
}

/// One queued write: run inside a savepoint (true = keep it), then hear how the commit went.
trait WriteOp: Send {
    fn durability(&self) -> Durability;
    fn run(&mut self, conn: &dyn Sql) -> bool;
    fn complete(self: Box<Self>, commit: Result<(), Arc<SqlError>>);
}

struct Op<T, F> {
    durability: Durability,
    f: Option<F>,
    result: Option<Result<T, HubError>>,
    reply: SyncSender<Result<T, HubError>>,
}

impl<T: Send, F: FnOnce(&dyn Sql) -> Result<T, HubError> + Send> WriteOp for Op<T, F> {
    fn durability(&self) -> Durability {
        self.durability
    }

    fn run(&mut self, conn: &dyn Sql) -> bool {
        let Some(f) = self.f.take() else { return false };
        let result = f(conn);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn complete(self: Box<Self>, commit: Result<(), Arc<SqlError>>) {
        let answer = match (self.result, commit) {
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(_)), Err(source)) | (None, Err(source)) => Err(HubError::Commit { source }),
            (Some(Ok(value)), Ok(())) => Ok(value),
            (None, Ok(())) => Err(HubError::StoreClosed),
        };
        // The caller may have gone away (its task was cancelled); the write stands either way.
        let _ = self.reply.send(answer);
    }
}

/// The writer's connection.
enum WriteConn {
    Sqlite(Connection),
    /// None after the connection broke, until it is opened again.
    Postgres(Box<(Option<PgConn>, PgTarget)>),
}

fn writer_loop(mut conn: WriteConn, ops: Receiver<Box<dyn WriteOp>>) {
    while let Ok(first) = ops.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match ops.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let commit = match &mut conn {
            WriteConn::Sqlite(c) => run_batch(c, &mut batch).map_err(SqlError::from),
            WriteConn::Postgres(pg) => {
                let (c, cfg) = &mut **pg;
                run_pg_batch(c, cfg, &mut batch)
            }
        }
        .map_err(Arc::new);
        if let Err(e) = &commit {
            tracing::error!(error = %e, writes = batch.len(), "hub store commit failed");
        }
        for op in batch {
            op.complete(commit.clone());
        }
    }
}

fn run_batch(conn: &mut Connection, batch: &mut [Box<dyn WriteOp>]) -> Result<(), rusqlite::Error> {
    // In WAL mode `NORMAL` commits without an fsync (the data is in the OS cache: it survives a
    // crash of this process, not a power cut); the next `FULL` commit fsyncs the WAL, earlier
    // frames included.
    let durable = batch.iter().any(|op| op.durability() == Durability::Full);
    conn.pragma_update(None, "synchronous", if durable { "FULL" } else { "NORMAL" })?;
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for op in batch.iter_mut() {
        let sp = tx.savepoint()?;
        if op.run(&*sp) {
            sp.commit()?;
        }
        // A failed write's savepoint is rolled back when dropped.
    }
    tx.commit()
}

/// One group on PostgreSQL: a connection that broke is opened again first; the writes run in
/// savepoints inside one transaction holding [`WRITE_LOCK`]. A group of lease claims only commits
/// with `synchronous_commit = off` (durable at the next flush, as SQLite's `NORMAL`).
fn run_pg_batch(
    conn: &mut Option<PgConn>,
    cfg: &PgTarget,
    batch: &mut [Box<dyn WriteOp>],
) -> Result<(), SqlError> {
    if conn.as_ref().is_none_or(|c| c.client.is_closed()) {
        *conn = None;
        let fresh = PgConn::connect(cfg).map_err(|e| match e {
            HubError::Store { source, .. } => source,
            other => SqlError::Lost(other.to_string()),
        })?;
        *conn = Some(fresh);
    }
    let Some(pg) = conn.as_mut() else {
        return Err(SqlError::Lost("no connection".into()));
    };
    let durable = batch.iter().any(|op| op.durability() == Durability::Full);
    let mut tx = pg.client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])?;
    if !durable {
        tx.batch_execute("SET LOCAL synchronous_commit = off")?;
    }
    for op in batch.iter_mut() {
        let mut sp = tx.savepoint("write")?;
        let keep = {
            let db = Pg::new(PgSession::Tx(&mut sp), &pg.prepared);
            op.run(&db)
        };
        if keep {
            sp.commit()?;
        }
        // A failed write's savepoint is rolled back when dropped.
    }
    tx.commit()?;
    Ok(())
}

/// A database file, not yet made, in a fresh temporary directory that goes when the `TempDir`
/// is dropped.
#[cfg(test)]
pub(super) fn temp_database() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.sqlite3");
    (dir, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_rolls_back_alone_within_its_group() {
        let (_dir, path) = temp_database();
        let mut conn = open_connection(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (v INTEGER)").unwrap();
        let op = |v: i64, fail: bool| {
            let (reply, answer) = std::sync::mpsc::sync_channel(1);
            let f = move |c: &dyn Sql| {
                c.execute("INSERT INTO t (v) VALUES (?1)", crate::store::sql::args![v])
                    .map_err(HubError::store("insert"))?;
                if fail {
                    return Err(HubError::StoreClosed);
                }
                Ok(v)
            };
            let boxed: Box<dyn WriteOp> = Box::new(Op {
                // Only the failing write asks for durability, so the group must still fsync.
                durability: if fail {
                    Durability::Full
                } else {
                    Durability::Revocable
                },
                f: Some(f),
                result: None,
                reply,
            });
            (boxed, answer)
        };
        let synchronous = |c: &Connection| -> i64 {
            c.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap()
        };
        let (a, ra) = op(1, false);
        let (b, rb) = op(2, true);
        let (c, rc) = op(3, false);
        let mut batch = vec![a, b, c];
        run_batch(&mut conn, &mut batch).unwrap();
        assert_eq!(
            synchronous(&conn),
            2,
            "a group with a durable write commits FULL"
        );
        for o in batch {
            o.complete(Ok(()));
        }
        assert_eq!(ra.recv().unwrap().unwrap(), 1);
        assert!(matches!(rb.recv().unwrap(), Err(HubError::StoreClosed)));
        assert_eq!(rc.recv().unwrap().unwrap(), 3);
        let reader = open_connection(&path).unwrap();
        let values: Vec<i64> = reader
            .prepare("SELECT v FROM t ORDER BY v")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(values, vec![1, 3]);
        // A group of lease claims only commits without its own fsync (NORMAL).
        let (d, rd) = op(4, false);
        let mut batch = vec![d];
        run_batch(&mut conn, &mut batch).unwrap();
        batch.pop().unwrap().complete(Ok(()));
        assert_eq!(rd.recv().unwrap().unwrap(), 4);
        assert_eq!(synchronous(&conn), 1);
    }
}
