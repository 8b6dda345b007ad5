//! The `progress` wire extension (`docs/protocol.md`, "Extension: progress and logs"): while a
//! job runs, the scheduler tells the hub that the run started, when each step starts and ends,
//! and sends each step's stdout and stderr in ordered chunks. A hub that serves it lists
//! [`PROGRESS`] in its [`EXTENSIONS_HEADER`](crate::EXTENSIONS_HEADER); a scheduler sends these
//! calls only then, so a cloud without it gets exactly the calls of the base contract.
//!
//! Log chunks are idempotent by offset: `offset` counts the bytes of the step stream's text the
//! hub already holds. A chunk that starts at or before the hub's end adds only what the hub does
//! not have yet (sending it again changes nothing); one that starts after it is refused, and its
//! acknowledgement carries the offset the hub expects, from where the scheduler sends again.

use serde::{Deserialize, Serialize};

use crate::Secret;

/// The extension word of `POST /api/v1/github/dispatch/{id}/progress`.
pub const PROGRESS: &str = "progress";

/// The value our hub sends in [`EXTENSIONS_HEADER`](crate::EXTENSIONS_HEADER): every extension
/// it serves.
pub const HUB_EXTENSIONS: &str = "pull-batch, progress";

/// The last path segment of the progress call, after the job id.
pub const PROGRESS_ACTION: &str = "progress";

/// The step status words a progress call may carry (a DAG step's states).
pub const STEP_STATUS_WORDS: [&str; 7] = [
    "not_started",
    "running",
    "failed",
    "aborted",
    "succeeded",
    "skipped",
    "partially_succeeded",
];

/// Log bytes one job may upload in all (every step, both streams), unless the hub is configured
/// otherwise (its `job_log_cap_mib`; it names its cap in every answer,
/// [`ProgressResponse::log_cap`]). Past the cap, the scheduler sends one chunk marked
/// [`LogChunk::truncated`] and nothing more.
pub const DEFAULT_JOB_LOG_CAP: u64 = 10 * 1024 * 1024;

/// The largest cap a hub may be configured with (1 GiB). A scheduler follows the cap the hub
/// names up to this, so a hub answering a larger number cannot make it send without end.
pub const MAX_JOB_LOG_CAP: u64 = 1024 * 1024 * 1024;

/// Most bytes of log text one progress request carries, all chunks together. JSON escaping
/// may make a control character six bytes long, and the hub takes request bodies of 1 MiB.
pub const MAX_PROGRESS_DATA_BYTES: usize = 128 * 1024;

/// Most steps one progress call may name; a scheduler with more changes sends several calls.
pub const MAX_STEPS_PER_CALL: usize = 1000;

/// Most log chunks one progress call may carry; a scheduler with more sends several calls.
pub const MAX_CHUNKS_PER_CALL: usize = 1000;

/// Most steps the hub keeps for one job: a call that would add more is refused (`400`). A
/// scheduler leaves the steps past it out.
pub const MAX_STEPS_PER_JOB: usize = 1000;

/// Longest step name a progress call may carry, in bytes.
pub const MAX_STEP_NAME_BYTES: usize = 255;

/// Which output stream of a step a chunk belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    /// The step's standard output.
    Stdout,
    /// The step's standard error.
    Stderr,
}

impl LogStream {
    /// Both streams, stdout first.
    pub const ALL: [LogStream; 2] = [LogStream::Stdout, LogStream::Stderr];

    /// The wire word.
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

/// Body of `POST /api/v1/github/dispatch/{id}/progress`: the credentials of the job's accept,
/// then any of: when the run started, the state of some steps, chunks of step logs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProgressRequest {
    /// License id.
    pub license_id: String,
    /// Server id.
    pub server_id: String,
    /// Heartbeat secret (named `secret` as on accept and finish).
    pub secret: Secret,
    /// When the run started, milliseconds since the Unix epoch; omitted when 0 (not yet, or
    /// already sent).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub run_started_ms: u64,
    /// Steps whose state changed, in the order of the DAG.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepProgress>,
    /// Log chunks, each step stream's in offset order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<LogChunk>,
}

/// The state of one step. A step already finished on the hub stays as it is: a late copy of an
/// earlier state never overwrites a final one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct StepProgress {
    /// The step's name, unique in its DAG.
    pub name: String,
    /// One of the [`STEP_STATUS_WORDS`].
    pub status: String,
    /// The exit code of its process, when it has ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// When it started, milliseconds since the Unix epoch; omitted when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub started_ms: u64,
    /// When it ended, milliseconds since the Unix epoch; omitted when 0 (still running).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub finished_ms: u64,
}

/// A piece of one step stream's log text.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LogChunk {
    /// The step's name.
    pub step: String,
    /// Which stream.
    pub stream: LogStream,
    /// Where `data` starts, in bytes of the stream's text (UTF-8).
    pub offset: u64,
    /// The text, secrets already masked. Empty with offset 0: asks only for the hub's end.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub data: String,
    /// The stream is complete: nothing follows `data` (the step ended).
    #[serde(default, skip_serializing_if = "is_false")]
    pub eof: bool,
    /// The job's log cap was reached with this chunk: nothing more of any stream follows.
    #[serde(default, skip_serializing_if = "is_false")]
    pub truncated: bool,
}

/// Success body (`200`) of a progress call: one acknowledgement per log chunk, in the request's
/// order, and where the job's log stands.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ProgressResponse {
    /// One per chunk of the request.
    #[serde(default)]
    pub logs: Vec<LogAck>,
    /// Log bytes the hub holds for the job, every stream together.
    #[serde(default)]
    pub log_bytes: u64,
    /// The hub's cap on them.
    #[serde(default)]
    pub log_cap: u64,
    /// The job's log was cut at the cap: the hub takes no more log text for it.
    #[serde(default)]
    pub truncated: bool,
}

/// What became of one chunk.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LogAck {
    /// The chunk's step.
    pub step: String,
    /// The chunk's stream.
    pub stream: LogStream,
    /// The end of what the hub holds of the stream: where the next chunk starts.
    pub next_offset: u64,
    /// False when the chunk started past `next_offset` (a gap) and was not stored: send again
    /// from `next_offset`.
    pub accepted: bool,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{lists_extension, PULL_BATCH};

    #[test]
    fn our_hub_lists_every_extension() {
        assert!(lists_extension(HUB_EXTENSIONS, PULL_BATCH));
        assert!(lists_extension(HUB_EXTENSIONS, PROGRESS));
    }

    #[test]
    fn bodies_have_the_documented_fields() {
        let request = ProgressRequest {
            license_id: "l".into(),
            server_id: "s".into(),
            secret: Secret::new("h"),
            run_started_ms: 5,
            steps: vec![StepProgress {
                name: "build".into(),
                status: "failed".into(),
                exit_code: Some(2),
                started_ms: 6,
                finished_ms: 7,
            }],
            logs: vec![LogChunk {
                step: "build".into(),
                stream: LogStream::Stderr,
                offset: 10,
                data: "oops\n".into(),
                eof: true,
                truncated: false,
            }],
        };
        assert_eq!(
            serde_json::to_value(&request).unwrap(),
            serde_json::json!({
                "license_id": "l", "server_id": "s", "secret": "h", "run_started_ms": 5,
                "steps": [{"name": "build", "status": "failed", "exit_code": 2,
                           "started_ms": 6, "finished_ms": 7}],
                "logs": [{"step": "build", "stream": "stderr", "offset": 10, "data": "oops\n",
                          "eof": true}]
            })
        );
        let bare: ProgressRequest =
            serde_json::from_str(r#"{"license_id":"l","server_id":"s","secret":"h"}"#).unwrap();
        assert!(bare.steps.is_empty() && bare.logs.is_empty() && bare.run_started_ms == 0);
        let answer: ProgressResponse = serde_json::from_str(
            r#"{"logs":[{"step":"a","stream":"stdout","next_offset":3,"accepted":false}],
                "log_bytes":3,"log_cap":10,"truncated":false}"#,
        )
        .unwrap();
        assert_eq!(answer.logs[0].next_offset, 3);
        assert!(!answer.logs[0].accepted);
    }
}
