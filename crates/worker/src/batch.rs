//! What happens to the jobs of one batched pull: each goes the way [`process_job`] takes a job,
//! durable first, but the batch shares its durable writes and its calls: one tracker write for
//! every `pending_accept` entry, the runs created together ([`enqueue_webhook_runs`]), one accept
//! call, one tracker write for the `accepted` entries. A job that needs more than that path (a
//! bad run id or DAG name, a cancel command, a DAG that cannot be loaded, an id twice in the
//! batch) is taken in on its own by [`process_job`].

use std::collections::{HashMap, HashSet};

use dispatch_dag::{validate_dag_name, validate_run_id, Dag};
use dispatch_enqueue::{enqueue_webhook_runs, EnqueueOutcome, WebhookRun};
use dispatch_license::MachineCredentials;
use dispatch_protocol::{is_cancel_command, DispatchJob};
use dispatch_tracker::{Phase, TrackedJob};
use dispatch_util::{error_chain, now_ms};
use tokio::time::Instant;

use crate::calls::{accept_many, send_untracked_finish};
use crate::intake::{load_dag, process_job, runtime_params};
use crate::local::{delete_quietly, upsert_all};
use crate::shared::{Shared, UntrackedFinish};
use crate::summary::truncate;

/// Takes in the jobs of one batched pull; returns once each is tracked, enqueued and accepted (or
/// turned down, or left to the report loop as [`process_job`] leaves it).
pub(crate) async fn process_batch(
    shared: &Shared,
    jobs: Vec<DispatchJob>,
    creds: &MachineCredentials,
    pulled_at: Instant,
) {
    let mut plain: Vec<(DispatchJob, Dag)> = Vec::new();
    let mut alone: Vec<DispatchJob> = Vec::new();
    let mut dags: HashMap<String, Option<Dag>> = HashMap::new();
    let mut ids = HashSet::new();
    for job in jobs {
        let simple = validate_run_id(&job.id).is_ok()
            && !is_cancel_command(&job.command)
            && validate_dag_name(&job.dag_name).is_ok()
            && ids.insert(job.id.clone());
        if !simple {
            alone.push(job);
            continue;
        }
        if !dags.contains_key(&job.dag_name) {
            let dag = load_dag(shared, &job.dag_name).await.ok();
            dags.insert(job.dag_name.clone(), dag);
        }
        match &dags[&job.dag_name] {
            Some(dag) => plain.push((job, dag.clone())),
            // `process_job` loads it again and turns the job down with the reason.
            None => alone.push(job),
        }
    }
    let one_by_one = futures_util::future::join_all(
        alone
            .into_iter()
            .map(|job| process_job(shared, job, creds, pulled_at)),
    );
    tokio::join!(take_in(shared, plain, creds, pulled_at), one_by_one);
}

/// The shared path: track, enqueue, accept, each step for the whole batch at once.
async fn take_in(
    shared: &Shared,
    jobs: Vec<(DispatchJob, Dag)>,
    creds: &MachineCredentials,
    pulled_at: Instant,
) {
    if jobs.is_empty() {
        return;
    }
    let mut guards = Vec::with_capacity(jobs.len());
    for (job, _) in &jobs {
        guards.push(shared.busy_wait(&job.id).await);
    }
    let tracked: Vec<TrackedJob> = jobs
        .iter()
        .map(|(job, dag)| TrackedJob {
            job_id: job.id.clone(),
            dag_name: dag.name.clone(),
            dag_run_id: job.id.clone(),
            phase: Phase::PendingAccept,
            repository: job.repository_name.clone(),
            pr_number: job.pull_request_number,
            issue_number: job.issue_number,
            updated_at_ms: now_ms(),
        })
        .collect();
    if let Err(error) = upsert_all(shared, tracked.clone()).await {
        // Without durable records we must not accept; the hub hands the jobs out again when
        // their claims lapse.
        tracing::error!(jobs = jobs.len(), error = %error_chain(&error), "cannot record dispatch jobs; leaving them to the hub");
        return;
    }

    let runs: Vec<(Dag, String, String)> = jobs
        .iter()
        .map(|(job, dag)| (dag.clone(), job.id.clone(), runtime_params(job)))
        .collect();
    let stores = shared.stores.clone();
    let enqueued = Shared::blocking("enqueue", move || {
        let runs: Vec<WebhookRun<'_>> = runs
            .iter()
            .map(|(dag, run_id, params)| WebhookRun {
                dag,
                run_id,
                params,
            })
            .collect();
        enqueue_webhook_runs(&stores, &runs, now_ms())
    })
    .await;
    let outcomes = match enqueued {
        Ok(outcomes) => outcomes,
        Err(error) => {
            // The enqueue task died: the runs may or may not exist. Leave the pending entries to
            // the report loop, which accepts only a run that exists.
            tracing::error!(jobs = jobs.len(), error = %error_chain(&error), "enqueue did not complete");
            return;
        }
    };
    let mut to_accept = Vec::new();
    let mut rejected = Vec::new();
    let mut existed = Vec::new();
    for (((job, dag), entry), outcome) in jobs.iter().zip(tracked).zip(outcomes) {
        match outcome {
            Ok(EnqueueOutcome::Enqueued) => {
                tracing::info!(job_id = %job.id, dag = %dag.name, repository = %job.repository_name, event = %job.event_name, "dispatch job enqueued");
                to_accept.push(entry);
            }
            Ok(EnqueueOutcome::AlreadyExists) => {
                tracing::info!(job_id = %job.id, dag = %dag.name, "dispatch job pulled again; its run already exists");
                existed.push(job.id.clone());
                to_accept.push(entry);
            }
            Err(error) => {
                delete_quietly(shared, &job.id).await;
                rejected.push((
                    job.id.clone(),
                    truncate(format!(
                        "Rejected: the run of DAG `{}` could not be enqueued: {}.",
                        dag.name,
                        error_chain(&error)
                    )),
                ));
            }
        }
    }
    let retried = accept_many(shared, to_accept, creds, pulled_at).await;
    drop(guards);
    for (job_id, summary) in rejected {
        shared.stats.record_rejected();
        tracing::info!(job_id = %job_id, %summary, "dispatch job rejected");
        let pending = UntrackedFinish {
            status: "rejected",
            summary,
            attempts: 0,
        };
        send_untracked_finish(shared, &job_id, pending, creds).await;
    }
    // A run that existed before may already be final, and a failed accept has a retry to
    // schedule: the report loop looks at them now. (A run that ends while its job is taken in is
    // reported once the job is let go: see `Shared::try_busy_or_revisit`.)
    for job_id in existed.into_iter().chain(retried) {
        shared.wake_report(&job_id);
    }
}
