//! Reporting finished jobs back to GitHub: a commit status on the job's SHA and, for comment
//! commands, a comment with the summary.
//!
//! Reports are queued in SQLite in the same transaction that finishes the job, then sent by a
//! background loop with exponential backoff, so `finish` never waits on GitHub and a restart loses
//! nothing. Result status → commit status state:
//!
//! | result status | state |
//! | --- | --- |
//! | `succeeded`, `partially_succeeded` | `success` |
//! | `failed` | `failure` |
//! | `aborted`, `rejected` | `error` |
//! | anything else (`running`, `queued`, ...) | `pending` |

use std::sync::Arc;
use std::time::Duration;

use dispatch_protocol::{is_cancel_command, Secret};
use dispatch_util::error_chain;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::error::HubError;
use crate::metrics::{Metrics, REPORTS};
use crate::store::{blocking, now_ms, FinishedJob, PendingReport, Store};

/// GitHub's limit for a commit status description, in characters.
pub const DESCRIPTION_LIMIT: usize = 140;

/// A report is dropped after this many failed attempts.
pub const MAX_ATTEMPTS: i64 = 12;

/// The commit status state for a result status word.
pub fn commit_state(result_status: &str) -> &'static str {
    match result_status {
        "succeeded" | "partially_succeeded" => "success",
        "failed" => "failure",
        "aborted" | "rejected" => "error",
        _ => "pending",
    }
}

/// The first `limit` characters of `text` (never splitting a character).
pub fn truncate_chars(text: &str, limit: usize) -> &str {
    match text.char_indices().nth(limit) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// Delay before attempt `attempts + 1`: 1 s doubling per failure, at most 10 minutes.
pub fn backoff(attempts: i64) -> Duration {
    let exp = attempts.clamp(1, 11) as u32 - 1;
    Duration::from_secs(1u64 << exp).min(Duration::from_secs(600))
}

fn path_safe(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// The GitHub calls (path, JSON body) a finished job needs.
pub(crate) fn reports_for(
    finished: &FinishedJob,
    result_status: &str,
    summary: &str,
) -> Vec<(String, String)> {
    let job = &finished.job;
    let Some((owner, repo)) = job.repository_name.split_once('/') else {
        return Vec::new();
    };
    if !path_safe(owner) || !path_safe(repo) {
        tracing::warn!(job_id = %job.id, repository = %job.repository_name, "not reporting: odd repository name");
        return Vec::new();
    }
    let mut out = Vec::new();
    let is_command = !job.command.is_empty();
    let cancel = is_cancel_command(&job.command);
    if !job.sha.is_empty() && job.sha.bytes().all(|b| b.is_ascii_hexdigit()) && !cancel {
        let description = if summary.is_empty() {
            format!("{}: {result_status}", job.dag_name)
        } else {
            truncate_chars(summary, DESCRIPTION_LIMIT).to_owned()
        };
        let body = serde_json::json!({
            "state": commit_state(result_status),
            "context": finished.status_context,
            "description": description,
        });
        out.push((
            format!("/repos/{owner}/{repo}/statuses/{}", job.sha),
            body.to_string(),
        ));
    }
    let number = if job.issue_number != 0 {
        job.issue_number
    } else {
        job.pull_request_number
    };
    if is_command && number != 0 {
        // The summary is quoted so that no line of our own comment can start with the mention
        // and trigger another command.
        let mut text = format!(
            "dispatch `{}` ({}): **{result_status}**",
            job.dag_name, job.command
        );
        if !summary.is_empty() {
            text.push_str("\n\n");
            for line in summary.lines() {
                text.push_str("> ");
                text.push_str(line);
                text.push('\n');
            }
        }
        let body = serde_json::json!({ "body": text });
        out.push((
            format!("/repos/{owner}/{repo}/issues/{number}/comments"),
            body.to_string(),
        ));
    }
    out
}

pub(crate) struct Reporter {
    pub store: Arc<Store>,
    pub client: reqwest::Client,
    pub api_url: String,
    pub token: Secret,
    pub wake: Arc<Notify>,
    pub metrics: Arc<Metrics>,
}

enum Sent {
    Ok,
    Retry(String),
    Permanent(String),
}

impl Reporter {
    pub async fn run(self, cancel: CancellationToken) {
        loop {
            let wake = self.wake.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            if let Err(e) = self.pass().await {
                tracing::warn!(error = %error_chain(&e), "github report pass failed; retrying later");
            }
            let delay = match blocking(&self.store, |s| s.next_report_due()).await {
                Ok(Some(due)) => Duration::from_millis((due - now_ms()).clamp(0, 60_000) as u64),
                Ok(None) => Duration::from_secs(60),
                Err(_) => Duration::from_secs(5),
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
                _ = &mut wake => {}
            }
        }
    }

    /// Sends every due report once; returns how many were sent.
    async fn pass(&self) -> Result<usize, HubError> {
        let due = blocking(&self.store, |s| s.due_reports(now_ms(), 50)).await?;
        let mut sent = 0;
        for report in due {
            match self.send(&report).await {
                Sent::Ok => {
                    self.metrics.inc(REPORTS, "sent");
                    sent += 1;
                    blocking(&self.store, move |s| s.delete_report(report.id)).await?;
                }
                Sent::Permanent(why) => {
                    self.metrics.inc(REPORTS, "dropped");
                    tracing::warn!(job_id = %report.job_id, path = %report.path, error = %why, "github rejected a report; dropping it");
                    blocking(&self.store, move |s| s.delete_report(report.id)).await?;
                }
                Sent::Retry(why) => {
                    self.metrics.inc(REPORTS, "failed");
                    let attempts = report.attempts + 1;
                    if attempts >= MAX_ATTEMPTS {
                        tracing::warn!(job_id = %report.job_id, path = %report.path, error = %why, attempts, "giving up on a github report");
                        blocking(&self.store, move |s| s.delete_report(report.id)).await?;
                    } else {
                        let next = now_ms() + backoff(attempts).as_millis() as i64;
                        tracing::debug!(job_id = %report.job_id, error = %why, attempts, "github report failed; will retry");
                        blocking(&self.store, move |s| {
                            s.reschedule_report(report.id, attempts, next, &why)
                        })
                        .await?;
                    }
                }
            }
        }
        Ok(sent)
    }

    async fn send(&self, report: &PendingReport) -> Sent {
        let url = format!("{}{}", self.api_url.trim_end_matches('/'), report.path);
        let result = self
            .client
            .post(&url)
            .bearer_auth(self.token.expose())
            .header(reqwest::header::ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28")
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(report.body.clone())
            .send()
            .await;
        match result {
            Ok(resp) if resp.status().is_success() => Sent::Ok,
            Ok(resp) => {
                let status = resp.status();
                let why = format!("github answered {status}");
                // 403 is also GitHub's rate-limit answer, so it is retried with the server errors.
                if status.is_server_error() || matches!(status.as_u16(), 403 | 408 | 429) {
                    Sent::Retry(why)
                } else {
                    Sent::Permanent(why)
                }
            }
            Err(e) => Sent::Retry(format!("request failed: {}", error_chain(&e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dispatch_protocol::DispatchJob;

    #[test]
    fn state_table() {
        let cases = [
            ("succeeded", "success"),
            ("partially_succeeded", "success"),
            ("failed", "failure"),
            ("aborted", "error"),
            ("rejected", "error"),
            ("running", "pending"),
            ("queued", "pending"),
        ];
        for (status, want) in cases {
            assert_eq!(commit_state(status), want, "{status}");
        }
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate_chars("abc", 140), "abc");
        let long: String = "é".repeat(200);
        let cut = truncate_chars(&long, 140);
        assert_eq!(cut.chars().count(), 140);
        assert_eq!(truncate_chars("日本語", 2), "日本");
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(40), Duration::from_secs(600));
    }

    #[test]
    fn reports_for_push_and_command() {
        let mut job = DispatchJob {
            id: "j".into(),
            repository_name: "o/r".into(),
            dag_name: "build".into(),
            sha: "abc123".into(),
            ..DispatchJob::default()
        };
        let fin = |job: &DispatchJob| FinishedJob {
            job: job.clone(),
            status_context: "dispatch/build".into(),
        };
        let r = reports_for(&fin(&job), "failed", "");
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0, "/repos/o/r/statuses/abc123");
        let body: serde_json::Value = serde_json::from_str(&r[0].1).unwrap();
        assert_eq!(body["state"], "failure");
        assert_eq!(body["description"], "build: failed");
        job.sha.clear();
        job.command = "build".into();
        job.issue_number = 4;
        let r = reports_for(&fin(&job), "succeeded", "@dispatch build\nall good");
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0, "/repos/o/r/issues/4/comments");
        let body: serde_json::Value = serde_json::from_str(&r[0].1).unwrap();
        let text = body["body"].as_str().unwrap();
        assert!(text.contains("> @dispatch build\n> all good"), "{text}");
        assert_eq!(crate::matching::parse_command(text, "@dispatch"), None);
        job.repository_name = "o/../x".into();
        assert!(reports_for(&fin(&job), "succeeded", "").is_empty());
    }
}
