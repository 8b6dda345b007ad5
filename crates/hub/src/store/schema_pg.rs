//! The store's tables on PostgreSQL, and their versioned changes.
//!
//! The same tables and columns as the SQLite schema ([`super::schema`]) ends with, so that one
//! set of statements serves both; every integer is `BIGINT` (SQLite's integers are 64 bits).
//! Each step runs in one transaction that holds the writers' advisory lock, so replicas starting
//! together apply it once; the version is kept in `dispatch_schema`. Add a change as a new step
//! at the end, never by editing one that has shipped.

use postgres::Client;

use super::schema::{log_applied, refuse_newer, step_failed};
use super::writer::WRITE_LOCK;
use crate::error::HubError;

/// One schema change: its name (for errors and logs), its SQL, and then the tables it shares
/// with the SQLite schema (written once, in the store module that owns them; see [`portable`]).
struct Step {
    name: &'static str,
    sql: &'static str,
    shared: &'static [&'static str],
}

/// SQL the SQLite schema runs, as PostgreSQL takes it: its integers are 64 bits (`BIGINT`;
/// PostgreSQL's `INTEGER` has 32), and `WITHOUT ROWID` (a SQLite storage choice) goes.
pub(super) fn portable(sqlite: &str) -> String {
    sqlite
        .replace(" INTEGER", " BIGINT")
        .replace(") WITHOUT ROWID;", ");")
}

/// Every change, oldest first; step `n` (1-based) brings a database to version `n`.
const STEPS: &[Step] = &[
    Step {
        name: "create the tables",
        sql: "
CREATE TABLE jobs (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    target_license TEXT NOT NULL,
    status_context TEXT NOT NULL,
    state TEXT NOT NULL,
    claimed_license TEXT NOT NULL DEFAULT '',
    claimed_by TEXT NOT NULL DEFAULT '',
    lease_expires_ms BIGINT NOT NULL DEFAULT 0,
    claims BIGINT NOT NULL DEFAULT 0,
    dag_run_id TEXT NOT NULL DEFAULT '',
    result_status TEXT NOT NULL DEFAULT '',
    result_summary TEXT NOT NULL DEFAULT '',
    job_json TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    delivery_id TEXT NOT NULL DEFAULT '',
    target_server_id TEXT NOT NULL DEFAULT '',
    claimed_ms BIGINT NOT NULL DEFAULT 0,
    accepted_ms BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX jobs_by_state ON jobs(state, seq);
CREATE INDEX jobs_by_delivery ON jobs(delivery_id);
CREATE INDEX jobs_by_state_age ON jobs(state, updated_ms);
CREATE TABLE deliveries (
    delivery_id TEXT PRIMARY KEY,
    event TEXT NOT NULL,
    job_ids TEXT NOT NULL,
    received_ms BIGINT NOT NULL,
    outcome TEXT NOT NULL DEFAULT 'accepted',
    reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX deliveries_by_age ON deliveries(received_ms);
CREATE TABLE activations (
    license_id TEXT NOT NULL,
    server_id TEXT NOT NULL,
    machine_name TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL,
    activated_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL DEFAULT 0,
    revoked_ms BIGINT NOT NULL DEFAULT 0,
    client_version TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (license_id, server_id)
);
CREATE INDEX activations_by_server ON activations(server_id);
CREATE TABLE reports (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id TEXT NOT NULL,
    path TEXT NOT NULL,
    body TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_ms BIGINT NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    supersedable BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX reports_by_job ON reports(job_id);
CREATE TABLE payloads (
    delivery_id TEXT PRIMARY KEY,
    payload TEXT NOT NULL,
    headers TEXT NOT NULL
);
CREATE TABLE held_forks (
    repository TEXT NOT NULL,
    pr_number BIGINT NOT NULL,
    head_sha TEXT NOT NULL,
    event TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    headers TEXT NOT NULL,
    received_ms BIGINT NOT NULL,
    event_ms BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (repository, pr_number)
);
CREATE INDEX held_forks_by_head ON held_forks(repository, head_sha);
CREATE TABLE pending_cancels (
    job_id TEXT PRIMARY KEY,
    cancel_json TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    headers TEXT NOT NULL,
    requested_ms BIGINT NOT NULL
);
CREATE TABLE check_runs (
    job_id TEXT PRIMARY KEY,
    repository TEXT NOT NULL,
    head_sha TEXT NOT NULL,
    check_run_id BIGINT NOT NULL DEFAULT 0,
    create_started BIGINT NOT NULL DEFAULT 0,
    updated_ms BIGINT NOT NULL
);
CREATE INDEX check_runs_by_sha ON check_runs(repository, head_sha);
CREATE TABLE hub_keys (
    name TEXT PRIMARY KEY,
    pem TEXT NOT NULL
);
CREATE FUNCTION dispatch_jobs_progress_gone() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM job_progress WHERE job_id = OLD.id;
    DELETE FROM job_steps WHERE job_id = OLD.id;
    DELETE FROM log_chunks WHERE job_id = OLD.id;
    RETURN OLD;
END;
$$;
CREATE TRIGGER jobs_progress_gone AFTER DELETE ON jobs
    FOR EACH ROW EXECUTE FUNCTION dispatch_jobs_progress_gone();
",
        shared: &[
            super::heads::TABLES,
            super::approvals::TABLES,
            super::commands::TABLES,
            super::progress::TABLES,
        ],
    },
    Step {
        name: "mark the reports a hub process is sending",
        sql: "",
        shared: &[super::reports::SENDING_COLUMN],
    },
];

/// The last version this hub knows.
pub(super) fn known() -> i64 {
    i64::try_from(STEPS.len()).unwrap_or(i64::MAX)
}

/// Brings the database up to the last step; a database of a newer hub is refused.
pub(super) fn migrate(client: &mut Client) -> Result<(), HubError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS dispatch_schema (
                 version BIGINT NOT NULL,
                 applied_ms BIGINT NOT NULL
             )",
        )
        .or_else(|e| {
            // Two replicas starting at once may both try to create it.
            if e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION) {
                Ok(())
            } else {
                Err(e)
            }
        })
        .map_err(HubError::store("create the schema version table"))?;
    let known = known();
    for (i, step) in STEPS.iter().enumerate() {
        let target = i64::try_from(i).unwrap_or(i64::MAX) + 1;
        let failed = step_failed::<postgres::Error>(step.name, target);
        let mut tx = client.transaction().map_err(failed)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
            .map_err(failed)?;
        let found = version(&mut tx)?;
        refuse_newer(found, known)?;
        if found >= target {
            continue;
        }
        tx.batch_execute(step.sql).map_err(failed)?;
        for tables in step.shared {
            tx.batch_execute(&portable(tables)).map_err(failed)?;
        }
        tx.execute(
            "INSERT INTO dispatch_schema (version, applied_ms) VALUES ($1, $2)",
            &[&target, &super::now_ms()],
        )
        .map_err(failed)?;
        tx.commit().map_err(failed)?;
        log_applied(step.name, target, "PostgreSQL");
    }
    // A database already at the last step (or a newer one) is checked once more here: the loop
    // above skips every step and would not notice a newer version.
    let found = version(&mut client.transaction().map_err(HubError::store("begin"))?)?;
    refuse_newer(found, known)
}

/// The database's schema version without changing anything: 0 for an empty database (not even
/// the version table).
pub(super) fn version_now(client: &mut Client) -> Result<i64, HubError> {
    let mut tx = client
        .transaction()
        .map_err(HubError::store("read the schema version"))?;
    let row = tx
        .query_one("SELECT to_regclass('dispatch_schema') IS NOT NULL", &[])
        .map_err(HubError::store("read the schema version"))?;
    let exists: bool = row
        .try_get(0)
        .map_err(HubError::store("read the schema version"))?;
    if !exists {
        return Ok(0);
    }
    version(&mut tx)
}

/// The database's schema version (0 when no step was applied).
fn version(tx: &mut postgres::Transaction<'_>) -> Result<i64, HubError> {
    let row = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM dispatch_schema", &[])
        .map_err(HubError::store("read the schema version"))?;
    row.try_get(0)
        .map_err(HubError::store("read the schema version"))
}
