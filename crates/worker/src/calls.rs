//! The calls to the cloud about one job: accept it, finish it, and finish a job the tracker does
//! not hold; and the accepts of a batch of jobs taken in together. Each records its outcome
//! (counters, tracker, retry schedule) so that both loops treat a call's answer the same way.

use dispatch_license::{CloudError, MachineCredentials};
use dispatch_protocol::{AcceptBatchItem, AcceptBatchRequest, AcceptRequest, FinishRequest};
use dispatch_tracker::{Phase, TrackedJob};
use dispatch_util::{error_chain, now_ms};
use tokio::time::Instant;

use crate::local::{delete_quietly, stop_run, upsert, upsert_all};
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
    tracked: TrackedJob,
    creds: &MachineCredentials,
    pulled_at: Option<Instant>,
) -> Accepted {
    let request = AcceptRequest {
        license_id: creds.license_id.clone(),
        server_id: creds.server_id.clone(),
        secret: creds.heartbeat_secret.clone(),
        dag_run_id: tracked.dag_run_id.clone(),
    };
    let result = shared
        .client
        .accept_dispatch(&tracked.job_id, &request)
        .await;
    match settle_accept(shared, tracked, result, pulled_at).await {
        Settled::Taken(tracked) => {
            let job_id = tracked.job_id.clone();
            if let Err(error) = upsert(shared, tracked).await {
                // The hub has it; the entry stays pending and the report loop accepts again,
                // which the hub treats as a repeat.
                tracing::error!(job_id = %job_id, error = %error_chain(&error), "cannot record accept");
            }
            tracing::info!(job_id = %job_id, "dispatch job accepted");
            Accepted::Yes
        }
        Settled::Refused => Accepted::Refused,
        Settled::Failed => Accepted::Failed,
    }
}

/// Accepts the jobs of a batch taken in together, in one batched call when the cloud serves it
/// (else one call per job, all at once), and records the accepted ones with one tracker write.
/// Each job's outcome is handled as [`accept`] handles it. Returns the ids of the jobs whose
/// accept failed and is to be retried.
pub(crate) async fn accept_many(
    shared: &Shared,
    jobs: Vec<TrackedJob>,
    creds: &MachineCredentials,
    pulled_at: Instant,
) -> Vec<String> {
    if jobs.is_empty() {
        return Vec::new();
    }
    let mut results = None;
    if shared.client.supports_pull_batch() {
        let request = AcceptBatchRequest {
            license_id: creds.license_id.clone(),
            server_id: creds.server_id.clone(),
            secret: creds.heartbeat_secret.clone(),
            jobs: jobs
                .iter()
                .map(|t| AcceptBatchItem {
                    job_id: t.job_id.clone(),
                    dag_run_id: t.dag_run_id.clone(),
                })
                .collect(),
        };
        results = match shared.client.accept_dispatch_batch(&request).await {
            Ok(results) => Some(results),
            // A cloud that no longer serves the call: one accept per job instead.
            Err(error) if matches!(error.status, Some(404 | 405)) => None,
            Err(error) => Some(vec![Err(error); jobs.len()]),
        };
    }
    let results = match results {
        Some(results) => results,
        None => {
            let calls = jobs.iter().map(|tracked| {
                let request = AcceptRequest {
                    license_id: creds.license_id.clone(),
                    server_id: creds.server_id.clone(),
                    secret: creds.heartbeat_secret.clone(),
                    dag_run_id: tracked.dag_run_id.clone(),
                };
                async move {
                    shared
                        .client
                        .accept_dispatch(&tracked.job_id, &request)
                        .await
                }
            });
            futures_util::future::join_all(calls).await
        }
    };
    let mut taken = Vec::new();
    let mut failed = Vec::new();
    for (tracked, result) in jobs.into_iter().zip(results) {
        let job_id = tracked.job_id.clone();
        match settle_accept(shared, tracked, result, Some(pulled_at)).await {
            Settled::Taken(tracked) => taken.push(tracked),
            Settled::Refused => {}
            Settled::Failed => failed.push(job_id),
        }
    }
    let ids: Vec<String> = taken.iter().map(|t| t.job_id.clone()).collect();
    if let Err(error) = upsert_all(shared, taken).await {
        // As in `accept`: the entries stay pending, and the report loop accepts them again.
        tracing::error!(jobs = ids.len(), error = %error_chain(&error), "cannot record accepts");
    }
    for job_id in ids {
        tracing::info!(job_id = %job_id, "dispatch job accepted");
    }
    failed
}

/// What an accept answer means for the job.
enum Settled {
    /// The hub took it: the entry to record, now `accepted`.
    Taken(TrackedJob),
    /// The hub refused (404/409): the run was stopped and the entry dropped.
    Refused,
    /// The call failed; a retry is scheduled.
    Failed,
}

/// Counts and schedules after an accept answer, stops the run of a refused job.
async fn settle_accept(
    shared: &Shared,
    mut tracked: TrackedJob,
    result: Result<(), CloudError>,
    pulled_at: Option<Instant>,
) -> Settled {
    match result {
        Ok(()) => {
            shared.stats.record_accepted();
            if let Some(pulled_at) = pulled_at {
                shared.stats.record_latency(pulled_at.elapsed());
            }
            shared.clear_retry(&tracked.job_id);
            tracked.phase = Phase::Accepted;
            tracked.updated_at_ms = now_ms();
            Settled::Taken(tracked)
        }
        Err(error) if matches!(error.status, Some(404 | 409)) => {
            tracing::warn!(job_id = %tracked.job_id, %error, "hub refused the accept; stopping the run and dropping the job");
            stop_run(shared, &tracked.dag_name, &tracked.dag_run_id).await;
            shared.clear_retry(&tracked.job_id);
            delete_quietly(shared, &tracked.job_id).await;
            Settled::Refused
        }
        Err(error) => {
            let delay = shared.schedule_retry(&tracked.job_id, Some(&error));
            tracing::warn!(job_id = %tracked.job_id, %error, retry_in = ?delay, "accept failed; will retry");
            Settled::Failed
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
