//! The executor: consumes the run queues and runs each queued DAG run to a final status, its
//! steps as real processes (SPEC §5 "Steps" and "Executor").
//!
//! Main types: [`Executor::start`] (recovery, then the queue consumer) returning an
//! [`ExecutorHandle`] (stop a run, subscribe to [`RunFinished`], shut down), configured by
//! [`ExecutorConfig`].
//!
//! How a run goes: the consumer is woken by an in-process enqueue (`Stores::enqueued`) or by a
//! periodic scan (items enqueued by another process), and dequeues while the per-queue limit
//! (default 1) and the global limit (default: CPUs) allow. The run is recorded `running` (with
//! this process's pid) before any process starts; each step is `<shell> -c <command>` (default
//! `sh -e -c`) in its own process group, with stdout/stderr in `<step>.out` / `<step>.err` next
//! to the run log; steps whose dependencies are done run in parallel; the final status comes from
//! `dispatch_dag::final_status`, then the handlers of `dispatch_dag::handlers_for` run.
//!
//! Step environment, highest precedence first: the `DAG_*` variables (`DAG_NAME`, `DAG_RUN_ID`,
//! `DAG_RUN_LOG_FILE`, `DAG_RUN_STEP_NAME`, `DAG_PARAMS_JSON`, which nothing may override), step
//! `env`, DAG `env`, the resolved params, then the scheduler's own environment. `$VAR`/`${VAR}` in
//! env values expand to earlier variables; params reach commands only as environment variables,
//! never as command text. A value too long for one environment string (Linux caps each at
//! 128 KiB; GitHub payloads can be larger) is written to `<step>.<NAME>` next to the logs, `NAME`
//! is set empty and `NAME_FILE` holds the path (e.g. `WEBHOOK_PAYLOAD_FILE`).
//!
//! A step with `script` runs `<shell> [-e] <file>` with the script written to `<step>.script`
//! next to the logs; with both `script` and `command`, `command` is the interpreter and gets the
//! script path as its last argument (`<shell> [-e] -c '<command> "$1"' <shell> <file>`).
//!
//! Not for: GitHub, HTTP, or deciding what to run (that is `dispatch-worker` and
//! `dispatch-enqueue`). It installs no signal handlers: the binary calls
//! [`ExecutorHandle::shutdown`].

mod env;
mod error;
mod process;
mod run;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dispatch_dag::{Priority, QueueItem, RunStatus, StepStatus, StoreError, Stores};
use tokio::sync::{broadcast, watch, Notify};
use tokio_util::sync::CancellationToken;

pub use error::ExecutorError;

use run::{execute_run, now_ms, RunControl, StopReason};

/// The error recorded on a run that a dead scheduler process left `running`.
pub const TERMINATED_UNEXPECTEDLY: &str = "process terminated unexpectedly";

/// Executor settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutorConfig {
    /// Runs at once over all queues (default: the number of CPUs).
    pub max_concurrent_runs: usize,
    /// Runs at once per queue name; a queue not listed gets 1.
    pub queue_concurrency: HashMap<String, usize>,
    /// How often the queues are scanned for items enqueued by other processes.
    pub scan_interval: Duration,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            max_concurrent_runs: std::thread::available_parallelism().map_or(1, |n| n.get()),
            queue_concurrency: HashMap::new(),
            scan_interval: Duration::from_secs(1),
        }
    }
}

/// Sent when a run started or stopped by this executor reaches a final status (after the
/// status is written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunFinished {
    /// DAG name.
    pub dag_name: String,
    /// Run id.
    pub run_id: String,
    /// The final status.
    pub status: RunStatus,
}

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

type RunKey = (String, String);

struct ActiveRun {
    queue: String,
    control: Arc<RunControl>,
    clean_up: Duration,
}

#[derive(Default)]
struct State {
    runs: HashMap<RunKey, ActiveRun>,
    per_queue: HashMap<String, usize>,
}

struct Shared {
    config: ExecutorConfig,
    stores: Stores,
    state: Mutex<State>,
    finished: broadcast::Sender<RunFinished>,
    /// A run ended, so a queue may have room again.
    slot_freed: Notify,
    /// Cancelled by the caller's token or by shutdown: no new run starts.
    no_new_work: CancellationToken,
    active: watch::Sender<usize>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than refusing all further work would.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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
        recover(&stores)?;
        let shared = Arc::new(Shared {
            config,
            stores,
            state: Mutex::new(State::default()),
            finished: broadcast::channel(1024).0,
            slot_freed: Notify::new(),
            no_new_work: cancel.child_token(),
            active: watch::channel(0).0,
        });
        runtime.spawn(consume(shared.clone()));
        Ok(ExecutorHandle { shared })
    }
}

/// Marks runs of dead processes failed and re-enqueues queued runs missing from their queue.
fn recover(stores: &Stores) -> Result<(), ExecutorError> {
    let attempts = stores
        .runs
        .list_attempts()
        .map_err(|e| ExecutorError::Recovery(Box::new(e)))?;
    let mut queue_lists: HashMap<String, Vec<QueueItem>> = HashMap::new();
    for attempt in attempts {
        let mut record = attempt.record;
        match record.status {
            RunStatus::Running => {
                tracing::warn!(dag = %record.dag_name, run_id = %record.run_id, pid = ?record.pid,
                    "run was left running by a process that is gone; marking it failed");
                let orphans = process::kill_orphans(&record.dag_name, &record.run_id);
                if orphans > 0 {
                    tracing::warn!(dag = %record.dag_name, run_id = %record.run_id, orphans,
                        "killed step processes the dead scheduler left behind");
                }
                record.status = RunStatus::Failed;
                record.error = Some(TERMINATED_UNEXPECTEDLY.to_owned());
                record.finished_at = Some(now_ms());
                for step in &mut record.steps {
                    match step.status {
                        StepStatus::Running => {
                            step.status = StepStatus::Failed;
                            step.error = Some(TERMINATED_UNEXPECTEDLY.to_owned());
                            step.finished_at = record.finished_at;
                        }
                        StepStatus::NotStarted => step.status = StepStatus::Skipped,
                        _ => {}
                    }
                }
                if let Err(e) = stores.runs.write_status(&record) {
                    tracing::error!(dag = %record.dag_name, run_id = %record.run_id, error = %e,
                        "failed to mark an interrupted run failed");
                }
            }
            RunStatus::Queued => {
                let queue = attempt.dag.queue.clone();
                let item = QueueItem {
                    dag_name: record.dag_name.clone(),
                    run_id: record.run_id.clone(),
                };
                let listed =
                    match queue_lists.get(&queue) {
                        Some(items) => items,
                        None => {
                            let items = stores.queue.list(&queue).map_err(|source| {
                                ExecutorError::Store {
                                    action: "list the queue of",
                                    dag_name: item.dag_name.clone(),
                                    run_id: item.run_id.clone(),
                                    source: Box::new(source),
                                }
                            })?;
                            queue_lists.entry(queue.clone()).or_insert(items)
                        }
                    };
                if !listed.contains(&item) {
                    tracing::warn!(dag = %item.dag_name, run_id = %item.run_id, %queue,
                        "queued run is missing from its queue; enqueueing it again");
                    stores
                        .queue
                        .enqueue(&queue, Priority::Low, &item)
                        .map_err(|source| ExecutorError::Store {
                            action: "re-enqueue",
                            dag_name: item.dag_name.clone(),
                            run_id: item.run_id.clone(),
                            source: Box::new(source),
                        })?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The queue consumer: one pass per wake-up (enqueue, a run ended, or the scan timer).
async fn consume(shared: Arc<Shared>) {
    let mut scan = tokio::time::interval(shared.config.scan_interval);
    scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        match dispatch_pass(&shared) {
            Ok(0) => {}
            Ok(started) => tracing::debug!(started, "started runs"),
            Err(e) => tracing::warn!(error = %e, "queue pass failed; retrying at the next wake-up"),
        }
        tokio::select! {
            () = shared.no_new_work.cancelled() => break,
            () = shared.stores.enqueued.notified() => {}
            () = shared.slot_freed.notified() => {}
            _ = scan.tick() => {}
        }
    }
    tracing::debug!("queue consumer stopped");
}

/// Starts as many queued runs as the limits allow; returns how many it started.
fn dispatch_pass(shared: &Arc<Shared>) -> Result<usize, StoreError> {
    let stores = &shared.stores;
    let mut started = 0;
    for queue in stores.queue.queues()? {
        let limit = shared
            .config
            .queue_concurrency
            .get(&queue)
            .copied()
            .unwrap_or(1);
        loop {
            if shared.no_new_work.is_cancelled() {
                return Ok(started);
            }
            // The lock is held from dequeue to registration so that `stop` sees the run either
            // in the queue or among the active runs, never in between.
            let mut state = shared.state();
            if state.runs.len() >= shared.config.max_concurrent_runs {
                return Ok(started);
            }
            if state.per_queue.get(&queue).copied().unwrap_or(0) >= limit {
                break;
            }
            let Some(item) = stores.queue.dequeue(&queue)? else {
                break;
            };
            let key = (item.dag_name.clone(), item.run_id.clone());
            if state.runs.contains_key(&key) {
                tracing::warn!(dag = %key.0, run_id = %key.1, "dropping duplicate queue item of an active run");
                continue;
            }
            let attempt = match stores.runs.find_attempt(&item.dag_name, &item.run_id) {
                Ok(attempt) => attempt,
                Err(e) if e.is_not_found() => {
                    tracing::warn!(dag = %key.0, run_id = %key.1, "dropping queue item of a run that does not exist");
                    continue;
                }
                Err(e) => {
                    // Put it back in front, so a transient read error does not lose the run.
                    if let Err(e) = stores.queue.enqueue(&queue, Priority::High, &item) {
                        tracing::error!(dag = %key.0, run_id = %key.1, error = %e,
                            "failed to put a queue item back; recovery re-enqueues it at the next start");
                    }
                    return Err(e);
                }
            };
            if attempt.record.status != RunStatus::Queued {
                tracing::warn!(dag = %key.0, run_id = %key.1, status = %attempt.record.status,
                    "dropping queue item of a run that is not queued");
                continue;
            }
            let control = Arc::new(RunControl::default());
            state.runs.insert(
                key.clone(),
                ActiveRun {
                    queue: queue.clone(),
                    control: control.clone(),
                    clean_up: Duration::from_secs(attempt.dag.max_clean_up_time_sec),
                },
            );
            *state.per_queue.entry(queue.clone()).or_default() += 1;
            shared.active.send_replace(state.runs.len());
            drop(state);
            tokio::spawn(run_one(shared.clone(), key, attempt, control));
            started += 1;
        }
    }
    Ok(started)
}

/// Unregisters a run when its task ends, however it ends.
struct Registration {
    shared: Arc<Shared>,
    key: RunKey,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut state = self.shared.state();
        if let Some(run) = state.runs.remove(&self.key) {
            if let Some(n) = state.per_queue.get_mut(&run.queue) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    state.per_queue.remove(&run.queue);
                }
            }
        }
        self.shared.active.send_replace(state.runs.len());
        drop(state);
        self.shared.slot_freed.notify_one();
    }
}

async fn run_one(
    shared: Arc<Shared>,
    key: RunKey,
    attempt: dispatch_dag::Attempt,
    control: Arc<RunControl>,
) {
    let registration = Registration {
        shared: shared.clone(),
        key,
    };
    let record = execute_run(&shared.stores, attempt, &control).await;
    drop(registration);
    tracing::info!(dag = %record.dag_name, run_id = %record.run_id, status = %record.status, "run finished");
    // Nobody listening is fine.
    let _ = shared.finished.send(RunFinished {
        dag_name: record.dag_name,
        run_id: record.run_id,
        status: record.status,
    });
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
        let store_err = |action, source| ExecutorError::Store {
            action,
            dag_name: dag_name.to_owned(),
            run_id: run_id.to_owned(),
            source: Box::new(source),
        };
        let attempt = match stores.runs.find_attempt(dag_name, run_id) {
            Ok(attempt) => attempt,
            Err(e) if e.is_not_found() => return Ok(false),
            Err(e) => return Err(store_err("look up", e)),
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
