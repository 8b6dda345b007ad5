//! The stores: records and traits (`contract`), the file-backed implementations (one file each),
//! and the bundle [`Stores`] that opens one of each.
//!
//! Imports run one way: `fsutil` and `contract` (leaves) ← `dags`, `runs`, `queue`, `retention`
//! (which works through the traits) ← this file.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::StoreError;

mod contract;
mod dags;
mod fsutil;
mod queue;
mod retention;
mod runs;
mod sub_runs;

pub use contract::*;
pub use dags::FileDagStore;
pub use queue::FileQueueStore;
pub use retention::{prune_finished_runs, PruneReport, DEFAULT_HIST_RETENTION_DAYS};
pub use runs::{new_attempt_id, FileRunStore};
pub use sub_runs::{steps_with_sub_runs, MAX_SUB_DEPTH};

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

impl FileStoreConfig {
    /// The layout of a home directory: `<home>/dags`, `<home>/data` and `<home>/logs` (the
    /// scheduler's defaults).
    pub fn in_home(home: &std::path::Path) -> FileStoreConfig {
        FileStoreConfig {
            dags_dir: home.join("dags"),
            data_dir: home.join("data"),
            log_dir: home.join("logs"),
        }
    }
}

/// Choices of the file-backed stores besides where they live; `Default` is what
/// [`Stores::open_files`] uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileStoreOptions {
    /// How long a queue item this process enqueues is kept in memory only before its file is
    /// written ([`FileQueueStore::open_with_write_delay`]); zero writes it at once. Only for a
    /// process that consumes the queues it fills and has the data directory to itself.
    pub queue_write_delay: Duration,
}

impl Stores {
    /// File-backed stores (layout in the crate docs); creates the directories that are missing.
    pub fn open_files(config: FileStoreConfig) -> Result<Stores, StoreError> {
        Self::open_files_with(config, FileStoreOptions::default())
    }

    /// [`Stores::open_files`] with `options`.
    pub fn open_files_with(
        config: FileStoreConfig,
        options: FileStoreOptions,
    ) -> Result<Stores, StoreError> {
        fsutil::create_dir_durable(&config.dags_dir)?;
        fsutil::create_dir_durable(&config.log_dir)?;
        let runs = FileRunStore::open(config.data_dir.join("runs"))?;
        let queue = FileQueueStore::open_with_write_delay(
            config.data_dir.join("queue"),
            options.queue_write_delay,
        )?;
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
