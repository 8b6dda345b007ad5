//! The queue consumer: dequeues runs while the per-queue and global limits allow, and runs each in
//! a task of its own that unregisters it when it ends.

use std::sync::Arc;
use std::time::Duration;

use dispatch_dag::{Priority, RunStatus, StoreError};

use crate::run::execute_run;
use crate::run_cx::{Lineage, RunControl};
use crate::shared::{ActiveRun, RunFinished, RunKey, Shared};

/// The queue consumer: one pass per wake-up (enqueue, a run ended, or the scan timer).
pub(crate) async fn consume(shared: Arc<Shared>) {
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
    let record = execute_run(shared.stores.clone(), attempt, control, Lineage::default()).await;
    drop(registration);
    tracing::info!(dag = %record.dag_name, run_id = %record.run_id, status = %record.status, "run finished");
    // Nobody listening is fine.
    let _ = shared.finished.send(RunFinished {
        dag_name: record.dag_name,
        run_id: record.run_id,
        status: record.status,
    });
}
