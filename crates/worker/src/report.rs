//! The report loop (SPEC §6 "Report loop"): accepts what is still pending, finishes what is
//! final, one job at a time per job but many jobs at once.

use dispatch_dag::Attempt;
use dispatch_executor::RunFinished;
use dispatch_license::MachineCredentials;
use dispatch_tracker::{Phase, TrackedJob};
use futures_util::stream::{self, StreamExt as _};
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::pull::{
    accept, delete_quietly, error_chain, finish_call, send_untracked_finish, Accepted,
};
use crate::summary::run_summary;
use crate::worker::{lock, Shared};
use crate::WorkerError;

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
    loop {
        if cancel.is_cancelled() {
            break;
        }
        let pass = report_pass(shared, cancel).await;
        if pass != PassSummary::default() {
            tracing::debug!(?pass, "report pass");
        }
        let mut deadline = Instant::now() + shared.config.report_interval;
        if let Some(retry) = shared.next_retry() {
            deadline = deadline.min(retry.max(Instant::now()));
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            _ = shared.report_wake.notified() => {}
            event = events.recv(), if events_open => match event {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    // A burst of finished runs needs one pass, not one per run.
                    while events.try_recv().is_ok() {}
                }
                Err(broadcast::error::RecvError::Closed) => events_open = false,
            },
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
    tracing::debug!("report loop stopped");
}

/// One pass over every tracked job and every pending untracked finish.
pub(crate) async fn report_pass(shared: &Shared, cancel: &CancellationToken) -> PassSummary {
    let mut summary = PassSummary::default();
    let Some(creds) = shared.credentials.cloud_machine_credentials() else {
        return summary;
    };
    let tracker = shared.tracker.clone();
    let listed = Shared::blocking("list tracked jobs", move || tracker.list()).await;
    let jobs = match listed.and_then(|r| {
        r.map_err(|source| WorkerError::Tracker {
            action: "list",
            job_id: String::new(),
            source: Box::new(source),
        })
    }) {
        Ok(jobs) => jobs,
        Err(error) => {
            tracing::error!(error = %error_chain(&error), "cannot list tracked jobs");
            return summary;
        }
    };
    let now = Instant::now();
    let due: Vec<TrackedJob> = jobs
        .into_iter()
        .filter(|job| shared.retry_due(&job.job_id, now))
        .collect();
    let outcomes: Vec<JobOutcome> = stream::iter(due)
        .map(|job| async {
            if cancel.is_cancelled() {
                return JobOutcome::Waiting;
            }
            report_job(shared, job, &creds).await
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
            // Keep it for a later pass of this process (there is none after shutdown: the hub
            // hands the job out again).
            lock(&shared.untracked_finishes).insert(job_id, pending);
            continue;
        }
        send_untracked_finish(shared, &job_id, pending, &creds).await;
    }
    summary
}

async fn report_job(
    shared: &Shared,
    tracked: TrackedJob,
    creds: &MachineCredentials,
) -> JobOutcome {
    let Some(_guard) = shared.try_busy(&tracked.job_id) else {
        return JobOutcome::Waiting;
    };
    let job_id = tracked.job_id.clone();
    // The listing may be stale: the pull loop may have accepted (or the hub refused) the job
    // between the listing and taking it busy. Work from the entry as it is now.
    let tracker = shared.tracker.clone();
    let id = job_id.clone();
    let current = Shared::blocking("read tracked job", move || tracker.get(&id))
        .await
        .and_then(|r| {
            r.map_err(|source| WorkerError::Tracker {
                action: "read",
                job_id: job_id.clone(),
                source: Box::new(source),
            })
        });
    let tracked = match current {
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
    match finish_call(shared, &job_id, status, &summary, creds).await {
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

/// The run's latest attempt; `None` when the run does not exist.
async fn find_attempt(
    shared: &Shared,
    tracked: &TrackedJob,
) -> Result<Option<Attempt>, WorkerError> {
    let runs = shared.stores.runs.clone();
    let (dag, run) = (tracked.dag_name.clone(), tracked.dag_run_id.clone());
    Shared::blocking("look up run", move || match runs.find_attempt(&dag, &run) {
        Ok(attempt) => Ok(Some(attempt)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(source) => Err(WorkerError::Store {
            action: "look up",
            dag_name: dag,
            run_id: run,
            source: Box::new(source),
        }),
    })
    .await?
}
