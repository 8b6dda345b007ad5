//! The `reports` table: GitHub API calls queued with the change they report (a job stored,
//! accepted or finished) and sent later by the reporter.
//!
//! Ordered per job: only the oldest report of a job is ever due, so a job's completion can never
//! overtake its earlier updates. A report marked `supersedable` (a `pending` status, a check run
//! still `queued` or `in_progress`) that is still unsent when the job finishes is dropped: the
//! final report says everything it would have.

use std::sync::Arc;

use super::sql::{args, Sql};
use dispatch_protocol::DispatchJob;

use super::Store;
use crate::error::HubError;
use crate::matching::NewJob;

/// A report about to be queued with the change it reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewReport {
    /// Path under the API base URL, e.g. `/repos/o/r/statuses/<sha>`.
    pub path: String,
    /// JSON body.
    pub body: String,
    /// Dropped when still unsent as the job finishes.
    pub supersedable: bool,
}

/// A job a scheduler has just accepted, as its report sees it.
pub(crate) struct AcceptedJob {
    pub job: DispatchJob,
    pub status_context: String,
    /// The accepting server's machine name (its server id when it gave none).
    pub machine: String,
    pub accepted_ms: i64,
}

/// A job as finish sees it, for building reports.
pub(crate) struct FinishedJob {
    pub job: DispatchJob,
    pub status_context: String,
    /// The machine that ran it (empty when no scheduler accepted it).
    pub machine: String,
    /// When a scheduler accepted it, if one did.
    pub started_ms: Option<i64>,
    pub finished_ms: i64,
}

impl FinishedJob {
    /// A job the hub finishes itself, no scheduler having run it.
    pub fn unrun(job: DispatchJob, status_context: String, finished_ms: i64) -> FinishedJob {
        FinishedJob {
            job,
            status_context,
            machine: String::new(),
            started_ms: None,
            finished_ms,
        }
    }
}

/// Builds the GitHub calls for each step of a job's life; the store queues them in the same
/// transaction as the step. Statuses or check runs, or nothing, as the hub is configured.
pub(crate) trait ReportsFor: Send + Sync {
    /// A job stored `queued`.
    fn stored(&self, _job: &NewJob) -> Vec<NewReport> {
        Vec::new()
    }

    /// A job a scheduler accepted.
    fn accepted(&self, _job: &AcceptedJob) -> Vec<NewReport> {
        Vec::new()
    }

    /// A finished job: (path, body) calls, queued after the job's earlier reports and replacing
    /// those still unsent that are supersedable.
    fn finished(
        &self,
        job: &FinishedJob,
        result_status: &str,
        summary: &str,
    ) -> Vec<(String, String)>;
}

/// Plain functions of a finished job report only the finish.
impl<F> ReportsFor for F
where
    F: Fn(&FinishedJob, &str, &str) -> Vec<(String, String)> + Send + Sync,
{
    fn finished(
        &self,
        job: &FinishedJob,
        result_status: &str,
        summary: &str,
    ) -> Vec<(String, String)> {
        self(job, result_status, summary)
    }
}

/// Builds the GitHub reports of a job's steps (none when the hub does not report to GitHub).
pub(crate) type Reports = Arc<dyn ReportsFor>;

/// Reports nothing.
pub(crate) struct NoReports;

impl ReportsFor for NoReports {
    fn finished(&self, _: &FinishedJob, _: &str, _: &str) -> Vec<(String, String)> {
        Vec::new()
    }
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

/// The schema step that lets a job's final report replace its unsent pending ones (see
/// `schema.rs`). Rows from the previous release are final reports.
pub(super) fn supersedable_column(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "
ALTER TABLE reports ADD COLUMN supersedable INTEGER NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS reports_by_job ON reports(job_id);
",
    )
}

/// A schema step of both backends (SQLite as written, PostgreSQL after
/// [`super::schema_pg::portable`]): when a hub process claimed a report to send it, until when
/// (0: not being sent). A final report leaves a pending one in flight in place, so that no
/// replica sends the final before the pending one has arrived, which GitHub would then show.
pub(super) const SENDING_COLUMN: &str =
    "ALTER TABLE reports ADD COLUMN sending_until_ms INTEGER NOT NULL DEFAULT 0;";

/// Queues one call that no later report supersedes, due at once.
pub(super) fn queue(
    conn: &dyn Sql,
    job_id: &str,
    path: &str,
    body: &str,
    now_ms: i64,
) -> Result<(), HubError> {
    let call = NewReport {
        path: path.to_owned(),
        body: body.to_owned(),
        supersedable: false,
    };
    queue_report(conn, job_id, &call, now_ms)
}

/// Queues one report, due at once (after the job's earlier ones).
pub(super) fn queue_report(
    conn: &dyn Sql,
    job_id: &str,
    report: &NewReport,
    now_ms: i64,
) -> Result<(), HubError> {
    conn.execute(
        "INSERT INTO reports (job_id, path, body, supersedable, next_attempt_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        args![
            job_id,
            report.path,
            report.body,
            report.supersedable,
            now_ms
        ],
    )
    .map_err(HubError::store("queue a report"))?;
    Ok(())
}

/// Queues the reports of a step before the job's end (stored, accepted).
pub(super) fn queue_pending(
    conn: &dyn Sql,
    job_id: &str,
    reports: Vec<NewReport>,
    now_ms: i64,
) -> Result<(), HubError> {
    for report in reports {
        queue_report(conn, job_id, &report, now_ms)?;
    }
    Ok(())
}

/// Queues the calls that report a job's end, dropping its pending reports not being sent.
pub(super) fn queue_final(
    conn: &dyn Sql,
    job_id: &str,
    calls: Vec<(String, String)>,
    now_ms: i64,
) -> Result<(), HubError> {
    drop_superseded(conn, job_id, now_ms)?;
    for (path, body) in calls {
        queue(conn, job_id, &path, &body, now_ms)?;
    }
    Ok(())
}

/// Drops the job's supersedable reports that no hub process is sending at `now_ms`; called as
/// its final report is queued. One being sent stays ahead of the final, and goes when it has
/// been sent ([`delete`]) or when its send fails ([`retry_or_drop`]).
pub(super) fn drop_superseded(
    conn: &dyn Sql,
    job_id: &str,
    now_ms: i64,
) -> Result<usize, HubError> {
    conn.execute(
        "DELETE FROM reports WHERE job_id = ?1 AND supersedable = 1 AND sending_until_ms <= ?2",
        args![job_id, now_ms],
    )
    .map_err(HubError::store("drop superseded reports"))
}

/// Drops report `id` when it is supersedable and its job's final report is queued behind it:
/// its send failed, and the final replaces it. Returns whether it was dropped.
pub(super) fn drop_if_superseded(conn: &dyn Sql, id: i64) -> Result<bool, HubError> {
    let dropped = conn
        .execute(
            "DELETE FROM reports WHERE id = ?1 AND supersedable = 1 AND EXISTS (
                 SELECT 1 FROM reports f
                 WHERE f.job_id = reports.job_id AND f.id > reports.id AND f.supersedable = 0)",
            args![id],
        )
        .map_err(HubError::store("drop a superseded report"))?;
    Ok(dropped > 0)
}

/// Only the oldest report of each job is ever due.
const HEAD_OF_JOB: &str =
    "NOT EXISTS (SELECT 1 FROM reports e WHERE e.job_id = r.job_id AND e.id < r.id)";

/// Reports due at `now_ms`, oldest first, at most one per job.
pub(super) fn due(conn: &dyn Sql, now_ms: i64, limit: i64) -> Result<Vec<PendingReport>, HubError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT id, job_id, path, body, attempts FROM reports r
             WHERE next_attempt_ms <= ?1 AND {HEAD_OF_JOB}
             ORDER BY next_attempt_ms, id LIMIT ?2"
        ))
        .map_err(HubError::store("select due reports"))?;
    let rows = stmt
        .query_map(args![now_ms, limit], |r| {
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

/// Makes report `id` due at `until_ms` and marks it as being sent until then (a claim by the hub
/// process sending it).
pub(super) fn hold(conn: &dyn Sql, id: i64, until_ms: i64) -> Result<(), HubError> {
    conn.execute(
        "UPDATE reports SET next_attempt_ms = ?2, sending_until_ms = ?2 WHERE id = ?1",
        args![id, until_ms],
    )
    .map_err(HubError::store("claim a report"))?;
    Ok(())
}

/// When the next report is due, if any (reports waiting behind an earlier one of their job do
/// not count: they become due when it is gone).
pub(super) fn next_due(conn: &dyn Sql) -> Result<Option<i64>, HubError> {
    conn.query_row(
        &format!("SELECT MIN(next_attempt_ms) FROM reports r WHERE {HEAD_OF_JOB}"),
        args![],
        |r| r.get(0),
    )
    .map_err(HubError::store("find the next report"))
}

pub(super) fn delete(conn: &dyn Sql, id: i64) -> Result<(), HubError> {
    conn.execute("DELETE FROM reports WHERE id = ?1", args![id])
        .map_err(HubError::store("delete a report"))?;
    Ok(())
}

/// Report `id` failed to send: it is tried again at `next_ms`, counting `attempts`, unless the
/// job's final report replaces it.
pub(super) fn reschedule(
    conn: &dyn Sql,
    id: i64,
    attempts: i64,
    next_ms: i64,
    error: &str,
) -> Result<(), HubError> {
    if drop_if_superseded(conn, id)? {
        return Ok(());
    }
    conn.execute(
        "UPDATE reports SET attempts = ?1, next_attempt_ms = ?2, last_error = ?3,
                            sending_until_ms = 0
         WHERE id = ?4",
        args![attempts, next_ms, error, id],
    )
    .map_err(HubError::store("reschedule a report"))?;
    Ok(())
}

/// Puts a report off until `until_ms` without counting an attempt: GitHub asked to wait (a rate
/// limit), nothing failed. A report the job's final one replaces is dropped instead.
pub(super) fn defer(conn: &dyn Sql, id: i64, until_ms: i64, error: &str) -> Result<(), HubError> {
    if drop_if_superseded(conn, id)? {
        return Ok(());
    }
    conn.execute(
        "UPDATE reports SET next_attempt_ms = ?1, last_error = ?2, sending_until_ms = 0
         WHERE id = ?3",
        args![until_ms, error, id],
    )
    .map_err(HubError::store("put off a report"))?;
    Ok(())
}

impl Store {
    /// Puts report `id` off until `until_ms` without counting an attempt.
    pub fn defer_report(&self, id: i64, until_ms: i64, error: &str) -> Result<(), HubError> {
        let error = error.to_owned();
        self.write(move |conn| defer(conn, id, until_ms, &error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> rusqlite::Connection {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE reports (
                id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, path TEXT NOT NULL,
                body TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
                next_attempt_ms INTEGER NOT NULL, last_error TEXT NOT NULL DEFAULT '');",
        )
        .unwrap();
        supersedable_column(&conn).unwrap();
        conn.execute_batch(SENDING_COLUMN).unwrap();
        conn
    }

    fn pending(path: &str) -> NewReport {
        NewReport {
            path: path.into(),
            body: "{}".into(),
            supersedable: true,
        }
    }

    fn due_paths(conn: &dyn Sql, now: i64) -> Vec<String> {
        due(conn, now, 10)
            .unwrap()
            .into_iter()
            .map(|r| r.path)
            .collect()
    }

    #[test]
    fn one_report_per_job_is_due_in_order_and_finals_drop_pending_ones() {
        let conn = table();
        queue_report(&conn, "a", &pending("a-queued"), 0).unwrap();
        queue_report(&conn, "a", &pending("a-running"), 0).unwrap();
        queue_report(&conn, "b", &pending("b-queued"), 0).unwrap();
        assert_eq!(due_paths(&conn, 0), ["a-queued", "b-queued"]);
        // A retried head holds its job's later reports back, and the wait counts for both.
        let head = due(&conn, 0, 10).unwrap()[0].id;
        reschedule(&conn, head, 1, 500, "boom").unwrap();
        assert_eq!(due_paths(&conn, 0), ["b-queued"]);
        delete(&conn, due(&conn, 0, 10).unwrap()[0].id).unwrap();
        assert_eq!(next_due(&conn).unwrap(), Some(500));
        assert_eq!(drop_superseded(&conn, "a", 500).unwrap(), 2);
        queue(&conn, "a", "a-final", "{}", 600).unwrap();
        assert_eq!(due_paths(&conn, 600), ["a-final"]);
        // A final report is never dropped by a later one.
        assert_eq!(drop_superseded(&conn, "a", 600).unwrap(), 0);
    }

    /// One replica sends the pending report while another stores the job's end: the final waits
    /// until the pending one has arrived, so GitHub never gets them the other way round.
    #[test]
    fn a_final_report_waits_behind_a_pending_one_being_sent() {
        let conn = table();
        queue_report(&conn, "a", &pending("a-running"), 0).unwrap();
        let sending = due(&conn, 0, 10).unwrap()[0].id;
        hold(&conn, sending, 120_000).unwrap();
        queue_final(&conn, "a", vec![("a-final".into(), "{}".into())], 10).unwrap();
        assert!(due_paths(&conn, 10).is_empty(), "the final waits");
        assert_eq!(next_due(&conn).unwrap(), Some(120_000));
        delete(&conn, sending).unwrap();
        assert_eq!(due_paths(&conn, 10), ["a-final"]);

        // A pending report whose send fails once the final is queued is dropped, not retried.
        queue_report(&conn, "b", &pending("b-running"), 0).unwrap();
        let failing = due(&conn, 0, 10).unwrap().last().unwrap().id;
        hold(&conn, failing, 120_000).unwrap();
        queue_final(&conn, "b", vec![("b-final".into(), "{}".into())], 10).unwrap();
        reschedule(&conn, failing, 1, 5_000, "boom").unwrap();
        assert_eq!(due_paths(&conn, 10), ["a-final", "b-final"]);

        // A claim that lapsed (its hub died while sending) no longer holds the final back.
        queue_report(&conn, "c", &pending("c-running"), 0).unwrap();
        let lapsed = due(&conn, 0, 10).unwrap().last().unwrap().id;
        hold(&conn, lapsed, 1_000).unwrap();
        queue_final(&conn, "c", vec![("c-final".into(), "{}".into())], 1_000).unwrap();
        assert_eq!(due_paths(&conn, 1_000), ["a-final", "b-final", "c-final"]);
    }

    #[test]
    fn a_deferred_report_counts_no_attempt() {
        let conn = table();
        queue_report(&conn, "a", &pending("a"), 0).unwrap();
        let id = due(&conn, 0, 10).unwrap()[0].id;
        defer(&conn, id, 1_000, "limited").unwrap();
        assert!(due_paths(&conn, 999).is_empty());
        let r = &due(&conn, 1_000, 10).unwrap()[0];
        assert_eq!(r.attempts, 0, "a rate limit is not a failed attempt");
    }
}
