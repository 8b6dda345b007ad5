//! The hub's SQLite store: jobs with their lease state, deliveries (for redelivery dedupe),
//! activations and pending GitHub reports.
//!
//! Synchronous on purpose, called from `spawn_blocking`. All writes go through one writer thread
//! with group commit (see [`Store`]); every write runs inside a `BEGIN IMMEDIATE` transaction, so a
//! job is claimed by exactly one caller even with several hub processes sharing the file. WAL mode
//! with `synchronous = FULL`: an answer is sent only after its write is fsynced — except lease
//! claims, committed without their own fsync (see `Store::write_lease`).

use std::path::Path;
use std::sync::{Arc, Mutex};

use dispatch_protocol::DispatchJob;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde_json::value::RawValue;

use crate::matching::NewJob;
use crate::HubError;

/// Job states, as stored and as sent in a pulled job's `status`.
pub(crate) const QUEUED: &str = "queued";
pub(crate) const CLAIMED: &str = "claimed";
pub(crate) const ACCEPTED: &str = "accepted";
pub(crate) const FINISHED: &str = "finished";

/// A job whose claim has run out this many times is finished as `rejected`: a job no scheduler
/// can take (say, a payload too big for its client) must not block the queue forever.
pub(crate) const MAX_CLAIMS: i64 = 5;

/// Largest pull answer a scheduler reads (SPEC §2: at most 1 MiB of a response body).
pub(crate) const MAX_JOB_ANSWER_BYTES: usize = 1024 * 1024;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    target_license TEXT NOT NULL,
    status_context TEXT NOT NULL,
    state TEXT NOT NULL,
    claimed_license TEXT NOT NULL DEFAULT '',
    claimed_by TEXT NOT NULL DEFAULT '',
    lease_expires_ms INTEGER NOT NULL DEFAULT 0,
    claims INTEGER NOT NULL DEFAULT 0,
    dag_run_id TEXT NOT NULL DEFAULT '',
    result_status TEXT NOT NULL DEFAULT '',
    result_summary TEXT NOT NULL DEFAULT '',
    job_json TEXT NOT NULL,
    payload TEXT NOT NULL,
    headers TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state, seq);
CREATE TABLE IF NOT EXISTS deliveries (
    delivery_id TEXT PRIMARY KEY,
    event TEXT NOT NULL,
    job_ids TEXT NOT NULL,
    received_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS activations (
    license_id TEXT NOT NULL,
    server_id TEXT NOT NULL,
    machine_name TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL,
    activated_ms INTEGER NOT NULL,
    PRIMARY KEY (license_id, server_id)
);
CREATE TABLE IF NOT EXISTS reports (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    path TEXT NOT NULL,
    body TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL,
    last_error TEXT NOT NULL DEFAULT ''
);
";

/// The raw delivery all jobs of one webhook share, stored with each job byte for byte.
pub(crate) struct RawDelivery {
    /// The body (outer whitespace trimmed: a JSON value cannot carry it).
    pub payload: String,
    /// The kept headers as a JSON object.
    pub headers: String,
}

/// The job ids a delivery produced, and whether this call was a redelivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeliveryOutcome {
    pub job_ids: Vec<String>,
    pub duplicate: bool,
}

/// What accept or finish did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Transition {
    /// The state changed.
    Done,
    /// The same call was already applied; nothing changed.
    Repeated,
    /// No such job (or it belongs to another license).
    NotFound,
    /// The job is not in a state this caller may change; the reason is safe to show.
    Conflict(String),
}

/// Who is calling accept or finish: the machine credentials' license and server.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caller<'a> {
    pub license_id: &'a str,
    pub server_id: &'a str,
}

/// A job as finish sees it, for building reports.
pub(crate) struct FinishedJob {
    pub job: DispatchJob,
    pub status_context: String,
}

/// A GitHub API call waiting to be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PendingReport {
    pub id: i64,
    pub job_id: String,
    /// Path under the API base URL, e.g. `/repos/o/r/statuses/<sha>`.
    pub path: String,
    /// JSON body.
    pub body: String,
    pub attempts: i64,
}

/// The store: one writer thread that owns the write connection and commits in groups, plus a
/// read connection for lookups.
///
/// Group commit: the writer takes every write waiting in its channel (up to [`MAX_BATCH`]), runs
/// each in its own savepoint inside one `BEGIN IMMEDIATE` transaction, commits once (one fsync) and
/// only then answers the callers. A write that fails rolls back its savepoint alone. Concurrent
/// webhooks and pulls thus share fsyncs instead of queueing behind one another, while every
/// answer still waits for its own data to be durable.
pub(crate) struct Store {
    writer: Mutex<std::sync::mpsc::Sender<Box<dyn WriteOp>>>,
    reader: Mutex<Connection>,
}

/// Most writes committed together.
const MAX_BATCH: usize = 64;

/// One queued write: run inside a savepoint (true = keep it), then hear how the commit went.
trait WriteOp: Send {
    /// False for a write that may be lost in a power cut (a lease claim): see [`Store::write_lease`].
    fn durable(&self) -> bool;
    fn run(&mut self, conn: &Connection) -> bool;
    fn complete(self: Box<Self>, commit: Result<(), Arc<rusqlite::Error>>);
}

struct Op<T, F> {
    durable: bool,
    f: Option<F>,
    result: Option<Result<T, HubError>>,
    reply: std::sync::mpsc::SyncSender<Result<T, HubError>>,
}

impl<T: Send, F: FnOnce(&Connection) -> Result<T, HubError> + Send> WriteOp for Op<T, F> {
    fn durable(&self) -> bool {
        self.durable
    }

    fn run(&mut self, conn: &Connection) -> bool {
        let Some(f) = self.f.take() else { return false };
        let result = f(conn);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn complete(self: Box<Self>, commit: Result<(), Arc<rusqlite::Error>>) {
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

fn open_connection(path: &Path) -> Result<Connection, HubError> {
    let conn = Connection::open(path).map_err(HubError::store("open the database"))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(HubError::store("set the busy timeout"))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(HubError::store("enable WAL mode"))?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(HubError::store("set synchronous mode"))?;
    Ok(conn)
}

fn writer_loop(mut conn: Connection, ops: std::sync::mpsc::Receiver<Box<dyn WriteOp>>) {
    while let Ok(first) = ops.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match ops.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let commit = run_batch(&mut conn, &mut batch).map_err(Arc::new);
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
    let durable = batch.iter().any(|op| op.durable());
    conn.pragma_update(None, "synchronous", if durable { "FULL" } else { "NORMAL" })?;
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for op in batch.iter_mut() {
        let sp = tx.savepoint()?;
        if op.run(&sp) {
            sp.commit()?;
        }
        // A failed write's savepoint is rolled back when dropped.
    }
    tx.commit()
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, HubError> {
        let conn = open_connection(path)?;
        conn.execute_batch(SCHEMA)
            .map_err(HubError::store("create the schema"))?;
        let reader = open_connection(path)?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("hub-store-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(|source| HubError::Io {
                path: path.to_owned(),
                source,
            })?;
        Ok(Store {
            writer: Mutex::new(tx),
            reader: Mutex::new(reader),
        })
    }

    /// Runs `f` in the writer's next group commit and waits until it is durable.
    fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, HubError> + Send + 'static,
    ) -> Result<T, HubError> {
        self.submit(true, f)
    }

    /// Like [`Store::write`], but the commit is not fsynced on its own: for lease claims, which
    /// the protocol already treats as revocable. Losing one in a power cut of the hub's machine
    /// puts the job back in the queue, exactly as if its lease had run out; an accept (always
    /// durable) of a claim that was lost is refused like one that expired. This takes an fsync
    /// off every pull, the one call a scheduler makes strictly one after another.
    fn write_lease<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, HubError> + Send + 'static,
    ) -> Result<T, HubError> {
        self.submit(false, f)
    }

    fn submit<T: Send + 'static>(
        &self,
        durable: bool,
        f: impl FnOnce(&Connection) -> Result<T, HubError> + Send + 'static,
    ) -> Result<T, HubError> {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        let op: Box<dyn WriteOp> = Box::new(Op {
            durable,
            f: Some(f),
            result: None,
            reply,
        });
        self.writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(op)
            .map_err(|_| HubError::StoreClosed)?;
        answer.recv().map_err(|_| HubError::StoreClosed)?
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave the read connection in a bad state.
        self.reader
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stores the jobs of a delivery, or returns the original job ids of a redelivery.
    pub fn record_delivery(
        &self,
        delivery_id: &str,
        event: &str,
        jobs: Vec<NewJob>,
        raw: RawDelivery,
        now_ms: i64,
    ) -> Result<DeliveryOutcome, HubError> {
        let (delivery_id, event) = (delivery_id.to_owned(), event.to_owned());
        self.write(move |tx| {
        let existing: Option<String> = tx
            .query_row(
                "SELECT job_ids FROM deliveries WHERE delivery_id = ?1",
                [&delivery_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(HubError::store("look up a delivery"))?;
        if let Some(ids) = existing {
            let job_ids = serde_json::from_str(&ids).map_err(|source| HubError::CorruptRecord {
                job_id: format!("delivery {delivery_id}"),
                source,
            })?;
            return Ok(DeliveryOutcome {
                job_ids,
                duplicate: true,
            });
        }
        let mut job_ids = Vec::with_capacity(jobs.len());
        for j in &jobs {
            let job_json =
                serde_json::to_string(&j.job).map_err(|source| HubError::CorruptRecord {
                    job_id: j.job.id.clone(),
                    source,
                })?;
            // A scheduler reads at most 1 MiB of a pull answer (SPEC §2): a job that cannot fit
            // would be claimed and dropped forever, so it is answered `rejected` at once instead.
            let answer_len = job_json.len() + raw.payload.len() + raw.headers.len() + 64;
            let (state, result_status, result_summary) = if answer_len > MAX_JOB_ANSWER_BYTES {
                tracing::warn!(job_id = %j.job.id, bytes = answer_len,
                    "job too large for the dispatch protocol; finished as rejected");
                (
                    FINISHED,
                    "rejected",
                    format!(
                        "the GitHub event is {} bytes; a dispatch job carries at most {} bytes",
                        raw.payload.len(),
                        MAX_JOB_ANSWER_BYTES
                    ),
                )
            } else {
                (QUEUED, "", String::new())
            };
            tx.execute(
                "INSERT INTO jobs (id, target_license, status_context, state, job_json, payload, headers,
                                   created_ms, updated_ms, result_status, result_summary)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9, ?10)",
                params![
                    j.job.id,
                    j.target_license,
                    j.status_context,
                    state,
                    job_json,
                    raw.payload,
                    raw.headers,
                    now_ms,
                    result_status,
                    result_summary
                ],
            )
            .map_err(HubError::store("insert a job"))?;
            job_ids.push(j.job.id.clone());
        }
        let ids_json = serde_json::to_string(&job_ids).unwrap_or_else(|_| "[]".to_owned());
        tx.execute(
            "INSERT INTO deliveries (delivery_id, event, job_ids, received_ms) VALUES (?1, ?2, ?3, ?4)",
            params![delivery_id, event, ids_json, now_ms],
        )
        .map_err(HubError::store("insert a delivery"))?;
        Ok(DeliveryOutcome {
            job_ids,
            duplicate: false,
        })
        })
    }

    /// Puts claims whose lease ran out back in the queue (or finishes them as `rejected` after
    /// [`MAX_CLAIMS`]); returns how many jobs changed.
    pub fn requeue_expired(&self, now_ms: i64) -> Result<usize, HubError> {
        self.write_lease(move |conn| expire_claims(conn, now_ms))
    }

    /// Claims the oldest queued job this license may take, for `lease_ms`.
    pub fn claim_next(
        &self,
        license_id: &str,
        server_id: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<DispatchJob>, HubError> {
        let (license_id, server_id) = (license_id.to_owned(), server_id.to_owned());
        self.write_lease(move |tx| {
        expire_claims(tx, now_ms)?;
        let row: Option<(i64, String, String, String)> = tx
            .query_row(
                "SELECT seq, job_json, payload, headers FROM jobs
                 WHERE state = ?1 AND (target_license = '' OR target_license = ?2)
                 ORDER BY seq LIMIT 1",
                params![QUEUED, license_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(HubError::store("select a queued job"))?;
        let Some((seq, job_json, payload, headers)) = row else {
            return Ok(None);
        };
        tx.execute(
            "UPDATE jobs SET state = ?1, claimed_license = ?2, claimed_by = ?3, lease_expires_ms = ?4,
                             updated_ms = ?5, claims = claims + 1
             WHERE seq = ?6",
            params![CLAIMED, license_id, server_id, now_ms + lease_ms, now_ms, seq],
        )
        .map_err(HubError::store("claim a job"))?;
        let mut job = decode_job(&job_json)?;
        job.payload = Some(raw(&job.id, payload)?);
        job.headers = Some(raw(&job.id, headers)?);
        job.license_id = license_id;
        job.status = CLAIMED.to_owned();
        job.claimed_by = server_id;
        Ok(Some(job))
        })
    }

    /// Accept: claimed (or queued again after its lease ran out) → accepted by this server.
    pub fn accept(
        &self,
        job_id: &str,
        caller: Caller<'_>,
        dag_run_id: &str,
        now_ms: i64,
    ) -> Result<Transition, HubError> {
        let (job_id, license_id, server_id, dag_run_id) = (
            job_id.to_owned(),
            caller.license_id.to_owned(),
            caller.server_id.to_owned(),
            dag_run_id.to_owned(),
        );
        self.write(move |tx| {
            let (job_id, license_id, server_id) =
                (job_id.as_str(), license_id.as_str(), server_id.as_str());
            let Some(row) = JobRow::load(tx, job_id)? else {
                return Ok(Transition::NotFound);
            };
            if !row.visible_to(license_id) {
                return Ok(Transition::NotFound);
            }
            let mine = row.claimed_by == server_id && row.claimed_license == license_id;
            let outcome = match row.state.as_str() {
                // A queued job that this server claimed last: its lease ran out but nobody else
                // took it, so the server may still have it.
                CLAIMED | QUEUED if mine => Transition::Done,
                ACCEPTED if mine => Transition::Repeated,
                FINISHED => Transition::Conflict(format!("job `{job_id}` is already finished")),
                _ => Transition::Conflict(format!("job `{job_id}` is not claimed by this server")),
            };
            if outcome == Transition::Done {
                tx.execute(
                "UPDATE jobs SET state = ?1, claimed_license = ?2, claimed_by = ?3, dag_run_id = ?4,
                                 lease_expires_ms = 0, updated_ms = ?5
                 WHERE id = ?6",
                params![ACCEPTED, license_id, server_id, dag_run_id, now_ms, job_id],
            )
            .map_err(HubError::store("accept a job"))?;
            }
            Ok(outcome)
        })
    }

    /// Finish: claimed or accepted by this server → finished, and the reports `reports` builds are
    /// queued in the same transaction (durable before the caller hears "done").
    pub fn finish(
        &self,
        job_id: &str,
        caller: Caller<'_>,
        result_status: &str,
        result_summary: &str,
        now_ms: i64,
        reports: impl FnOnce(&FinishedJob) -> Vec<(String, String)> + Send + 'static,
    ) -> Result<Transition, HubError> {
        let (job_id, license_id, server_id, result_status, result_summary) = (
            job_id.to_owned(),
            caller.license_id.to_owned(),
            caller.server_id.to_owned(),
            result_status.to_owned(),
            result_summary.to_owned(),
        );
        self.write(move |tx| {
        let (job_id, license_id, server_id) = (job_id.as_str(), license_id.as_str(), server_id.as_str());
        let Some(row) = JobRow::load(tx, job_id)? else {
            return Ok(Transition::NotFound);
        };
        if !row.visible_to(license_id) {
            return Ok(Transition::NotFound);
        }
        let mine = row.claimed_by == server_id && row.claimed_license == license_id;
        let outcome = match row.state.as_str() {
            CLAIMED | ACCEPTED | QUEUED if mine => Transition::Done,
            FINISHED if mine && row.result_status == result_status => Transition::Repeated,
            FINISHED if mine => Transition::Conflict(format!(
                "job `{job_id}` already finished with status `{}`",
                row.result_status
            )),
            _ => Transition::Conflict(format!("job `{job_id}` is not claimed by this server")),
        };
        if outcome != Transition::Done {
            return Ok(outcome);
        }
        tx.execute(
            "UPDATE jobs SET state = ?1, result_status = ?2, result_summary = ?3, lease_expires_ms = 0,
                             updated_ms = ?4
             WHERE id = ?5",
            params![FINISHED, result_status, result_summary, now_ms, job_id],
        )
        .map_err(HubError::store("finish a job"))?;
        let finished = FinishedJob {
            job: decode_job(&row.job_json)?,
            status_context: row.status_context,
        };
        for (path, body) in reports(&finished) {
            tx.execute(
                "INSERT INTO reports (job_id, path, body, next_attempt_ms) VALUES (?1, ?2, ?3, ?4)",
                params![job_id, path, body, now_ms],
            )
            .map_err(HubError::store("queue a report"))?;
        }
        Ok(Transition::Done)
        })
    }

    /// Records an activation, replacing an earlier one of the same server.
    pub fn upsert_activation(
        &self,
        license_id: &str,
        server_id: &str,
        machine_name: &str,
        secret_sha256: &str,
        now_ms: i64,
    ) -> Result<(), HubError> {
        let (license_id, server_id, machine_name, secret_sha256) = (
            license_id.to_owned(),
            server_id.to_owned(),
            machine_name.to_owned(),
            secret_sha256.to_owned(),
        );
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO activations (license_id, server_id, machine_name, secret_sha256, activated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (license_id, server_id) DO UPDATE SET
                     machine_name = excluded.machine_name, secret_sha256 = excluded.secret_sha256,
                     activated_ms = excluded.activated_ms",
                params![license_id, server_id, machine_name, secret_sha256, now_ms],
            )
            .map_err(HubError::store("record an activation"))?;
            Ok(())
        })
    }

    /// The stored secret hash of an activation.
    pub fn activation_secret(
        &self,
        license_id: &str,
        server_id: &str,
    ) -> Result<Option<String>, HubError> {
        self.lock()
            .query_row(
                "SELECT secret_sha256 FROM activations WHERE license_id = ?1 AND server_id = ?2",
                [license_id, server_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(HubError::store("look up an activation"))
    }

    /// Whether a claim attempt for this license could succeed now: a queued job it may take, or a
    /// claim whose lease has run out. Read-only, so idle pulls never queue behind writes.
    pub fn has_claimable(&self, license_id: &str, now_ms: i64) -> Result<bool, HubError> {
        self.lock()
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM jobs WHERE state = ?1 AND (target_license = '' OR target_license = ?2))
                     OR EXISTS (SELECT 1 FROM jobs WHERE state = ?3 AND lease_expires_ms <= ?4)",
                params![QUEUED, license_id, CLAIMED, now_ms],
                |r| r.get(0),
            )
            .map_err(HubError::store("look for claimable jobs"))
    }

    /// Reports due at `now_ms`, oldest first.
    pub fn due_reports(&self, now_ms: i64, limit: i64) -> Result<Vec<PendingReport>, HubError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, job_id, path, body, attempts FROM reports
                 WHERE next_attempt_ms <= ?1 ORDER BY next_attempt_ms, id LIMIT ?2",
            )
            .map_err(HubError::store("select due reports"))?;
        let rows = stmt
            .query_map(params![now_ms, limit], |r| {
                Ok(PendingReport {
                    id: r.get(0)?,
                    job_id: r.get(1)?,
                    path: r.get(2)?,
                    body: r.get(3)?,
                    attempts: r.get(4)?,
                })
            })
            .map_err(HubError::store("select due reports"))?;
        rows.collect::<Result<_, _>>()
            .map_err(HubError::store("read due reports"))
    }

    /// When the next report is due, if any.
    pub fn next_report_due(&self) -> Result<Option<i64>, HubError> {
        self.lock()
            .query_row("SELECT MIN(next_attempt_ms) FROM reports", [], |r| r.get(0))
            .map_err(HubError::store("find the next report"))
    }

    pub fn delete_report(&self, id: i64) -> Result<(), HubError> {
        self.write(move |conn| {
            conn.execute("DELETE FROM reports WHERE id = ?1", [id])
                .map_err(HubError::store("delete a report"))?;
            Ok(())
        })
    }

    pub fn reschedule_report(
        &self,
        id: i64,
        attempts: i64,
        next_ms: i64,
        error: &str,
    ) -> Result<(), HubError> {
        let error = error.to_owned();
        self.write(move |conn| {
            conn.execute(
                "UPDATE reports SET attempts = ?1, next_attempt_ms = ?2, last_error = ?3 WHERE id = ?4",
                params![attempts, next_ms, error, id],
            )
            .map_err(HubError::store("reschedule a report"))?;
            Ok(())
        })
    }

    /// Number of jobs per state.
    pub fn job_counts(&self) -> Result<Vec<(String, i64)>, HubError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached("SELECT state, COUNT(*) FROM jobs GROUP BY state ORDER BY state")
            .map_err(HubError::store("count jobs"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(HubError::store("count jobs"))?;
        rows.collect::<Result<_, _>>()
            .map_err(HubError::store("count jobs"))
    }

    /// A job's state and result, for tests and diagnostics.
    #[cfg(test)]
    pub fn job_state(&self, job_id: &str) -> Result<Option<(String, String)>, HubError> {
        self.lock()
            .query_row(
                "SELECT state, result_status FROM jobs WHERE id = ?1",
                [job_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(HubError::store("read a job"))
    }
}

/// Expired claims go back to the queue, keeping `claimed_by` so the last claimant can still
/// accept if nobody else has taken the job meanwhile.
fn expire_claims(conn: &Connection, now_ms: i64) -> Result<usize, HubError> {
    let rejected = conn
        .execute(
            "UPDATE jobs SET state = ?1, result_status = 'rejected',
                             result_summary = 'not accepted by any scheduler within its lease, ' || claims || ' times',
                             lease_expires_ms = 0, updated_ms = ?2
             WHERE state = ?3 AND lease_expires_ms <= ?2 AND claims >= ?4",
            params![FINISHED, now_ms, CLAIMED, MAX_CLAIMS],
        )
        .map_err(HubError::store("reject jobs nobody accepts"))?;
    if rejected > 0 {
        tracing::warn!(
            jobs = rejected,
            max_claims = MAX_CLAIMS,
            "jobs claimed but never accepted; finished as rejected"
        );
    }
    let requeued = conn
        .execute(
            "UPDATE jobs SET state = ?1, lease_expires_ms = 0, updated_ms = ?2
             WHERE state = ?3 AND lease_expires_ms <= ?2",
            params![QUEUED, now_ms, CLAIMED],
        )
        .map_err(HubError::store("requeue expired claims"))?;
    Ok(rejected + requeued)
}

struct JobRow {
    state: String,
    target_license: String,
    claimed_license: String,
    claimed_by: String,
    result_status: String,
    status_context: String,
    job_json: String,
}

impl JobRow {
    fn load(conn: &Connection, job_id: &str) -> Result<Option<JobRow>, HubError> {
        conn.query_row(
            "SELECT state, target_license, claimed_license, claimed_by, result_status, status_context, job_json
             FROM jobs WHERE id = ?1",
            [job_id],
            |r| {
                Ok(JobRow {
                    state: r.get(0)?,
                    target_license: r.get(1)?,
                    claimed_license: r.get(2)?,
                    claimed_by: r.get(3)?,
                    result_status: r.get(4)?,
                    status_context: r.get(5)?,
                    job_json: r.get(6)?,
                })
            },
        )
        .optional()
        .map_err(HubError::store("read a job"))
    }

    /// A job bound to another license does not exist as far as this caller is concerned.
    fn visible_to(&self, license_id: &str) -> bool {
        self.target_license.is_empty() || self.target_license == license_id
    }
}

fn decode_job(job_json: &str) -> Result<DispatchJob, HubError> {
    serde_json::from_str(job_json).map_err(|source| HubError::CorruptRecord {
        job_id: String::new(),
        source,
    })
}

fn raw(job_id: &str, text: String) -> Result<Box<RawValue>, HubError> {
    RawValue::from_string(text).map_err(|source| HubError::CorruptRecord {
        job_id: job_id.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_job(id: &str, license: &str) -> NewJob {
        NewJob {
            job: DispatchJob {
                id: id.into(),
                dag_name: "d".into(),
                ..DispatchJob::default()
            },
            target_license: license.into(),
            status_context: "dispatch/d".into(),
        }
    }

    fn who<'a>(license_id: &'a str, server_id: &'a str) -> Caller<'a> {
        Caller {
            license_id,
            server_id,
        }
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("hub.sqlite3")).unwrap();
        (dir, store)
    }

    fn add(store: &Store, delivery: &str, jobs: &[NewJob]) -> DeliveryOutcome {
        let raw = RawDelivery {
            payload: "{\"a\": 1}".into(),
            headers: "{}".into(),
        };
        store
            .record_delivery(delivery, "push", jobs.to_vec(), raw, 1)
            .unwrap()
    }

    #[test]
    fn a_failed_write_rolls_back_alone_within_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.sqlite3");
        let mut conn = open_connection(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (v INTEGER)").unwrap();
        let op = |v: i64, fail: bool| {
            let (reply, answer) = std::sync::mpsc::sync_channel(1);
            let f = move |c: &Connection| {
                c.execute("INSERT INTO t (v) VALUES (?1)", [v])
                    .map_err(HubError::store("insert"))?;
                if fail {
                    return Err(HubError::StoreClosed);
                }
                Ok(v)
            };
            let boxed: Box<dyn WriteOp> = Box::new(Op {
                // Only the failing write asks for durability, so the group must still fsync.
                durable: fail,
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

    #[test]
    fn concurrent_claims_through_the_writer_hand_out_each_job_once() {
        let (_d, s) = store();
        let jobs: Vec<NewJob> = (0..40).map(|i| new_job(&format!("j{i}"), "")).collect();
        add(&s, "d", &jobs);
        let s = Arc::new(s);
        let handles: Vec<_> = (0..6)
            .map(|k| {
                let s = s.clone();
                std::thread::spawn(move || {
                    let server = format!("srv{k}");
                    let mut got = Vec::new();
                    while let Some(j) = s.claim_next("l", &server, 0, 60_000).unwrap() {
                        got.push(j.id);
                    }
                    got
                })
            })
            .collect();
        let mut all: Vec<String> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort();
        let mut want: Vec<String> = jobs.iter().map(|j| j.job.id.clone()).collect();
        want.sort();
        assert_eq!(all, want);
    }

    #[test]
    fn redelivery_returns_original_ids() {
        let (_d, s) = store();
        let first = add(&s, "d1", &[new_job("j1", "")]);
        let again = add(&s, "d1", &[new_job("j2", "")]);
        assert!(!first.duplicate && again.duplicate);
        assert_eq!(again.job_ids, vec!["j1".to_owned()]);
        assert_eq!(s.job_state("j2").unwrap(), None);
    }

    #[test]
    fn claim_respects_license_and_lease() {
        let (_d, s) = store();
        assert!(!s.has_claimable("lic-a", 0).unwrap());
        add(&s, "d1", &[new_job("j1", "lic-b"), new_job("j2", "")]);
        assert!(s.has_claimable("lic-a", 1000).unwrap());
        let job = s.claim_next("lic-a", "srv", 1000, 50).unwrap().unwrap();
        assert_eq!((job.id.as_str(), job.license_id.as_str()), ("j2", "lic-a"));
        assert_eq!(job.payload.unwrap().get(), "{\"a\": 1}");
        assert!(s.claim_next("lic-a", "srv2", 1049, 50).unwrap().is_none());
        assert!(!s.has_claimable("lic-a", 1049).unwrap());
        assert!(s.has_claimable("lic-a", 1050).unwrap());
        let again = s.claim_next("lic-a", "srv2", 1050, 50).unwrap().unwrap();
        assert_eq!(
            (again.id.as_str(), again.claimed_by.as_str()),
            ("j2", "srv2")
        );
        assert_eq!(
            s.claim_next("lic-b", "srv3", 1050, 50).unwrap().unwrap().id,
            "j1"
        );
    }

    #[test]
    fn a_job_nobody_accepts_is_rejected_after_max_claims() {
        let (_d, s) = store();
        add(&s, "d1", &[new_job("j1", "")]);
        for i in 0..MAX_CLAIMS {
            let job = s.claim_next("l", "a", i * 100, 50).unwrap();
            assert_eq!(job.map(|j| j.id).as_deref(), Some("j1"), "claim {i}");
        }
        assert!(s
            .claim_next("l", "a", MAX_CLAIMS * 100, 50)
            .unwrap()
            .is_none());
        assert_eq!(
            s.job_state("j1").unwrap(),
            Some((FINISHED.into(), "rejected".into()))
        );
    }

    #[test]
    fn last_claimant_may_accept_after_its_lease_ran_out_but_nobody_else() {
        let (_d, s) = store();
        add(&s, "d1", &[new_job("j1", "")]);
        s.claim_next("l", "a", 0, 10).unwrap().unwrap();
        assert_eq!(s.requeue_expired(10).unwrap(), 1);
        assert!(matches!(
            s.accept("j1", who("l", "b"), "r", 11).unwrap(),
            Transition::Conflict(_)
        ));
        assert_eq!(
            s.accept("j1", who("l", "a"), "r", 11).unwrap(),
            Transition::Done
        );
        assert!(s.claim_next("l", "b", 20, 10).unwrap().is_none());
    }

    #[test]
    fn accept_and_finish_rules() {
        let (_d, s) = store();
        add(&s, "d1", &[new_job("j1", "")]);
        s.claim_next("l", "a", 0, 60_000).unwrap().unwrap();
        assert_eq!(
            s.accept("nope", who("l", "a"), "r", 1).unwrap(),
            Transition::NotFound
        );
        assert!(matches!(
            s.accept("j1", who("l", "b"), "r", 1).unwrap(),
            Transition::Conflict(_)
        ));
        assert_eq!(
            s.accept("j1", who("l", "a"), "j1", 1).unwrap(),
            Transition::Done
        );
        assert_eq!(
            s.accept("j1", who("l", "a"), "j1", 2).unwrap(),
            Transition::Repeated
        );
        let no_reports = |_: &FinishedJob| Vec::new();
        assert!(matches!(
            s.finish("j1", who("l", "b"), "succeeded", "", 3, no_reports)
                .unwrap(),
            Transition::Conflict(_)
        ));
        assert_eq!(
            s.finish("j1", who("l", "a"), "succeeded", "ok", 3, no_reports)
                .unwrap(),
            Transition::Done
        );
        assert_eq!(
            s.finish("j1", who("l", "a"), "succeeded", "ok", 4, no_reports)
                .unwrap(),
            Transition::Repeated
        );
        assert!(matches!(
            s.finish("j1", who("l", "a"), "failed", "", 5, no_reports)
                .unwrap(),
            Transition::Conflict(_)
        ));
        assert_eq!(
            s.job_state("j1").unwrap(),
            Some((FINISHED.into(), "succeeded".into()))
        );
    }

    #[test]
    fn reports_are_queued_with_finish() {
        let (_d, s) = store();
        add(&s, "d1", &[new_job("j1", "")]);
        s.claim_next("l", "a", 0, 60_000).unwrap().unwrap();
        s.finish("j1", who("l", "a"), "failed", "", 10, |j| {
            vec![(format!("/x/{}", j.job.dag_name), "{}".into())]
        })
        .unwrap();
        let due = s.due_reports(10, 10).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].path, "/x/d");
        s.reschedule_report(due[0].id, 1, 500, "boom").unwrap();
        assert!(s.due_reports(499, 10).unwrap().is_empty());
        assert_eq!(s.next_report_due().unwrap(), Some(500));
        s.delete_report(due[0].id).unwrap();
        assert_eq!(s.next_report_due().unwrap(), None);
    }
}
