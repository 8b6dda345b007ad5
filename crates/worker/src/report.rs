//! The report loop: every report interval, and at once when a run ends or an intake completes,
//! accepts what is still pending and finishes what is final, one call at a time per job but many
//! jobs at once; then sends the untracked finishes that are due.

use std::collections::HashSet;

use dispatch_executor::RunFinished;
use dispatch_license::MachineCredentials;
use dispatch_tracker::Phase;
use dispatch_util::error_chain;
use futures_util::stream::{self, StreamExt as _};
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::calls::{accept, finish, send_untracked_finish, Accepted};
use crate::local::{delete_quietly, find_attempt, get_tracked, list_tracked};
use crate::shared::{lock, Shared};
use crate::summary::run_summary;

/// Jobs reported at once. Enough that one slow call does not hold up the rest, few enough not
/// to flood the hub after a restart with many tracked jobs.
const REPORT_CONCURRENCY: usize = 8;

/// What one pass did, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PassSummary {
    pub(crate) accepted: usize,
    pub(crate) finished: usize,
    pub(crate) dropped: usize,
    pub(crate) failed: usize,
}

/// What reporting one tracked job came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobOutcome {
    /// Nothing to do yet (run still active, retry not due, job busy).
    Waiting,
    /// Accepted now; the run is not final yet.
    Accepted,
    /// Finished and removed.
    Finished,
    /// Removed without a finish (never enqueued, or the hub refused it).
    Dropped,
    /// A call or store operation failed; retried later.
    Failed,
}

pub(crate) async fn report_loop(
    shared: &Shared,
    mut events: broadcast::Receiver<RunFinished>,
    cancel: &CancellationToken,
) {
    let mut events_open = true;
    // The first pass covers everything a previous process left in the tracker.
    let mut next_full = Instant::now();
    loop {
        if cancel.is_cancelled() {
            break;
        }
        let now = Instant::now();
        let scope = if now >= next_full {
            next_full = now + shared.config.report_interval;
            shared.take_report_targets();
            Scope::All
        } else {
            // Between full passes only the jobs somebody pointed at (a run that ended, an intake
            // that completed) and the retries that are due: a pass per event over every tracked
            // job would cost O(n) per finished run.
            let mut ids = shared.take_report_targets();
            ids.extend(shared.due_retries(now));
            Scope::Jobs(ids.into_iter().collect())
        };
        let pass = report_pass(shared, scope, cancel).await;
        if pass != PassSummary::default() {
            tracing::debug!(?pass, "report pass");
        }
        let mut deadline = next_full;
        if let Some(retry) = shared.next_retry() {
            // A retry that is due but could not run (its job was busy) must not spin the loop.
            let floor =
                Instant::now() + shared.config.backoff_min.min(shared.config.report_interval);
            deadline = deadline.min(retry.max(floor));
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            _ = shared.report_wake.notified() => {}
            event = events.recv(), if events_open => match event {
                Ok(finished) => {
                    shared.add_report_target(finished.run_id);
                    // A burst of finished runs needs one pass, not one per run.
                    while let Ok(more) = events.try_recv() {
                        shared.add_report_target(more.run_id);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "missed run-finished events; doing a full pass");
                    next_full = Instant::now();
                }
                Err(broadcast::error::RecvError::Closed) => events_open = false,
            },
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
    tracing::debug!("report loop stopped");
}

/// Which tracked jobs a pass looks at.
#[derive(Debug)]
pub(crate) enum Scope {
    /// Every tracked job.
    All,
    /// These job ids (ids no longer tracked are skipped).
    Jobs(Vec<String>),
}

/// One pass over the tracked jobs in `scope`, then every due untracked finish.
pub(crate) async fn report_pass(
    shared: &Shared,
    scope: Scope,
    cancel: &CancellationToken,
) -> PassSummary {
    let mut summary = PassSummary::default();
    let Some(creds) = shared.credentials.cloud_machine_credentials() else {
        return summary;
    };
    let now = Instant::now();
    let ids: Vec<String> = match scope {
        Scope::Jobs(ids) => ids,
        Scope::All => {
            match list_tracked(shared).await {
                Ok(jobs) => {
                    let ids: HashSet<String> = jobs.into_iter().map(|j| j.job_id).collect();
                    // Forget the schedules of jobs that are gone (finished or dropped elsewhere).
                    let untracked = lock(&shared.untracked_finishes);
                    shared.retain_retries(|id| ids.contains(id) || untracked.contains_key(id));
                    drop(untracked);
                    ids.into_iter().collect()
                }
                Err(error) => {
                    tracing::error!(error = %error_chain(&error), "cannot list tracked jobs");
                    Vec::new()
                }
            }
        }
    };
    let due: Vec<String> = ids
        .into_iter()
        .filter(|id| shared.retry_due(id, now))
        .collect();
    let creds = &creds;
    let outcomes: Vec<JobOutcome> = stream::iter(due)
        .map(|job_id| async move {
            if cancel.is_cancelled() {
                return JobOutcome::Waiting;
            }
            report_job(shared, job_id, creds).await
        })
        .buffer_unordered(REPORT_CONCURRENCY)
        .collect()
        .await;
    for outcome in outcomes {
        match outcome {
            JobOutcome::Waiting => {}
            JobOutcome::Accepted => summary.accepted += 1,
            JobOutcome::Finished => summary.finished += 1,
            JobOutcome::Dropped => summary.dropped += 1,
            JobOutcome::Failed => summary.failed += 1,
        }
    }

    let untracked: Vec<_> = {
        let mut map = lock(&shared.untracked_finishes);
        let ids: Vec<String> = map
            .keys()
            .filter(|id| shared.retry_due(id, now))
            .cloned()
            .collect();
        ids.into_iter()
            .filter_map(|id| map.remove(&id).map(|p| (id, p)))
            .collect()
    };
    for (job_id, pending) in untracked {
        if cancel.is_cancelled() {
            // Kept for the record only: after shutdown the hub hands the job out again.
            lock(&shared.untracked_finishes).insert(job_id, pending);
            continue;
        }
        send_untracked_finish(shared, &job_id, pending, creds).await;
    }
    summary
}

async fn report_job(shared: &Shared, job_id: String, creds: &MachineCredentials) -> JobOutcome {
    let Some(_guard) = shared.try_busy_or_revisit(&job_id) else {
        return JobOutcome::Waiting;
    };
    // Read the entry only now that the job is ours: the pull loop may have accepted it (or the
    // hub refused it) since it was listed.
    let tracked = match get_tracked(shared, &job_id).await {
        Ok(Some(tracked)) => tracked,
        Ok(None) => return JobOutcome::Waiting,
        Err(error) => {
            tracing::warn!(error = %error_chain(&error), "cannot read tracked job");
            return JobOutcome::Failed;
        }
    };
    let attempt = match find_attempt(shared, &tracked).await {
        Ok(attempt) => attempt,
        Err(error) => {
            let delay = shared.schedule_retry(&job_id, None);
            tracing::warn!(job_id = %job_id, error = %error_chain(&error), retry_in = ?delay, "cannot look up run of tracked job");
            return JobOutcome::Failed;
        }
    };
    let mut accepted_now = false;
    if tracked.phase == Phase::PendingAccept {
        if attempt.is_none() {
            // Tracked but never enqueued: the process stopped in between. The params (the
            // GitHub event) live only in the job, which we never accepted, so the hub hands it
            // out again once its claim lapses and the next pull enqueues it properly.
            tracing::warn!(job_id = %job_id, dag = %tracked.dag_name, "tracked job was never enqueued; dropping it so the hub hands it out again");
            shared.clear_retry(&job_id);
            delete_quietly(shared, &job_id).await;
            return JobOutcome::Dropped;
        }
        match accept(shared, tracked.clone(), creds, None).await {
            Accepted::Yes => accepted_now = true,
            Accepted::Refused => return JobOutcome::Dropped,
            Accepted::Failed => return JobOutcome::Failed,
        }
    }
    let (status, summary) = match &attempt {
        None => (
            "failed",
            format!(
                "Run `{}` cannot be reported: its run record (`{}`) is gone from this server.",
                tracked.dag_name, tracked.dag_run_id
            ),
        ),
        Some(attempt) if attempt.record.status.is_final() => {
            (attempt.record.status.as_str(), run_summary(&attempt.record))
        }
        Some(_) => {
            return if accepted_now {
                JobOutcome::Accepted
            } else {
                JobOutcome::Waiting
            };
        }
    };
    if attempt.is_some() && !shared.upload_settled(&job_id) {
        // The rest of the logs go first; the uploader points the report loop back here.
        shared.request_upload(&job_id);
        return if accepted_now {
            JobOutcome::Accepted
        } else {
            JobOutcome::Waiting
        };
    }
    match finish(shared, &job_id, status, &summary, creds).await {
        Ok(()) => {
            shared.clear_retry(&job_id);
            delete_quietly(shared, &job_id).await;
            tracing::info!(job_id = %job_id, dag = %tracked.dag_name, status, "dispatch job finished");
            JobOutcome::Finished
        }
        Err(error) if matches!(error.status, Some(404 | 409)) => {
            shared.clear_retry(&job_id);
            delete_quietly(shared, &job_id).await;
            tracing::warn!(job_id = %job_id, %error, "hub no longer wants this job's result; dropped");
            JobOutcome::Dropped
        }
        Err(error) => {
            let delay = shared.schedule_retry(&job_id, Some(&error));
            tracing::warn!(job_id = %job_id, %error, retry_in = ?delay, "finish failed; will retry");
            JobOutcome::Failed
        }
    }
}
