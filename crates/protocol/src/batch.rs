//! The `pull-batch` wire extension (`docs/protocol.md`, "Extensions"): up to
//! [`MAX_BATCH_JOBS`] jobs in one pull answer, and their accepts in one call. A hub that serves it
//! says so in the [`EXTENSIONS_HEADER`] of its answers; a scheduler uses it only then, so a cloud
//! that does not advertise it gets the one-job calls of the base contract.

use serde::{Deserialize, Serialize};

use crate::{DispatchJob, Secret};

/// Response header in which a hub lists the extensions it serves, comma-separated
/// (`X-Dispatch-Extensions: pull-batch`).
pub const EXTENSIONS_HEADER: &str = "x-dispatch-extensions";

/// The extension word of `POST /api/v1/github/dispatch/pull-batch` and
/// `POST /api/v1/github/dispatch/accept-batch`.
pub const PULL_BATCH: &str = "pull-batch";

/// Path of the batched pull.
pub const PULL_BATCH_PATH: &str = "/api/v1/github/dispatch/pull-batch";

/// Path of the batched accept.
pub const ACCEPT_BATCH_PATH: &str = "/api/v1/github/dispatch/accept-batch";

/// Most jobs one batched pull or accept may name.
pub const MAX_BATCH_JOBS: u32 = 64;

/// True when the value of an [`EXTENSIONS_HEADER`] lists `extension` (comma-separated words,
/// compared case-insensitively, blanks around them ignored).
pub fn lists_extension(header_value: &str, extension: &str) -> bool {
    header_value
        .split(',')
        .any(|word| word.trim().eq_ignore_ascii_case(extension))
}

/// Body of `POST /api/v1/github/dispatch/pull-batch`: the credentials of a pull, how many jobs
/// at most, and how many bytes of jobs the caller reads at most. The hub answers at once (no
/// long-poll): `200` with [`PullBatchResponse`] when it has at least one job, `204` otherwise.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PullBatchRequest {
    /// License id.
    pub license_id: String,
    /// Server id.
    pub server_id: String,
    /// Heartbeat secret.
    pub heartbeat_secret: Secret,
    /// Jobs wanted, 1 to [`MAX_BATCH_JOBS`].
    pub max_jobs: u32,
    /// The most bytes of encoded jobs the caller reads in one answer. The hub stops adding jobs
    /// before the answer would pass it; a first job larger than this is still sent, alone.
    pub max_bytes: u64,
}

/// Success body of a batched pull: the claimed jobs, oldest first, each exactly as a single pull
/// would have answered it.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct PullBatchResponse {
    /// The jobs, at least one.
    pub jobs: Vec<DispatchJob>,
}

/// One job of a batched accept.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AcceptBatchItem {
    /// The job id.
    pub job_id: String,
    /// The run id this scheduler will use (= the job id).
    pub dag_run_id: String,
}

/// Body of `POST /api/v1/github/dispatch/accept-batch`: the accepts of several jobs by one
/// server, each with the meaning of its own `POST /api/v1/github/dispatch/{id}/accept`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AcceptBatchRequest {
    /// License id.
    pub license_id: String,
    /// Server id.
    pub server_id: String,
    /// Heartbeat secret (named `secret` as on the single accept).
    pub secret: Secret,
    /// The jobs, 1 to [`MAX_BATCH_JOBS`].
    pub jobs: Vec<AcceptBatchItem>,
}

/// What the accept of one job of a batch came to: the status its single accept would have
/// answered (`204` taken or a repeat, `404` unknown, `409` claimed by another or finished) and,
/// for a refusal, the message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AcceptBatchResult {
    /// The job id.
    pub job_id: String,
    /// HTTP status of the job's accept.
    pub status: u16,
    /// Why it was refused; omitted when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Success body (`200`) of a batched accept: one result per job, in the request's order. The
/// accepts that succeeded are durable when it is sent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct AcceptBatchResponse {
    /// One per job of the request.
    pub results: Vec<AcceptBatchResult>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_lists_words_separated_by_commas() {
        assert!(lists_extension("pull-batch", PULL_BATCH));
        assert!(lists_extension(" other , Pull-Batch ", PULL_BATCH));
        assert!(!lists_extension("pull-batches", PULL_BATCH));
        assert!(!lists_extension("", PULL_BATCH));
        assert!(!lists_extension("pull batch", PULL_BATCH));
    }

    #[test]
    fn bodies_have_the_documented_fields() {
        let request = PullBatchRequest {
            license_id: "l".into(),
            server_id: "s".into(),
            heartbeat_secret: Secret::new("h"),
            max_jobs: 8,
            max_bytes: 1024,
        };
        assert_eq!(
            serde_json::to_value(&request).unwrap(),
            serde_json::json!({
                "license_id": "l", "server_id": "s", "heartbeat_secret": "h",
                "max_jobs": 8, "max_bytes": 1024
            })
        );
        let answer: AcceptBatchResponse = serde_json::from_str(
            r#"{"results":[{"job_id":"a","status":204},{"job_id":"b","status":409,"message":"taken"}]}"#,
        )
        .unwrap();
        assert_eq!(answer.results[0].message, "");
        assert_eq!(answer.results[1].status, 409);
        let accept = AcceptBatchRequest {
            license_id: "l".into(),
            server_id: "s".into(),
            secret: Secret::new("h"),
            jobs: vec![AcceptBatchItem {
                job_id: "a".into(),
                dag_run_id: "a".into(),
            }],
        };
        assert_eq!(
            serde_json::to_value(&accept).unwrap(),
            serde_json::json!({
                "license_id": "l", "server_id": "s", "secret": "h",
                "jobs": [{"job_id": "a", "dag_run_id": "a"}]
            })
        );
    }
}
