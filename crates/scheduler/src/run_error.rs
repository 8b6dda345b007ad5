//! Why `scheduler run` did not end with a successful run (a leaf: `error` wraps it, `run` makes it).

use std::path::PathBuf;

use dispatch_dag::{DagErrors, RunStatus, StoreError};
use dispatch_enqueue::EnqueueError;

/// Why `scheduler run` did not end with a successful run. Every variant exits 1.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    /// The DAG file does not load; each error names the file, the line and the key.
    #[error(transparent)]
    Load(#[from] DagErrors),
    /// No DAG file in the DAGs directory has this name.
    #[error("no DAG named `{name}` in `{}`", dir.display())]
    NotFound {
        /// The name given.
        name: String,
        /// The DAGs directory searched.
        dir: PathBuf,
    },
    /// Looking the name up failed for another reason (an invalid name, an unreadable directory).
    #[error("failed to look up DAG `{name}` in `{}`", dir.display())]
    Lookup {
        /// The name given.
        name: String,
        /// The DAGs directory searched.
        dir: PathBuf,
        /// Cause.
        #[source]
        source: StoreError,
    },
    /// The run could not be created (the error names the run).
    #[error(transparent)]
    Enqueue(#[from] EnqueueError),
    /// The run ended `failed` or `aborted`.
    #[error("run `{dag}/{run_id}` {status}{}", error.as_deref().map(|e| format!(": {e}")).unwrap_or_default())]
    Unsuccessful {
        /// DAG name.
        dag: String,
        /// Run id.
        run_id: String,
        /// Its final status.
        status: RunStatus,
        /// Its first error.
        error: Option<String>,
    },
}
