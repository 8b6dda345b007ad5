//! Reporting finished jobs back to GitHub: a commit status on the job's SHA and, for comment
//! commands, a comment with the summary; and the one comment that answers a `cancel` or `approve`
//! command. A cancel job's own finish posts nothing: the command was answered when it came.
//! Every comment is cut to GitHub's [`COMMENT_LIMIT`] (the summary comes from a scheduler and may
//! be anything), so GitHub never refuses it for its length.
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
use crate::store::{blocking, now_ms, Approval, CancelOutcome, FinishedJob, PendingReport, Store};

/// GitHub's limit for a commit status description, in characters.
pub const DESCRIPTION_LIMIT: usize = 140;

/// GitHub's limit for a comment body, in characters (longer bodies are refused with a 422).
pub const COMMENT_LIMIT: usize = 65_536;

/// What ends a comment cut to [`COMMENT_LIMIT`].
pub const TRUNCATED_MARKER: &str = "\n\n... (truncated)";

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

/// `text` cut to GitHub's [`COMMENT_LIMIT`], ending with [`TRUNCATED_MARKER`] when it was cut.
pub fn cap_comment(text: &str) -> String {
    if text.chars().count() <= COMMENT_LIMIT {
        return text.to_owned();
    }
    let keep = COMMENT_LIMIT - TRUNCATED_MARKER.chars().count();
    let mut out = truncate_chars(text, keep).to_owned();
    out.push_str(TRUNCATED_MARKER);
    out
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

/// `/repos/<owner>/<repo>`, or `None` (with a warning) for a name that is not safe in a path.
fn repo_path(repository: &str, job_id: &str) -> Option<String> {
    let (owner, repo) = repository.split_once('/')?;
    if !path_safe(owner) || !path_safe(repo) {
        tracing::warn!(job_id = %job_id, repository = %repository, "not reporting: odd repository name");
        return None;
    }
    Some(format!("/repos/{owner}/{repo}"))
}

/// The GitHub call (path, JSON body) that posts `text` as a comment on issue or PR `number`,
/// cut to [`COMMENT_LIMIT`]. `what` names the cause in a warning when the repository name is odd.
pub(crate) fn comment_report(
    repository: &str,
    number: i64,
    text: &str,
    what: &str,
) -> Option<(String, String)> {
    let base = repo_path(repository, what)?;
    let body = serde_json::json!({ "body": cap_comment(text) });
    Some((format!("{base}/issues/{number}/comments"), body.to_string()))
}

/// The GitHub calls (path, JSON body) a finished job needs.
pub(crate) fn reports_for(
    finished: &FinishedJob,
    result_status: &str,
    summary: &str,
) -> Vec<(String, String)> {
    let job = &finished.job;
    let Some(base) = repo_path(&job.repository_name, &job.id) else {
        return Vec::new();
    };
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
        out.push((format!("{base}/statuses/{}", job.sha), body.to_string()));
    }
    let number = if job.issue_number != 0 {
        job.issue_number
    } else {
        job.pull_request_number
    };
    if is_command && !cancel && number != 0 {
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
        out.extend(comment_report(&job.repository_name, number, &text, &job.id));
    }
    out
}

/// `text` safe inside one line of a comment: control characters (newlines included) become
/// spaces and backticks go, so a name a scheduler chose can neither start a line of its own (with
/// a command in it) nor break out of code formatting; at most 100 characters.
fn inline(text: &str) -> String {
    let clean: String = text
        .chars()
        .filter(|c| *c != '`')
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    truncate_chars(clean.trim(), 100).to_owned()
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The comment answering a cancel command: what it stops where, what it dropped.
pub(crate) fn cancel_answer(outcome: &CancelOutcome) -> String {
    let mut parts = Vec::new();
    if !outcome.stopping.is_empty() {
        let runs: Vec<String> = outcome
            .stopping
            .iter()
            .map(|(dag, machine)| format!("`{}` on {}", inline(dag), inline(machine)))
            .collect();
        parts.push(format!(
            "Cancelling {} ({})",
            plural(runs.len(), "run", "runs"),
            runs.join(", ")
        ));
    }
    if !outcome.awaiting.is_empty() {
        parts.push(if outcome.awaiting.len() == 1 {
            "1 job being handed to a scheduler is cancelled as soon as it is taken".to_owned()
        } else {
            format!(
                "{} jobs being handed to schedulers are cancelled as soon as they are taken",
                outcome.awaiting.len()
            )
        });
    }
    if !outcome.dropped.is_empty() {
        parts.push(format!(
            "{} dropped",
            plural(outcome.dropped.len(), "queued job", "queued jobs")
        ));
    }
    if parts.is_empty() {
        return "Nothing to cancel.".to_owned();
    }
    let mut text = parts.join("; ");
    if let Some(first) = text.get(..1) {
        text = first.to_uppercase() + &text[1..];
    }
    text.push('.');
    text
}

/// The comment answering an approve command on pull request `number`.
pub(crate) fn approve_answer(approval: &Approval, number: i64) -> String {
    let short = |sha: &str| truncate_chars(sha, 7).to_owned();
    match approval {
        Approval::Dispatched { sha, dags } => {
            let dags: Vec<String> = dags.iter().map(|d| format!("`{}`", inline(d))).collect();
            format!("Approved {}: dispatching {}.", short(sha), dags.join(", "))
        }
        Approval::AlreadyApproved { sha } => format!(
            "{} is already approved; nothing is dispatched again (a new push needs a new approval).",
            short(sha)
        ),
        Approval::NothingMatched { sha } => format!(
            "Nothing to approve: the waiting event of {} matches no binding you may approve for.",
            short(sha)
        ),
        Approval::NothingHeld => format!(
            "Nothing to approve: no pull request event from a fork is waiting for #{number}."
        ),
    }
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

    #[test]
    fn a_cancel_jobs_finish_reports_nothing() {
        let job = DispatchJob {
            id: "c".into(),
            repository_name: "o/r".into(),
            sha: "abc123".into(),
            command: "Cancel".into(),
            issue_number: 4,
            ..DispatchJob::default()
        };
        let fin = FinishedJob {
            job,
            status_context: String::new(),
        };
        assert!(reports_for(&fin, "succeeded", "Cancelled 1 run(s).").is_empty());
    }

    #[test]
    fn comments_are_cut_to_githubs_limit() {
        assert_eq!(cap_comment("short"), "short");
        let exact = "a".repeat(COMMENT_LIMIT);
        assert_eq!(cap_comment(&exact), exact);
        let long = "日".repeat(COMMENT_LIMIT + 1);
        let cut = cap_comment(&long);
        assert_eq!(cut.chars().count(), COMMENT_LIMIT);
        assert!(cut.starts_with("日日") && cut.ends_with("日\n\n... (truncated)"));
        let (path, body) = comment_report("o/r", 3, &long, "t").unwrap();
        assert_eq!(path, "/repos/o/r/issues/3/comments");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["body"].as_str().unwrap(), cut);
        assert!(comment_report("o/r r", 3, "x", "t").is_none());
    }

    #[test]
    fn cancel_answers() {
        let outcome = |stopping: &[(&str, &str)], awaiting: usize, dropped: usize| CancelOutcome {
            stopping: stopping
                .iter()
                .map(|(d, m)| ((*d).to_owned(), (*m).to_owned()))
                .collect(),
            awaiting: vec!["x".to_owned(); awaiting],
            dropped: vec!["y".to_owned(); dropped],
            cancel_jobs: Vec::new(),
        };
        let cases = [
            (outcome(&[], 0, 0), "Nothing to cancel."),
            (
                outcome(&[("build", "box-1"), ("test", "box-2")], 0, 1),
                "Cancelling 2 runs (`build` on box-1, `test` on box-2); 1 queued job dropped.",
            ),
            (
                outcome(&[("long", "m")], 0, 0),
                "Cancelling 1 run (`long` on m).",
            ),
            (
                outcome(&[], 2, 3),
                "2 jobs being handed to schedulers are cancelled as soon as they are taken; 3 queued jobs dropped.",
            ),
            (
                outcome(&[("b`x", "evil\n@dispatch build")], 1, 0),
                "Cancelling 1 run (`bx` on evil @dispatch build); 1 job being handed to a scheduler is cancelled as soon as it is taken.",
            ),
        ];
        for (outcome, want) in cases {
            let text = cancel_answer(&outcome);
            assert_eq!(text, want);
            assert_eq!(crate::matching::parse_command(&text, "@dispatch"), None);
        }
    }

    #[test]
    fn approve_answers() {
        let sha = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c".to_owned();
        let cases = [
            (
                Approval::Dispatched {
                    sha: sha.clone(),
                    dags: vec!["test".into(), "lint".into()],
                },
                "Approved 0d1a26e: dispatching `test`, `lint`.",
            ),
            (
                Approval::AlreadyApproved { sha: sha.clone() },
                "0d1a26e is already approved; nothing is dispatched again (a new push needs a new approval).",
            ),
            (
                Approval::NothingMatched { sha },
                "Nothing to approve: the waiting event of 0d1a26e matches no binding you may approve for.",
            ),
            (
                Approval::NothingHeld,
                "Nothing to approve: no pull request event from a fork is waiting for #7.",
            ),
        ];
        for (approval, want) in cases {
            assert_eq!(approve_answer(&approval, 7), want);
        }
    }
}
