//! What every store backend agrees on: the records a run store keeps, the queue's items and
//! priorities, and the three store traits (a second backend must be able to slot in).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{Dag, RunStatus, StepStatus, StoreError};

/// Record of one step inside a run status.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StepRecord {
    /// Step name (handlers are recorded as `on_success`, `on_failure`, `on_abort`, `on_exit`).
    pub name: String,
    /// Step status.
    pub status: StepStatus,
    /// Exit code when the process exited (124 on step timeout).
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Error text, e.g. "exit status 1" or "step timed out after 5s".
    #[serde(default)]
    pub error: Option<String>,
    /// Unix milliseconds.
    #[serde(default)]
    pub started_at: Option<u64>,
    /// Unix milliseconds.
    #[serde(default)]
    pub finished_at: Option<u64>,
    /// Path of the step's stdout file.
    #[serde(default)]
    pub stdout: PathBuf,
    /// Path of the step's stderr file.
    #[serde(default)]
    pub stderr: PathBuf,
    /// The declared outputs the step published (`outputs`), name → value, with secret values
    /// masked. Kept so that the run record shows what later steps were given.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, String>,
    /// `output: VAR`: the captured stdout the variable was set to (secret values masked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Times the step's action was started (retries and repeats included); 0 when it never
    /// started.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u32,
    /// Runs started by a sub-DAG call, as `<dag>/<run_id>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sub_runs: Vec<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The latest status of one attempt of a run, as written by enqueue and the executor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// DAG name.
    pub dag_name: String,
    /// Run id (`[A-Za-z0-9_-]{1,64}`).
    pub run_id: String,
    /// Attempt id, unique within the run.
    pub attempt_id: String,
    /// Run status.
    pub status: RunStatus,
    /// What started it (`webhook`).
    pub trigger: String,
    /// The runtime param string the run was enqueued with.
    pub params: String,
    /// Unix milliseconds.
    #[serde(default)]
    pub queued_at: Option<u64>,
    /// Unix milliseconds.
    #[serde(default)]
    pub started_at: Option<u64>,
    /// Unix milliseconds.
    #[serde(default)]
    pub finished_at: Option<u64>,
    /// The run's log file; step output files sit next to it.
    pub log_file: PathBuf,
    /// First error of the run, if any.
    #[serde(default)]
    pub error: Option<String>,
    /// Steps (and handlers that ran), in execution order of the DAG.
    #[serde(default)]
    pub steps: Vec<StepRecord>,
    /// Pid of the scheduler process that marked it running (recovery uses it).
    #[serde(default)]
    pub pid: Option<u32>,
}

/// One attempt of a run: the DAG snapshot taken at enqueue and the latest status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// DAG snapshot (with `resolved_params` filled in); later edits of the YAML do not change it.
    pub dag: Dag,
    /// Latest status.
    pub record: RunRecord,
}

/// A queued run.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct QueueItem {
    /// DAG name.
    pub dag_name: String,
    /// Run id.
    pub run_id: String,
}

/// Queue priority; high is served before low, FIFO within each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Served first.
    High,
    /// Served after every high item (webhook runs use this).
    Low,
}

/// Loads DAG definitions by name.
pub trait DagStore: Send + Sync {
    /// Loads the DAG named `name`. A bad name is rejected before any filesystem access;
    /// a missing DAG is [`StoreError::NotFound`].
    fn load(&self, name: &str) -> Result<Dag, StoreError>;
    /// Every DAG file in the store, each loaded or with its precise error.
    fn list(&self) -> Result<Vec<Result<Dag, StoreError>>, StoreError>;
}

/// Runs and their attempts.
pub trait RunStore: Send + Sync {
    /// Latest attempt of `(dag_name, run_id)`; [`StoreError::NotFound`] when no such run.
    fn find_attempt(&self, dag_name: &str, run_id: &str) -> Result<Attempt, StoreError>;
    /// Creates a new attempt for the run with the DAG snapshot and the first status record.
    fn create_attempt(&self, dag: &Dag, record: &RunRecord) -> Result<Attempt, StoreError>;
    /// [`RunStore::create_attempt`] for several runs, with one result per run in order. An
    /// implementation may make them durable together (fewer syncs); each `Ok` is as durable as
    /// one of `create_attempt`.
    fn create_attempts(&self, runs: &[(&Dag, &RunRecord)]) -> Vec<Result<Attempt, StoreError>> {
        runs.iter()
            .map(|(dag, record)| self.create_attempt(dag, record))
            .collect()
    }
    /// Replaces the status of the attempt named by `record` (atomic and durable).
    fn write_status(&self, record: &RunRecord) -> Result<(), StoreError>;
    /// Removes the run and all its attempts; Ok when it did not exist.
    fn remove_run(&self, dag_name: &str, run_id: &str) -> Result<(), StoreError>;
    /// Latest attempt of every run (used by recovery and listings).
    fn list_attempts(&self) -> Result<Vec<Attempt>, StoreError>;
}

/// Named queues with priorities.
///
/// Contract: a queue is an index of the `queued` runs, not their durable record. Among live
/// processes no item is lost or served twice, but an implementation need not make single
/// operations survive a power cut: after one, an item may be missing (recovery re-enqueues every
/// `queued` run whose item is missing) or come back after its dequeue (the consumer drops items
/// whose run is not `queued`). The [`RunStore`] is what must be durable.
pub trait QueueStore: Send + Sync {
    /// Appends `item` to `queue` at `priority`.
    fn enqueue(&self, queue: &str, priority: Priority, item: &QueueItem) -> Result<(), StoreError>;
    /// Removes and returns the next item of `queue` (high before low, FIFO within), if any.
    fn dequeue(&self, queue: &str) -> Result<Option<QueueItem>, StoreError>;
    /// Removes `item` from `queue` wherever it is; returns whether it was there.
    fn remove(&self, queue: &str, item: &QueueItem) -> Result<bool, StoreError>;
    /// Items of `queue` in service order.
    fn list(&self, queue: &str) -> Result<Vec<QueueItem>, StoreError>;
    /// Names of the queues that hold at least one item.
    fn queues(&self) -> Result<Vec<String>, StoreError>;
}
