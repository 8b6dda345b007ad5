//! Start-up recovery: what happens to the runs a previous process left behind.

use std::collections::HashMap;

use dispatch_dag::{Priority, QueueItem, RunStatus, RunStoreFailure, StepStatus, Stores};
use dispatch_util::now_ms;

use crate::error::ExecutorError;
use crate::process;

/// The error recorded on a run that a dead scheduler process left `running`.
pub const TERMINATED_UNEXPECTEDLY: &str = "process terminated unexpectedly";

/// Marks runs of dead processes failed and re-enqueues queued runs missing from their queue.
pub(crate) fn recover(stores: &Stores) -> Result<(), ExecutorError> {
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
                let listed = match queue_lists.get(&queue) {
                    Some(items) => items,
                    None => {
                        let items = stores.queue.list(&queue).map_err(|source| {
                            RunStoreFailure::boxed(
                                "list the queue of",
                                &item.dag_name,
                                &item.run_id,
                                source,
                            )
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
                        .map_err(|source| {
                            RunStoreFailure::boxed(
                                "re-enqueue",
                                &item.dag_name,
                                &item.run_id,
                                source,
                            )
                        })?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}
