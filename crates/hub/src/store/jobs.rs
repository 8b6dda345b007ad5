//! The `jobs` and `deliveries` tables: storing a delivery's jobs, and the lease rules of claim,
//! accept and finish.
//!
//! Every function runs inside the writer's transaction (or on the read connection, for the
//! read-only ones); none commits.

use super::sql::{args, Dialect, Optional, Sql};
use dispatch_protocol::DispatchJob;
use serde_json::value::RawValue;

use super::cancels;
use super::gauges::Tally;
use super::reports::{self, AcceptedJob, FinishedJob, Reports};
use super::rows::{
    self, decode_job, insert_delivery, insert_job, insert_payload, redelivery, Caller, Delivery,
    DeliveryOutcome, REJECTED,
};
use super::state::JobState;
use crate::error::HubError;
use crate::matching::NewJob;

/// A job whose claim has run out this many times is finished as `rejected`: a job no scheduler
/// can take (say, a payload too big for its client) must not block the queue forever.
pub(crate) const MAX_CLAIMS: i64 = 5;

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

/// Stores the jobs of a delivery, or returns the original job ids of a redelivery.
pub(super) fn record_delivery(
    tx: &dyn Sql,
    delivery: &Delivery,
    jobs: &[NewJob],
    now_ms: i64,
    reports: &Reports,
    tally: &mut Tally,
) -> Result<DeliveryOutcome, HubError> {
    if let Some(dup) = redelivery(tx, &delivery.id)? {
        return Ok(dup);
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

/// Expired claims go back to the queue, keeping `claimed_by` so the last claimant can still
/// accept if nobody else has taken the job meanwhile; after [`MAX_CLAIMS`] they are finished as
/// `rejected` instead. Returns how many jobs changed.
pub(super) fn expire_claims(
    conn: &dyn Sql,
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
        .query_map(args![JobState::Claimed, now_ms, MAX_CLAIMS], |r| {
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
            args![JobState::Finished, now_ms, JobState::Claimed, MAX_CLAIMS, REJECTED],
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
            args![JobState::Queued, now_ms, JobState::Claimed],
        )
        .map_err(HubError::store("requeue expired claims"))?;
    tally.moved(JobState::Claimed, JobState::Queued, requeued);
    Ok(rejected + requeued)
}

/// The queued job a claim takes.
struct Claimable {
    seq: i64,
    job_json: String,
    /// Its delivery's payload and headers; missing only from a damaged store.
    payload: Option<String>,
    headers: Option<String>,
    /// Another license or server claimed it before: the progress it holds is that one's.
    claimed_by_other: bool,
}

/// Claims the oldest queued job this license and server may take, for `lease_ms` (a job targeted
/// at one server, a cancel, goes to that server only). `claimed_ms` keeps the latest claim: a job
/// whose lease ran out and that is claimed again shows the new one on its page.
pub(super) fn claim_next(
    tx: &dyn Sql,
    license_id: &str,
    server_id: &str,
    now_ms: i64,
    lease_ms: i64,
    reports: &Reports,
    tally: &mut Tally,
) -> Result<Option<DispatchJob>, HubError> {
    expire_claims(tx, now_ms, reports, tally)?;
    // On PostgreSQL the row is also locked, skipping rows another transaction holds: write
    // groups already take turns (the writers' advisory lock), so this only keeps a claim safe
    // should a claim ever run outside one.
    let lock = match tx.dialect() {
        Dialect::Sqlite => "",
        Dialect::Postgres => "FOR UPDATE OF j SKIP LOCKED",
    };
    let row: Option<Claimable> = tx
        .query_row(
            &format!(
                "SELECT j.seq, j.job_json, p.payload, p.headers,
                        j.claimed_by != '' AND (j.claimed_license != ?2 OR j.claimed_by != ?3)
                 FROM jobs j
                 LEFT JOIN payloads p ON p.delivery_id = j.delivery_id
                 WHERE j.state = ?1 AND (j.target_license = '' OR j.target_license = ?2)
                       AND (j.target_server_id = '' OR j.target_server_id = ?3)
                 ORDER BY j.seq LIMIT 1 {lock}"
            ),
            args![JobState::Queued, license_id, server_id],
            |r| {
                Ok(Claimable {
                    seq: r.get(0)?,
                    job_json: r.get(1)?,
                    payload: r.get(2)?,
                    headers: r.get(3)?,
                    claimed_by_other: r.get(4)?,
                })
            },
        )
        .optional()
        .map_err(HubError::store("select a queued job"))?;
    let Some(Claimable {
        seq,
        job_json,
        payload,
        headers,
        claimed_by_other,
    }) = row
    else {
        return Ok(None);
    };
    let (Some(payload), Some(headers)) = (payload, headers) else {
        return Err(HubError::MissingPayload {
            job_id: decode_job(&job_json).map(|j| j.id).unwrap_or_default(),
        });
    };
    // Most claims are a job's first: no progress to forget, and no three deletes to run.
    if claimed_by_other {
        super::progress::forget_progress(tx, seq)?;
    }
    tx.execute(
        "UPDATE jobs SET state = ?1, claimed_license = ?2, claimed_by = ?3, lease_expires_ms = ?4,
                         updated_ms = ?5, claims = claims + 1, claimed_ms = ?5
         WHERE seq = ?6",
        args![
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
    conn: &dyn Sql,
    license_id: &str,
    server_id: &str,
    now_ms: i64,
) -> Result<bool, HubError> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE state = ?1 AND (target_license = '' OR target_license = ?2)
                                               AND (target_server_id = '' OR target_server_id = ?5))
             OR EXISTS (SELECT 1 FROM jobs WHERE state = ?3 AND lease_expires_ms <= ?4)",
        args![JobState::Queued, license_id, JobState::Claimed, now_ms, server_id],
        |r| r.get(0),
    )
    .map_err(HubError::store("look for claimable jobs"))
}

/// Accept: claimed (or queued again after its lease ran out) → accepted by this server.
pub(super) fn accept(
    tx: &dyn Sql,
    job_id: &str,
    caller: Caller<'_>,
    dag_run_id: &str,
    now_ms: i64,
    reports: &Reports,
    tally: &mut Tally,
) -> Result<Transition, HubError> {
    let Some((row, mine)) = JobRow::load_for(tx, job_id, caller)? else {
        return Ok(Transition::NotFound);
    };
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
                             lease_expires_ms = 0, updated_ms = ?5, accepted_ms = ?5
             WHERE id = ?6",
            args![
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
            machine: rows::machine_name(tx, caller.license_id, caller.server_id)?,
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
    tx: &dyn Sql,
    job_id: &str,
    caller: Caller<'_>,
    result_status: &str,
    result_summary: &str,
    now_ms: i64,
    reports_for: impl FnOnce(&FinishedJob) -> Vec<(String, String)>,
    tally: &mut Tally,
) -> Result<Transition, HubError> {
    let Some((row, mine)) = JobRow::load_for(tx, job_id, caller)? else {
        return Ok(Transition::NotFound);
    };
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
        args![
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
        machine: rows::machine_name(tx, caller.license_id, caller.server_id)?,
        started_ms: (row.state == JobState::Accepted).then_some(row.updated_ms),
        finished_ms: now_ms,
    };
    reports::queue_final(tx, job_id, reports_for(&finished), now_ms)?;
    Ok(Transition::Done)
}

/// Number of jobs per state: counted once at start (see [`super::gauges`]).
pub(super) fn counts(conn: &dyn Sql) -> Result<Vec<(JobState, i64)>, HubError> {
    let mut stmt = conn
        .prepare_cached("SELECT state, COUNT(*) FROM jobs GROUP BY state ORDER BY state")
        .map_err(HubError::store("count jobs"))?;
    let rows = stmt
        .query_map(args![], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(HubError::store("count jobs"))?;
    rows.collect::<Result<_, _>>()
        .map_err(HubError::store("count jobs"))
}

/// A job's state and result status.
#[cfg(test)]
pub(super) fn state_of(
    conn: &dyn Sql,
    job_id: &str,
) -> Result<Option<(JobState, String)>, HubError> {
    conn.query_row(
        "SELECT state, result_status FROM jobs WHERE id = ?1",
        args![job_id],
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
    /// The job, unless it is bound to another license: then it does not exist as far as
    /// `caller` is concerned; and whether `caller` made the last claim (the lease may have run
    /// out since).
    fn load_for(
        conn: &dyn Sql,
        job_id: &str,
        caller: Caller<'_>,
    ) -> Result<Option<(JobRow, bool)>, HubError> {
        let row = conn.query_row(
            "SELECT state, target_license, claimed_license, claimed_by, result_status, status_context, job_json,
                    updated_ms
             FROM jobs WHERE id = ?1",
            args![job_id],
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
        let visible =
            |r: &JobRow| r.target_license.is_empty() || r.target_license == caller.license_id;
        Ok(row.filter(visible).map(|row| {
            let mine =
                row.claimed_by == caller.server_id && row.claimed_license == caller.license_id;
            (row, mine)
        }))
    }
}

fn raw(job_id: &str, text: String) -> Result<Box<RawValue>, HubError> {
    RawValue::from_string(text).map_err(|source| HubError::CorruptRecord {
        job_id: job_id.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {

    use crate::store::sql::args;
    use crate::store::{testing, Caller, Store};

    /// `(claimed_ms, accepted_ms)` of the job `id`.
    fn times(store: &Store, id: &str) -> (i64, i64) {
        store
            .db(|db| {
                db.query_row(
                    "SELECT claimed_ms, accepted_ms FROM jobs WHERE id = ?1",
                    args![id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
            })
            .unwrap()
    }

    #[test]
    fn claim_and_accept_times_are_kept_past_the_finish_and_the_latest_claim_wins() {
        let (_held, s) = testing::test_store();
        testing::add(&s, "d1", &[testing::new_job("j1", "")]);
        assert_eq!(times(&s, "j1"), (0, 0), "queued");
        s.claim_next("l", "a", 100, 50).unwrap().unwrap();
        assert_eq!(times(&s, "j1"), (100, 0));
        // The lease runs out and another server claims the job: its claim is the one kept.
        s.claim_next("l", "b", 200, 50).unwrap().unwrap();
        assert_eq!(times(&s, "j1"), (200, 0));
        let b = Caller {
            license_id: "l",
            server_id: "b",
        };
        s.accept("j1", b, "run", 230).unwrap();
        assert_eq!(times(&s, "j1"), (200, 230));
        s.finish("j1", b, "succeeded", "", 300, |_| Vec::new())
            .unwrap();
        assert_eq!(times(&s, "j1"), (200, 230), "kept once finished");
    }
}
