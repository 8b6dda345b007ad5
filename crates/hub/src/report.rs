//! The words of the hub's reports to GitHub: commit status states and descriptions, the comment
//! a comment command's job gets at finish, and the one comment that answers a `cancel` or
//! `approve` command. A cancel job's own finish posts nothing: the command was answered when it
//! came. Every comment is cut to GitHub's [`COMMENT_LIMIT`] (the summary comes from a scheduler
//! and may be anything), so GitHub never refuses it for its length.
//!
//! What is reported at which step of a job (statuses or check runs) is `lifecycle`; the loop that
//! sends the queued reports is `reporter`. Result status → commit status state:
//!
//! | result status | state |
//! | --- | --- |
//! | `succeeded`, `partially_succeeded` | `success` |
//! | `failed` | `failure` |
//! | `aborted`, `rejected` | `error` |
//! | anything else (`running`, `queued`, ...) | `pending` |

use std::time::Duration;

use dispatch_protocol::is_cancel_command;

use crate::store::{Approval, CancelOutcome, FinishedJob};

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
        tracing::warn!(job_id = ?job_id, repository = ?repository, "not reporting: odd repository name");
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

/// The comment a comment command's job gets at finish, on its issue or pull request (none for
/// a cancel job, or a job without a number).
pub(crate) fn command_comment(
    finished: &FinishedJob,
    result_status: &str,
    summary: &str,
) -> Option<(String, String)> {
    let job = &finished.job;
    let number = if job.issue_number != 0 {
        job.issue_number
    } else {
        job.pull_request_number
    };
    if job.command.is_empty() || is_cancel_command(&job.command) || number == 0 {
        return None;
    }
    // The summary is quoted so that no line of our own comment can start with the mention and
    // trigger another command.
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
    comment_report(&job.repository_name, number, &text, &job.id)
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
        Approval::NotLatest { held, latest } => {
            let now = latest.as_deref().map_or_else(
                || "not known to the hub".to_owned(),
                |l| format!("now {}", short(l)),
            );
            format!(
                "Not approved: the event waiting for approval is for {h}, but the head of #{number} is {now}. To run {h}, approve it by name: `approve {h}`.",
                h = short(held)
            )
        }
        Approval::CommentOlder { sha } => format!(
            "Not approved: #{number}'s head became {s} after this comment was written. Check {s}, then approve it by name: `approve {s}`.",
            s = short(sha)
        ),
        Approval::OtherSha { given, held } => format!(
            "Not approved: {} is not the head waiting for approval ({}).",
            inline(given),
            short(held)
        ),
        Approval::InvalidSha { given } => format!(
            "Not approved: `{}` is not a commit SHA (7 to 40 hex digits).",
            inline(given)
        ),
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
    fn command_jobs_get_a_quoted_comment_and_cancel_jobs_none() {
        let mut job = DispatchJob {
            id: "j".into(),
            repository_name: "o/r".into(),
            dag_name: "build".into(),
            sha: "abc123".into(),
            ..DispatchJob::default()
        };
        let fin = |job: &DispatchJob| FinishedJob::unrun(job.clone(), "dispatch/build".into(), 0);
        assert_eq!(command_comment(&fin(&job), "failed", ""), None);
        job.command = "build".into();
        job.issue_number = 4;
        let (path, body) =
            command_comment(&fin(&job), "succeeded", "@dispatch build\nall good").unwrap();
        assert_eq!(path, "/repos/o/r/issues/4/comments");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        let text = body["body"].as_str().unwrap();
        assert!(text.contains("> @dispatch build\n> all good"), "{text}");
        assert_eq!(crate::matching::parse_command(text, "@dispatch"), None);
        job.command = "Cancel".into();
        assert_eq!(
            command_comment(&fin(&job), "succeeded", "Cancelled 1 run(s)."),
            None
        );
        job.command = "build".into();
        job.repository_name = "o/../x".into();
        assert_eq!(command_comment(&fin(&job), "succeeded", ""), None);
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
