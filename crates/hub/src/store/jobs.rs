//! The `jobs` and `deliveries` tables: storing a delivery's jobs, and the lease rules of claim,
//! accept and finish.
//!
//! Every function runs inside the writer's transaction (or on the read connection, for the
//! read-only ones); none commits.

use std::sync::Arc;

use dispatch_protocol::DispatchJob;
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::value::RawValue;

use super::cancels;
use super::gauges::Tally;
use super::reports::{self, AcceptedJob, ReportsFor};
use super::state::JobState;
use crate::error::HubError;
use crate::matching::NewJob;
use crate::trust::Outcome;

/// A job whose claim has run out this many times is finished as `rejected`: a job no scheduler
/// can take (say, a payload too big for its client) must not block the queue forever.
pub(crate) const MAX_CLAIMS: i64 = 5;

/// Largest pull answer a scheduler reads (`docs/protocol.md`: at most 1 MiB of a response body).
pub(crate) const MAX_JOB_ANSWER_BYTES: usize = 1024 * 1024;

/// The result status the hub itself gives a job no scheduler can take.
const REJECTED: &str = "rejected";

/// The raw delivery all jobs of one webhook share, stored once (in `payloads`) byte for byte.
#[derive(Clone)]
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

/// Builds the GitHub reports of a job's steps (none when the hub does not report to GitHub).
pub(crate) type Reports = Arc<dyn ReportsFor>;

/// A delivery as the store records it: its id, event, raw body and headers, and how the trust
/// gate took it.
pub(crate) struct Delivery {
    pub id: String,
    pub event: String,
    pub raw: RawDelivery,
    pub outcome: Outcome,
    /// Why it was turned away, or what a command did.
    pub reason: String,
}

/// Stores the jobs of a delivery, or returns the original job ids of a redelivery.
pub(super) fn record_delivery(
    tx: &Connection,
    delivery: &Delivery,
    jobs: &[NewJob],
    now_ms: i64,
    reports: &Reports,
    tally: &mut Tally,
) -> Result<DeliveryOutcome, HubError> {
    if let Some(job_ids) = recorded_jobs(tx, &delivery.id)? {
        return Ok(DeliveryOutcome {
            job_ids,
            duplicate: true,
        });
    }
    let mut job_ids = Vec::with_capacity(jobs.len());
    let mut queued = 0;
    for j in jobs {
        if insert_job(tx, j, &delivery.id, &delivery.raw, now_ms, reports, tally)?
            == JobState::Queued
        {
            queued += 1;
        }
        job_ids.push(j.job.id.clone());
    }
    // One copy however many bindings matched, and none when no job will ever be pulled (all were
    // too large, or nothing matched).
    if queued > 0 {
        insert_payload(tx, &delivery.id, &delivery.raw)?;
    }
    insert_delivery(tx, delivery, &job_ids, now_ms)?;
    Ok(DeliveryOutcome {
        job_ids,
        duplicate: false,
    })
}

/// The job ids an earlier delivery with this id produced, if there was one.
pub(super) fn recorded_jobs(
    tx: &Connection,
    delivery_id: &str,
) -> Result<Option<Vec<String>>, HubError> {
    let existing: Option<String> = tx
        .query_row(
            "SELECT job_ids FROM deliveries WHERE delivery_id = ?1",
            [delivery_id],
            |r| r.get(0),
        )
        .optional()
        .map_err(HubError::store("look up a delivery"))?;
    existing
        .map(|ids| {
            serde_json::from_str(&ids).map_err(|source| HubError::CorruptRecord {
                job_id: format!("delivery {delivery_id}"),
                source,
            })
        })
        .transpose()
}

/// Records a delivery and the jobs it produced.
pub(super) fn insert_delivery(
    tx: &Connection,
    delivery: &Delivery,
    job_ids: &[String],
    now_ms: i64,
) -> Result<(), HubError> {
    let ids_json = serde_json::to_string(job_ids).unwrap_or_else(|_| "[]".to_owned());
    tx.execute(
        "INSERT INTO deliveries (delivery_id, event, job_ids, received_ms, outcome, reason)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            delivery.id,
            delivery.event,
            ids_json,
            now_ms,
            delivery.outcome.as_str(),
            delivery.reason
        ],
    )
    .map_err(HubError::store("insert a delivery"))?;
    Ok(())
}

/// Stores the payload and headers jobs pulled under `key` carry (kept if already there).
pub(super) fn insert_payload(
    tx: &Connection,
    key: &str,
    raw: &RawDelivery,
) -> Result<(), HubError> {
    tx.execute(
        "INSERT OR IGNORE INTO payloads (delivery_id, payload, headers) VALUES (?1, ?2, ?3)",
        params![key, raw.payload, raw.headers],
    )
    .map_err(HubError::store("insert a payload"))?;
    Ok(())
}

/// Inserts one job whose pull answer carries the payload stored under `payload_key` (`raw`):
/// queued, or finished as `rejected` at once when it cannot fit in a pull answer, its reports
/// queued like any finish's. Returns the state it was stored in.
pub(super) fn insert_job(
    tx: &Connection,
    j: &NewJob,
    payload_key: &str,
    raw: &RawDelivery,
    now_ms: i64,
    reports: &Reports,
    tally: &mut Tally,
) -> Result<JobState, HubError> {
    let job_json = serde_json::to_string(&j.job).map_err(|source| HubError::CorruptRecord {
        job_id: j.job.id.clone(),
        source,
    })?;
    // A scheduler reads at most 1 MiB of a pull answer: a job that cannot fit would be claimed
    // and dropped forever, so it is answered `rejected` at once instead.
    let answer_len = job_json.len() + raw.payload.len() + raw.headers.len() + 64;
    let (state, result_status, result_summary) = if answer_len > MAX_JOB_ANSWER_BYTES {
        tracing::warn!(job_id = %j.job.id, bytes = answer_len,
            "job too large for the dispatch protocol; finished as rejected");
        (
            JobState::Finished,
            REJECTED,
            format!(
                "the GitHub event is {} bytes; a dispatch job carries at most {} bytes",
                raw.payload.len(),
                MAX_JOB_ANSWER_BYTES
            ),
        )
    } else {
        (JobState::Queued, "", String::new())
    };
    tx.execute(
        "INSERT INTO jobs (id, target_license, target_server_id, status_context, state, job_json,
                           delivery_id, created_ms, updated_ms, result_status, result_summary)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9, ?10)",
        params![
            j.job.id,
            j.target_license,
            j.target_server_id,
            j.status_context,
            state,
            job_json,
            payload_key,
            now_ms,
            result_status,
            result_summary
        ],
    )
    .map_err(HubError::store("insert a job"))?;
    tally.added(state, 1);
    if state == JobState::Finished {
        let finished = FinishedJob::unrun(j.job.clone(), j.status_context.clone(), now_ms);
        let calls = reports.finished(&finished, result_status, &result_summary);
        reports::queue_final(tx, &j.job.id, calls, now_ms)?;
    } else {
        reports::queue_pending(tx, &j.job.id, reports.stored(j), now_ms)?;
    }
    Ok(state)
}

/// Expired claims go back to the queue, keeping `claimed_by` so the last claimant can still
/// accept if nobody else has taken the job meanwhile; after [`MAX_CLAIMS`] they are finished as
/// `rejected` instead. Returns how many jobs changed.
pub(super) fn expire_claims(
    conn: &Connection,
    now_ms: i64,
    reports: &Reports,
    tally: &mut Tally,
) -> Result<usize, HubError> {
    // Read first: each job rejected here is reported like any finish.
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, status_context, job_json FROM jobs
             WHERE state = ?1 AND lease_expires_ms <= ?2 AND claims >= ?3",
        )
        .map_err(HubError::store("find jobs nobody accepts"))?;
    let giving_up: Vec<(String, String, String)> = stmt
        .query_map(params![JobState::Claimed, now_ms, MAX_CLAIMS], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .and_then(|rows| rows.collect())
        .map_err(HubError::store("find jobs nobody accepts"))?;
    let rejected = conn
        .execute(
            "UPDATE jobs SET state = ?1, result_status = ?5,
                             result_summary = 'not accepted by any scheduler within its lease, ' || claims || ' times',
                             lease_expires_ms = 0, updated_ms = ?2
             WHERE state = ?3 AND lease_expires_ms <= ?2 AND claims >= ?4",
            params![JobState::Finished, now_ms, JobState::Claimed, MAX_CLAIMS, REJECTED],
        )
        .map_err(HubError::store("reject jobs nobody accepts"))?;
    tally.moved(JobState::Claimed, JobState::Finished, rejected);
    for (id, status_context, job_json) in giving_up {
        let summary = format!("not accepted by any scheduler within its lease, {MAX_CLAIMS} times");
        let finished = FinishedJob::unrun(decode_job(&job_json)?, status_context, now_ms);
        let calls = reports.finished(&finished, REJECTED, &summary);
        reports::queue_final(conn, &id, calls, now_ms)?;
    }
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
            params![JobState::Queued, now_ms, JobState::Claimed],
        )
        .map_err(HubError::store("requeue expired claims"))?;
    tally.moved(JobState::Claimed, JobState::Queued, requeued);
    Ok(rejected + requeued)
}

/// Claims the oldest queued job this license and server may take, for `lease_ms` (a job targeted
/// at one server, a cancel, goes to that server only).
pub(super) fn claim_next(
    tx: &Connection,
    license_id: &str,
    server_id: &str,
    now_ms: i64,
    lease_ms: i64,
    reports: &Reports,
    tally: &mut Tally,
) -> Result<Option<DispatchJob>, HubError> {
    expire_claims(tx, now_ms, reports, tally)?;
    let row: Option<(i64, String, Option<String>, Option<String>)> = tx
        .query_row(
            "SELECT j.seq, j.job_json, p.payload, p.headers FROM jobs j
             LEFT JOIN payloads p ON p.delivery_id = j.delivery_id
             WHERE j.state = ?1 AND (j.target_license = '' OR j.target_license = ?2)
                   AND (j.target_server_id = '' OR j.target_server_id = ?3)
             ORDER BY j.seq LIMIT 1",
            params![JobState::Queued, license_id, server_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()
        .map_err(HubError::store("select a queued job"))?;
    let Some((seq, job_json, payload, headers)) = row else {
        return Ok(None);
    };
    let (Some(payload), Some(headers)) = (payload, headers) else {
        return Err(HubError::MissingPayload {
            job_id: decode_job(&job_json).map(|j| j.id).unwrap_or_default(),
        });
    };
    tx.execute(
        "UPDATE jobs SET state = ?1, claimed_license = ?2, claimed_by = ?3, lease_expires_ms = ?4,
                         updated_ms = ?5, claims = claims + 1
         WHERE seq = ?6",
        params![
            JobState::Claimed,
            license_id,
            server_id,
            now_ms + lease_ms,
            now_ms,
            seq
        ],
    )
    .map_err(HubError::store("claim a job"))?;
    tally.moved(JobState::Queued, JobState::Claimed, 1);
    let mut job = decode_job(&job_json)?;
    job.payload = Some(raw(&job.id, payload)?);
    job.headers = Some(raw(&job.id, headers)?);
    job.license_id = license_id.to_owned();
    job.status = JobState::Claimed.as_str().to_owned();
    job.claimed_by = server_id.to_owned();
    Ok(Some(job))
}

/// Whether a claim attempt for this license and server could succeed now: a queued job it may
/// take, or a claim whose lease has run out.
pub(super) fn has_claimable(
    conn: &Connection,
    license_id: &str,
    server_id: &str,
    now_ms: i64,
) -> Result<bool, HubError> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE state = ?1 AND (target_license = '' OR target_license = ?2)
                                               AND (target_server_id = '' OR target_server_id = ?5))
             OR EXISTS (SELECT 1 FROM jobs WHERE state = ?3 AND lease_expires_ms <= ?4)",
        params![JobState::Queued, license_id, JobState::Claimed, now_ms, server_id],
        |r| r.get(0),
    )
    .map_err(HubError::store("look for claimable jobs"))
}

/// Accept: claimed (or queued again after its lease ran out) → accepted by this server.
pub(super) fn accept(
    tx: &Connection,
    job_id: &str,
    caller: Caller<'_>,
    dag_run_id: &str,
    now_ms: i64,
    reports: &Reports,
    tally: &mut Tally,
) -> Result<Transition, HubError> {
    let Some(row) = JobRow::load_visible(tx, job_id, caller.license_id)? else {
        return Ok(Transition::NotFound);
    };
    let mine = row.claimed_by_caller(caller);
    let outcome = match row.state {
        // A queued job that this server claimed last: its lease ran out but nobody else took it,
        // so the server may still have it.
        JobState::Claimed | JobState::Queued if mine => Transition::Done,
        JobState::Accepted if mine => Transition::Repeated,
        JobState::Finished => Transition::Conflict(format!("job `{job_id}` is already finished")),
        _ => Transition::Conflict(format!("job `{job_id}` is not claimed by this server")),
    };
    if outcome == Transition::Done {
        tx.execute(
            "UPDATE jobs SET state = ?1, claimed_license = ?2, claimed_by = ?3, dag_run_id = ?4,
                             lease_expires_ms = 0, updated_ms = ?5
             WHERE id = ?6",
            params![
                JobState::Accepted,
                caller.license_id,
                caller.server_id,
                dag_run_id,
                now_ms,
                job_id
            ],
        )
        .map_err(HubError::store("accept a job"))?;
        tally.moved(row.state, JobState::Accepted, 1);
        let accepted = AcceptedJob {
            job: decode_job(&row.job_json)?,
            status_context: row.status_context.clone(),
            machine: cancels::machine_name(tx, caller.license_id, caller.server_id)?,
            accepted_ms: now_ms,
        };
        reports::queue_pending(tx, job_id, reports.accepted(&accepted), now_ms)?;
        // A cancel that came while the job was only claimed reaches this server now that the
        // run is tracked there.
        cancels::on_accept(tx, job_id, caller, now_ms, tally)?;
    }
    Ok(outcome)
}

/// Finish: claimed or accepted by this server → finished, and the reports `reports_for` builds are
/// queued in the same transaction.
#[allow(clippy::too_many_arguments)] // Each is a different thing; a struct would only rename them.
pub(super) fn finish(
    tx: &Connection,
    job_id: &str,
    caller: Caller<'_>,
    result_status: &str,
    result_summary: &str,
    now_ms: i64,
    reports_for: impl FnOnce(&FinishedJob) -> Vec<(String, String)>,
    tally: &mut Tally,
) -> Result<Transition, HubError> {
    let Some(row) = JobRow::load_visible(tx, job_id, caller.license_id)? else {
        return Ok(Transition::NotFound);
    };
    let mine = row.claimed_by_caller(caller);
    let outcome = match row.state {
        JobState::Claimed | JobState::Accepted | JobState::Queued if mine => Transition::Done,
        JobState::Finished if mine && row.result_status == result_status => Transition::Repeated,
        JobState::Finished if mine => Transition::Conflict(format!(
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
        params![
            JobState::Finished,
            result_status,
            result_summary,
            now_ms,
            job_id
        ],
    )
    .map_err(HubError::store("finish a job"))?;
    tally.moved(row.state, JobState::Finished, 1);
    cancels::forget(tx, job_id)?;
    let finished = FinishedJob {
        job: decode_job(&row.job_json)?,
        status_context: row.status_context,
        machine: cancels::machine_name(tx, caller.license_id, caller.server_id)?,
        started_ms: (row.state == JobState::Accepted).then_some(row.updated_ms),
        finished_ms: now_ms,
    };
    reports::queue_final(tx, job_id, reports_for(&finished), now_ms)?;
    Ok(Transition::Done)
}

/// Number of jobs per state: counted once at start (see [`super::gauges`]).
pub(super) fn counts(conn: &Connection) -> Result<Vec<(JobState, i64)>, HubError> {
    let mut stmt = conn
        .prepare_cached("SELECT state, COUNT(*) FROM jobs GROUP BY state ORDER BY state")
        .map_err(HubError::store("count jobs"))?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(HubError::store("count jobs"))?;
    rows.collect::<Result<_, _>>()
        .map_err(HubError::store("count jobs"))
}

/// A job's state and result status.
#[cfg(test)]
pub(super) fn state_of(
    conn: &Connection,
    job_id: &str,
) -> Result<Option<(JobState, String)>, HubError> {
    conn.query_row(
        "SELECT state, result_status FROM jobs WHERE id = ?1",
        [job_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
    .map_err(HubError::store("read a job"))
}

struct JobRow {
    state: JobState,
    target_license: String,
    claimed_license: String,
    claimed_by: String,
    result_status: String,
    status_context: String,
    job_json: String,
    updated_ms: i64,
}

impl JobRow {
    /// The job, unless it is bound to another license: then it does not exist as far as this
    /// caller is concerned.
    fn load_visible(
        conn: &Connection,
        job_id: &str,
        license_id: &str,
    ) -> Result<Option<JobRow>, HubError> {
        let row = conn.query_row(
            "SELECT state, target_license, claimed_license, claimed_by, result_status, status_context, job_json,
                    updated_ms
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
                    updated_ms: r.get(7)?,
                })
            },
        )
        .optional()
        .map_err(HubError::store("read a job"))?;
        Ok(row.filter(|r| r.target_license.is_empty() || r.target_license == license_id))
    }

    /// Whether this caller made the last claim (the lease may have run out since).
    fn claimed_by_caller(&self, caller: Caller<'_>) -> bool {
        self.claimed_by == caller.server_id && self.claimed_license == caller.license_id
    }
}

pub(super) fn decode_job(job_json: &str) -> Result<DispatchJob, HubError> {
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

    #[test]
    fn rejected_is_a_result_status_word() {
        assert!(dispatch_protocol::RESULT_STATUS_WORDS.contains(&REJECTED));
    }
}
