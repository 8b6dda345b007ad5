//! What GitHub hears about a job as it goes: when the hub stores it, when a scheduler accepts it
//! and when it finishes. The store queues these reports in the same transaction as each step
//! ([`ReportsFor`]); the reporter (`report`) sends them in order.
//!
//! | step | commit statuses (a token) | check runs (a GitHub App) |
//! | --- | --- | --- |
//! | stored | `pending`, "queued" | created, `queued` |
//! | accepted | `pending`, "running on \<machine>" | `in_progress`, with a "Cancel" button |
//! | finished | the final state | `completed` with a conclusion and an output |
//!
//! Every status carries `target_url` and every check run `details_url`: the job's page on the hub,
//! `<public_url>/jobs/<job id>`. The reports of stored and accepted are supersedable: one still
//! unsent when the job finishes is dropped, so a final state is never followed by a late
//! `pending`. Only jobs with a commit SHA are reported this way (not cancel jobs); a comment
//! command's comment is sent at finish either way.

use std::sync::Arc;

use dispatch_protocol::{is_cancel_command, DispatchJob};
use serde_json::json;

use crate::config::HubConfig;
use crate::github::checks::{CheckRun, Completion};
use crate::matching::NewJob;
use crate::report::{command_comment, commit_state, truncate_chars, DESCRIPTION_LIMIT};
use crate::store::{AcceptedJob, FinishedJob, NewReport, Reports, ReportsFor};

/// How the hub reports to GitHub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Channel {
    /// Not at all (no token, no App).
    Off,
    /// Commit statuses and comments, with a token.
    Statuses,
    /// Check runs and comments, as a GitHub App.
    CheckRuns,
}

/// The report builder of a running hub.
#[derive(Debug, Clone)]
pub(crate) struct Lifecycle {
    pub channel: Channel,
    /// The hub's address as GitHub and browsers reach it, without a trailing `/`.
    pub public_url: String,
}

/// `/repos/<owner>/<repo>` for a name safe in a path.
fn repo_base(repository: &str) -> Option<String> {
    let (owner, repo) = repository.split_once('/')?;
    let safe = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    (safe(owner) && safe(repo)).then(|| format!("/repos/{owner}/{repo}"))
}

/// The reports of each step of a job, when the hub reports at all: what the store is handed
/// wherever it stores, accepts or finishes jobs.
pub(crate) fn job_reports(cfg: &HubConfig) -> Reports {
    Arc::new(Lifecycle::for_config(cfg))
}

impl Lifecycle {
    /// The reports of a hub with these settings: check runs with an App, statuses with a token,
    /// else none. `public_url` falls back to the listen address (the hub fills it in with the
    /// address it bound when it starts).
    pub fn for_config(cfg: &HubConfig) -> Lifecycle {
        let channel = if cfg.github.app.is_some() {
            Channel::CheckRuns
        } else if cfg.github.token.as_ref().is_some_and(|t| !t.is_empty()) {
            Channel::Statuses
        } else {
            Channel::Off
        };
        let public_url = match &cfg.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://{}", cfg.listen),
        };
        Lifecycle {
            channel,
            public_url,
        }
    }

    /// The job's page on the hub.
    pub fn job_url(&self, job_id: &str) -> String {
        format!("{}/jobs/{job_id}", self.public_url)
    }

    /// The repository path of a job whose lifecycle is reported: one with a hex SHA that is not a
    /// cancel job, in a repository whose name is safe in a path.
    fn reported(&self, job: &DispatchJob) -> Option<String> {
        let sha_ok = !job.sha.is_empty() && job.sha.bytes().all(|b| b.is_ascii_hexdigit());
        if self.channel == Channel::Off || !sha_ok || is_cancel_command(&job.command) {
            return None;
        }
        repo_base(&job.repository_name)
    }

    fn status(
        &self,
        base: &str,
        job: &DispatchJob,
        context: &str,
        state: &str,
        text: &str,
    ) -> (String, String) {
        let body = json!({
            "state": state,
            "context": context,
            "description": truncate_chars(text, DESCRIPTION_LIMIT),
            "target_url": self.job_url(&job.id),
        });
        (format!("{base}/statuses/{}", job.sha), body.to_string())
    }

    fn pending(
        &self,
        job: &DispatchJob,
        context: &str,
        text: &str,
        check: serde_json::Value,
    ) -> Vec<NewReport> {
        let Some(base) = self.reported(job) else {
            return Vec::new();
        };
        let (path, body) = match self.channel {
            Channel::Statuses => self.status(&base, job, context, "pending", text),
            _ => (format!("{base}/check-runs"), check.to_string()),
        };
        vec![NewReport {
            path,
            body,
            supersedable: true,
        }]
    }
}

impl ReportsFor for Lifecycle {
    fn stored(&self, j: &NewJob) -> Vec<NewReport> {
        let url = self.job_url(&j.job.id);
        let run = check_run(&j.job, &j.status_context, &url);
        self.pending(&j.job, &j.status_context, "queued", run.queued())
    }

    fn accepted(&self, a: &AcceptedJob) -> Vec<NewReport> {
        let url = self.job_url(&a.job.id);
        let run = check_run(&a.job, &a.status_context, &url);
        let text = format!("running on {}", a.machine);
        self.pending(
            &a.job,
            &a.status_context,
            &text,
            run.in_progress(&a.machine, a.accepted_ms),
        )
    }

    fn finished(
        &self,
        f: &FinishedJob,
        result_status: &str,
        summary: &str,
    ) -> Vec<(String, String)> {
        if self.channel == Channel::Off {
            return Vec::new();
        }
        let job = &f.job;
        let mut out = Vec::new();
        if let Some(base) = self.reported(job) {
            match self.channel {
                Channel::Statuses => {
                    let text = if summary.is_empty() {
                        format!("{}: {result_status}", job.dag_name)
                    } else {
                        summary.to_owned()
                    };
                    let state = commit_state(result_status);
                    out.push(self.status(&base, job, &f.status_context, state, &text));
                }
                _ => {
                    let url = self.job_url(&job.id);
                    let done = Completion {
                        dag: &job.dag_name,
                        result_status,
                        summary,
                        machine: &f.machine,
                        started_ms: f.started_ms,
                        finished_ms: f.finished_ms,
                        log_tail: "",
                    };
                    let body = check_run(job, &f.status_context, &url).completed(&done);
                    out.push((format!("{base}/check-runs"), body.to_string()));
                }
            }
        }
        out.extend(command_comment(f, result_status, summary));
        out
    }
}

fn check_run<'a>(job: &'a DispatchJob, name: &'a str, url: &'a str) -> CheckRun<'a> {
    CheckRun {
        name,
        head_sha: &job.sha,
        external_id: &job.id,
        details_url: url,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn job() -> DispatchJob {
        DispatchJob {
            id: "j1".into(),
            repository_name: "o/r".into(),
            dag_name: "build".into(),
            sha: "abc123".into(),
            ..DispatchJob::default()
        }
    }

    fn lifecycle(channel: Channel) -> Lifecycle {
        Lifecycle {
            channel,
            public_url: "https://hub.example".into(),
        }
    }

    fn new_job(job: DispatchJob) -> NewJob {
        NewJob {
            job,
            target_license: String::new(),
            target_server_id: String::new(),
            status_context: "dispatch/build".into(),
        }
    }

    fn finished(job: DispatchJob) -> FinishedJob {
        FinishedJob {
            job,
            status_context: "dispatch/build".into(),
            machine: "box".into(),
            started_ms: Some(0),
            finished_ms: 5_000,
        }
    }

    fn parse(body: &str) -> Value {
        serde_json::from_str(body).unwrap()
    }

    #[test]
    fn statuses_carry_target_url_and_pending_ones_are_supersedable() {
        let l = lifecycle(Channel::Statuses);
        let stored = l.stored(&new_job(job()));
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].path, "/repos/o/r/statuses/abc123");
        assert!(stored[0].supersedable);
        assert_eq!(
            parse(&stored[0].body),
            json!({"state": "pending", "context": "dispatch/build", "description": "queued",
                   "target_url": "https://hub.example/jobs/j1"})
        );
        let accepted = l.accepted(&AcceptedJob {
            job: job(),
            status_context: "dispatch/build".into(),
            machine: "box".into(),
            accepted_ms: 0,
        });
        assert_eq!(parse(&accepted[0].body)["description"], "running on box");
        let done = l.finished(&finished(job()), "failed", "");
        assert_eq!(
            parse(&done[0].1),
            json!({"state": "failure", "context": "dispatch/build", "description": "build: failed",
                   "target_url": "https://hub.example/jobs/j1"})
        );
    }

    #[test]
    fn check_runs_replace_statuses_and_comments_stay() {
        let l = lifecycle(Channel::CheckRuns);
        let stored = l.stored(&new_job(job()));
        assert_eq!(stored[0].path, "/repos/o/r/check-runs");
        assert_eq!(parse(&stored[0].body)["status"], "queued");
        let mut command = job();
        command.command = "build".into();
        command.issue_number = 4;
        let done = l.finished(&finished(command), "succeeded", "ok");
        assert_eq!(done.len(), 2);
        assert_eq!(done[0].0, "/repos/o/r/check-runs");
        assert_eq!(parse(&done[0].1)["conclusion"], "success");
        assert_eq!(done[1].0, "/repos/o/r/issues/4/comments");
    }

    #[test]
    fn nothing_without_a_channel_a_sha_or_for_a_cancel_job() {
        assert!(lifecycle(Channel::Off).stored(&new_job(job())).is_empty());
        assert!(lifecycle(Channel::Off)
            .finished(&finished(job()), "failed", "")
            .is_empty());
        let mut no_sha = job();
        no_sha.sha.clear();
        assert!(lifecycle(Channel::Statuses)
            .stored(&new_job(no_sha))
            .is_empty());
        let mut cancel = job();
        cancel.command = "cancel".into();
        assert!(lifecycle(Channel::CheckRuns)
            .stored(&new_job(cancel))
            .is_empty());
        let mut odd = job();
        odd.repository_name = "o/../x".into();
        assert!(lifecycle(Channel::Statuses)
            .finished(&finished(odd), "failed", "")
            .is_empty());
    }
}
