//! What the executor handle and the queue consumer share: the settings, the active runs and their
//! per-queue counts, the wake-ups and the channel of finished runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dispatch_dag::{RunStatus, Stores};
use tokio::sync::{broadcast, watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::run_cx::RunControl;

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

/// A run: DAG name and run id.
pub(crate) type RunKey = (String, String);

/// A run this executor started and has not seen end.
pub(crate) struct ActiveRun {
    /// The queue it came from (its slot there is freed when it ends).
    pub(crate) queue: String,
    pub(crate) control: Arc<RunControl>,
    /// The DAG's `max_clean_up_time_sec`.
    pub(crate) clean_up: Duration,
}

/// The active runs, guarded by [`Shared::state`].
#[derive(Default)]
pub(crate) struct State {
    pub(crate) runs: HashMap<RunKey, ActiveRun>,
    /// Active runs per queue; a queue with none has no entry.
    pub(crate) per_queue: HashMap<String, usize>,
}

/// One per executor, behind an `Arc` held by every handle, the consumer and each run's task.
pub(crate) struct Shared {
    pub(crate) config: ExecutorConfig,
    pub(crate) stores: Stores,
    pub(crate) state: Mutex<State>,
    pub(crate) finished: broadcast::Sender<RunFinished>,
    /// A run ended, so a queue may have room again.
    pub(crate) slot_freed: Notify,
    /// Cancelled by the caller's token or by shutdown: no new run starts.
    pub(crate) no_new_work: CancellationToken,
    /// The number of active runs, for `wait_idle`.
    pub(crate) active: watch::Sender<usize>,
}

impl Shared {
    /// A fresh executor's state; `cancel` (the caller's token) also stops new work.
    pub(crate) fn new(
        config: ExecutorConfig,
        stores: Stores,
        cancel: &CancellationToken,
    ) -> Shared {
        Shared {
            config,
            stores,
            state: Mutex::new(State::default()),
            finished: broadcast::channel(1024).0,
            slot_freed: Notify::new(),
            no_new_work: cancel.child_token(),
            active: watch::channel(0).0,
        }
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than refusing all further work would.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
