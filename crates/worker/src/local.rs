//! This server's side of a job: its record in the tracker, its run in the stores, its process in
//! the executor. Each call runs off the async threads and names what failed in a [`WorkerError`].

use dispatch_dag::{Attempt, RunStore, RunStoreFailure};
use dispatch_tracker::{TrackedJob, Tracker, TrackerError};
use dispatch_util::error_chain;

use crate::error::WorkerError;
use crate::shared::Shared;

/// One tracker call on a blocking thread; `action` and `job_id` name it in the error.
async fn tracker_call<T, F>(
    shared: &Shared,
    what: &'static str,
    action: &'static str,
    job_id: &str,
    call: F,
) -> Result<T, WorkerError>
where
    T: Send + 'static,
    F: FnOnce(&Tracker) -> Result<T, TrackerError> + Send + 'static,
{
    let tracker = shared.tracker.clone();
    Shared::blocking(what, move || call(&tracker))
        .await?
        .map_err(|source| WorkerError::Tracker {
            action,
            job_id: job_id.to_owned(),
            source: Box::new(source),
        })
}

/// Every tracked job.
pub(crate) async fn list_tracked(shared: &Shared) -> Result<Vec<TrackedJob>, WorkerError> {
    tracker_call(shared, "list tracked jobs", "list", "", Tracker::list).await
}

/// The tracked entries of those of `job_ids` that are tracked, in one trip.
pub(crate) async fn get_tracked_all(
    shared: &Shared,
    job_ids: Vec<String>,
) -> Result<Vec<TrackedJob>, WorkerError> {
    tracker_call(shared, "read tracked jobs", "read", "", move |t| {
        let mut found = Vec::with_capacity(job_ids.len());
        for id in &job_ids {
            found.extend(t.get(id)?);
        }
        Ok(found)
    })
    .await
}

/// The tracked entry of `job_id`, if any.
pub(crate) async fn get_tracked(
    shared: &Shared,
    job_id: &str,
) -> Result<Option<TrackedJob>, WorkerError> {
    let id = job_id.to_owned();
    tracker_call(shared, "read tracked job", "read", job_id, move |t| {
        t.get(&id)
    })
    .await
}

/// Records `job` durably (insert or replace).
pub(crate) async fn upsert(shared: &Shared, job: TrackedJob) -> Result<(), WorkerError> {
    let job_id = job.job_id.clone();
    tracker_call(shared, "record tracked job", "record", &job_id, move |t| {
        t.upsert(job)
    })
    .await
}

/// Records every job of `jobs` durably, with one write and one fsync.
pub(crate) async fn upsert_all(shared: &Shared, jobs: Vec<TrackedJob>) -> Result<(), WorkerError> {
    let first = jobs.first().map(|j| j.job_id.clone()).unwrap_or_default();
    tracker_call(shared, "record tracked jobs", "record", &first, move |t| {
        t.upsert_all(jobs)
    })
    .await
}

/// Deletes a tracked entry, and with it the note that its upload settled; a failure is logged
/// (the report loop meets the entry again).
pub(crate) async fn delete_quietly(shared: &Shared, job_id: &str) {
    let id = job_id.to_owned();
    let result = tracker_call(shared, "delete tracked job", "delete", job_id, move |t| {
        t.delete(&id)
    })
    .await;
    match result {
        Ok(_) => shared.forget_upload(job_id),
        Err(error) => tracing::error!(error = %error_chain(&error), "cannot delete tracked job"),
    }
}

/// The latest attempt of a tracked job's run; `None` when the run does not exist.
pub(crate) async fn find_attempt(
    shared: &Shared,
    tracked: &TrackedJob,
) -> Result<Option<Attempt>, WorkerError> {
    let runs = shared.stores.runs.clone();
    let (dag, run) = (tracked.dag_name.clone(), tracked.dag_run_id.clone());
    Shared::blocking("look up run", move || read_attempt(&*runs, &dag, &run)).await?
}

/// [`find_attempt`] on the calling thread, for code already off the async threads.
pub(crate) fn read_attempt(
    runs: &dyn RunStore,
    dag: &str,
    run: &str,
) -> Result<Option<Attempt>, WorkerError> {
    match runs.find_attempt(dag, run) {
        Ok(attempt) => Ok(Some(attempt)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(source) => Err(RunStoreFailure::boxed("look up", dag, run, source).into()),
    }
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
