//! The values the tracker stores: one [`TrackedJob`] per dispatch job, and its [`Phase`].

use serde::{Deserialize, Serialize};

/// Where a tracked dispatch job stands with the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Pulled and enqueued locally; the hub has not yet been told it was accepted.
    PendingAccept,
    /// The hub acknowledged the accept; the job now waits for its run to finish.
    Accepted,
}

/// One dispatch job this scheduler owns, keyed by `job_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackedJob {
    /// Hub-assigned job id (opaque; may contain any characters).
    pub job_id: String,
    /// Name of the DAG the job runs.
    pub dag_name: String,
    /// Run id of the local DAG run.
    pub dag_run_id: String,
    /// Where the job stands with the hub.
    pub phase: Phase,
    /// `owner/name` of the GitHub repository that triggered the job.
    pub repository: String,
    /// Pull request number, or 0 when none.
    pub pr_number: i64,
    /// Issue number, or 0 when none.
    pub issue_number: i64,
    /// Last change, milliseconds since the Unix epoch.
    pub updated_at_ms: u64,
}
