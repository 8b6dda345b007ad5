//! The pull loop and the intake of one job (SPEC §6 "Pull loop", "Process a job").

use std::sync::Arc;
use std::time::Duration;

use dispatch_dag::{validate_dag_name, validate_run_id, Dag};
use dispatch_enqueue::{enqueue_webhook_run, EnqueueOutcome};
use dispatch_license::{CloudError, MachineCredentials};
use dispatch_protocol::{AcceptRequest, DispatchJob, FinishRequest, PullRequest};
use dispatch_tracker::{Phase, TrackedJob};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::summary::truncate;
use crate::worker::{lock, now_ms, sleep_or_cancel, Shared, UntrackedFinish};
use crate::WorkerError;

/// What the intake of one job came to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Intake {
    /// Tracked and enqueued (accepted, or left for the report loop to accept).
    Tracked,
    /// Turned down: finish `rejected` with this summary.
    Rejected(String),
    /// A cancel command that stopped runs: finish `succeeded` with this summary.
    Cancelled(String),
    /// The hub no longer wants it (accept answered 404/409), or it could not be recorded
    /// durably; nothing to finish.
    Dropped,
}

pub(crate) async fn pull_loop(shared: Arc<Shared>, cancel: &CancellationToken) {
    let config = &shared.config;
    // Intakes run side by side (each job is still durable before its accept): the durable
    // writes of one job take tens of milliseconds, and the file system commits concurrent
    // fsyncs together. A permit is taken before pulling, so no job is claimed that cannot be
    // taken in at once.
    let slots = Arc::new(Semaphore::new(config.intake_concurrency.max(1)));
    let flowing = Arc::new(Notify::new());
    let mut bursts = JoinSet::new();
    for _ in 1..config.pull_concurrency.max(1) {
        bursts.spawn(burst_puller(
            shared.clone(),
            slots.clone(),
            flowing.clone(),
            cancel.clone(),
        ));
    }
    let mut intakes = JoinSet::new();
    let mut backoff = Backoff::new(config.backoff_min, config.backoff_max);
    let mut idle_for_credentials = false;
    let wait_seconds = config.wait_seconds();
    loop {
        if cancel.is_cancelled() {
            break;
        }
        let Some(creds) = shared.credentials.cloud_machine_credentials() else {
            if !idle_for_credentials {
                tracing::info!(
                    recheck = ?config.credentials_recheck,
                    "no machine credentials (no key-activated license): dispatch worker idle"
                );
                idle_for_credentials = true;
            }
            if sleep_or_cancel(cancel, config.credentials_recheck).await {
                break;
            }
            continue;
        };
        if idle_for_credentials {
            tracing::info!("machine credentials available: pulling dispatch jobs");
            idle_for_credentials = false;
        }
        while let Some(done) = intakes.try_join_next() {
            log_intake_panic(done);
        }
        let permit = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                // The semaphore is never closed.
                Err(_) => break,
            },
        };
        let request = PullRequest {
            license_id: creds.license_id.clone(),
            server_id: creds.server_id.clone(),
            heartbeat_secret: creds.heartbeat_secret.clone(),
            wait_seconds,
        };
        let started = Instant::now();
        let result = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            result = shared.client.pull_dispatch(&request) => result,
        };
        let delay = match result {
            Ok(Some(job)) => {
                backoff.reset();
                shared.stats.record_pulled(now_ms());
                spawn_intake(&mut intakes, &shared, job, creds, permit);
                // More may be waiting: let the burst pullers overlap their pulls with ours.
                flowing.notify_waiters();
                Duration::ZERO
            }
            Ok(None) => {
                backoff.reset();
                shared.stats.record_pull_ok(now_ms());
                // A server that honoured `wait_seconds` held the call for about that long; one
                // that ignored it answered at once, and pulling again at once would be a busy
                // loop.
                let held = Duration::from_secs(u64::from(wait_seconds)) / 2;
                if wait_seconds > 0 && started.elapsed() >= held {
                    Duration::ZERO
                } else {
                    config.idle_delay
                }
            }
            Err(error) => {
                shared.stats.record_pull_error();
                let retry_after = error
                    .retry_after
                    .filter(|_| matches!(error.status, Some(429 | 503)));
                let delay = backoff.next_delay(retry_after);
                tracing::warn!(%error, retry_in = ?delay, failures = backoff.failures(), "dispatch pull failed");
                delay
            }
        };
        if !delay.is_zero() && sleep_or_cancel(cancel, delay).await {
            break;
        }
    }
    // Intakes in progress complete (their accept call included): stopping one halfway would
    // only leave work for the next start.
    while let Some(done) = intakes.join_next().await {
        log_intake_panic(done);
    }
    while let Some(done) = bursts.join_next().await {
        log_intake_panic(done);
    }
    tracing::debug!("pull loop stopped");
}

/// Takes a pulled job in on its own task; the intake slot is released when it is done.
fn spawn_intake(
    intakes: &mut JoinSet<()>,
    shared: &Arc<Shared>,
    job: DispatchJob,
    creds: MachineCredentials,
    permit: OwnedSemaphorePermit,
) {
    let pulled_at = Instant::now();
    let shared = shared.clone();
    intakes.spawn(async move {
        process_job(&shared, job, &creds, pulled_at).await;
        drop(permit);
    });
}

/// An extra puller (see `WorkerConfig::pull_concurrency`): asleep until the main loop gets a job,
/// then pulls without long-polling until an answer is empty or fails. Backoff and long-polling
/// stay with the main loop, so an outage or an idle queue sees no extra requests from here.
async fn burst_puller(
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    flowing: Arc<Notify>,
    cancel: CancellationToken,
) {
    let mut intakes = JoinSet::new();
    'wait: loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break 'wait,
            _ = flowing.notified() => {}
        }
        loop {
            while let Some(done) = intakes.try_join_next() {
                log_intake_panic(done);
            }
            let Some(creds) = shared.credentials.cloud_machine_credentials() else {
                continue 'wait;
            };
            let permit = tokio::select! {
                biased;
                _ = cancel.cancelled() => break 'wait,
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break 'wait,
                },
            };
            let request = PullRequest {
                license_id: creds.license_id.clone(),
                server_id: creds.server_id.clone(),
                heartbeat_secret: creds.heartbeat_secret.clone(),
                wait_seconds: 0,
            };
            let result = tokio::select! {
                biased;
                _ = cancel.cancelled() => break 'wait,
                result = shared.client.pull_dispatch(&request) => result,
            };
            match result {
                Ok(Some(job)) => {
                    shared.stats.record_pulled(now_ms());
                    spawn_intake(&mut intakes, &shared, job, creds, permit);
                }
                Ok(None) => {
                    shared.stats.record_pull_ok(now_ms());
                    continue 'wait;
                }
                Err(error) => {
                    shared.stats.record_pull_error();
                    tracing::debug!(%error, "burst pull failed; leaving retries to the main pull loop");
                    continue 'wait;
                }
            }
        }
    }
    while let Some(done) = intakes.join_next().await {
        log_intake_panic(done);
    }
}

fn log_intake_panic(done: Result<(), tokio::task::JoinError>) {
    if let Err(error) = done {
        tracing::error!(%error, "job intake task failed");
    }
}

/// Takes one pulled job in, durable first, and sends the finish of a job turned down.
pub(crate) async fn process_job(
    shared: &Shared,
    job: DispatchJob,
    creds: &MachineCredentials,
    pulled_at: Instant,
) {
    let job_id = job.id.clone();
    let guard = shared.busy_wait(&job_id).await;
    let intake = intake(shared, &job, creds, pulled_at).await;
    drop(guard);
    match intake {
        Intake::Tracked | Intake::Dropped => {}
        Intake::Rejected(summary) => {
            shared.stats.record_rejected();
            tracing::info!(job_id = %job_id, dag = %job.dag_name, %summary, "dispatch job rejected");
            finish_untracked(shared, &job_id, "rejected", summary, creds).await;
        }
        Intake::Cancelled(summary) => {
            tracing::info!(job_id = %job_id, %summary, "cancel command handled");
            finish_untracked(shared, &job_id, "succeeded", summary, creds).await;
        }
    }
    // The run may already be final: report it without waiting for the next full pass.
    shared.wake_report(&job_id);
}

pub(crate) async fn intake(
    shared: &Shared,
    job: &DispatchJob,
    creds: &MachineCredentials,
    pulled_at: Instant,
) -> Intake {
    if let Err(e) = validate_run_id(&job.id) {
        return Intake::Rejected(truncate(format!(
            "Rejected: the job id is not a usable run id: {e}."
        )));
    }
    if job.command.trim().eq_ignore_ascii_case("cancel") {
        // A cancel names runs by repository and number, never by DAG, so its DAG name (often
        // empty) is not checked.
        return cancel_runs(shared, job).await;
    }
    if let Err(e) = validate_dag_name(&job.dag_name) {
        return Intake::Rejected(truncate(format!("Rejected: {e}.")));
    }
    let dag = match load_dag(shared, &job.dag_name).await {
        Ok(dag) => dag,
        Err(summary) => return Intake::Rejected(summary),
    };

    let tracked = TrackedJob {
        job_id: job.id.clone(),
        dag_name: dag.name.clone(),
        dag_run_id: job.id.clone(),
        phase: Phase::PendingAccept,
        repository: job.repository_name.clone(),
        pr_number: job.pull_request_number,
        issue_number: job.issue_number,
        updated_at_ms: now_ms(),
    };
    if let Err(error) = upsert(shared, tracked.clone()).await {
        // Without a durable record we must not accept; the hub hands the job out again when
        // its claim lapses.
        tracing::error!(job_id = %job.id, error = %error_chain(&error), "cannot record dispatch job; leaving it to the hub");
        return Intake::Dropped;
    }

    let params = runtime_params(job);
    let stores = shared.stores.clone();
    let run_id = job.id.clone();
    let enqueue_dag = dag.clone();
    let enqueued = Shared::blocking("enqueue", move || {
        enqueue_webhook_run(&stores, &enqueue_dag, &run_id, &params, now_ms())
    })
    .await;
    match enqueued {
        Ok(Ok(EnqueueOutcome::Enqueued)) => {
            tracing::info!(job_id = %job.id, dag = %dag.name, repository = %job.repository_name, event = %job.event_name, "dispatch job enqueued");
        }
        Ok(Ok(EnqueueOutcome::AlreadyExists)) => {
            tracing::info!(job_id = %job.id, dag = %dag.name, "dispatch job pulled again; its run already exists");
        }
        Ok(Err(error)) => {
            delete_quietly(shared, &job.id).await;
            return Intake::Rejected(truncate(format!(
                "Rejected: the run of DAG `{}` could not be enqueued: {}.",
                dag.name,
                error_chain(&error)
            )));
        }
        Err(error) => {
            // The enqueue task died: the run may or may not exist. Leave the pending entry to the
            // report loop, which accepts only a run that exists.
            tracing::error!(job_id = %job.id, error = %error_chain(&error), "enqueue did not complete");
            return Intake::Tracked;
        }
    }

    accept(shared, tracked, creds, Some(pulled_at)).await;
    Intake::Tracked
}

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

/// Stops every active run this scheduler tracks for the cancel job's repository and PR/issue.
async fn cancel_runs(shared: &Shared, job: &DispatchJob) -> Intake {
    let numbers: Vec<i64> = [job.pull_request_number, job.issue_number]
        .into_iter()
        .filter(|n| *n > 0)
        .collect();
    let Some(first_number) = numbers.first().copied() else {
        return Intake::Rejected(
            "Rejected: nothing to cancel: the cancel command names no pull request or issue."
                .to_owned(),
        );
    };
    let repo = job.repository_name.trim();
    if repo.is_empty() {
        return Intake::Rejected(
            "Rejected: nothing to cancel: the cancel command names no repository.".to_owned(),
        );
    }
    let tracker = shared.tracker.clone();
    let listed = Shared::blocking("list tracked jobs", move || tracker.list()).await;
    let tracked = match listed {
        Ok(Ok(tracked)) => tracked,
        Ok(Err(source)) => {
            let error = WorkerError::Tracker {
                action: "list",
                job_id: String::new(),
                source: Box::new(source),
            };
            return Intake::Rejected(truncate(format!(
                "Rejected: could not look up runs to cancel: {}.",
                error_chain(&error)
            )));
        }
        Err(error) => {
            return Intake::Rejected(format!(
                "Rejected: could not look up runs to cancel: {}.",
                error_chain(&error)
            ))
        }
    };
    let targets = tracked.into_iter().filter(|t| {
        t.job_id != job.id
            && t.repository.eq_ignore_ascii_case(repo)
            && (numbers.contains(&t.pr_number) || numbers.contains(&t.issue_number))
    });
    let mut stopped = Vec::new();
    for target in targets {
        if stop_run(shared, &target.dag_name, &target.dag_run_id).await {
            stopped.push(format!(
                "`{}` (run `{}`)",
                target.dag_name, target.dag_run_id
            ));
        }
    }
    if stopped.is_empty() {
        return Intake::Rejected(format!(
            "Rejected: nothing to cancel: no active run for {repo} #{first_number}."
        ));
    }
    Intake::Cancelled(truncate(format!(
        "Cancelled {} run(s) for {repo} #{first_number}: {}.",
        stopped.len(),
        stopped.join(", ")
    )))
}

/// Stops a run if it is active here; true when it was. Errors are logged.
pub(crate) async fn stop_run(shared: &Shared, dag_name: &str, run_id: &str) -> bool {
    let executor = shared.executor.clone();
    let (dag, run) = (dag_name.to_owned(), run_id.to_owned());
    let result = Shared::blocking("stop run", move || {
        executor
            .stop(&dag, &run)
            .map_err(|source| WorkerError::Stop {
                dag_name: dag,
                run_id: run,
                source: Box::new(source),
            })
    })
    .await
    .and_then(|r| r);
    match result {
        Ok(stopped) => {
            if stopped {
                tracing::info!(dag = %dag_name, run_id = %run_id, "run stopped");
            }
            stopped
        }
        Err(error) => {
            tracing::warn!(error = %error_chain(&error), "cannot stop run");
            false
        }
    }
}

async fn load_dag(shared: &Shared, name: &str) -> Result<Dag, String> {
    let dags = shared.stores.dags.clone();
    let owned = name.to_owned();
    match Shared::blocking("load DAG", move || dags.load(&owned)).await {
        Ok(Ok(dag)) => Ok(dag),
        Ok(Err(e)) if e.is_not_found() => {
            Err(format!("Rejected: DAG `{name}` not found on this server."))
        }
        Ok(Err(e)) => Err(truncate(format!(
            "Rejected: DAG `{name}` cannot be loaded: {}.",
            error_chain(&e)
        ))),
        Err(e) => Err(format!(
            "Rejected: DAG `{name}` cannot be loaded: {}.",
            error_chain(&e)
        )),
    }
}

/// The run's param string: the raw payload and headers plus the GitHub extras.
///
/// Headers that are not a JSON object (the contract says they are) are replaced by `{}` rather
/// than rejecting the job: they are a convenience copy of the delivery headers, while the event
/// itself (payload and `GITHUB_*` extras) is intact and worth running.
pub(crate) fn runtime_params(job: &DispatchJob) -> String {
    let payload = job.payload.as_deref().map_or("", |raw| raw.get());
    let headers = match job.headers.as_deref().map(|raw| raw.get()) {
        Some(text) if text.trim_start().starts_with('{') => text,
        Some(_) => {
            tracing::warn!(job_id = %job.id, "job headers are not a JSON object; running with `{{}}`");
            "{}"
        }
        None => "",
    };
    dispatch_webhook_params::build_runtime_params(payload, headers, &crate::github_extras(job))
}

/// Sends the finish of a job the tracker does not hold; a failure is retried by the report
/// loop, a bounded number of times.
pub(crate) async fn finish_untracked(
    shared: &Shared,
    job_id: &str,
    status: &'static str,
    summary: String,
    creds: &MachineCredentials,
) {
    let pending = UntrackedFinish {
        status,
        summary,
        attempts: 0,
    };
    send_untracked_finish(shared, job_id, pending, creds).await;
}

/// One attempt at an untracked finish; on failure it goes (back) into the retry map.
pub(crate) async fn send_untracked_finish(
    shared: &Shared,
    job_id: &str,
    mut pending: UntrackedFinish,
    creds: &MachineCredentials,
) {
    let result = finish_call(shared, job_id, pending.status, &pending.summary, creds).await;
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
            if pending.attempts >= crate::worker::MAX_UNTRACKED_FINISH_ATTEMPTS {
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

/// The finish call itself; counts successes.
pub(crate) async fn finish_call(
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

pub(crate) async fn upsert(shared: &Shared, job: TrackedJob) -> Result<(), WorkerError> {
    let tracker = shared.tracker.clone();
    let job_id = job.job_id.clone();
    Shared::blocking("record tracked job", move || tracker.upsert(job))
        .await?
        .map_err(|source| WorkerError::Tracker {
            action: "record",
            job_id,
            source: Box::new(source),
        })
}

/// Deletes a tracked entry; a failure is logged (the report loop meets the entry again).
pub(crate) async fn delete_quietly(shared: &Shared, job_id: &str) {
    let tracker = shared.tracker.clone();
    let id = job_id.to_owned();
    let result = Shared::blocking("delete tracked job", move || tracker.delete(&id))
        .await
        .and_then(|r| {
            r.map_err(|source| WorkerError::Tracker {
                action: "delete",
                job_id: job_id.to_owned(),
                source: Box::new(source),
            })
        });
    if let Err(error) = result {
        tracing::error!(error = %error_chain(&error), "cannot delete tracked job");
    }
}

/// An error with its causes, `: `-joined, for logs and summaries.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn raw(text: &str) -> Option<Box<RawValue>> {
        Some(RawValue::from_string(text.to_owned()).unwrap())
    }

    #[test]
    fn runtime_params_carry_raw_payload_headers_and_extras() {
        let job = DispatchJob {
            id: "j".into(),
            event_name: "push".into(),
            git_ref: "refs/tags/v1".into(),
            payload: raw(r#"{"ref": "refs/tags/v1"}"#),
            headers: raw(r#"{"x-github-event":["push"]}"#),
            ..DispatchJob::default()
        };
        assert_eq!(
            runtime_params(&job),
            r#"WEBHOOK_PAYLOAD="{\"ref\": \"refs/tags/v1\"}" WEBHOOK_HEADERS="{\"x-github-event\":[\"push\"]}" GITHUB_EVENT_NAME="push" GITHUB_REF="refs/tags/v1" GITHUB_RELEASE_TAG="v1""#
        );
    }

    #[test]
    fn headers_that_are_not_an_object_become_empty_and_missing_parts_default() {
        for headers in [r#"["x"]"#, r#""text""#, "12", "null"] {
            let job = DispatchJob {
                id: "j".into(),
                payload: raw(r#""not json {""#),
                headers: raw(headers),
                ..DispatchJob::default()
            };
            assert_eq!(
                runtime_params(&job),
                r#"WEBHOOK_PAYLOAD="\"not json {\"" WEBHOOK_HEADERS="{}""#,
                "{headers}"
            );
        }
        let bare = DispatchJob {
            id: "j".into(),
            ..DispatchJob::default()
        };
        assert_eq!(
            runtime_params(&bare),
            r#"WEBHOOK_PAYLOAD="{}" WEBHOOK_HEADERS="{}""#
        );
    }

    #[test]
    fn error_chain_joins_causes() {
        let inner = std::io::Error::other("disk on fire");
        let outer = WorkerError::Tracker {
            action: "record",
            job_id: "j1".into(),
            source: Box::new(dispatch_tracker::TrackerError::Io {
                action: "fsync",
                path: "/t/journal".into(),
                source: inner,
            }),
        };
        assert_eq!(
            error_chain(&outer),
            "failed to record tracked job `j1`: failed to fsync `/t/journal`: disk on fire"
        );
    }
}
