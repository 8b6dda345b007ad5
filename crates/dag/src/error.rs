//! Errors of the DAG loader, the param merge and the stores.

use std::path::PathBuf;

/// A store operation failed. [`StoreError::NotFound`] is distinct from every other failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The DAG or run does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was looked for, e.g. "DAG `build`" or "run `build/abc`".
        what: String,
    },
    /// A DAG name or run id is not acceptable (checked before touching the filesystem).
    #[error("invalid {kind} `{value}`: {reason}")]
    InvalidName {
        /// "DAG name" or "run id".
        kind: &'static str,
        /// The rejected value (may be shown: it is not a secret).
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// A DAG file could not be loaded.
    #[error(transparent)]
    Dag(#[from] crate::DagError),
    /// Reading or writing a store file failed.
    #[error("failed to {action} `{path}`")]
    Io {
        /// e.g. "read", "write", "rename".
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A store file holds data that cannot be decoded.
    #[error("corrupt store file `{path}`: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why it is unreadable.
        reason: String,
    },
}

impl StoreError {
    /// True for [`StoreError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }
}

/// A store operation on one run failed: what was being done, to which run, and why. The
/// crates that drive the stores (enqueue, executor, worker) wrap it, so the run is named the same
/// way wherever a store call fails.
#[derive(Debug, thiserror::Error)]
#[error("failed to {action} run `{dag_name}/{run_id}`")]
pub struct RunStoreFailure {
    /// What was being done, read before "run `dag/run`": e.g. "look up", "dequeue",
    /// "create the attempt for".
    pub action: &'static str,
    /// DAG name.
    pub dag_name: String,
    /// Run id.
    pub run_id: String,
    /// Cause.
    #[source]
    pub source: StoreError,
}

impl RunStoreFailure {
    /// The failure of `action` on run `dag_name/run_id`, boxed: the error enums that wrap it
    /// hold it behind a box to stay small.
    pub fn boxed(
        action: &'static str,
        dag_name: &str,
        run_id: &str,
        source: StoreError,
    ) -> Box<Self> {
        Box::new(RunStoreFailure {
            action,
            dag_name: dag_name.to_owned(),
            run_id: run_id.to_owned(),
            source,
        })
    }
}

/// A param cannot be handed to a step (from [`crate::merge_params`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    /// The value holds a NUL byte, which no environment variable can carry. The message never
    /// shows the value: params carry webhook payloads and may hold secrets.
    #[error("param `{name}`: value holds a NUL byte")]
    NulByte {
        /// The param's name (a positional one is named by its 1-based position).
        name: String,
    },
}

/// A DAG file is invalid. Display names the file, the line (when known) and the key.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct DagError {
    /// The YAML file.
    pub path: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong, naming the key (e.g. "unknown key `stpes`").
    pub message: String,
}

/// Every error of one DAG file, in the order the loader found them (the first is usually the
/// cause of the others). Display puts one error per line.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct DagErrors(pub Vec<DagError>);

impl DagErrors {
    /// The first error (the one [`crate::load_dag_file`] returns).
    pub fn into_first(self) -> Option<DagError> {
        self.0.into_iter().next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn a_run_store_failure_names_the_action_and_the_run_and_keeps_the_cause_apart() {
        let failure = RunStoreFailure::boxed(
            "write the status of",
            "build",
            "r1",
            StoreError::NotFound {
                what: "run `build/r1`".to_owned(),
            },
        );
        assert_eq!(
            failure.to_string(),
            "failed to write the status of run `build/r1`"
        );
        let cause = failure.source().map(ToString::to_string);
        assert_eq!(cause.as_deref(), Some("run `build/r1` not found"));
    }
}
