//! The executor's error type.

use dispatch_dag::{RunStoreFailure, StoreError};

/// An executor operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The configuration cannot work (e.g. a concurrency of 0).
    #[error("invalid executor config: {0}")]
    InvalidConfig(String),
    /// `Executor::start` was called outside a Tokio runtime.
    #[error("the executor must be started from within a tokio runtime")]
    NoRuntime,
    /// A store operation on one run failed.
    #[error(transparent)]
    Store(#[from] Box<RunStoreFailure>),
    /// Recovery could not list the runs.
    #[error("failed to list runs for recovery")]
    Recovery(#[source] Box<StoreError>),
}
