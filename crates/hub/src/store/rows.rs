//! The rows every writer of jobs and deliveries shares: the delivery and job types, and the
//! row-level SQL that stores a delivery, its payload and its jobs (used by `jobs`, `cancels`,
//! `approvals` and `check_runs` alike), plus the machine name reports and cancels show.
//!
//! Below `jobs` and `cancels`, above `reports` (a job stored already finished is reported at
//! once). Every function runs inside the writer's transaction; none commits.

use super::sql::{args, Arg, FromValue, Optional, Sql};
use dispatch_protocol::DispatchJob;

use super::gauges::Tally;
use super::reports::{self, FinishedJob, Reports};
use super::state::JobState;
use crate::error::HubError;
use crate::matching::NewJob;
use crate::trust::Outcome;

/// Largest pull answer a scheduler reads (`docs/protocol.md`: at most 1 MiB of a response body).
pub(crate) const MAX_JOB_ANSWER_BYTES: usize = 1024 * 1024;

/// The result status the hub itself gives a job no scheduler can take.
pub(super) const REJECTED: &str = "rejected";

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

/// Who is calling accept or finish: the machine credentials' license and server.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caller<'a> {
    pub license_id: &'a str,
    pub server_id: &'a str,
}

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

/// The outcome of an earlier delivery with this id, if there was one: its job ids, marked as a
/// duplicate.
pub(super) fn redelivery(
    tx: &dyn Sql,
    delivery_id: &str,
) -> Result<Option<DeliveryOutcome>, HubError> {
    let existing: Option<String> = lookup(
        tx,
        "SELECT job_ids FROM deliveries WHERE delivery_id = ?1",
        args![delivery_id],
        "look up a delivery",
    )?;
    existing
        .map(|ids| {
            let job_ids = serde_json::from_str(&ids).map_err(|source| HubError::CorruptRecord {
                job_id: format!("delivery {delivery_id}"),
                source,
            })?;
            Ok(DeliveryOutcome {
                job_ids,
                duplicate: true,
            })
        })
        .transpose()
}

/// Records a delivery and the jobs it produced.
pub(super) fn insert_delivery(
    tx: &dyn Sql,
    delivery: &Delivery,
    job_ids: &[String],
    now_ms: i64,
) -> Result<(), HubError> {
    let ids_json = serde_json::to_string(job_ids).unwrap_or_else(|_| "[]".to_owned());
    tx.execute(
        "INSERT INTO deliveries (delivery_id, event, job_ids, received_ms, outcome, reason)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        args![
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
pub(super) fn insert_payload(tx: &dyn Sql, key: &str, raw: &RawDelivery) -> Result<(), HubError> {
    tx.execute(
        "INSERT INTO payloads (delivery_id, payload, headers) VALUES (?1, ?2, ?3)
         ON CONFLICT DO NOTHING",
        args![key, raw.payload, raw.headers],
    )
    .map_err(HubError::store("insert a payload"))?;
    Ok(())
}

/// Inserts one job whose pull answer carries the payload stored under `payload_key` (`raw`):
/// queued, or finished as `rejected` at once when it cannot fit in a pull answer, its reports
/// queued like any finish's. Returns the state it was stored in.
pub(super) fn insert_job(
    tx: &dyn Sql,
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
        args![
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

/// The first column of the row `sql` finds with `params`, if it finds one; `what` names the
/// lookup in errors.
pub(super) fn lookup<T: FromValue>(
    conn: &dyn Sql,
    sql: &str,
    params: &[Arg<'_>],
    what: &'static str,
) -> Result<Option<T>, HubError> {
    conn.query_row(sql, params, |r| r.get(0))
        .optional()
        .map_err(HubError::store(what))
}

/// A job as stored in `jobs.job_json`.
pub(super) fn decode_job(job_json: &str) -> Result<DispatchJob, HubError> {
    serde_json::from_str(job_json).map_err(|source| HubError::CorruptRecord {
        job_id: String::new(),
        source,
    })
}

/// The machine name the server `server_id` of `license_id` gave at activation (its server id
/// when it gave none).
pub(super) fn machine_name(
    tx: &dyn Sql,
    license_id: &str,
    server_id: &str,
) -> Result<String, HubError> {
    let name: Option<String> = lookup(
        tx,
        "SELECT machine_name FROM activations WHERE license_id = ?1 AND server_id = ?2",
        args![license_id, server_id],
        "look up a machine name",
    )?;
    Ok(name
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| server_id.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_is_a_result_status_word() {
        assert!(dispatch_protocol::RESULT_STATUS_WORDS.contains(&REJECTED));
    }
}
