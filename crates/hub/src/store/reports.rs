//! The `reports` table: GitHub API calls queued by finish and sent later by the reporter.

use rusqlite::{params, Connection};

use crate::error::HubError;

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

/// Queues one call, due at once.
pub(super) fn queue(
    conn: &Connection,
    job_id: &str,
    path: &str,
    body: &str,
    now_ms: i64,
) -> Result<(), HubError> {
    conn.execute(
        "INSERT INTO reports (job_id, path, body, next_attempt_ms) VALUES (?1, ?2, ?3, ?4)",
        params![job_id, path, body, now_ms],
    )
    .map_err(HubError::store("queue a report"))?;
    Ok(())
}

/// Reports due at `now_ms`, oldest first.
pub(super) fn due(
    conn: &Connection,
    now_ms: i64,
    limit: i64,
) -> Result<Vec<PendingReport>, HubError> {
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
pub(super) fn next_due(conn: &Connection) -> Result<Option<i64>, HubError> {
    conn.query_row("SELECT MIN(next_attempt_ms) FROM reports", [], |r| r.get(0))
        .map_err(HubError::store("find the next report"))
}

pub(super) fn delete(conn: &Connection, id: i64) -> Result<(), HubError> {
    conn.execute("DELETE FROM reports WHERE id = ?1", [id])
        .map_err(HubError::store("delete a report"))?;
    Ok(())
}

pub(super) fn reschedule(
    conn: &Connection,
    id: i64,
    attempts: i64,
    next_ms: i64,
    error: &str,
) -> Result<(), HubError> {
    conn.execute(
        "UPDATE reports SET attempts = ?1, next_attempt_ms = ?2, last_error = ?3 WHERE id = ?4",
        params![attempts, next_ms, error, id],
    )
    .map_err(HubError::store("reschedule a report"))?;
    Ok(())
}
