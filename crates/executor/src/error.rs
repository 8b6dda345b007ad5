//! The executor's error type.

use dispatch_dag::StoreError;

/// An executor operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The configuration cannot work (e.g. a concurrency of 0).
    #[error("invalid executor config: {0}")]
    InvalidConfig(String),
    /// `Executor::start` was called outside a Tokio runtime.
    #[error("the executor must be started from within a tokio runtime")]
    NoRuntime,
    /// A store operation failed.
    #[error("failed to {action} run `{dag_name}/{run_id}`")]
    Store {
        /// e.g. "look up", "dequeue", "write the status of".
        action: &'static str,
        /// DAG name.
        dag_name: String,
        /// Run id.
        run_id: String,
        /// Cause (boxed to keep the error small).
        #[source]
        source: Box<StoreError>,
    },
    /// Recovery could not list the runs.
    #[error("failed to list runs for recovery")]
    Recovery(#[source] Box<StoreError>),
}
