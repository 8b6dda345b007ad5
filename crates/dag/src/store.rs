//! Store traits (a second backend must be able to slot in) and the bundle [`Stores`].
//! The file-backed implementations live in submodules.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{Dag, RunStatus, StepStatus, StoreError};

mod dags;
mod fsutil;
mod queue;
mod runs;

pub use dags::FileDagStore;
pub use queue::FileQueueStore;
pub use runs::FileRunStore;

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
    /// a missing DAG is [`crate::StoreError::NotFound`].
    fn load(&self, name: &str) -> Result<Dag, crate::StoreError>;
    /// Every DAG file in the store, each loaded or with its precise error.
    fn list(&self) -> Result<Vec<Result<Dag, crate::StoreError>>, crate::StoreError>;
}

/// Runs and their attempts.
pub trait RunStore: Send + Sync {
    /// Latest attempt of `(dag_name, run_id)`; [`crate::StoreError::NotFound`] when no such run.
    fn find_attempt(&self, dag_name: &str, run_id: &str) -> Result<Attempt, crate::StoreError>;
    /// Creates a new attempt for the run with the DAG snapshot and the first status record.
    fn create_attempt(&self, dag: &Dag, record: &RunRecord) -> Result<Attempt, crate::StoreError>;
    /// Replaces the status of the attempt named by `record` (atomic and durable).
    fn write_status(&self, record: &RunRecord) -> Result<(), crate::StoreError>;
    /// Removes the run and all its attempts; Ok when it did not exist.
    fn remove_run(&self, dag_name: &str, run_id: &str) -> Result<(), crate::StoreError>;
    /// Latest attempt of every run (used by recovery and listings).
    fn list_attempts(&self) -> Result<Vec<Attempt>, crate::StoreError>;
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
    fn enqueue(
        &self,
        queue: &str,
        priority: Priority,
        item: &QueueItem,
    ) -> Result<(), crate::StoreError>;
    /// Removes and returns the next item of `queue` (high before low, FIFO within), if any.
    fn dequeue(&self, queue: &str) -> Result<Option<QueueItem>, crate::StoreError>;
    /// Removes `item` from `queue` wherever it is; returns whether it was there.
    fn remove(&self, queue: &str, item: &QueueItem) -> Result<bool, crate::StoreError>;
    /// Items of `queue` in service order.
    fn list(&self, queue: &str) -> Result<Vec<QueueItem>, crate::StoreError>;
    /// Names of the queues that hold at least one item.
    fn queues(&self) -> Result<Vec<String>, crate::StoreError>;
}

/// One of each store, plus the in-process wake-up for the executor and the log directory.
#[derive(Clone)]
pub struct Stores {
    /// DAG definitions.
    pub dags: Arc<dyn DagStore>,
    /// Runs and attempts.
    pub runs: Arc<dyn RunStore>,
    /// Queues.
    pub queue: Arc<dyn QueueStore>,
    /// Notified after every successful enqueue in this process; the executor waits on it.
    pub enqueued: Arc<tokio::sync::Notify>,
    /// Root of run logs: a run's files go under `<log_dir>/<dag>/<run_id>/`.
    pub log_dir: PathBuf,
}

/// Where the file-backed stores live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStoreConfig {
    /// DAG YAML files.
    pub dags_dir: PathBuf,
    /// Runs (`<data_dir>/runs/`) and queues (`<data_dir>/queue/`).
    pub data_dir: PathBuf,
    /// Run logs (`<log_dir>/<dag>/<run_id>/`).
    pub log_dir: PathBuf,
}

impl Stores {
    /// File-backed stores (layout in the crate docs); creates the directories that are missing.
    pub fn open_files(config: FileStoreConfig) -> Result<Stores, StoreError> {
        fsutil::create_dir_durable(&config.dags_dir)?;
        fsutil::create_dir_durable(&config.log_dir)?;
        let runs = FileRunStore::open(config.data_dir.join("runs"))?;
        let queue = FileQueueStore::open(config.data_dir.join("queue"))?;
        Ok(Stores {
            dags: Arc::new(FileDagStore::new(config.dags_dir)),
            runs: Arc::new(runs),
            queue: Arc::new(queue),
            enqueued: Arc::new(tokio::sync::Notify::new()),
            log_dir: config.log_dir,
        })
    }
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores")
            .field("log_dir", &self.log_dir)
            .finish_non_exhaustive()
    }
}

/// Unix nanoseconds, strictly increasing within this process (also across threads and when the
/// wall clock steps back), so names built from it sort in creation order and never repeat.
pub(crate) fn monotonic_nanos() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}
