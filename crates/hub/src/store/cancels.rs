//! Cancel routing: one `<mention> cancel` reaches each server that holds an active job of the pull
//! request or issue, exactly once, and no other (`docs/protocol.md`, "Comment commands").
//!
//! For the active jobs of the command's repository and number whose binding allows the commenter
//! (jobs of other bindings are left alone):
//! - a queued job (no scheduler has it) is finished here as `aborted`;
//! - an accepted job: the server that accepted it gets one cancel job, targeted at it and naming
//!   the jobs to stop in `cancel_job_ids` (a cancel job for the same server, repository and number
//!   still queued takes the new ids instead);
//! - a claimed job (handed out, not yet accepted): the cancel waits in `pending_cancels`, and the
//!   cancel job is created when the job is accepted, in the same transaction. The scheduler thus
//!   has the run tracked before it can pull the cancel; a cancel handed out in the same pull
//!   batch as its target could otherwise run first and find nothing. A claim whose lease runs out
//!   keeps its pending cancel, for whichever server accepts the job next.
//!
//! The scheduler stops the runs a cancel job names (a scheduler that does not know the field
//! stops every tracked run of the repository and number), so one per server is enough.

use std::sync::Arc;

use super::sql::{args, Optional, Sql};
use dispatch_protocol::{is_cancel_command, DispatchJob};

use super::gauges::Tally;
use super::reports::{self, FinishedJob, NoReports, Reports};
use super::rows::{self, decode_job, machine_name, Caller, Delivery, DeliveryOutcome, RawDelivery};
use super::state::JobState;
use super::Store;
use crate::error::HubError;
use crate::matching::{new_job_id, NewJob};
use crate::trust::CancelCommand;

/// The result status of a queued job a cancel finishes at the hub.
const ABORTED: &str = "aborted";

/// What one cancel command did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CancelOutcome {
    /// Queued jobs finished here as `aborted`, by DAG.
    pub dropped: Vec<String>,
    /// Accepted jobs a cancel job goes to: DAG and the machine name of the server holding it.
    pub stopping: Vec<(String, String)>,
    /// Claimed jobs whose cancel is sent once they are accepted, by DAG.
    pub awaiting: Vec<String>,
    /// The cancel jobs created now (at most one per server).
    pub cancel_jobs: Vec<String>,
}

/// An active job of the pull request or issue being cancelled.
struct Active {
    id: String,
    state: JobState,
    claimed_license: String,
    claimed_by: String,
    target_license: String,
    target_server_id: String,
    status_context: String,
    job: DispatchJob,
}

/// Active (not finished) jobs of `repository` whose pull request or issue number is `number`,
/// oldest first; cancel jobs included.
/// With `only_job`, that job alone, if it is active and of `repository` (a job without a number
/// is cancelled by id: the numbers of its record may be left out).
fn active_jobs(
    tx: &dyn Sql,
    repository: &str,
    number: i64,
    only_job: Option<&str>,
) -> Result<Vec<Active>, HubError> {
    let d = tx.dialect();
    let sql = format!(
        "SELECT id, state, claimed_license, claimed_by, target_license, target_server_id,
                status_context, job_json
         FROM jobs
         WHERE state IN (?1, ?2, ?3)
           AND lower({repository}) = ?4
           AND CASE WHEN CAST(?6 AS TEXT) IS NULL
                    THEN {pr} = ?5 OR {issue} = ?5
                    ELSE id = ?6 END
         ORDER BY seq",
        repository = d.json_text("job_json", "repository_name"),
        pr = d.json_int("job_json", "pull_request_number"),
        issue = d.json_int("job_json", "issue_number"),
    );
    let mut stmt = tx
        .prepare_cached(&sql)
        .map_err(HubError::store("find the jobs to cancel"))?;
    let rows = stmt
        .query_map(
            args![
                JobState::Queued,
                JobState::Claimed,
                JobState::Accepted,
                repository.to_lowercase(),
                number,
                only_job
            ],
            |r| {
                Ok((
                    r.get::<String>(0)?,
                    r.get::<JobState>(1)?,
                    r.get::<String>(2)?,
                    r.get::<String>(3)?,
                    r.get::<String>(4)?,
                    r.get::<String>(5)?,
                    r.get::<String>(6)?,
                    r.get::<String>(7)?,
                ))
            },
        )
        .map_err(HubError::store("find the jobs to cancel"))?;
    let mut out = Vec::new();
    for row in rows {
        let (id, state, claimed_license, claimed_by, target_license, target_server_id, ctx, json) =
            row.map_err(HubError::store("read the jobs to cancel"))?;
        out.push(Active {
            job: decode_job(&json)?,
            id,
            state,
            claimed_license,
            claimed_by,
            target_license,
            target_server_id,
            status_context: ctx,
        });
    }
    Ok(out)
}

/// The number a cancel job names: the issue number, else the pull request number.
fn cancel_number(job: &DispatchJob) -> i64 {
    if job.issue_number != 0 {
        job.issue_number
    } else {
        job.pull_request_number
    }
}

/// Whether a cancel job for this server, repository and number waits in the queue; if so, it is
/// made to stop `job_ids` too (one that names no jobs stops them all already).
fn merge_into_queued_cancel(
    tx: &dyn Sql,
    (license_id, server_id): (&str, &str),
    repository: &str,
    number: i64,
    job_ids: &[String],
) -> Result<bool, HubError> {
    let queued = active_jobs(tx, repository, number, None)?
        .into_iter()
        .find(|a| {
            a.state == JobState::Queued
                && is_cancel_command(&a.job.command)
                && a.target_server_id == server_id
                && a.target_license == license_id
        });
    let Some(mut queued) = queued else {
        return Ok(false);
    };
    let targets = &mut queued.job.cancel_job_ids;
    let missing: Vec<&String> = job_ids.iter().filter(|id| !targets.contains(id)).collect();
    if targets.is_empty() || missing.is_empty() {
        return Ok(true);
    }
    targets.extend(missing.into_iter().cloned());
    let job_json =
        serde_json::to_string(&queued.job).map_err(|source| HubError::CorruptRecord {
            job_id: queued.id.clone(),
            source,
        })?;
    tx.execute(
        "UPDATE jobs SET job_json = ?1 WHERE id = ?2",
        args![job_json, queued.id],
    )
    .map_err(HubError::store("add runs to a queued cancel"))?;
    Ok(true)
}

/// Stores a cancel job made from `template` stopping `job_ids`, for one server only; its pull
/// answer carries the cancel comment's delivery, stored under `delivery_id`.
fn create_cancel_job(
    tx: &dyn Sql,
    template: &DispatchJob,
    (license_id, server_id): (&str, &str),
    job_ids: &[String],
    (delivery_id, raw): (&str, &RawDelivery),
    now_ms: i64,
    tally: &mut Tally,
) -> Result<String, HubError> {
    let mut job = template.clone();
    job.id = new_job_id();
    job.license_id = license_id.to_owned();
    job.cancel_job_ids = job_ids.to_vec();
    let new_job = NewJob {
        job,
        target_license: license_id.to_owned(),
        target_server_id: server_id.to_owned(),
        status_context: String::new(),
    };
    // A cancel job is never reported on: its command was answered when it came.
    let no_reports: Reports = Arc::new(NoReports);
    rows::insert_job(tx, &new_job, delivery_id, raw, now_ms, &no_reports, tally)?;
    rows::insert_payload(tx, delivery_id, raw)?;
    Ok(new_job.job.id)
}

/// Carries out a cancel command (see the module docs).
fn cancel(
    tx: &dyn Sql,
    cmd: &CancelCommand,
    delivery: &Delivery,
    now_ms: i64,
    reports: &Reports,
    tally: &mut Tally,
) -> Result<CancelOutcome, HubError> {
    // Waiting cancels of jobs that have ended since are of no use any more.
    tx.execute(
        "DELETE FROM pending_cancels WHERE NOT EXISTS
             (SELECT 1 FROM jobs WHERE jobs.id = pending_cancels.job_id AND jobs.state != ?1)",
        args![JobState::Finished],
    )
    .map_err(HubError::store("drop stale pending cancels"))?;
    let mut outcome = CancelOutcome::default();
    // Each server holding accepted jobs, with their ids.
    let mut servers: Vec<((String, String), Vec<String>)> = Vec::new();
    let summary = format!("cancelled by @{} before a scheduler took it", cmd.login);
    for active in active_jobs(tx, &cmd.repository, cmd.number, cmd.only_job.as_deref())? {
        if is_cancel_command(&active.job.command) {
            continue;
        }
        let allowed = cmd
            .only_bindings
            .as_ref()
            .is_none_or(|ids| ids.contains(&active.job.binding_id));
        if !allowed {
            continue;
        }
        match active.state {
            JobState::Queued => {
                tx.execute(
                    "UPDATE jobs SET state = ?1, result_status = ?2, result_summary = ?3,
                                     lease_expires_ms = 0, updated_ms = ?4
                     WHERE id = ?5",
                    args![JobState::Finished, ABORTED, summary, now_ms, active.id],
                )
                .map_err(HubError::store("abort a queued job"))?;
                tally.moved(JobState::Queued, JobState::Finished, 1);
                forget(tx, &active.id)?;
                // Its commit status as for any finish, but no comment of its own: the one
                // comment answering the cancel names the dropped jobs.
                let mut job = active.job.clone();
                job.command.clear();
                let finished = FinishedJob::unrun(job, active.status_context.clone(), now_ms);
                let calls = reports.finished(&finished, ABORTED, &summary);
                reports::queue_final(tx, &active.id, calls, now_ms)?;
                outcome.dropped.push(active.job.dag_name);
            }
            JobState::Claimed => {
                let mut template = cmd.template.clone();
                template.cancel_job_ids = vec![active.id.clone()];
                let template =
                    serde_json::to_string(&template).map_err(|source| HubError::CorruptRecord {
                        job_id: active.id.clone(),
                        source,
                    })?;
                tx.execute(
                    "INSERT INTO pending_cancels
                         (job_id, cancel_json, delivery_id, payload, headers, requested_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (job_id) DO UPDATE SET
                         cancel_json = excluded.cancel_json, delivery_id = excluded.delivery_id,
                         payload = excluded.payload, headers = excluded.headers,
                         requested_ms = excluded.requested_ms",
                    args![
                        active.id,
                        template,
                        delivery.id,
                        delivery.raw.payload,
                        delivery.raw.headers,
                        now_ms
                    ],
                )
                .map_err(HubError::store("record a pending cancel"))?;
                outcome.awaiting.push(active.job.dag_name);
            }
            JobState::Accepted => {
                let server = (active.claimed_license.clone(), active.claimed_by.clone());
                let machine = machine_name(tx, &server.0, &server.1)?;
                outcome.stopping.push((active.job.dag_name, machine));
                match servers.iter_mut().find(|(s, _)| *s == server) {
                    Some((_, ids)) => ids.push(active.id),
                    None => servers.push((server, vec![active.id])),
                }
            }
            JobState::Finished => {}
        }
    }
    for ((license_id, server_id), job_ids) in &servers {
        let server = (license_id.as_str(), server_id.as_str());
        if merge_into_queued_cancel(tx, server, &cmd.repository, cmd.number, job_ids)? {
            continue;
        }
        let id = create_cancel_job(
            tx,
            &cmd.template,
            server,
            job_ids,
            (&delivery.id, &delivery.raw),
            now_ms,
            tally,
        )?;
        outcome.cancel_jobs.push(id);
    }
    Ok(outcome)
}

/// On the accept of `job_id` by `caller`: creates the cancel job that waited for it, if any.
pub(super) fn on_accept(
    tx: &dyn Sql,
    job_id: &str,
    caller: Caller<'_>,
    now_ms: i64,
    tally: &mut Tally,
) -> Result<(), HubError> {
    let pending: Option<(String, String, String, String)> = tx
        .query_row(
            "SELECT cancel_json, delivery_id, payload, headers FROM pending_cancels
             WHERE job_id = ?1",
            args![job_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()
        .map_err(HubError::store("look up a pending cancel"))?;
    let Some((template, delivery_id, payload, headers)) = pending else {
        return Ok(());
    };
    forget(tx, job_id)?;
    let template = decode_job(&template)?;
    let (repository, number) = (template.repository_name.clone(), cancel_number(&template));
    // A pending cancel of the previous release names no job: it stops this one.
    let job_ids = vec![job_id.to_owned()];
    let server = (caller.license_id, caller.server_id);
    if merge_into_queued_cancel(tx, server, &repository, number, &job_ids)? {
        return Ok(());
    }
    let raw = RawDelivery { payload, headers };
    let id = create_cancel_job(
        tx,
        &template,
        server,
        &job_ids,
        (&delivery_id, &raw),
        now_ms,
        tally,
    )?;
    tracing::info!(job_id, cancel_job_id = %id, "job accepted after a cancel; cancel job created");
    Ok(())
}

/// Drops the cancel waiting for `job_id` (it has ended).
pub(super) fn forget(tx: &dyn Sql, job_id: &str) -> Result<(), HubError> {
    tx.execute(
        "DELETE FROM pending_cancels WHERE job_id = ?1",
        args![job_id],
    )
    .map_err(HubError::store("drop a pending cancel"))?;
    Ok(())
}

impl Store {
    /// Carries out a cancel command (see the module docs). `reports` builds the GitHub calls of
    /// the queued jobs finished here; `answer` gives the note recorded with the delivery and the
    /// GitHub calls (the one comment) that answer the command. A redelivery changes nothing.
    pub fn cancel(
        &self,
        delivery: Delivery,
        cmd: CancelCommand,
        now_ms: i64,
        reports: Reports,
        answer: impl FnOnce(&CancelOutcome) -> (String, Vec<(String, String)>) + Send + 'static,
    ) -> Result<(DeliveryOutcome, Option<CancelOutcome>), HubError> {
        let run = move |tx: &dyn Sql, delivery: &Delivery, tally: &mut Tally| {
            let outcome = cancel(tx, &cmd, delivery, now_ms, &reports, tally)?;
            let jobs = outcome.cancel_jobs.clone();
            Ok((outcome, jobs))
        };
        self.run_command(delivery, now_ms, run, answer)
    }
}
