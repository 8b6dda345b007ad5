//! The executor: consumes the run queues and runs each queued DAG run to a final status, its
//! steps as real processes (the DAG format and run lifecycle: `docs/dag-format.md`).
//!
//! Main types: [`Executor::start`] (recovery, then the queue consumer) returning an
//! [`ExecutorHandle`] (stop a run, subscribe to [`RunFinished`], shut down), configured by
//! [`ExecutorConfig`].
//!
//! How a run goes: the consumer is woken by an in-process enqueue (`Stores::enqueued`) or by a
//! periodic scan (items enqueued by another process), and dequeues while the per-queue limit
//! (default 1) and the global limit (default: CPUs) allow. The run is recorded `running` (with
//! this process's pid) before any process starts. Then, before the first step: the DAG's
//! working directory is expanded (`$VAR`, `~`) and created, secrets are read (`env` and `file`
//! providers), dotenv files loaded, params without a caller's value get their `eval`, and every
//! declared param is checked (type, `enum`, `required`, `pattern`, bounds); a failure there ends
//! the run `failed` with that error and no step runs. DAG-level preconditions not met end it
//! `aborted` (its abort handler runs); `delay_sec` waits.
//!
//! Steps start when their `depends` (complete as the loader made them) allow, in parallel, at
//! most `max_active_steps` at once. A step: its working directory (expanded, relative to the
//! DAG's, created), its preconditions (not met: `skipped`), then attempts of its action, each in
//! its own process group: one command, a `run` list (in order, the first failure ends it), a
//! script (through its `#!` interpreter unless the step sets `shell`; else the step's shell,
//! the DAG's, or `sh -e`), with the positional params as its `$1`, `$2`, ...; or a sub-DAG
//! call (a child run per `parallel` item, recorded in the run store with the trigger
//! `subdag`). Failed attempts are retried per `retry_policy`, runs
//! repeated per `repeat_policy` (delays on `tokio::time`); `continue_on` decides whether a
//! failure lets the run go on. Output goes through the executor into `<step>.out` /
//! `<step>.err` next to the run log (and the `stdout` / `stderr` files), with every secret value
//! replaced by `*******`; `output: VAR` captures stdout, `outputs` are read from a fresh
//! `DAGU_OUTPUT_FILE` per attempt; both are kept in the step record (masked) for the steps
//! after it. The final status comes from `dispatch_dag::final_status`, then the handlers of
//! `dispatch_dag::handlers_for` run (with `DAG_RUN_STATUS`).
//!
//! Step environment, later layers overriding earlier ones: the scheduler's own environment,
//! the dotenv files, the resolved params, the variables of the references the loader rewrote
//! (`Binding`s of the DAG and the step: params, step outputs and fields, `output:` JSON paths,
//! the run context), the secrets, the DAG's `env`, the `output:` variables of the steps that
//! have ended, the step's `env`, then the executor's own variables, which nothing may override
//! (`DAG_NAME`, `DAG_RUN_ID`, `DAG_RUN_LOG_FILE`, `DAG_RUN_STEP_NAME`,
//! `DAG_RUN_STEP_STDOUT_FILE`, `DAG_RUN_STEP_STDERR_FILE`, `DAGU_OUTPUT_FILE`, `DAG_PARAMS_JSON`
//! and `DAGU_PARAMS_JSON`). `$VAR`/`${VAR}` in env values expand to earlier variables. Values
//! reach commands only as environment variables, never as command text: `working_dir`,
//! stream files, dotenv paths, compared conditions and sub-DAG params are expanded by the
//! executor, commands by the shell. A value too long for one environment string (Linux caps
//! each at 128 KiB; GitHub payloads can be larger) is written to `<step>.<NAME>` next to the
//! logs, `NAME` is set empty and `NAME_FILE` holds the path (e.g. `WEBHOOK_PAYLOAD_FILE`).
//!
//! Not for: GitHub, HTTP, or deciding what to run (that is `dispatch-worker` and
//! `dispatch-enqueue`). It installs no signal handlers and reads no configuration from the
//! environment (it reads the variables a DAG names: `$VAR` in env values, `env` secrets): the
//! binary owns signals and cancels the token it passes to [`Executor::start`] (which stops new
//! runs only), and whoever drives the executor calls [`ExecutorHandle::shutdown`] to end the
//! runs in progress; in the scheduler that is `dispatch-worker`'s `Worker::run`, once its pull
//! and report loops stop.

// Imports run one way, from the bottom up: the leaves (`error`, `mask`, `env`, `outputs`, `policy`,
// `params`, `invocation`, `context`, `process`) ← `conditions` ← `prepare`, `run_cx` (what one
// run's parts share), `step_job` (what a step is handed) ← `subdag` ← `step` ← `run` (one run) ←
// `shared` (state the handle and the consumer share) ← `recovery`, `consumer` ← this file (the
// public face). A sub-DAG call reaches `run` again through the function `run_cx::RunCx::run_child`,
// not an import.
mod conditions;
mod consumer;
mod context;
mod env;
mod error;
mod foreach;
mod invocation;
mod mask;
mod outputs;
mod params;
mod policy;
mod prepare;
mod process;
mod recovery;
mod run;
mod run_cx;
mod shared;
mod step;
mod step_job;
mod subdag;

use std::sync::Arc;
use std::time::Duration;

use dispatch_dag::{QueueItem, RunStatus, RunStoreFailure, Stores};
use dispatch_util::now_ms;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub use error::ExecutorError;
pub use mask::{Masker, Secrets, MASK};
pub use prepare::secret_values;
pub use recovery::TERMINATED_UNEXPECTEDLY;
pub use shared::{ExecutorConfig, RunFinished};

use run_cx::{RunControl, StopReason};
use shared::Shared;

/// Starts executors; see [`Executor::start`].
#[derive(Debug)]
pub struct Executor;

/// Controls a started executor. Cheap to clone; every clone controls the same executor.
#[derive(Clone)]
pub struct ExecutorHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ExecutorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutorHandle")
            .field("config", &self.shared.config)
            .field("active_runs", &self.active_runs())
            .finish_non_exhaustive()
    }
}

impl Executor {
    /// Recovers what a previous process left behind, then starts consuming the queues.
    ///
    /// Recovery: every run recorded `running` becomes `failed` with the error
    /// [`TERMINATED_UNEXPECTEDLY`] (this executor has not started anything yet, so a `running`
    /// record can only come from a process that is gone, even one that had the same pid, as
    /// happens in containers); every `queued` run whose item is missing from its queue (a crash
    /// between dequeue and the `running` write) is enqueued again; items still queued simply run.
    ///
    /// `cancel` stops the consumer (no new run starts); runs in progress go on until
    /// [`ExecutorHandle::shutdown`] stops them. Must be called within a Tokio runtime.
    pub fn start(
        config: ExecutorConfig,
        stores: Stores,
        cancel: CancellationToken,
    ) -> Result<ExecutorHandle, ExecutorError> {
        if config.max_concurrent_runs == 0 {
            return Err(ExecutorError::InvalidConfig(
                "max_concurrent_runs must be at least 1".into(),
            ));
        }
        if let Some((queue, _)) = config.queue_concurrency.iter().find(|(_, n)| **n == 0) {
            return Err(ExecutorError::InvalidConfig(format!(
                "concurrency of queue `{queue}` must be at least 1"
            )));
        }
        if config.scan_interval.is_zero() {
            return Err(ExecutorError::InvalidConfig(
                "scan_interval must be greater than zero".into(),
            ));
        }
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| ExecutorError::NoRuntime)?;
        recovery::recover(&stores)?;
        let shared = Arc::new(Shared::new(config, stores, &cancel));
        runtime.spawn(consumer::consume(shared.clone()));
        Ok(ExecutorHandle { shared })
    }
}

impl ExecutorHandle {
    /// Stops a run. A run active in this executor gets SIGTERM to each running step's process
    /// group and SIGKILL after the DAG's `max_clean_up_time_sec`, and ends `aborted` (its abort
    /// and exit handlers still run). A queued run is removed from its queue and marked
    /// `aborted`. Returns `false` when the run is not active here (unknown, final, or left
    /// `running` by another process).
    pub fn stop(&self, dag_name: &str, run_id: &str) -> Result<bool, ExecutorError> {
        let stores = &self.shared.stores;
        let state = self.shared.state();
        if let Some(run) = state.runs.get(&(dag_name.to_owned(), run_id.to_owned())) {
            run.control.cancel(StopReason::Stopped);
            return Ok(true);
        }
        let store_err = |action, source| RunStoreFailure::boxed(action, dag_name, run_id, source);
        let attempt = match stores.runs.find_attempt(dag_name, run_id) {
            Ok(attempt) => attempt,
            Err(e) if e.is_not_found() => return Ok(false),
            Err(e) => return Err(store_err("look up", e).into()),
        };
        if attempt.record.status != RunStatus::Queued {
            return Ok(false);
        }
        let item = QueueItem {
            dag_name: dag_name.to_owned(),
            run_id: run_id.to_owned(),
        };
        stores
            .queue
            .remove(&attempt.dag.queue, &item)
            .map_err(|e| store_err("remove from the queue", e))?;
        let mut record = attempt.record;
        record.status = RunStatus::Aborted;
        record.finished_at = Some(now_ms());
        record.error = Some("run stopped before it started".to_owned());
        stores
            .runs
            .write_status(&record)
            .map_err(|e| store_err("write the status of", e))?;
        drop(state);
        let _ = self.shared.finished.send(RunFinished {
            dag_name: record.dag_name,
            run_id: record.run_id,
            status: record.status,
        });
        Ok(true)
    }

    /// Receives a [`RunFinished`] for every run this executor finishes (or stops while queued)
    /// from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<RunFinished> {
        self.shared.finished.subscribe()
    }

    /// Runs in progress in this executor.
    pub fn active_runs(&self) -> usize {
        *self.shared.active.borrow()
    }

    /// The runs in progress in this executor, each named as a queue item names it (DAG name and
    /// run id): from their dequeue until they end. A run just dequeued may not be recorded
    /// `running` yet.
    pub fn active_run_items(&self) -> Vec<QueueItem> {
        self.shared
            .state()
            .runs
            .keys()
            .map(|(dag_name, run_id)| QueueItem {
                dag_name: dag_name.clone(),
                run_id: run_id.clone(),
            })
            .collect()
    }

    /// Waits until no run is in progress, at most `timeout`; returns whether that happened.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let mut active = self.shared.active.subscribe();
        let idle = tokio::time::timeout(timeout, active.wait_for(|n| *n == 0))
            .await
            .is_ok();
        idle
    }

    /// Stops taking new work, waits up to `grace` for the runs in progress, then stops them
    /// (they end `aborted`); handlers still running after the clean-up time are stopped too.
    /// Queued runs stay queued for the next start.
    pub async fn shutdown(&self, grace: Duration) {
        self.shared.no_new_work.cancel();
        if self.wait_idle(grace).await {
            return;
        }
        let clean_up = self.cancel_all(|control| control.cancel(StopReason::Shutdown));
        let margin = Duration::from_secs(1);
        if self.wait_idle(clean_up + margin).await {
            return;
        }
        let clean_up = self.cancel_all(|control| control.hard_stop.cancel());
        if !self.wait_idle(clean_up + margin * 5).await {
            tracing::warn!(
                active = self.active_runs(),
                "runs still in progress after shutdown"
            );
        }
    }

    /// Applies `f` to every active run; returns the longest clean-up time among them.
    fn cancel_all(&self, f: impl Fn(&RunControl)) -> Duration {
        let state = self.shared.state();
        let mut longest = Duration::ZERO;
        for run in state.runs.values() {
            f(&run.control);
            longest = longest.max(run.clean_up);
        }
        longest
    }
}
