//! What happens to a pulled job, durable first: checks (run id, cancel command, DAG name, DAG
//! present), the tracker record, the enqueue, the accept; a job turned down gets its finish.

use dispatch_dag::{validate_dag_name, validate_run_id, Dag, StoreError};
use dispatch_enqueue::{enqueue_webhook_run, EnqueueOutcome};
use dispatch_license::MachineCredentials;
use dispatch_protocol::{is_cancel_command, DispatchJob};
use dispatch_tracker::{Phase, TrackedJob};
use dispatch_util::{error_chain, now_ms};
use tokio::time::Instant;

use crate::calls::{accept, send_untracked_finish, Accepted};
use crate::error::WorkerError;
use crate::extras::github_extras;
use crate::local::{delete_quietly, list_tracked, stop_run};
use crate::shared::{Shared, UntrackedFinish};
use crate::summary::truncate;

/// What the intake of one job came to.
#[derive(Debug, PartialEq, Eq)]
enum Intake {
    /// Enqueued just now and accepted.
    Accepted,
    /// Tracked and enqueued (or perhaps enqueued), left for the report loop to accept or to
    /// report: its run existed already, or the accept or the enqueue did not complete.
    Tracked,
    /// Turned down: finish `rejected` with this summary.
    Rejected(String),
    /// A cancel command that stopped runs: finish `succeeded` with this summary.
    Cancelled(String),
    /// The hub no longer wants it (accept answered 404/409), or it could not be recorded
    /// durably; nothing to finish.
    Dropped,
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
    // A job accepted just now has a run that has only begun; if it ends while the job is still
    // held here, the report loop comes back for it (`Shared::try_busy_or_revisit`). Anything
    // else may need the report loop at once.
    let look_now = intake != Intake::Accepted;
    let finish = match intake {
        Intake::Accepted | Intake::Tracked | Intake::Dropped => None,
        Intake::Rejected(summary) => {
            shared.stats.record_rejected();
            tracing::info!(job_id = %job_id, dag = %job.dag_name, %summary, "dispatch job rejected");
            Some(("rejected", summary))
        }
        Intake::Cancelled(summary) => {
            tracing::info!(job_id = %job_id, %summary, "cancel command handled");
            Some(("succeeded", summary))
        }
    };
    if let Some((status, summary)) = finish {
        let pending = UntrackedFinish {
            status,
            summary,
            attempts: 0,
        };
        send_untracked_finish(shared, &job_id, pending, creds).await;
    }
    if look_now {
        // The run may already be final: report it without waiting for the next full pass.
        shared.wake_report(&job_id);
    }
}

async fn intake(
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
    if is_cancel_command(&job.command) {
        // A cancel names runs by repository and number, never by DAG, so its DAG name (often
        // empty) is not checked.
        return cancel_runs(shared, job).await;
    }
    if let Err(e) = validate_dag_name(&job.dag_name) {
        return Intake::Rejected(truncate(format!("Rejected: {e}.")));
    }
    // The DAG, the tracker record and the run in one trip to the blocking threads: each trip
    // is a thread hand-off on the way from the pull to the run's first step.
    let params = runtime_params(job);
    let (tracker, stores) = (shared.tracker.clone(), shared.stores.clone());
    let (name, run_id) = (job.dag_name.clone(), job.id.clone());
    let (repository, pr_number, issue_number) = (
        job.repository_name.clone(),
        job.pull_request_number,
        job.issue_number,
    );
    let taken = Shared::blocking("take in", move || {
        let dag = dag_or_rejection(&name, stores.dags.load(&name)).map_err(Stop::Rejected)?;
        let tracked = TrackedJob {
            job_id: run_id.clone(),
            dag_name: dag.name.clone(),
            dag_run_id: run_id.clone(),
            phase: Phase::PendingAccept,
            repository,
            pr_number,
            issue_number,
            updated_at_ms: now_ms(),
        };
        tracker.upsert(tracked.clone()).map_err(|source| {
            Stop::NotRecorded(WorkerError::Tracker {
                action: "record",
                job_id: run_id.clone(),
                source: Box::new(source),
            })
        })?;
        let enqueued = enqueue_webhook_run(&stores, &dag, &run_id, &params, now_ms());
        Ok((dag, tracked, enqueued))
    })
    .await;
    let (dag, tracked, enqueued) = match taken {
        Ok(Ok(taken)) => taken,
        Ok(Err(Stop::Rejected(summary))) => return Intake::Rejected(summary),
        Ok(Err(Stop::NotRecorded(error))) => {
            // Without a durable record we must not accept; the hub hands the job out again when
            // its claim lapses.
            tracing::error!(job_id = %job.id, error = %error_chain(&error), "cannot record dispatch job; leaving it to the hub");
            return Intake::Dropped;
        }
        Err(error) => {
            // The task died: the job may or may not be tracked, its run may or may not exist.
            // The report loop accepts a pending entry only with its run, and drops it without.
            tracing::error!(job_id = %job.id, error = %error_chain(&error), "taking the job in did not complete");
            return Intake::Tracked;
        }
    };
    match enqueued {
        Ok(EnqueueOutcome::Enqueued) => {
            tracing::info!(job_id = %job.id, dag = %dag.name, repository = %job.repository_name, event = %job.event_name, "dispatch job enqueued");
        }
        Ok(EnqueueOutcome::AlreadyExists) => {
            tracing::info!(job_id = %job.id, dag = %dag.name, "dispatch job pulled again; its run already exists");
        }
        Err(error) => {
            delete_quietly(shared, &job.id).await;
            return Intake::Rejected(truncate(format!(
                "Rejected: the run of DAG `{}` could not be enqueued: {}.",
                dag.name,
                error_chain(&error)
            )));
        }
    }

    match accept(shared, tracked, creds, Some(pulled_at)).await {
        Accepted::Yes => Intake::Accepted,
        Accepted::Refused | Accepted::Failed => Intake::Tracked,
    }
}

/// Stops the active runs this scheduler tracks for the cancel job's repository and PR/issue: the
/// ones the job names in `cancel_job_ids`, or all of them when it names none (a cloud that does
/// not send the field).
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
    let tracked = match list_tracked(shared).await {
        Ok(tracked) => tracked,
        Err(error) => {
            return Intake::Rejected(truncate(format!(
                "Rejected: could not look up runs to cancel: {}.",
                error_chain(&error)
            )));
        }
    };
    let targets = tracked.into_iter().filter(|t| {
        is_cancel_target(
            job,
            &numbers,
            &t.job_id,
            &t.repository,
            (t.pr_number, t.issue_number),
        )
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

/// Whether the tracked run of job `job_id` on `repository` with these (pull request, issue)
/// numbers is one the cancel `job` stops.
fn is_cancel_target(
    job: &DispatchJob,
    numbers: &[i64],
    job_id: &str,
    repository: &str,
    (pr_number, issue_number): (i64, i64),
) -> bool {
    job_id != job.id
        && repository.eq_ignore_ascii_case(job.repository_name.trim())
        && (numbers.contains(&pr_number) || numbers.contains(&issue_number))
        && (job.cancel_job_ids.is_empty() || job.cancel_job_ids.iter().any(|id| id == job_id))
}

/// The job's DAG, or the summary of a rejection naming why it cannot be had.
pub(crate) async fn load_dag(shared: &Shared, name: &str) -> Result<Dag, String> {
    let dags = shared.stores.dags.clone();
    let owned = name.to_owned();
    match Shared::blocking("load DAG", move || dags.load(&owned)).await {
        Ok(loaded) => dag_or_rejection(name, loaded),
        Err(e) => Err(format!(
            "Rejected: DAG `{name}` cannot be loaded: {}.",
            error_chain(&e)
        )),
    }
}

/// The DAG `name`, or the summary of a rejection naming why it cannot be had.
fn dag_or_rejection(name: &str, loaded: Result<Dag, StoreError>) -> Result<Dag, String> {
    match loaded {
        Ok(dag) => Ok(dag),
        Err(e) if e.is_not_found() => {
            Err(format!("Rejected: DAG `{name}` not found on this server."))
        }
        Err(e) => Err(truncate(format!(
            "Rejected: DAG `{name}` cannot be loaded: {}.",
            error_chain(&e)
        ))),
    }
}

/// Why taking a job in stopped before its enqueue.
enum Stop {
    /// Its DAG cannot be had: finish `rejected` with this summary.
    Rejected(String),
    /// Its tracker record could not be written.
    NotRecorded(WorkerError),
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
    dispatch_webhook_params::build_runtime_params(payload, headers, &github_extras(job))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn raw(text: &str) -> Option<Box<RawValue>> {
        Some(RawValue::from_string(text.to_owned()).unwrap())
    }

    #[test]
    fn a_cancel_naming_jobs_stops_only_those() {
        let cancel = |ids: &[&str]| DispatchJob {
            id: "c".into(),
            repository_name: "o/r".into(),
            pull_request_number: 7,
            command: "cancel".into(),
            cancel_job_ids: ids.iter().map(|s| (*s).to_owned()).collect(),
            ..DispatchJob::default()
        };
        let numbers = [7];
        // Job id, repository, (pull request, issue) numbers; whether a cancel naming `a` stops
        // it, whether one naming nothing does.
        let cases = [
            ("a", "o/r", (7, 0), true, true),
            ("b", "O/R", (7, 0), false, true),
            ("a", "o/other", (7, 0), false, false),
            ("a", "o/r", (8, 0), false, false),
            ("a", "o/r", (0, 7), true, true),
            ("c", "o/r", (7, 0), false, false),
        ];
        for (id, repo, nums, named, all) in cases {
            assert_eq!(
                is_cancel_target(&cancel(&["a"]), &numbers, id, repo, nums),
                named,
                "{id} {repo} {nums:?}"
            );
            assert_eq!(
                is_cancel_target(&cancel(&[]), &numbers, id, repo, nums),
                all,
                "{id} {repo} {nums:?}"
            );
        }
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
}
