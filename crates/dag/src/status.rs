//! Run and step status words, and the final-status rules (SPEC §5).

use serde::{Deserialize, Serialize};

/// Status of a run. Text and number are the contract (SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// 0
    NotStarted,
    /// 1
    Running,
    /// 2
    Failed,
    /// 3
    Aborted,
    /// 4
    Succeeded,
    /// 5
    Queued,
    /// 6
    PartiallySucceeded,
    /// 7
    Waiting,
    /// 8
    Rejected,
}

/// Status of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Not run (yet).
    #[default]
    NotStarted,
    /// Running now.
    Running,
    /// Exited non-zero, timed out or failed to start.
    Failed,
    /// Stopped by a cancel or a DAG timeout.
    Aborted,
    /// Exited 0.
    Succeeded,
    /// Not run because a dependency failed or the run was stopped.
    Skipped,
}
