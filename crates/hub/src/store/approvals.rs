//! The `held_forks` and `approvals` tables: fork pull request events the trust gate held back
//! (the latest per pull request by the event's own time, with its payload and headers), and which
//! binding each held event was dispatched for, by whose approval. Also the store's face for
//! recording a gated delivery and an approval.
//!
//! An approval is kept per repository, pull request, head SHA and binding, and names the held
//! event it dispatched: approving again dispatches nothing more for that event, but a later event
//! on the same SHA (`reopened`, say) is held again and needs a new approval.
//!
//! Repository names are stored lowercase: GitHub compares them case-insensitively.

use super::sql::{args, Optional, Sql};

use super::gauges::Tally;
use super::heads;
use super::jobs;
use super::reports::Reports;
use super::rows::{self, Delivery, DeliveryOutcome, RawDelivery};
use super::writer::Durability;
use super::Store;
use crate::error::HubError;
use crate::matching::NewJob;
use crate::trust::{ApproveCommand, ApproveTarget, ForkQuery, ForkState, HeldFork, Keep};

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
    /// The held event was already dispatched for every binding this commenter may approve for.
    AlreadyApproved { sha: String },
    /// The held event matches none of the bindings this commenter may approve for.
    NothingMatched { sha: String },
    /// The held event's jobs were created, one per DAG named.
    Dispatched { sha: String, dags: Vec<String> },
    /// A bare approve, but the held head is not the pull request's latest head (`latest`, when
    /// the hub recorded one).
    NotLatest {
        held: String,
        latest: Option<String>,
    },
    /// A bare approve written before the held head arrived: the approver may not have seen it.
    CommentOlder { sha: String },
    /// `approve <sha>` naming another head than the held one.
    OtherSha { given: String, held: String },
    /// `approve <word>` where the word is no SHA.
    InvalidSha { given: String },
}

/// Keeps `held` as the pull request's latest held event (replacing an older one; an event older
/// than the one held, by its own time, arriving late, is not kept).
fn hold(tx: &dyn Sql, held: &HeldFork, delivery: &Delivery, now_ms: i64) -> Result<(), HubError> {
    tx.execute(
        "INSERT INTO held_forks (repository, pr_number, head_sha, event, delivery_id, payload,
                                 headers, received_ms, event_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (repository, pr_number) DO UPDATE SET
             head_sha = excluded.head_sha, event = excluded.event,
             delivery_id = excluded.delivery_id, payload = excluded.payload,
             headers = excluded.headers, received_ms = excluded.received_ms,
             event_ms = excluded.event_ms
         WHERE excluded.event_ms >= held_forks.event_ms",
        args![
            held.repository.to_lowercase(),
            held.number,
            held.head_sha.to_ascii_lowercase(),
            delivery.event,
            delivery.id,
            delivery.raw.payload,
            delivery.raw.headers,
            now_ms,
            held.event_ms.unwrap_or(now_ms)
        ],
    )
    .map_err(HubError::store("hold a fork pull request"))?;
    Ok(())
}

/// Whether held event `event_delivery_id` (head `sha`) was dispatched for `binding_id`.
fn dispatched_for(
    conn: &dyn Sql,
    (repository, number, sha): (&str, i64, &str),
    binding_id: &str,
    event_delivery_id: &str,
) -> Result<bool, HubError> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM approvals
                        WHERE repository = ?1 AND pr_number = ?2 AND head_sha = ?3
                          AND binding_id = ?4 AND event_delivery_id = ?5)",
        args![repository, number, sha, binding_id, event_delivery_id],
        |r| r.get(0),
    )
    .map_err(HubError::store("look up an approval"))
}

/// The answer to a trust gate's [`ForkQuery`].
fn fork_state(conn: &dyn Sql, query: &ForkQuery) -> Result<ForkState, HubError> {
    match query {
        ForkQuery::PullHead { repository, number } => Ok(ForkState {
            latest_head: heads::latest(conn, repository, *number)?,
            ..ForkState::default()
        }),
        ForkQuery::CheckRun { repository, sha } => {
            let mut fork_pr = heads::fork_pr_with_head(conn, repository, sha)?;
            if fork_pr == 0 {
                // Events held before heads were recorded.
                fork_pr = conn
                    .query_row(
                        "SELECT pr_number FROM held_forks WHERE repository = ?1 AND head_sha = ?2
                         ORDER BY received_ms DESC LIMIT 1",
                        args![repository.to_lowercase(), sha.to_ascii_lowercase()],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(HubError::store("look up a held fork head"))?
                    .unwrap_or(0);
            }
            Ok(ForkState {
                own_head: heads::is_own(conn, repository, sha)?,
                fork_pr,
                latest_head: None,
            })
        }
    }
}

/// Whether the command may dispatch the held head `held_sha`: `Err` says why not.
fn check_target(
    tx: &dyn Sql,
    cmd: &ApproveCommand,
    held_sha: &str,
) -> Result<Result<(), Approval>, HubError> {
    let held = held_sha.to_owned();
    match &cmd.target {
        ApproveTarget::Invalid(given) => Ok(Err(Approval::InvalidSha {
            given: given.clone(),
        })),
        ApproveTarget::Prefix(given) if !held.starts_with(given.as_str()) => {
            Ok(Err(Approval::OtherSha {
                given: given.clone(),
                held,
            }))
        }
        ApproveTarget::Prefix(_) => Ok(Ok(())),
        ApproveTarget::Latest => match heads::latest(tx, &cmd.repository, cmd.number)? {
            Some(latest) if latest.sha == held => {
                let after = cmd
                    .comment_ms
                    .zip(latest.event_ms)
                    .is_some_and(|(c, e)| c > e);
                Ok(if after {
                    Ok(())
                } else {
                    Err(Approval::CommentOlder { sha: held })
                })
            }
            latest => Ok(Err(Approval::NotLatest {
                held,
                latest: latest.map(|h| h.sha),
            })),
        },
    }
}

/// Dispatches the held event of the command's pull request, for each binding the commenter may
/// approve for that it was not yet dispatched for: the jobs `make_jobs` builds from it for those
/// binding ids are stored and the approvals recorded. Returns what happened and the job ids.
fn approve(
    tx: &dyn Sql,
    cmd: &ApproveCommand,
    delivery_id: &str,
    now_ms: i64,
    make_jobs: impl FnOnce(&HeldEvent, &[String]) -> Vec<NewJob>,
    reports: &Reports,
    tally: &mut Tally,
) -> Result<(Approval, Vec<String>), HubError> {
    if let ApproveTarget::Invalid(given) = &cmd.target {
        let given = given.clone();
        return Ok((Approval::InvalidSha { given }, Vec::new()));
    }
    let repository = cmd.repository.to_lowercase();
    let held = tx
        .query_row(
            "SELECT event, delivery_id, head_sha, payload, headers FROM held_forks
             WHERE repository = ?1 AND pr_number = ?2",
            args![repository, cmd.number],
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
    let sha = held.head_sha.to_ascii_lowercase();
    if let Err(refused) = check_target(tx, cmd, &sha)? {
        return Ok((refused, Vec::new()));
    }
    let key = (repository.as_str(), cmd.number, sha.as_str());
    let mut pending = Vec::new();
    for id in &cmd.binding_ids {
        if !dispatched_for(tx, key, id, &held.delivery_id)? {
            pending.push(id.clone());
        }
    }
    if pending.is_empty() {
        return Ok((Approval::AlreadyApproved { sha }, Vec::new()));
    }
    let new_jobs = make_jobs(&held, &pending);
    if new_jobs.is_empty() {
        return Ok((Approval::NothingMatched { sha }, Vec::new()));
    }
    let mut job_ids = Vec::with_capacity(new_jobs.len());
    let mut dags = Vec::with_capacity(new_jobs.len());
    for j in &new_jobs {
        // The jobs carry the held event, stored under its own delivery id.
        rows::insert_job(tx, j, &held.delivery_id, &held.raw, now_ms, reports, tally)?;
        job_ids.push(j.job.id.clone());
        dags.push(j.job.dag_name.clone());
        tx.execute(
            "INSERT INTO approvals (repository, pr_number, head_sha, binding_id,
                                    event_delivery_id, approved_by, delivery_id, approved_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (repository, pr_number, head_sha, binding_id) DO UPDATE SET
                 event_delivery_id = excluded.event_delivery_id,
                 approved_by = excluded.approved_by, delivery_id = excluded.delivery_id,
                 approved_ms = excluded.approved_ms",
            args![
                repository,
                cmd.number,
                sha,
                j.job.binding_id,
                held.delivery_id,
                cmd.login,
                delivery_id,
                now_ms
            ],
        )
        .map_err(HubError::store("record an approval"))?;
    }
    rows::insert_payload(tx, &held.delivery_id, &held.raw)?;
    Ok((Approval::Dispatched { sha, dags }, job_ids))
}

/// The table, in SQL both backends take (PostgreSQL after [`super::schema_pg::portable`]). A
/// schema step of both runs it: change it only by a new step.
pub(super) const TABLES: &str = "
CREATE TABLE approvals (
    repository TEXT NOT NULL,
    pr_number INTEGER NOT NULL,
    head_sha TEXT NOT NULL,
    binding_id TEXT NOT NULL,
    event_delivery_id TEXT NOT NULL,
    approved_by TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    approved_ms INTEGER NOT NULL,
    PRIMARY KEY (repository, pr_number, head_sha, binding_id)
);
CREATE INDEX approvals_by_age ON approvals(approved_ms);
";

/// Approvals per binding (a schema step): the table of the first trust release kept one per head
/// SHA, which let one binding's approver dispatch another's; its rows are dropped (each had
/// dispatched its held event already).
pub(super) fn approvals_per_binding(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "
ALTER TABLE held_forks ADD COLUMN event_ms INTEGER NOT NULL DEFAULT 0;
DROP TABLE approvals;
",
    )?;
    conn.execute_batch(TABLES)
}

impl Store {
    /// What the store knows about a fork head, for the trust gate.
    pub fn fork_state(&self, query: &ForkQuery) -> Result<ForkState, HubError> {
        self.read(|db| fork_state(db, query))
    }

    /// Records a delivery the trust gate decided on: its jobs (none when turned away), and what
    /// `keep` says (the fork pull request event it held back, the heads it shows). A redelivery
    /// changes nothing and returns the original job ids.
    pub fn record_gated(
        &self,
        delivery: Delivery,
        new_jobs: Vec<NewJob>,
        keep: Option<Keep>,
        now_ms: i64,
        reports: Reports,
    ) -> Result<DeliveryOutcome, HubError> {
        self.write_counted(Durability::Full, move |tx, tally| {
            let outcome = jobs::record_delivery(tx, &delivery, &new_jobs, now_ms, &reports, tally)?;
            if let (false, Some(keep)) = (outcome.duplicate, &keep) {
                if let Some(seen) = &keep.sighting {
                    heads::record(tx, seen, now_ms)?;
                }
                if let Some(held) = &keep.held {
                    hold(tx, held, &delivery, now_ms)?;
                }
            }
            Ok(outcome)
        })
    }

    /// Carries out an approve command (see [`approve`]). `answer` gives the note recorded with
    /// the delivery and the GitHub calls (the one comment) that answer the command.
    pub fn approve(
        &self,
        delivery: Delivery,
        cmd: ApproveCommand,
        now_ms: i64,
        make_jobs: impl FnOnce(&HeldEvent, &[String]) -> Vec<NewJob> + Send + 'static,
        reports: Reports,
        answer: impl FnOnce(&Approval) -> (String, Vec<(String, String)>) + Send + 'static,
    ) -> Result<(DeliveryOutcome, Option<Approval>), HubError> {
        let run = move |tx: &dyn Sql, delivery: &Delivery, tally: &mut Tally| {
            approve(tx, &cmd, &delivery.id, now_ms, make_jobs, &reports, tally)
        };
        self.run_command(delivery, now_ms, run, answer)
    }
}
