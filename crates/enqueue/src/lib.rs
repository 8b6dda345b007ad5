//! Idempotent enqueue of a webhook-triggered DAG run, with rollback (run lifecycle:
//! `docs/dag-format.md`).
//!
//! Main items: [`enqueue_webhook_run`] (and [`enqueue_webhook_runs`] for a burst of
//! [`WebhookRun`]s that shares its syncs), its [`EnqueueOutcome`] and [`EnqueueError`].
//!
//! For a run id that already exists it does nothing ([`EnqueueOutcome::AlreadyExists`]), so a
//! caller that is unsure whether an earlier call got through simply calls again. Otherwise it
//! parses the runtime-param string, resolves the DAG with it (the snapshot the run keeps, so
//! later edits of the YAML do not change it), creates the attempt whose first status is already
//! `queued` (trigger `webhook`, queued-at time, log path
//! `<log_dir>/<dag>/<run_id>/<attempt_id>/run.log`), enqueues it at low priority on the DAG's
//! queue and wakes the in-process executor. Any failure removes what was created, so a failed
//! enqueue leaves nothing behind and can be retried.
//!
//! The first status is written together with the attempt (one atomic step of the run store)
//! rather than as a separate `not_started` → `queued` write: if the process dies before the queue
//! item exists, the run is `queued` but missing from its queue, which executor recovery
//! re-enqueues; a `not_started` leftover would be stranded, since a retry sees it as existing.
//!
//! Not for: running anything (that is `dispatch-executor`) or knowing GitHub (the caller
//! builds the param string).

use dispatch_dag::{
    new_attempt_id, resolve_params, Dag, DagError, Priority, QueueItem, RunRecord, RunStatus,
    RunStoreFailure, StoreError, Stores,
};

/// What [`enqueue_webhook_run`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnqueueOutcome {
    /// A new run was created and queued.
    Enqueued,
    /// A run with this id already existed; nothing was changed.
    AlreadyExists,
}

/// Why a run could not be enqueued. Except for [`EnqueueError::RollbackFailed`], nothing was
/// left behind.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// Looking up an existing run failed for a reason other than "not found" (including an
    /// invalid DAG name or run id).
    #[error("failed to look up run `{dag_name}/{run_id}`")]
    Lookup {
        /// DAG name.
        dag_name: String,
        /// Run id.
        run_id: String,
        /// Cause.
        #[source]
        source: StoreError,
    },
    /// The runtime-param string is malformed.
    #[error("invalid runtime params for run `{dag_name}/{run_id}`")]
    InvalidParams {
        /// DAG name.
        dag_name: String,
        /// Run id.
        run_id: String,
        /// Cause, naming the byte offset.
        #[source]
        source: dispatch_webhook_params::ParseError,
    },
    /// The params do not fit the DAG.
    #[error("failed to resolve the params of run `{dag_name}/{run_id}`")]
    Resolve {
        /// DAG name.
        dag_name: String,
        /// Run id.
        run_id: String,
        /// Cause.
        #[source]
        source: DagError,
    },
    /// A store write failed; what had been created was removed again. Its action is
    /// "create the attempt for" or "enqueue for".
    #[error(transparent)]
    Store(Box<RunStoreFailure>),
    /// A store write failed and removing what had been created failed too: the run may be left
    /// half-created (executor recovery re-enqueues a `queued` run missing from its queue).
    #[error(
        "failed to {action} run `{dag_name}/{run_id}`, and the rollback failed too: {rollback}"
    )]
    RollbackFailed {
        /// The step that failed first.
        action: &'static str,
        /// DAG name.
        dag_name: String,
        /// Run id.
        run_id: String,
        /// What the rollback could not undo.
        rollback: String,
        /// The first failure (boxed to keep the error small).
        #[source]
        source: Box<StoreError>,
    },
}

/// Enqueues the webhook-triggered run `run_id` of `dag` with the runtime-param string `params`,
/// unless a run with that id already exists. `now_ms` (Unix milliseconds) becomes the queued-at
/// time. See the crate docs for the steps and the rollback.
pub fn enqueue_webhook_run(
    stores: &Stores,
    dag: &Dag,
    run_id: &str,
    params: &str,
    now_ms: u64,
) -> Result<EnqueueOutcome, EnqueueError> {
    let run = WebhookRun {
        dag,
        run_id,
        params,
    };
    match enqueue_webhook_runs(stores, &[run], now_ms).pop() {
        Some(outcome) => outcome,
        // One run in, one outcome out.
        None => Ok(EnqueueOutcome::AlreadyExists),
    }
}

/// One run for [`enqueue_webhook_runs`].
#[derive(Debug, Clone, Copy)]
pub struct WebhookRun<'a> {
    /// The DAG to run.
    pub dag: &'a Dag,
    /// The run id (the job id).
    pub run_id: &'a str,
    /// The runtime-param string.
    pub params: &'a str,
}

/// [`enqueue_webhook_run`] for several runs, one outcome per run in order, each with the same
/// meaning and the same rollback. The new runs' attempts are created together
/// ([`dispatch_dag::RunStore::create_attempts`]: written, then made durable), so a burst of
/// jobs shares its syncs; the executor is woken once.
pub fn enqueue_webhook_runs(
    stores: &Stores,
    runs: &[WebhookRun<'_>],
    now_ms: u64,
) -> Vec<Result<EnqueueOutcome, EnqueueError>> {
    let mut outcomes: Vec<Option<Result<EnqueueOutcome, EnqueueError>>> = Vec::new();
    let mut new: Vec<(usize, Dag, RunRecord)> = Vec::new();
    for (n, run) in runs.iter().enumerate() {
        match prepare(stores, run, now_ms) {
            Ok(Some((snapshot, record))) => {
                new.push((n, snapshot, record));
                outcomes.push(None);
            }
            Ok(None) => outcomes.push(Some(Ok(EnqueueOutcome::AlreadyExists))),
            Err(e) => outcomes.push(Some(Err(e))),
        }
    }
    let pairs: Vec<(&Dag, &RunRecord)> = new.iter().map(|(_, dag, rec)| (dag, rec)).collect();
    let created = stores.runs.create_attempts(&pairs);
    let mut enqueued = false;
    for ((n, snapshot, record), created) in new.iter().zip(created) {
        let item = QueueItem {
            dag_name: record.dag_name.clone(),
            run_id: record.run_id.clone(),
        };
        let queue = snapshot.queue.as_str();
        let outcome = match created {
            // A failed create may still have left a partial run behind (e.g. it failed after
            // writing), so even this step is rolled back.
            Err(source) => Err(failed(
                stores,
                queue,
                &item,
                "create the attempt for",
                source,
                false,
            )),
            Ok(_) => match stores.queue.enqueue(queue, Priority::Low, &item) {
                Err(source) => Err(failed(stores, queue, &item, "enqueue for", source, true)),
                Ok(()) => {
                    tracing::info!(
                        dag = item.dag_name.as_str(),
                        run_id = item.run_id.as_str(),
                        queue,
                        "run enqueued"
                    );
                    enqueued = true;
                    Ok(EnqueueOutcome::Enqueued)
                }
            },
        };
        outcomes[*n] = Some(outcome);
    }
    if enqueued {
        stores.enqueued.notify_one();
    }
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or(Ok(EnqueueOutcome::AlreadyExists)))
        .collect()
}

/// Checks one run and builds its snapshot and first status; `None` when the run exists.
fn prepare(
    stores: &Stores,
    run: &WebhookRun<'_>,
    now_ms: u64,
) -> Result<Option<(Dag, RunRecord)>, EnqueueError> {
    let WebhookRun {
        dag,
        run_id,
        params,
    } = *run;
    let dag_name = dag.name.as_str();
    match stores.runs.find_attempt(dag_name, run_id) {
        Ok(existing) => {
            tracing::info!(dag = dag_name, run_id, status = %existing.record.status,
                "run already exists; not enqueueing it again");
            return Ok(None);
        }
        Err(e) if e.is_not_found() => {}
        Err(source) => {
            return Err(EnqueueError::Lookup {
                dag_name: dag_name.to_owned(),
                run_id: run_id.to_owned(),
                source,
            })
        }
    }
    let runtime = dispatch_webhook_params::parse_runtime_params(params).map_err(|source| {
        EnqueueError::InvalidParams {
            dag_name: dag_name.to_owned(),
            run_id: run_id.to_owned(),
            source,
        }
    })?;
    let snapshot = resolve_params(dag, &runtime).map_err(|source| EnqueueError::Resolve {
        dag_name: dag_name.to_owned(),
        run_id: run_id.to_owned(),
        source,
    })?;
    let attempt_id = new_attempt_id();
    let record = RunRecord {
        dag_name: dag_name.to_owned(),
        run_id: run_id.to_owned(),
        log_file: stores
            .log_dir
            .join(dag_name)
            .join(run_id)
            .join(&attempt_id)
            .join("run.log"),
        attempt_id,
        status: RunStatus::Queued,
        trigger: "webhook".to_owned(),
        params: params.to_owned(),
        queued_at: Some(now_ms),
        started_at: None,
        finished_at: None,
        error: None,
        steps: Vec::new(),
        pid: None,
    };
    Ok(Some((snapshot, record)))
}

/// The error of a failed step, after rolling back what it may have left.
fn failed(
    stores: &Stores,
    queue: &str,
    item: &QueueItem,
    action: &'static str,
    source: StoreError,
    enqueued: bool,
) -> EnqueueError {
    let (dag_name, run_id) = (&item.dag_name, &item.run_id);
    match rollback(stores, queue, item, enqueued) {
        Ok(()) => EnqueueError::Store(RunStoreFailure::boxed(action, dag_name, run_id, source)),
        Err(rollback) => EnqueueError::RollbackFailed {
            action,
            dag_name: dag_name.to_owned(),
            run_id: run_id.to_owned(),
            rollback,
            source: Box::new(source),
        },
    }
}

/// Removes the queue item (when the enqueue may have written it) and the run. Both are
/// attempted; the text names whatever could not be removed.
fn rollback(stores: &Stores, queue: &str, item: &QueueItem, enqueued: bool) -> Result<(), String> {
    let mut problems = Vec::new();
    if enqueued {
        if let Err(e) = stores.queue.remove(queue, item) {
            problems.push(format!("removing the queue item: {e}"));
        }
    }
    if let Err(e) = stores.runs.remove_run(&item.dag_name, &item.run_id) {
        problems.push(format!("removing the run: {e}"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        tracing::error!(dag = %item.dag_name, run_id = %item.run_id, problems = ?problems, "enqueue rollback failed");
        Err(problems.join("; "))
    }
}
