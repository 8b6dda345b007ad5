//! Wire types of the cloud contract (`docs/protocol.md`), shared by the client and the hub.
//!
//! Field names are the contract: keep them exact. Optional fields are omitted when empty.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::Secret;

/// The result status words a job may be finished with, in their numeric order (they
/// are also the run statuses, whose numbers `dispatch-dag` owns).
pub const RESULT_STATUS_WORDS: [&str; 9] = [
    "not_started",
    "running",
    "failed",
    "aborted",
    "succeeded",
    "queued",
    "partially_succeeded",
    "waiting",
    "rejected",
];

/// The command word of a job that cancels the active runs of its pull request or issue (a comment
/// `@dispatch cancel`). Compared case-insensitively.
pub const CANCEL_COMMAND: &str = "cancel";

/// True when `command` is the cancel command word (case-insensitive, surrounding blanks ignored).
pub fn is_cancel_command(command: &str) -> bool {
    command.trim().eq_ignore_ascii_case(CANCEL_COMMAND)
}

/// Body of `POST /api/v1/licenses/activate`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ActivateRequest {
    /// The license key being activated.
    pub key: Secret,
    /// This scheduler's server id (UUIDv7).
    pub server_id: String,
    /// Human-readable machine name (hostname).
    pub machine_name: String,
    /// Client version, omitted when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_version: String,
}

/// Success body of activate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ActivateResponse {
    /// Signed license token (JWT, EdDSA).
    pub token: Secret,
    /// Secret this server presents on heartbeat and dispatch calls.
    pub heartbeat_secret: Secret,
}

/// Body of `POST /api/v1/licenses/heartbeat`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HeartbeatRequest {
    /// License id (the token's `jti`).
    pub license_id: String,
    /// This scheduler's server id.
    pub server_id: String,
    /// Heartbeat secret from activation.
    pub heartbeat_secret: Secret,
    /// Client version, omitted when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_version: String,
}

/// Success body of heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HeartbeatResponse {
    /// The refreshed token.
    pub token: Secret,
}

/// Body of `POST /api/v1/github/dispatch/pull`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PullRequest {
    /// License id.
    pub license_id: String,
    /// Server id.
    pub server_id: String,
    /// Heartbeat secret.
    pub heartbeat_secret: Secret,
    /// Long-poll wait (0–60 s); omitted when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub wait_seconds: u32,
}

/// Body of `POST /api/v1/github/dispatch/{id}/accept`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AcceptRequest {
    /// License id.
    pub license_id: String,
    /// Server id.
    pub server_id: String,
    /// Heartbeat secret (named `secret` on this endpoint).
    pub secret: Secret,
    /// The run id this scheduler will use (= the job id).
    pub dag_run_id: String,
}

/// Body of `POST /api/v1/github/dispatch/{id}/finish`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FinishRequest {
    /// License id.
    pub license_id: String,
    /// Server id.
    pub server_id: String,
    /// Heartbeat secret (named `secret` on this endpoint).
    pub secret: Secret,
    /// One of the result status words ([`RESULT_STATUS_WORDS`]).
    pub result_status: String,
    /// Human summary; omitted when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub result_summary: String,
}

/// A dispatch job as pulled from the cloud. Every field but `id` is optional; unknown fields are
/// ignored; `payload` and `headers` keep their exact bytes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DispatchJob {
    /// Job id; also used as the DAG run id.
    #[serde(default)]
    pub id: String,
    /// Binding that produced the job.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub binding_id: String,
    /// GitHub App installation id.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub installation_id: i64,
    /// Repository id.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub repository_id: i64,
    /// `owner/name`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub repository_name: String,
    /// License the job is bound to.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub license_id: String,
    /// DAG to run.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dag_name: String,
    /// GitHub event name (`push`, `pull_request`, ...).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub event_name: String,
    /// GitHub event action (`opened`, ...).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub event_action: String,
    /// `X-GitHub-Delivery`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub delivery_id: String,
    /// Git ref.
    #[serde(default, rename = "ref", skip_serializing_if = "String::is_empty")]
    pub git_ref: String,
    /// Commit SHA.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha: String,
    /// PR number, 0 when none.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub pull_request_number: i64,
    /// Issue number, 0 when none.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub issue_number: i64,
    /// Comment id for comment commands.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub comment_id: i64,
    /// Comment command (`cancel` or an alias).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub command: String,
    /// A cancel job's targets: the ids of the jobs (= run ids) to stop. Empty: every active run of
    /// the repository and pull request or issue number (a hub that does not name them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cancel_job_ids: Vec<String>,
    /// Login of the actor.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub actor_login: String,
    /// Check run id.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub check_run_id: i64,
    /// Server-side job status.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status: String,
    /// Which server claimed it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub claimed_by: String,
    /// Run id recorded at accept.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dag_run_id: String,
    /// Raw JSON of the GitHub event, bytes untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Box<RawValue>>,
    /// Raw JSON object of the delivery headers, bytes untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Box<RawValue>>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}
