//! The pages' reads of the store, over their own read-only connection ([`super::state::Web`]).
//! Lists are paged by keyset (the last row's key names the next page), never by `OFFSET`, so
//! page 1,000 costs what page 1 does; the first jobs page walks the jobs' primary key backwards.

use std::collections::HashMap;

use crate::store::sql::{args, Dialect, Optional, Row, Sql, SqlError};
use dispatch_protocol::DispatchJob;

use crate::error::HubError;
use crate::store::JobState;

/// Rows on one page of a list.
pub(crate) const PAGE: usize = 50;

/// What the jobs list is narrowed to; empty strings match everything.
#[derive(Debug, Default, Clone)]
pub(crate) struct JobFilter {
    /// `owner/name`, compared case-insensitively.
    pub repository: String,
    /// The DAG name.
    pub dag: String,
    /// A job state (`queued`, ...) or a result status (`succeeded`, ...).
    pub status: String,
    /// Only jobs stored before the one with this sequence number (the next page).
    pub before: Option<i64>,
}

/// One job as the pages show it.
#[derive(Debug)]
pub(crate) struct JobRow {
    /// The job's place in the store: the keyset of the jobs list.
    pub seq: i64,
    pub id: String,
    pub state: String,
    pub result_status: String,
    pub result_summary: String,
    /// The stored job (its event, repository, DAG, ...); an unreadable record shows empty.
    pub job: DispatchJob,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub claimed_by: String,
    pub claimed_license: String,
}

const JOB_COLUMNS: &str = "seq, id, state, result_status, result_summary, job_json, created_ms, \
                           updated_ms, claimed_by, claimed_license";

fn job_row(r: &Row) -> Result<JobRow, SqlError> {
    let job_json: String = r.get(5)?;
    Ok(JobRow {
        seq: r.get(0)?,
        id: r.get(1)?,
        state: r.get(2)?,
        result_status: r.get(3)?,
        result_summary: r.get(4)?,
        job: serde_json::from_str(&job_json).unwrap_or_default(),
        created_ms: r.get(6)?,
        updated_ms: r.get(7)?,
        claimed_by: r.get(8)?,
        claimed_license: r.get(9)?,
    })
}

/// One page of jobs, newest first, and whether there are more after it.
pub(crate) fn jobs(conn: &dyn Sql, f: &JobFilter) -> Result<(Vec<JobRow>, bool), HubError> {
    let d = conn.dialect();
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM jobs
         WHERE seq < ?1
           AND (?2 = '' OR lower({repository}) = lower(?2))
           AND (?3 = '' OR {dag} = ?3)
           AND (?4 = '' OR state = ?4 OR result_status = ?4)
         ORDER BY seq DESC LIMIT ?5",
        repository = d.json_text("job_json", "repository_name"),
        dag = d.json_text("job_json", "dag_name"),
    );
    let mut stmt = conn
        .prepare_cached(&sql)
        .map_err(HubError::store("list jobs"))?;
    let mut rows: Vec<JobRow> = stmt
        .query_map(
            args![
                f.before.unwrap_or(i64::MAX),
                f.repository,
                f.dag,
                f.status,
                PAGE as i64 + 1
            ],
            job_row,
        )
        .and_then(|rows| rows.collect())
        .map_err(HubError::store("list jobs"))?;
    let more = rows.len() > PAGE;
    rows.truncate(PAGE);
    Ok((rows, more))
}

/// A job with what its page shows beside the job row.
#[derive(Debug)]
pub(crate) struct JobDetail {
    pub row: JobRow,
    /// When the hub received the webhook that made it (0: unknown, e.g. pruned).
    pub received_ms: i64,
    /// The pull request's or issue's title in the payload (untrusted text).
    pub title: String,
    /// The machine name the claiming server gave at activation.
    pub machine_name: String,
    /// The version the claiming server runs, as it last said (empty: not given).
    pub client_version: String,
    /// When the job was last claimed (0: never, or before the hub kept it). A claim whose lease
    /// ran out and that was claimed again shows the latest claim.
    pub claimed_ms: i64,
    /// How many times it was claimed.
    pub claims: i64,
    /// When the job was accepted (0: not yet, or before the hub kept it).
    pub accepted_ms: i64,
}

/// The job `id`, or None.
pub(crate) fn job(conn: &dyn Sql, id: &str) -> Result<Option<JobDetail>, HubError> {
    let d = conn.dialect();
    // Stored payloads passed the webhook's JSON check; SQLite checks again, PostgreSQL's cast
    // would refuse a bad one.
    let valid = match d {
        Dialect::Sqlite => "AND json_valid(p.payload)",
        Dialect::Postgres => "",
    };
    let pr_title = d.json_text("p.payload", "pull_request.title");
    let issue_title = d.json_text("p.payload", "issue.title");
    let sql = format!(
        "SELECT {JOB_COLUMNS},
            COALESCE((SELECT received_ms FROM deliveries d WHERE d.delivery_id = jobs.delivery_id), 0),
            COALESCE((SELECT COALESCE({pr_title}, {issue_title}, '')
                      FROM payloads p WHERE p.delivery_id = jobs.delivery_id
                      {valid}), ''),
            COALESCE((SELECT machine_name FROM activations a
                      WHERE a.license_id = jobs.claimed_license AND a.server_id = jobs.claimed_by), ''),
            COALESCE((SELECT client_version FROM activations a
                      WHERE a.license_id = jobs.claimed_license AND a.server_id = jobs.claimed_by), ''),
            claimed_ms, claims, accepted_ms
         FROM jobs WHERE id = ?1"
    );
    conn.query_row(&sql, args![id], |r| {
        Ok(JobDetail {
            row: job_row(r)?,
            received_ms: r.get(10)?,
            title: r.get::<Option<String>>(11)?.unwrap_or_default(),
            machine_name: r.get(12)?,
            client_version: r.get(13)?,
            claimed_ms: r.get(14)?,
            claims: r.get(15)?,
            accepted_ms: r.get(16)?,
        })
    })
    .optional()
    .map_err(HubError::store("read a job"))
}

/// One webhook delivery as the deliveries page shows it.
#[derive(Debug)]
pub(crate) struct DeliveryRow {
    pub delivery_id: String,
    pub event: String,
    /// The ids of the jobs it made.
    pub job_ids: Vec<String>,
    pub received_ms: i64,
    /// `accepted`, `duplicate`, `not_allowed`, `fork_not_approved`, `no_binding`.
    pub outcome: String,
    pub reason: String,
}

/// Where the deliveries page starts: before this (time, delivery id).
pub(crate) type DeliveryKey = (i64, String);

/// One page of deliveries, newest first, and the key of the next page if there is one.
pub(crate) fn deliveries(
    conn: &dyn Sql,
    before: Option<DeliveryKey>,
) -> Result<(Vec<DeliveryRow>, Option<DeliveryKey>), HubError> {
    let (before_ms, before_id) = before.unwrap_or((i64::MAX, String::new()));
    let mut stmt = conn
        .prepare_cached(
            "SELECT delivery_id, event, job_ids, received_ms, outcome, reason FROM deliveries
             WHERE received_ms < ?1 OR (received_ms = ?1 AND delivery_id < ?2)
             ORDER BY received_ms DESC, delivery_id DESC LIMIT ?3",
        )
        .map_err(HubError::store("list deliveries"))?;
    let mut rows: Vec<DeliveryRow> = stmt
        .query_map(args![before_ms, before_id, PAGE as i64 + 1], |r| {
            let job_ids: String = r.get(2)?;
            Ok(DeliveryRow {
                delivery_id: r.get(0)?,
                event: r.get(1)?,
                job_ids: serde_json::from_str(&job_ids).unwrap_or_default(),
                received_ms: r.get(3)?,
                outcome: r.get(4)?,
                reason: r.get(5)?,
            })
        })
        .and_then(|rows| rows.collect())
        .map_err(HubError::store("list deliveries"))?;
    let next = (rows.len() > PAGE).then(|| {
        rows.truncate(PAGE);
        let last = &rows[PAGE - 1];
        (last.received_ms, last.delivery_id.clone())
    });
    Ok((rows, next))
}

/// The version each server last said it runs, by (license, server id); servers that gave none
/// are left out.
pub(crate) fn server_versions(
    conn: &dyn Sql,
) -> Result<HashMap<(String, String), String>, HubError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT license_id, server_id, client_version FROM activations
             WHERE client_version <> ''",
        )
        .map_err(HubError::store("read the servers' versions"))?;
    stmt.query_map(args![], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))
        .and_then(|rows| rows.collect())
        .map_err(HubError::store("read the servers' versions"))
}

/// A job a server holds now (claimed or accepted).
#[derive(Debug)]
pub(crate) struct ActiveJob {
    pub server_id: String,
    pub id: String,
    pub state: String,
    pub dag: String,
    pub repository: String,
}

/// Every job claimed or accepted now, by server.
pub(crate) fn active_jobs(conn: &dyn Sql) -> Result<Vec<ActiveJob>, HubError> {
    let d = conn.dialect();
    let sql = format!(
        "SELECT claimed_by, id, state, COALESCE({dag}, ''), COALESCE({repository}, '')
         FROM jobs WHERE state IN (?1, ?2) ORDER BY claimed_by, seq",
        dag = d.json_text("job_json", "dag_name"),
        repository = d.json_text("job_json", "repository_name"),
    );
    let mut stmt = conn
        .prepare_cached(&sql)
        .map_err(HubError::store("list active jobs"))?;
    stmt.query_map(args![JobState::Claimed, JobState::Accepted], |r| {
        Ok(ActiveJob {
            server_id: r.get(0)?,
            id: r.get(1)?,
            state: r.get(2)?,
            dag: r.get(3)?,
            repository: r.get(4)?,
        })
    })
    .and_then(|rows| rows.collect())
    .map_err(HubError::store("list active jobs"))
}

/// The state, result status and summary of the job `id`, or None.
pub(crate) fn job_state(
    conn: &dyn Sql,
    id: &str,
) -> Result<Option<(String, String, String)>, HubError> {
    conn.prepare_cached("SELECT state, result_status, result_summary FROM jobs WHERE id = ?1")
        .and_then(|mut stmt| {
            stmt.query_row(args![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()
        })
        .map_err(HubError::store("read a job's state"))
}
