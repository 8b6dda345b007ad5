//! The schema and its versions. `PRAGMA user_version` counts the [`STEPS`] a database has been
//! through; [`migrate`] runs the missing ones in order when the store opens.
//!
//! To change the schema, append a [`Step`] to [`STEPS`] (never edit, reorder or remove one that
//! has shipped: a database records only how many steps it took). A step runs inside a
//! `BEGIN IMMEDIATE` transaction together with the `user_version` bump, so it happens once even
//! when several hub processes open the file at the same time; write it so it also works on a
//! brand-new database, which goes through every step. The previous release made its tables
//! without a version (0): step 1 is exactly its schema, `IF NOT EXISTS`.

use rusqlite::{Connection, TransactionBehavior};

use super::sql::SqlError;
use crate::error::HubError;

/// One schema change.
pub(super) struct Step {
    /// What it does, for errors and logs.
    pub name: &'static str,
    /// The change. Runs inside the step's transaction unless [`Step::outside_transaction`].
    pub apply: fn(&Connection) -> rusqlite::Result<()>,
    /// For `VACUUM`, which cannot run inside a transaction. Such a step must be idempotent: two
    /// processes may both run it before one records it.
    pub outside_transaction: bool,
}

/// Every schema change since the first release, oldest first. Step `n` (1-based) brings a
/// database to `user_version = n`.
pub(super) const STEPS: &[Step] = &[
    Step {
        name: "create the first release's tables",
        apply: first_release,
        outside_transaction: false,
    },
    Step {
        name: "store each delivery's payload once",
        apply: payload_per_delivery,
        outside_transaction: false,
    },
    Step {
        name: "track when servers were last seen and which are revoked",
        apply: server_tracking,
        outside_transaction: false,
    },
    Step {
        name: "turn on incremental auto-vacuum",
        apply: incremental_auto_vacuum,
        outside_transaction: true,
    },
    Step {
        name: "record why deliveries were turned away, hold fork pull requests, route cancels",
        apply: trust_and_cancel_routing,
        outside_transaction: false,
    },
    Step {
        name: "report each job's life: supersedable reports, GitHub check run ids",
        apply: job_lifecycle_reports,
        outside_transaction: false,
    },
    Step {
        name: "record pull request heads and own commits, approvals per binding, command comments",
        apply: trust_heads_and_approvals,
        outside_transaction: false,
    },
    Step {
        name: "keep the steps and logs schedulers send with the progress extension",
        apply: super::progress::create_tables,
        outside_transaction: false,
    },
    Step {
        name: "record when each job was last claimed and accepted, and each server's version",
        apply: claim_accept_times_and_versions,
        outside_transaction: false,
    },
    Step {
        name: "mark the reports a hub process is sending",
        apply: reports_being_sent,
        outside_transaction: false,
    },
];

/// Brings the database up to the last step. A database from a newer hub (more steps than this
/// one knows) is refused rather than used with a schema this code does not understand.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), HubError> {
    let known = STEPS.len() as i64;
    let found = version(conn)?;
    refuse_newer(found, known)?;
    for (i, step) in STEPS.iter().enumerate().skip(found.max(0) as usize) {
        let target = i as i64 + 1;
        let failed = step_failed(step.name, target);
        if step.outside_transaction {
            (step.apply)(conn).map_err(failed)?;
        }
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(failed)?;
        // Another process may have taken this step while we waited for the write lock.
        if version(&tx)? >= target {
            continue;
        }
        if !step.outside_transaction {
            (step.apply)(&tx).map_err(failed)?;
        }
        tx.pragma_update(None, "user_version", target)
            .map_err(failed)?;
        tx.commit().map_err(failed)?;
        log_applied(step.name, target, "SQLite");
    }
    Ok(())
}

fn reports_being_sent(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(super::reports::SENDING_COLUMN)
}

/// Refuses a database at schema `version` `found` when this hub knows only up to `known`.
pub(super) fn refuse_newer(found: i64, known: i64) -> Result<(), HubError> {
    if found > known {
        return Err(HubError::StoreTooNew {
            version: found,
            known,
        });
    }
    Ok(())
}

/// The error of schema step `step`, which leads to version `version`, from the database's.
pub(super) fn step_failed<E: Into<SqlError>>(
    step: &'static str,
    version: i64,
) -> impl Fn(E) -> HubError + Copy {
    move |source| HubError::Migrate {
        step,
        version,
        source: source.into(),
    }
}

/// Logs that schema step `step` brought the `backend` database to `version`.
pub(super) fn log_applied(step: &'static str, version: i64, backend: &'static str) {
    tracing::info!(version, step, backend, "hub store schema updated");
}

fn version(conn: &Connection) -> Result<i64, HubError> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(HubError::store("read the schema version"))
}

fn first_release(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "
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
",
    )
}

/// Each matching binding used to store its own copy of the payload and headers (one 20 MiB push
/// on two bindings: two copies). Now one `payloads` row per delivery, which its jobs name by
/// `delivery_id`. Existing jobs are moved over: all jobs of one delivery carried the same
/// payload, and a job whose record names no delivery gets a key of its own. The indexes serve
/// the retention pass (finished jobs by age, what still references a delivery).
fn payload_per_delivery(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "
CREATE TABLE payloads (
    delivery_id TEXT PRIMARY KEY,
    payload TEXT NOT NULL,
    headers TEXT NOT NULL
);
ALTER TABLE jobs ADD COLUMN delivery_id TEXT NOT NULL DEFAULT '';
UPDATE jobs SET delivery_id = COALESCE(
    NULLIF(CASE WHEN json_valid(job_json) THEN json_extract(job_json, '$.delivery_id') END, ''),
    'job:' || id);
INSERT OR IGNORE INTO payloads (delivery_id, payload, headers)
    SELECT delivery_id, payload, headers FROM jobs ORDER BY seq;
ALTER TABLE jobs DROP COLUMN payload;
ALTER TABLE jobs DROP COLUMN headers;
CREATE INDEX jobs_by_delivery ON jobs(delivery_id);
CREATE INDEX jobs_by_state_age ON jobs(state, updated_ms);
CREATE INDEX deliveries_by_age ON deliveries(received_ms);
CREATE INDEX reports_by_job ON reports(job_id);
",
    )
}

/// Servers are listed and revoked by id; an activation not seen for a while expires.
fn server_tracking(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "
ALTER TABLE activations ADD COLUMN last_seen_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE activations ADD COLUMN revoked_ms INTEGER NOT NULL DEFAULT 0;
UPDATE activations SET last_seen_ms = activated_ms;
CREATE INDEX activations_by_server ON activations(server_id);
",
    )
}

/// Freed pages go back to the file system only in `INCREMENTAL` (or `FULL`) auto-vacuum mode; a
/// database made without it needs one `VACUUM` to switch (a new one is switched when it is
/// opened, before it has tables, and skips the `VACUUM`).
fn incremental_auto_vacuum(conn: &Connection) -> rusqlite::Result<()> {
    const INCREMENTAL: i64 = 2;
    let mode: i64 = conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
    if mode != INCREMENTAL {
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        conn.execute_batch("VACUUM")?;
    }
    Ok(())
}

/// Who may trigger (`docs/security.md`): each delivery records its outcome and reason (a delivery
/// of the previous release either made jobs or matched nothing); a fork pull request event held
/// back is kept, latest per pull request, until an approval dispatches it; approvals are kept per
/// head SHA; a cancel job may be targeted at one server, and a cancel that finds a job only
/// claimed waits in `pending_cancels` for that job's accept.
fn trust_and_cancel_routing(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "
ALTER TABLE deliveries ADD COLUMN outcome TEXT NOT NULL DEFAULT 'accepted';
ALTER TABLE deliveries ADD COLUMN reason TEXT NOT NULL DEFAULT '';
UPDATE deliveries SET outcome = 'no_binding' WHERE job_ids = '[]';
ALTER TABLE jobs ADD COLUMN target_server_id TEXT NOT NULL DEFAULT '';
CREATE TABLE held_forks (
    repository TEXT NOT NULL,
    pr_number INTEGER NOT NULL,
    head_sha TEXT NOT NULL,
    event TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    headers TEXT NOT NULL,
    received_ms INTEGER NOT NULL,
    PRIMARY KEY (repository, pr_number)
);
CREATE INDEX held_forks_by_head ON held_forks(repository, head_sha);
CREATE TABLE approvals (
    repository TEXT NOT NULL,
    pr_number INTEGER NOT NULL,
    head_sha TEXT NOT NULL,
    approved_by TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    approved_ms INTEGER NOT NULL,
    PRIMARY KEY (repository, pr_number, head_sha)
);
CREATE TABLE pending_cancels (
    job_id TEXT PRIMARY KEY,
    cancel_json TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    headers TEXT NOT NULL,
    requested_ms INTEGER NOT NULL
);
",
    )
}

/// Pending reports a job's final one replaces, and the check run each job has on GitHub
/// (`docs/github-app.md`).
fn job_lifecycle_reports(conn: &Connection) -> rusqlite::Result<()> {
    super::reports::supersedable_column(conn)?;
    super::check_runs::create_table(conn)
}

/// Who may trigger, tightened (`docs/security.md`): the latest head of each pull request and the
/// repository's own commits, held events ordered by their own time, approvals per binding, and
/// the first delivery of each comment that holds a command.
fn trust_heads_and_approvals(conn: &Connection) -> rusqlite::Result<()> {
    super::heads::create_tables(conn)?;
    super::approvals::approvals_per_binding(conn)?;
    super::commands::create_table(conn)
}

/// The job page's timeline shows when a job was claimed and accepted, which `updated_ms` forgets
/// at the next change; the servers page shows the version each scheduler runs. A job claimed or
/// accepted now took that step at its last change, so that time is carried over; a finished job
/// of an earlier release keeps 0 (not known). The state words are written out, not taken from
/// `JobState`: a step must do the same thing for as long as it exists.
fn claim_accept_times_and_versions(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "
ALTER TABLE jobs ADD COLUMN claimed_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN accepted_ms INTEGER NOT NULL DEFAULT 0;
UPDATE jobs SET claimed_ms = updated_ms WHERE state = 'claimed';
UPDATE jobs SET accepted_ms = updated_ms WHERE state = 'accepted';
ALTER TABLE activations ADD COLUMN client_version TEXT NOT NULL DEFAULT '';
",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::writer::temp_database;
    use crate::store::{Store, Transition};

    /// A database exactly as the previous release left it: its tables, no `user_version`, two
    /// jobs of one delivery (each with its own copy of the payload) and one job whose record
    /// names no delivery.
    fn previous_release_database(path: &std::path::Path) {
        let conn = Connection::open(path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        first_release(&conn).unwrap();
        let job = |seq: i64, id: &str, delivery: &str, payload: &str| {
            let job_json = if delivery.is_empty() {
                format!(r#"{{"id":"{id}","dag_name":"d"}}"#)
            } else {
                format!(r#"{{"id":"{id}","dag_name":"d","delivery_id":"{delivery}"}}"#)
            };
            conn.execute(
                "INSERT INTO jobs (seq, id, target_license, status_context, state, job_json, payload,
                                   headers, created_ms, updated_ms)
                 VALUES (?1, ?2, '', 'dispatch/d', 'queued', ?3, ?4, '{\"h\":[\"1\"]}', 5, 5)",
                rusqlite::params![seq, id, job_json, payload],
            )
            .unwrap();
        };
        job(1, "j1", "d1", "{ \"a\" :  1 }");
        job(2, "j2", "d1", "{ \"a\" :  1 }");
        job(3, "j3", "", "[1,  2]");
        conn.execute(
            "INSERT INTO activations VALUES ('lic', 'srv', 'box', 'hash', 77)",
            [],
        )
        .unwrap();
    }

    #[test]
    fn a_previous_release_database_is_migrated_and_answers_the_same() {
        let (_dir, path) = temp_database();
        previous_release_database(&path);
        let store = Store::open(&path).unwrap();
        let conn = Connection::open(&path).unwrap();
        let one = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(one("PRAGMA user_version"), STEPS.len() as i64);
        assert_eq!(one("PRAGMA auto_vacuum"), 2, "incremental");
        assert_eq!(one("SELECT COUNT(*) FROM payloads"), 2, "one per delivery");
        assert_eq!(
            one("SELECT COUNT(*) FROM pragma_table_info('jobs') WHERE name IN ('payload', 'headers')"),
            0,
            "the per-job copies are gone"
        );
        assert_eq!(
            one("SELECT last_seen_ms FROM activations WHERE server_id = 'srv'"),
            77
        );
        // The pull answer carries the stored text byte for byte, as before.
        let mut got = Vec::new();
        while let Some(job) = store.claim_next("lic", "srv", 10, 1000).unwrap() {
            got.push((job.id, job.payload.unwrap().get().to_owned()));
        }
        assert_eq!(
            got,
            [
                ("j1".to_owned(), "{ \"a\" :  1 }".to_owned()),
                ("j2".to_owned(), "{ \"a\" :  1 }".to_owned()),
                ("j3".to_owned(), "[1,  2]".to_owned()),
            ]
        );
        let caller = crate::store::Caller {
            license_id: "lic",
            server_id: "srv",
        };
        assert_eq!(
            store.accept("j3", caller, "r", 11).unwrap(),
            Transition::Done
        );
        drop(store);
        // Opening again runs no step twice.
        Store::open(&path).unwrap();
        assert_eq!(one("PRAGMA user_version"), STEPS.len() as i64);
    }

    #[test]
    fn jobs_claimed_or_accepted_before_the_times_were_stored_keep_their_last_change() {
        let (_dir, path) = temp_database();
        let conn = Connection::open(&path).unwrap();
        let before = STEPS
            .iter()
            .position(|s| s.name.starts_with("record when each job was last claimed"))
            .unwrap();
        for step in &STEPS[..before] {
            (step.apply)(&conn).unwrap();
        }
        conn.pragma_update(None, "user_version", before as i64)
            .unwrap();
        for (id, state, updated_ms) in [
            ("jc", "claimed", 40),
            ("ja", "accepted", 50),
            ("jf", "finished", 60),
        ] {
            conn.execute(
                "INSERT INTO jobs (id, target_license, status_context, state, job_json, created_ms,
                                   updated_ms)
                 VALUES (?1, '', 'dispatch/d', ?2, '{}', 5, ?3)",
                rusqlite::params![id, state, updated_ms],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO activations (license_id, server_id, machine_name, secret_sha256, activated_ms)
             VALUES ('lic', 'srv', 'box', 'hash', 77)",
            [],
        )
        .unwrap();
        drop(Store::open(&path).unwrap());
        let times = |id: &str| -> (i64, i64) {
            conn.query_row(
                "SELECT claimed_ms, accepted_ms FROM jobs WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
        };
        assert_eq!(times("jc"), (40, 0));
        assert_eq!(times("ja"), (0, 50));
        assert_eq!(times("jf"), (0, 0), "not known");
        let version: String = conn
            .query_row("SELECT client_version FROM activations", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, "");
    }

    #[test]
    fn a_new_database_gets_every_step_and_a_newer_one_is_refused() {
        let (_dir, path) = temp_database();
        drop(Store::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        let one = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(one("PRAGMA user_version"), STEPS.len() as i64);
        assert_eq!(one("PRAGMA auto_vacuum"), 2);
        conn.pragma_update(None, "user_version", STEPS.len() as i64 + 1)
            .unwrap();
        let err = Store::open(&path).err().unwrap();
        assert!(matches!(err, HubError::StoreTooNew { .. }), "{err}");
        assert!(err.to_string().contains("newer"), "{err}");
    }
}
