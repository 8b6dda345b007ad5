//! The `held_forks` and `approvals` tables: fork pull request events the trust gate held back
//! (the latest per pull request, with its payload and headers), and the head SHAs that allowed
//! commenters approved. Also the store's face for recording a gated delivery and an approval.
//!
//! Repository names are stored lowercase: GitHub compares them case-insensitively.

use rusqlite::{params, Connection, OptionalExtension};

use super::gauges::Tally;
use super::jobs::{self, Delivery, DeliveryOutcome, RawDelivery, Reports};
use super::reports;
use super::writer::Durability;
use super::Store;
use crate::error::HubError;
use crate::matching::NewJob;
use crate::trust::{ApproveCommand, ForkQuery, ForkState, HeldFork};

/// A held fork pull request event.
pub(crate) struct HeldEvent {
    pub event: String,
    pub delivery_id: String,
    pub head_sha: String,
    pub raw: RawDelivery,
}

/// What an approval did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Approval {
    /// No fork pull request event of this pull request is held.
    NothingHeld,
    /// This head SHA was approved before; nothing is dispatched again.
    AlreadyApproved { sha: String },
    /// The held event matches none of the bindings this commenter may approve for.
    NothingMatched { sha: String },
    /// The held event's jobs were created, one per DAG named.
    Dispatched { sha: String, dags: Vec<String> },
}

/// Keeps `held` as the pull request's latest held event (replacing an earlier one).
fn hold(
    tx: &Connection,
    held: &HeldFork,
    delivery: &Delivery,
    now_ms: i64,
) -> Result<(), HubError> {
    tx.execute(
        "INSERT INTO held_forks (repository, pr_number, head_sha, event, delivery_id, payload,
                                 headers, received_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (repository, pr_number) DO UPDATE SET
             head_sha = excluded.head_sha, event = excluded.event,
             delivery_id = excluded.delivery_id, payload = excluded.payload,
             headers = excluded.headers, received_ms = excluded.received_ms",
        params![
            held.repository.to_lowercase(),
            held.number,
            held.head_sha,
            delivery.event,
            delivery.id,
            delivery.raw.payload,
            delivery.raw.headers,
            now_ms
        ],
    )
    .map_err(HubError::store("hold a fork pull request"))?;
    Ok(())
}

fn approved(conn: &Connection, repository: &str, number: i64, sha: &str) -> Result<bool, HubError> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM approvals
                        WHERE repository = ?1 AND pr_number = ?2 AND head_sha = ?3)",
        params![repository.to_lowercase(), number, sha],
        |r| r.get(0),
    )
    .map_err(HubError::store("look up an approval"))
}

/// The answer to a trust gate's [`ForkQuery`].
fn fork_state(conn: &Connection, query: &ForkQuery) -> Result<ForkState, HubError> {
    match query {
        ForkQuery::Pull {
            repository,
            number,
            sha,
        } => Ok(ForkState {
            held_pr: 0,
            approved: approved(conn, repository, *number, sha)?,
        }),
        ForkQuery::CheckRun { repository, sha } => {
            let held_pr: Option<i64> = conn
                .query_row(
                    "SELECT pr_number FROM held_forks WHERE repository = ?1 AND head_sha = ?2
                     ORDER BY received_ms DESC LIMIT 1",
                    params![repository.to_lowercase(), sha],
                    |r| r.get(0),
                )
                .optional()
                .map_err(HubError::store("look up a held fork head"))?;
            let Some(held_pr) = held_pr else {
                return Ok(ForkState::default());
            };
            Ok(ForkState {
                held_pr,
                approved: approved(conn, repository, held_pr, sha)?,
            })
        }
    }
}

/// Dispatches the held event of the command's pull request once for its head SHA: the jobs
/// `make_jobs` builds from it are stored and the approval recorded. Returns what happened and
/// the job ids.
fn approve(
    tx: &Connection,
    cmd: &ApproveCommand,
    delivery_id: &str,
    now_ms: i64,
    make_jobs: impl FnOnce(&HeldEvent) -> Vec<NewJob>,
    reports: &Reports,
    tally: &mut Tally,
) -> Result<(Approval, Vec<String>), HubError> {
    let repository = cmd.repository.to_lowercase();
    let held = tx
        .query_row(
            "SELECT event, delivery_id, head_sha, payload, headers FROM held_forks
             WHERE repository = ?1 AND pr_number = ?2",
            params![repository, cmd.number],
            |r| {
                Ok(HeldEvent {
                    event: r.get(0)?,
                    delivery_id: r.get(1)?,
                    head_sha: r.get(2)?,
                    raw: RawDelivery {
                        payload: r.get(3)?,
                        headers: r.get(4)?,
                    },
                })
            },
        )
        .optional()
        .map_err(HubError::store("read a held fork pull request"))?;
    let Some(held) = held else {
        return Ok((Approval::NothingHeld, Vec::new()));
    };
    let sha = held.head_sha.clone();
    if approved(tx, &repository, cmd.number, &sha)? {
        return Ok((Approval::AlreadyApproved { sha }, Vec::new()));
    }
    let new_jobs = make_jobs(&held);
    if new_jobs.is_empty() {
        return Ok((Approval::NothingMatched { sha }, Vec::new()));
    }
    let mut job_ids = Vec::with_capacity(new_jobs.len());
    let mut dags = Vec::with_capacity(new_jobs.len());
    for j in &new_jobs {
        // The jobs carry the held event, stored under its own delivery id.
        jobs::insert_job(tx, j, &held.delivery_id, &held.raw, now_ms, reports, tally)?;
        job_ids.push(j.job.id.clone());
        dags.push(j.job.dag_name.clone());
    }
    jobs::insert_payload(tx, &held.delivery_id, &held.raw)?;
    tx.execute(
        "INSERT INTO approvals (repository, pr_number, head_sha, approved_by, delivery_id, approved_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![repository, cmd.number, sha, cmd.login, delivery_id, now_ms],
    )
    .map_err(HubError::store("record an approval"))?;
    Ok((Approval::Dispatched { sha, dags }, job_ids))
}

impl Store {
    /// What the store knows about a fork head, for the trust gate.
    pub fn fork_state(&self, query: &ForkQuery) -> Result<ForkState, HubError> {
        fork_state(&self.read(), query)
    }

    /// Records a delivery the trust gate decided on: its jobs (none when turned away), and the
    /// fork pull request event it held back, if any. A redelivery changes nothing and returns
    /// the original job ids.
    pub fn record_gated(
        &self,
        delivery: Delivery,
        new_jobs: Vec<NewJob>,
        held: Option<HeldFork>,
        now_ms: i64,
        reports: Reports,
    ) -> Result<DeliveryOutcome, HubError> {
        self.write_counted(Durability::Full, move |tx, tally| {
            let outcome = jobs::record_delivery(tx, &delivery, &new_jobs, now_ms, &reports, tally)?;
            if let (false, Some(held)) = (outcome.duplicate, &held) {
                hold(tx, held, &delivery, now_ms)?;
            }
            Ok(outcome)
        })
    }

    /// Carries out an approve command (see [`approve`]). `answer` gives the note recorded with
    /// the delivery and the GitHub calls (the one comment) that answer the command.
    pub fn approve(
        &self,
        mut delivery: Delivery,
        cmd: ApproveCommand,
        now_ms: i64,
        make_jobs: impl FnOnce(&HeldEvent) -> Vec<NewJob> + Send + 'static,
        reports: Reports,
        answer: impl FnOnce(&Approval) -> (String, Vec<(String, String)>) + Send + 'static,
    ) -> Result<(DeliveryOutcome, Option<Approval>), HubError> {
        self.write_counted(Durability::Full, move |tx, tally| {
            if let Some(job_ids) = jobs::recorded_jobs(tx, &delivery.id)? {
                let dup = DeliveryOutcome {
                    job_ids,
                    duplicate: true,
                };
                return Ok((dup, None));
            }
            let (approval, job_ids) =
                approve(tx, &cmd, &delivery.id, now_ms, make_jobs, &reports, tally)?;
            let (note, calls) = answer(&approval);
            for (path, body) in calls {
                reports::queue(tx, &delivery.id, &path, &body, now_ms)?;
            }
            delivery.reason = note;
            jobs::insert_delivery(tx, &delivery, &job_ids, now_ms)?;
            let outcome = DeliveryOutcome {
                job_ids,
                duplicate: false,
            };
            Ok((outcome, Some(approval)))
        })
    }
}
