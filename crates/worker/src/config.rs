//! The worker's configuration and the parts it is built from.

use std::sync::Arc;
use std::time::Duration;

use dispatch_dag::Stores;
use dispatch_executor::ExecutorHandle;
use dispatch_license::{CloudClient, CredentialSource};
use dispatch_tracker::Tracker;

/// Longest long-poll wait sent to the cloud (`wait_seconds` is 0–60, see `docs/protocol.md`).
pub const MAX_LONG_POLL: Duration = Duration::from_secs(60);

/// Timing of the worker's loops. `Default` gives the values the scheduler runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerConfig {
    /// Wait before the next pull after an empty answer the server did not hold (default 10 s).
    pub idle_delay: Duration,
    /// Time between report passes (default 10 s); a run reaching a final status triggers a pass
    /// at once.
    pub report_interval: Duration,
    /// Long-poll wait asked of the server, sent as whole `wait_seconds` capped at
    /// [`MAX_LONG_POLL`] (default 30 s; zero turns long-polling off).
    pub long_poll: Duration,
    /// First delay after a failed call (default 1 s).
    pub backoff_min: Duration,
    /// Longest delay between retries (default 60 s).
    pub backoff_max: Duration,
    /// How often to look again for machine credentials while there are none (default 5 s).
    pub credentials_recheck: Duration,
    /// How long running DAG runs may go on after cancellation before they are stopped
    /// (default 30 s).
    pub shutdown_grace: Duration,
    /// Jobs taken in (tracked, enqueued, accepted) at once; the pull loop waits for a free slot
    /// before pulling (default 16; 0 counts as 1).
    pub intake_concurrency: usize,
    /// Pulls in flight at once while jobs keep coming (default 1; 0 counts as 1). The extra
    /// pullers wake when a pull returns a job and pull without long-polling until one comes back
    /// empty, so they cost nothing while the queue is idle; they let one pull's round trip overlap
    /// the next when a burst is waiting.
    pub pull_concurrency: usize,
    /// Jobs asked for in one pull by the burst pullers when the cloud serves the `pull-batch`
    /// extension (default 32, at most 64; 0 or 1 keeps one-job pulls). The jobs of one answer are
    /// taken in together: their tracker records, run files and accepts share writes, fsyncs and
    /// calls. The intake slots are raised to four times this when the first batch is pulled.
    pub pull_batch_size: usize,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            idle_delay: Duration::from_secs(10),
            report_interval: Duration::from_secs(10),
            long_poll: Duration::from_secs(30),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            credentials_recheck: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(30),
            intake_concurrency: 16,
            pull_concurrency: 1,
            pull_batch_size: 32,
        }
    }
}

impl WorkerConfig {
    /// `wait_seconds` for a pull request: whole seconds of [`WorkerConfig::long_poll`], at most 60.
    pub(crate) fn wait_seconds(&self) -> u32 {
        let secs = self.long_poll.min(MAX_LONG_POLL).as_secs();
        u32::try_from(secs).unwrap_or(60)
    }
}

/// What the worker works with. The scheduler binary builds these and hands them over.
pub struct WorkerDeps {
    /// Cloud client for pull / accept / finish.
    pub client: CloudClient,
    /// Where the machine credentials come from (the license manager); asked on every pass.
    pub credentials: Arc<dyn CredentialSource>,
    /// Durable record of the jobs this scheduler owns.
    pub tracker: Arc<Tracker>,
    /// DAG, run and queue stores.
    pub stores: Stores,
    /// The executor running the enqueued runs; shut down by the worker when it stops.
    pub executor: ExecutorHandle,
}

impl std::fmt::Debug for WorkerDeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerDeps")
            .field("cloud", &self.client.base_url())
            .field("tracker", &self.tracker.dir())
            .finish_non_exhaustive()
    }
}
