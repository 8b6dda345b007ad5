//! The top: [`Worker`], which owns the shared state and whose [`Worker::run`] drives the pull
//! loop ([`crate::pull`]), the report loop ([`crate::report`]) and the progress uploader
//! ([`crate::progress`]) side by side, then shuts down.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{WorkerConfig, WorkerDeps};
use crate::error::WorkerError;
use crate::progress::progress_loop;
use crate::pull::pull_loop;
use crate::report::report_loop;
use crate::shared::Shared;
use crate::stats::WorkerStats;

/// Pulls dispatch jobs, runs them, reports them (the worker section of `docs/architecture.md`).
/// Build it with [`Worker::new`], read its counters with [`Worker::stats`], drive it with
/// [`Worker::run`].
pub struct Worker {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker over `deps`, not running yet.
    pub fn new(config: WorkerConfig, deps: WorkerDeps) -> Self {
        Self {
            shared: Arc::new(Shared::new(config, deps)),
        }
    }

    /// The worker's live counters (shared; keep the `Arc` to read them while it runs).
    pub fn stats(&self) -> Arc<WorkerStats> {
        self.shared.stats.clone()
    }

    /// Runs the pull loop, the report loop and the progress uploader until `cancel` fires, then shuts down: no new
    /// pull starts (a pull waiting on the server is abandoned: the hub's claim on any job it
    /// handed out in that instant lapses and the job is handed out again), accept and finish
    /// calls in progress complete or time out, and running DAG runs get
    /// [`WorkerConfig::shutdown_grace`] before the executor stops them. The tracker keeps every
    /// unfinished job, so the next start reports it.
    ///
    /// Failures inside the loops are logged and retried; they never end the loops, so this
    /// returns `Ok` once shutdown is complete. (The `Result` leaves room for start-up checks.)
    pub async fn run(self, cancel: CancellationToken) -> Result<(), WorkerError> {
        let shared = self.shared;
        let events = shared.executor.subscribe();
        let progress_events = shared.executor.subscribe();
        tracing::info!(
            long_poll_seconds = shared.config.wait_seconds(),
            idle_delay = ?shared.config.idle_delay,
            report_interval = ?shared.config.report_interval,
            "dispatch worker started"
        );
        tokio::join!(
            pull_loop(shared.clone(), &cancel),
            report_loop(&shared, events, &cancel),
            progress_loop(&shared, progress_events, &cancel),
        );
        tracing::info!(
            grace = ?shared.config.shutdown_grace,
            active_runs = shared.executor.active_runs(),
            "dispatch worker stopping; waiting for running DAG runs"
        );
        shared.executor.shutdown(shared.config.shutdown_grace).await;
        tracing::info!("dispatch worker stopped");
        Ok(())
    }
}
