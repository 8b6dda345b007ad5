//! Turning one GitHub delivery into dispatch jobs: which bindings match, and the job fields taken
//! from the payload. Pure logic, no IO.
//!
//! What each event offers:
//!
//! | event | `ref` | `sha` | branch/tag for the patterns |
//! | --- | --- | --- | --- |
//! | `push` | `ref` | `after` | the pushed branch or tag; a push that deletes its ref starts nothing |
//! | `pull_request` | `refs/pull/<n>/head` (fetchable for forks too) | `pull_request.head.sha` | the **base** branch the PR targets (as GitHub Actions' `branches` filter) |
//! | `create` | `refs/heads/<ref>` or `refs/tags/<ref>` by `ref_type` | — | the created branch or tag |
//! | `release` | `refs/tags/<tag_name>` | `target_commitish` when it is a full SHA | the tag |
//! | `check_run` | `refs/heads/<check_suite.head_branch>`; on fork code `refs/pull/<n>/head` or none | `check_run.head_sha` | the head branch; none on fork code |
//! | `issue_comment` | `refs/pull/<n>/head` on a PR, else none | the PR's latest head the hub recorded, if any | patterns are not allowed on comment bindings |
//! | `pull_request_review_comment` | `refs/pull/<n>/head` | `pull_request.head.sha` | (same) |
//! | `repository_dispatch` | `refs/heads/<branch>` | — | `branch` |
//! | `workflow_dispatch` | `ref` | — | the branch or tag of `ref` |
//!
//! A binding without `action` takes every action of its events, except two events whose other
//! actions are noise for a CI runner: `pull_request` defaults to `opened`, `synchronize` and
//! `reopened` (as GitHub Actions does), `check_run` to `rerequested` and `requested_action` (so
//! other tools' check runs do not start DAGs). Comment commands always require `created`.
//!
//! An event with no branch or tag never matches a binding that sets a pattern. When both patterns
//! are set, either may match. Globs use `glob` syntax with `*` stopping at `/` and `**` crossing it.
//! What counts as fork code, and the SHA a comment gets, is the trust gate's (`crate::trust`).

use dispatch_protocol::{is_cancel_command, DispatchJob, CANCEL_COMMAND};
use serde_json::Value;

use crate::bindings::{Binding, Trigger};

/// A job about to be stored: the wire job (without `payload`/`headers`, which the store keeps
/// separately as raw bytes) plus what only the hub needs.
#[derive(Debug, Clone)]
pub(crate) struct NewJob {
    pub job: DispatchJob,
    /// `binding.license`: empty = any license may take it.
    pub target_license: String,
    /// The one server that may take it (a cancel goes where the runs are); empty = any server.
    pub target_server_id: String,
    /// Commit status context for reporting.
    pub status_context: String,
}

/// What a delivery says, in the fields bindings and jobs need.
#[derive(Debug, Default)]
pub(crate) struct Facts {
    pub repository_name: String,
    pub repository_id: i64,
    pub installation_id: i64,
    pub action: String,
    pub actor_login: String,
    pub git_ref: String,
    pub sha: String,
    branch: Option<String>,
    tag: Option<String>,
    pub pull_request_number: i64,
    pub issue_number: i64,
    pub comment_id: i64,
    pub comment_body: Option<String>,
    check_run_id: i64,
    dispatch_event_type: String,
    /// Set when the event must not start anything (a deleting push).
    pub ignore: bool,
}

impl Facts {
    /// A `check_run` on a commit that may come from a fork (`docs/security.md`): its branch is
    /// named by whoever pushed it, so no branch pattern may match it and the job's ref is the
    /// pull request's (`pr`, 0 when unknown: then no ref), never `refs/heads/<their branch>`.
    pub(crate) fn treat_as_fork_code(&mut self, pr: i64) {
        self.branch = None;
        self.tag = None;
        self.git_ref = if pr == 0 {
            String::new()
        } else {
            format!("refs/pull/{pr}/head")
        };
        if self.pull_request_number == 0 {
            self.pull_request_number = pr;
        }
    }
}

fn s(v: &Value, path: &[&str]) -> String {
    let mut cur = v;
    for key in path {
        match cur.get(key) {
            Some(next) => cur = next,
            None => return String::new(),
        }
    }
    cur.as_str().unwrap_or_default().to_owned()
}

fn n(v: &Value, path: &[&str]) -> i64 {
    let mut cur = v;
    for key in path {
        match cur.get(key) {
            Some(next) => cur = next,
            None => return 0,
        }
    }
    cur.as_i64().unwrap_or_default()
}

fn split_ref(git_ref: &str) -> (Option<String>, Option<String>) {
    if let Some(b) = git_ref.strip_prefix("refs/heads/") {
        (Some(b.to_owned()), None)
    } else if let Some(t) = git_ref.strip_prefix("refs/tags/") {
        (None, Some(t.to_owned()))
    } else {
        (None, None)
    }
}

fn is_full_sha(text: &str) -> bool {
    text.len() == 40 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The facts of a delivery of `event` with payload `p`.
pub(crate) fn facts(event: &str, p: &Value) -> Facts {
    let mut f = Facts {
        repository_name: s(p, &["repository", "full_name"]),
        repository_id: n(p, &["repository", "id"]),
        installation_id: n(p, &["installation", "id"]),
        action: s(p, &["action"]),
        actor_login: s(p, &["sender", "login"]),
        ..Facts::default()
    };
    match event {
        "push" => {
            f.git_ref = s(p, &["ref"]);
            f.sha = s(p, &["after"]);
            (f.branch, f.tag) = split_ref(&f.git_ref);
            f.ignore = p.get("deleted").and_then(Value::as_bool).unwrap_or(false);
        }
        "pull_request" | "pull_request_review_comment" => {
            let number = match n(p, &["number"]) {
                0 => n(p, &["pull_request", "number"]),
                x => x,
            };
            f.pull_request_number = number;
            if number != 0 {
                f.git_ref = format!("refs/pull/{number}/head");
            }
            f.sha = s(p, &["pull_request", "head", "sha"]);
            let base = s(p, &["pull_request", "base", "ref"]);
            f.branch = (!base.is_empty()).then_some(base);
            if event == "pull_request_review_comment" {
                f.comment_id = n(p, &["comment", "id"]);
                f.comment_body = Some(s(p, &["comment", "body"]));
            }
        }
        "create" => {
            let name = s(p, &["ref"]);
            match s(p, &["ref_type"]).as_str() {
                "branch" => {
                    f.git_ref = format!("refs/heads/{name}");
                    f.branch = Some(name);
                }
                "tag" => {
                    f.git_ref = format!("refs/tags/{name}");
                    f.tag = Some(name);
                }
                _ => {}
            }
        }
        "release" => {
            let tag = s(p, &["release", "tag_name"]);
            if !tag.is_empty() {
                f.git_ref = format!("refs/tags/{tag}");
                f.tag = Some(tag);
            }
            let target = s(p, &["release", "target_commitish"]);
            if is_full_sha(&target) {
                f.sha = target;
            }
        }
        "check_run" => {
            f.check_run_id = n(p, &["check_run", "id"]);
            f.sha = s(p, &["check_run", "head_sha"]);
            let branch = s(p, &["check_run", "check_suite", "head_branch"]);
            if !branch.is_empty() {
                f.git_ref = format!("refs/heads/{branch}");
                f.branch = Some(branch);
            }
            if let Some(pr) = p
                .pointer("/check_run/pull_requests/0/number")
                .and_then(Value::as_i64)
            {
                f.pull_request_number = pr;
            }
        }
        "issue_comment" => {
            f.issue_number = n(p, &["issue", "number"]);
            if p.pointer("/issue/pull_request")
                .is_some_and(|v| !v.is_null())
            {
                f.pull_request_number = f.issue_number;
                f.git_ref = format!("refs/pull/{}/head", f.issue_number);
            }
            f.comment_id = n(p, &["comment", "id"]);
            f.comment_body = Some(s(p, &["comment", "body"]));
        }
        "repository_dispatch" => {
            // GitHub delivers the caller's `event_type` as `action`; accept an explicit
            // `event_type` too for hand-made deliveries.
            f.dispatch_event_type = match s(p, &["event_type"]) {
                t if t.is_empty() => f.action.clone(),
                t => t,
            };
            let branch = s(p, &["branch"]);
            if !branch.is_empty() {
                f.git_ref = format!("refs/heads/{branch}");
                f.branch = Some(branch);
            }
        }
        "workflow_dispatch" => {
            f.git_ref = s(p, &["ref"]);
            (f.branch, f.tag) = split_ref(&f.git_ref);
        }
        _ => {}
    }
    f
}

/// The command word after `mention` at the start of a line of `body` (the first such line wins).
pub(crate) fn parse_command<'a>(body: &'a str, mention: &str) -> Option<&'a str> {
    parse_command_line(body, mention).map(|(word, _)| word)
}

/// The command word after `mention` at the start of a line of `body` (the first such line wins),
/// with the word after it on that line, if any. Lines inside a fenced code block (```` ``` ```` or
/// `~~~`) and quoted lines (`>`) hold no command: a pasted log or a quoted comment must not run
/// anything.
pub(crate) fn parse_command_line<'a>(
    body: &'a str,
    mention: &str,
) -> Option<(&'a str, Option<&'a str>)> {
    // The fence that opened the code block we are in: its character and length (CommonMark: it
    // is closed by a fence of the same character, at least as long).
    let mut fence: Option<(char, usize)> = None;
    for line in body.lines() {
        let text = line.trim_start();
        let marker = text.chars().next().filter(|c| *c == '`' || *c == '~');
        if let Some(c) = marker {
            let run = text.chars().take_while(|x| *x == c).count();
            if run >= 3 {
                match fence {
                    None => fence = Some((c, run)),
                    Some((open, len)) if open == c && run >= len => fence = None,
                    Some(_) => {}
                }
                continue;
            }
        }
        if fence.is_some() || text.starts_with('>') {
            continue;
        }
        let mut words = text.split_whitespace();
        let Some(first) = words.next() else { continue };
        if !first.eq_ignore_ascii_case(mention) {
            continue;
        }
        if let Some(word) = words.next() {
            return Some((word, words.next()));
        }
    }
    None
}

fn pattern_matches(pattern: &str, name: Option<&String>) -> bool {
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    match (glob::Pattern::new(pattern), name) {
        (Ok(p), Some(name)) => p.matches_with(name, options),
        _ => false,
    }
}

fn action_matches(b: &Binding, event: &str, action: &str) -> bool {
    if !b.action.is_empty() {
        return b.action == action;
    }
    match event {
        "pull_request" => matches!(action, "opened" | "synchronize" | "reopened"),
        "check_run" => matches!(action, "rerequested" | "requested_action"),
        _ => true,
    }
}

fn refs_match(b: &Binding, f: &Facts) -> bool {
    if b.branch_pattern.is_empty() && b.tag_pattern.is_empty() {
        return true;
    }
    (!b.branch_pattern.is_empty() && pattern_matches(&b.branch_pattern, f.branch.as_ref()))
        || (!b.tag_pattern.is_empty() && pattern_matches(&b.tag_pattern, f.tag.as_ref()))
}

/// A new job id: a UUIDv7 in simple form (32 hex digits), valid as a run id and URL path segment.
pub(crate) fn new_job_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// Whether `b` takes this delivery by its event filters alone (repository, event, action,
/// dispatch type, branch and tag); comment bindings also need a `created` comment. The command
/// word of a comment is not looked at.
pub(crate) fn binding_takes(b: &Binding, event: &str, f: &Facts) -> bool {
    b.trigger.events().contains(&event)
        && b.repository.eq_ignore_ascii_case(&f.repository_name)
        && (b.event_name.is_empty() || b.event_name == event)
        && action_matches(b, event, &f.action)
        && (b.dispatch_event_type.is_empty()
            || (event == "repository_dispatch" && b.dispatch_event_type == f.dispatch_event_type))
        && refs_match(b, f)
        // Edits and deletions of a comment must not run it again.
        && (b.trigger != Trigger::CommentCommand || f.action == "created")
}

/// The jobs one delivery creates: one per matching binding (a cancel command makes one cancel job
/// per DAG bound to comment commands on the repository).
pub(crate) fn jobs_for_delivery(
    bindings: &[Binding],
    mention: &str,
    event: &str,
    delivery_id: &str,
    payload: &Value,
) -> Vec<NewJob> {
    jobs_for_facts(
        bindings,
        mention,
        event,
        delivery_id,
        &facts(event, payload),
    )
}

/// [`jobs_for_delivery`] for facts already read (and perhaps adjusted by the trust gate).
pub(crate) fn jobs_for_facts(
    bindings: &[Binding],
    mention: &str,
    event: &str,
    delivery_id: &str,
    f: &Facts,
) -> Vec<NewJob> {
    if f.ignore || f.repository_name.is_empty() {
        return Vec::new();
    }
    let command = f
        .comment_body
        .as_deref()
        .and_then(|body| parse_command(body, mention));
    let mut jobs: Vec<NewJob> = Vec::new();
    for b in bindings {
        if !binding_takes(b, event, f) {
            continue;
        }
        let job_command = if b.trigger == Trigger::CommentCommand {
            match command {
                Some(word) if is_cancel_command(word) => {
                    let dup = jobs.iter().any(|j| {
                        j.job.command == CANCEL_COMMAND
                            && j.job.dag_name == b.dag
                            && j.target_license == b.license
                    });
                    if dup {
                        continue;
                    }
                    CANCEL_COMMAND.to_owned()
                }
                Some(word) if word.eq_ignore_ascii_case(b.alias()) => b.alias().to_owned(),
                _ => continue,
            }
        } else {
            String::new()
        };
        jobs.push(NewJob {
            job: DispatchJob {
                id: new_job_id(),
                binding_id: b.id.clone(),
                installation_id: f.installation_id,
                repository_id: f.repository_id,
                repository_name: f.repository_name.clone(),
                license_id: b.license.clone(),
                dag_name: b.dag.clone(),
                event_name: event.to_owned(),
                event_action: f.action.clone(),
                delivery_id: delivery_id.to_owned(),
                git_ref: f.git_ref.clone(),
                sha: f.sha.clone(),
                pull_request_number: f.pull_request_number,
                issue_number: f.issue_number,
                comment_id: f.comment_id,
                command: job_command,
                actor_login: f.actor_login.clone(),
                check_run_id: f.check_run_id,
                ..DispatchJob::default()
            },
            target_license: b.license.clone(),
            target_server_id: String::new(),
            status_context: b.status_context(),
        });
    }
    jobs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn binding(trigger: Trigger) -> Binding {
        Binding {
            id: "b".into(),
            ..Binding::new("o/r", "build", trigger)
        }
    }

    /// The jobs the one binding `b` makes of a delivery `d` of `event` (mention `@d`).
    fn jobs_of(b: &Binding, event: &str, payload: &Value) -> Vec<NewJob> {
        jobs_for_delivery(std::slice::from_ref(b), "@d", event, "d", payload)
    }

    fn push(git_ref: &str) -> Value {
        json!({"ref": git_ref, "after": "abc", "repository": {"full_name": "O/R", "id": 7}, "sender": {"login": "me"}})
    }

    #[test]
    fn parse_command_table() {
        let cases = [
            ("@dispatch build", Some("build")),
            ("hello\n  @Dispatch   deploy now", Some("deploy")),
            ("please @dispatch build", None),
            ("@dispatch", None),
            ("@dispatcher build", None),
            ("", None),
            ("```\n@dispatch deploy\n```", None),
            (
                "~~~~\n@dispatch deploy\n~~~\n@dispatch x\n~~~~\n@dispatch build",
                Some("build"),
            ),
            (
                "  ```sh\n@dispatch deploy\n  ```\n@dispatch build",
                Some("build"),
            ),
            ("> @dispatch deploy", None),
            ("  >@dispatch deploy\n@dispatch build", Some("build")),
            ("`@dispatch deploy`", None),
        ];
        for (body, want) in cases {
            assert_eq!(parse_command(body, "@dispatch"), want, "{body:?}");
        }
    }

    #[test]
    fn branch_and_tag_patterns() {
        let cases = [
            ("main", "", "refs/heads/main", true),
            ("main", "", "refs/heads/mainline", false),
            ("release/*", "", "refs/heads/release/1.0", true),
            ("release/*", "", "refs/heads/release/1/2", false),
            ("release/**", "", "refs/heads/release/1/2", true),
            ("", "v*", "refs/tags/v1.2", true),
            ("", "v*", "refs/heads/v1.2", false),
            ("main", "v*", "refs/tags/v1", true),
            ("main", "", "refs/tags/main", false),
        ];
        for (bp, tp, git_ref, want) in cases {
            let mut b = binding(Trigger::Auto);
            b.branch_pattern = bp.into();
            b.tag_pattern = tp.into();
            let jobs = jobs_for_delivery(&[b], "@dispatch", "push", "d", &push(git_ref));
            assert_eq!(jobs.len() == 1, want, "{bp:?} {tp:?} {git_ref}");
        }
    }

    #[test]
    fn filters_and_repository() {
        let b = binding(Trigger::Auto);
        let mut other_repo = push("refs/heads/x");
        other_repo["repository"]["full_name"] = json!("o/other");
        assert!(jobs_of(&b, "push", &other_repo).is_empty());
        assert!(jobs_of(&b, "issues", &push("refs/heads/x")).is_empty());
        let mut deleted = push("refs/heads/x");
        deleted["deleted"] = json!(true);
        assert!(jobs_of(&b, "push", &deleted).is_empty());
        let mut only_pr = b.clone();
        only_pr.event_name = "pull_request".into();
        assert!(jobs_of(&only_pr, "push", &push("refs/heads/x")).is_empty());
        let jobs = jobs_for_delivery(&[b], "@d", "push", "d1", &push("refs/heads/x"));
        let j = &jobs[0].job;
        assert_eq!(
            (
                j.repository_name.as_str(),
                j.repository_id,
                j.sha.as_str(),
                j.actor_login.as_str()
            ),
            ("O/R", 7, "abc", "me")
        );
        assert_eq!(j.delivery_id, "d1");
        assert_eq!(jobs[0].status_context, "dispatch/build");
    }

    #[test]
    fn default_actions_for_pull_request_and_check_run() {
        let b = binding(Trigger::Auto);
        let pr = |action: &str| json!({"action": action, "number": 3, "repository": {"full_name": "o/r"}});
        let cr = |action: &str| json!({"action": action, "check_run": {"id": 4}, "repository": {"full_name": "o/r"}});
        let count = |b: &Binding, event: &str, p: Value| jobs_of(b, event, &p).len();
        for (action, want) in [
            ("opened", 1),
            ("synchronize", 1),
            ("reopened", 1),
            ("closed", 0),
            ("labeled", 0),
        ] {
            assert_eq!(count(&b, "pull_request", pr(action)), want, "{action}");
        }
        assert_eq!(count(&b, "check_run", cr("completed")), 0);
        assert_eq!(count(&b, "check_run", cr("rerequested")), 1);
        let mut closed = b.clone();
        closed.action = "closed".into();
        assert_eq!(count(&closed, "pull_request", pr("closed")), 1);
    }

    #[test]
    fn comment_commands() {
        let mut b = binding(Trigger::CommentCommand);
        b.command_alias = "ship".into();
        let payload = |body: &str, action: &str| {
            json!({"action": action, "issue": {"number": 5, "pull_request": {"url": "u"}},
                   "comment": {"id": 9, "body": body}, "repository": {"full_name": "o/r"}})
        };
        let run = |body: &str, action: &str| {
            jobs_for_delivery(
                std::slice::from_ref(&b),
                "@dispatch",
                "issue_comment",
                "d",
                &payload(body, action),
            )
        };
        let jobs = run("@dispatch ship", "created");
        assert_eq!(jobs.len(), 1);
        let j = &jobs[0].job;
        assert_eq!(
            (
                j.command.as_str(),
                j.issue_number,
                j.pull_request_number,
                j.comment_id
            ),
            ("ship", 5, 5, 9)
        );
        assert_eq!(j.git_ref, "refs/pull/5/head");
        assert_eq!(run("@dispatch cancel", "created")[0].job.command, "cancel");
        assert!(run("@dispatch build", "created").is_empty());
        assert!(run("@dispatch ship", "edited").is_empty());
        assert!(run("ship it", "created").is_empty());
    }

    #[test]
    fn repository_dispatch_event_type() {
        let mut b = binding(Trigger::ManualDispatch);
        b.dispatch_event_type = "nightly".into();
        let p =
            |t: &str| json!({"action": t, "branch": "main", "repository": {"full_name": "o/r"}});
        let jobs = jobs_of(&b, "repository_dispatch", &p("nightly"));
        assert_eq!(jobs[0].job.git_ref, "refs/heads/main");
        assert!(jobs_of(&b, "repository_dispatch", &p("other")).is_empty());
        let wd = json!({"ref": "refs/heads/main", "repository": {"full_name": "o/r"}});
        assert!(jobs_of(&b, "workflow_dispatch", &wd).is_empty());
    }

    #[test]
    fn job_ids_are_run_id_safe_and_unique() {
        let a = new_job_id();
        let b = new_job_id();
        assert_ne!(a, b);
        assert!(
            a.len() <= 64
                && a.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
        );
    }
}
