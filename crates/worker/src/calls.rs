//! The calls to the cloud about one job: accept it, finish it, and finish a job the tracker does
//! not hold. Each records its outcome (counters, tracker, retry schedule) so that both loops
//! treat a call's answer the same way.

use dispatch_license::{CloudError, MachineCredentials};
use dispatch_protocol::{AcceptRequest, FinishRequest};
use dispatch_tracker::{Phase, TrackedJob};
use dispatch_util::{error_chain, now_ms};
use tokio::time::Instant;

use crate::local::{delete_quietly, stop_run, upsert};
use crate::shared::{lock, Shared, UntrackedFinish};

/// Gives up sending the finish of an untracked job after this many failed calls: the hub's
/// claim on it lapses and it is handed out (and rejected) again, so nothing is lost, and a
/// dead-end finish is not retried forever.
pub(crate) const MAX_UNTRACKED_FINISH_ATTEMPTS: u32 = 8;

/// What [`accept`] came to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Accepted {
    /// The hub took it; the entry is `accepted` (or will be made so on the next try).
    Yes,
    /// The hub refused (404/409): the run was stopped and the entry dropped.
    Refused,
    /// The call failed; a retry is scheduled.
    Failed,
}

/// Accepts a tracked job and records the outcome. `pulled_at` is set on the intake path, for the
/// dispatch latency.
pub(crate) async fn accept(
    shared: &Shared,
    mut tracked: TrackedJob,
    creds: &MachineCredentials,
    pulled_at: Option<Instant>,
) -> Accepted {
    let request = AcceptRequest {
        license_id: creds.license_id.clone(),
        server_id: creds.server_id.clone(),
        secret: creds.heartbeat_secret.clone(),
        dag_run_id: tracked.dag_run_id.clone(),
    };
    match shared
        .client
        .accept_dispatch(&tracked.job_id, &request)
        .await
    {
        Ok(()) => {
            shared.stats.record_accepted();
            if let Some(pulled_at) = pulled_at {
                shared.stats.record_latency(pulled_at.elapsed());
            }
            shared.clear_retry(&tracked.job_id);
            tracked.phase = Phase::Accepted;
            tracked.updated_at_ms = now_ms();
            let job_id = tracked.job_id.clone();
            if let Err(error) = upsert(shared, tracked).await {
                // The hub has it; the entry stays pending and the report loop accepts again,
                // which the hub treats as a repeat.
                tracing::error!(job_id = %job_id, error = %error_chain(&error), "cannot record accept");
            }
            tracing::info!(job_id = %job_id, "dispatch job accepted");
            Accepted::Yes
        }
        Err(error) if matches!(error.status, Some(404 | 409)) => {
            tracing::warn!(job_id = %tracked.job_id, %error, "hub refused the accept; stopping the run and dropping the job");
            stop_run(shared, &tracked.dag_name, &tracked.dag_run_id).await;
            shared.clear_retry(&tracked.job_id);
            delete_quietly(shared, &tracked.job_id).await;
            Accepted::Refused
        }
        Err(error) => {
            let delay = shared.schedule_retry(&tracked.job_id, Some(&error));
            tracing::warn!(job_id = %tracked.job_id, %error, retry_in = ?delay, "accept failed; will retry");
            Accepted::Failed
        }
    }
}

/// The finish call itself; counts successes.
pub(crate) async fn finish(
    shared: &Shared,
    job_id: &str,
    status: &str,
    summary: &str,
    creds: &MachineCredentials,
) -> Result<(), CloudError> {
    let request = FinishRequest {
        license_id: creds.license_id.clone(),
        server_id: creds.server_id.clone(),
        secret: creds.heartbeat_secret.clone(),
        result_status: status.to_owned(),
        result_summary: summary.to_owned(),
    };
    shared.client.finish_dispatch(job_id, &request).await?;
    shared.stats.record_finished(status);
    Ok(())
}

/// One attempt at the finish of a job the tracker does not hold; on failure it goes (back) into
/// the untracked-finish map, which the report loop retries a bounded number of times.
pub(crate) async fn send_untracked_finish(
    shared: &Shared,
    job_id: &str,
    mut pending: UntrackedFinish,
    creds: &MachineCredentials,
) {
    let result = finish(shared, job_id, pending.status, &pending.summary, creds).await;
    match result {
        Ok(()) => {
            shared.clear_retry(job_id);
            tracing::info!(job_id = %job_id, status = pending.status, "dispatch job finished");
        }
        Err(error) if matches!(error.status, Some(404 | 409)) => {
            shared.clear_retry(job_id);
            tracing::warn!(job_id = %job_id, %error, "hub no longer wants this job's result; dropped");
        }
        Err(error) => {
            pending.attempts += 1;
            if pending.attempts >= MAX_UNTRACKED_FINISH_ATTEMPTS {
                shared.clear_retry(job_id);
                tracing::warn!(job_id = %job_id, %error, attempts = pending.attempts, "giving up on finishing an untracked job; the hub will hand it out again");
                return;
            }
            let delay = shared.schedule_retry(job_id, Some(&error));
            tracing::warn!(job_id = %job_id, %error, retry_in = ?delay, "finish failed; will retry");
            lock(&shared.untracked_finishes).insert(job_id.to_owned(), pending);
        }
    }
}
