//! The worker's error type. Most failures inside the loops are logged and retried, never
//! returned; this type names them for the logs and is the error `Worker::run` returns.

use dispatch_dag::RunStoreFailure;
use dispatch_executor::ExecutorError;
use dispatch_tracker::TrackerError;

/// A worker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Reading or writing the tracker failed.
    #[error("failed to {action} tracked job `{job_id}`")]
    Tracker {
        /// e.g. "record", "delete", "list".
        action: &'static str,
        /// The job concerned (empty for a listing).
        job_id: String,
        /// Cause (boxed to keep the error small).
        #[source]
        source: Box<TrackerError>,
    },
    /// A DAG or run store operation on one run failed.
    #[error(transparent)]
    Store(#[from] Box<RunStoreFailure>),
    /// Stopping a run failed.
    #[error("failed to stop run `{dag_name}/{run_id}`")]
    Stop {
        /// DAG name.
        dag_name: String,
        /// Run id.
        run_id: String,
        /// Cause (boxed to keep the error small).
        #[source]
        source: Box<ExecutorError>,
    },
    /// A blocking task (file IO) panicked or was cancelled.
    #[error("blocking task for {what} did not complete")]
    Blocking {
        /// What the task was doing.
        what: &'static str,
        /// Cause.
        #[source]
        source: tokio::task::JoinError,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use dispatch_util::error_chain;

    #[test]
    fn error_chain_names_each_cause_once() {
        let inner = std::io::Error::other("disk on fire");
        let outer = WorkerError::Tracker {
            action: "record",
            job_id: "j1".into(),
            source: Box::new(TrackerError::Io {
                action: "fsync",
                path: "/t/journal".into(),
                source: inner,
            }),
        };
        assert_eq!(
            error_chain(&outer),
            "failed to record tracked job `j1`: failed to fsync `/t/journal`: disk on fire"
        );
    }
}
