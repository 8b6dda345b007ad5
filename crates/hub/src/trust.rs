//! Who may trigger: the gate between a signed delivery and the jobs it may create. Pure logic, no
//! IO; the webhook handler first reads the one fact it needs from the store (was this fork head
//! approved, see [`ForkQuery`]), then asks [`decide`].
//!
//! The rules (`docs/security.md`, "Who may trigger"):
//! - A comment command (`<mention> <alias>`, `cancel`, `approve`) counts only when the comment's
//!   author is allowed by the binding: `comment.author_association` in its
//!   `allowed_associations` or `comment.user.login` in its `allowed_users`.
//! - A `pull_request` event whose head repository is not the base repository (a fork, or a head
//!   repository that is gone) starts a binding only as its `fork_pull_requests` says: `never`,
//!   `approved` (this head SHA was approved with `<mention> approve`) or `always`. A fork event
//!   held back is remembered ([`Verdict::held`]) so that an approval can dispatch it later.
//! - A `check_run` event on the head SHA of a fork pull request the hub held back is gated the
//!   same way: re-running a check must not run fork code a binding would not run.
//! - Anything turned away creates no job and is recorded with its [`Outcome`] and a reason.

use dispatch_protocol::{is_cancel_command, DispatchJob};
use serde_json::Value;

use crate::bindings::{Binding, ForkPolicy, Trigger, APPROVE_COMMAND};
use crate::matching::{binding_takes, facts, jobs_for_delivery, parse_command, Facts, NewJob};

/// How a delivery was taken: recorded with it and counted in
/// `dispatch_hub_webhooks_received_total{outcome=...}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Taken: jobs were created, or a command was carried out.
    Accepted,
    /// A redelivery of a delivery already recorded.
    Duplicate,
    /// A comment command from someone the bindings do not allow.
    NotAllowed,
    /// A fork pull request (or a check run on one) that its bindings do not run, or not yet.
    ForkNotApproved,
    /// No binding takes it.
    NoBinding,
}

impl Outcome {
    /// The stored and counted word.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Duplicate => "duplicate",
            Outcome::NotAllowed => "not_allowed",
            Outcome::ForkNotApproved => "fork_not_approved",
            Outcome::NoBinding => "no_binding",
        }
    }
}

/// The store lookup a delivery needs before it can be decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ForkQuery {
    /// Was head `sha` of fork pull request `number` approved?
    Pull {
        repository: String,
        number: i64,
        sha: String,
    },
    /// Which held fork pull request has head `sha`, and was that head approved?
    CheckRun { repository: String, sha: String },
}

/// What the store knows about a fork head, the answer to a [`ForkQuery`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ForkState {
    /// The held fork pull request whose head is the check run's SHA (0: none; `Pull` queries
    /// leave it 0).
    pub held_pr: i64,
    /// Whether that head SHA was approved.
    pub approved: bool,
}

/// A fork pull request event held back: the store keeps the latest per pull request, with its
/// payload and headers, so that `approve` can dispatch it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HeldFork {
    pub repository: String,
    pub number: i64,
    pub head_sha: String,
}

/// `<mention> cancel` from an allowed commenter.
#[derive(Debug, Clone)]
pub(crate) struct CancelCommand {
    /// The cancel job each targeted server gets; the store fills in id, license and target.
    pub template: DispatchJob,
    pub repository: String,
    /// The pull request or issue number the comment is on.
    pub number: i64,
    /// Who asked.
    pub login: String,
    /// Only this job of the pull request or issue (the "Cancel" button of its check run).
    pub only_job: Option<String>,
}

/// `<mention> approve` from a commenter allowed by at least one binding that takes approvals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApproveCommand {
    pub repository: String,
    pub number: i64,
    pub login: String,
    /// Bindings with `fork_pull_requests = "approved"` whose allowed commenters include this one.
    pub binding_ids: Vec<String>,
}

/// What to do with a delivery.
#[derive(Debug, Clone)]
pub(crate) enum Action {
    /// Store these jobs (none when the delivery is turned away).
    Jobs(Vec<NewJob>),
    /// Cancel the active jobs of a pull request or issue.
    Cancel(Box<CancelCommand>),
    /// Dispatch the held fork pull request event once for its head SHA.
    Approve(ApproveCommand),
}

/// The decision on one delivery.
#[derive(Debug, Clone)]
pub(crate) struct Verdict {
    pub outcome: Outcome,
    /// Why, in a sentence (empty when accepted as is).
    pub reason: String,
    pub action: Action,
    /// A fork pull request event some binding held back, to remember.
    pub held: Option<HeldFork>,
}

impl Verdict {
    fn turned_away(outcome: Outcome, reason: String) -> Verdict {
        Verdict {
            outcome,
            reason,
            action: Action::Jobs(Vec::new()),
            held: None,
        }
    }
}

/// Whether a `pull_request` payload comes from another repository than its base: the head
/// repository differs (case-insensitively), or is missing or null (its fork was deleted).
pub(crate) fn is_fork(payload: &Value) -> bool {
    let name = |pointer: &str| payload.pointer(pointer).and_then(Value::as_str);
    let base = name("/pull_request/base/repo/full_name").or(name("/repository/full_name"));
    match (name("/pull_request/head/repo/full_name"), base) {
        (Some(head), Some(base)) => !head.eq_ignore_ascii_case(base),
        _ => true,
    }
}

/// The fork lookup `decide` needs for this delivery, if any.
pub(crate) fn fork_query(event: &str, payload: &Value) -> Option<ForkQuery> {
    let f = facts(event, payload);
    if f.repository_name.is_empty() || f.sha.is_empty() {
        return None;
    }
    match event {
        "pull_request" if is_fork(payload) && f.pull_request_number != 0 => Some(ForkQuery::Pull {
            repository: f.repository_name,
            number: f.pull_request_number,
            sha: f.sha,
        }),
        "check_run" => Some(ForkQuery::CheckRun {
            repository: f.repository_name,
            sha: f.sha,
        }),
        _ => None,
    }
}

/// The comment's author: login and `author_association`.
fn commenter(payload: &Value) -> (&str, &str) {
    let text = |pointer: &str| {
        payload
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    (
        text("/comment/user/login"),
        text("/comment/author_association"),
    )
}

fn is_comment_event(event: &str) -> bool {
    Trigger::CommentCommand.events().contains(&event)
}

fn not_allowed(login: &str, association: &str, repository: &str) -> Verdict {
    let association = if association.is_empty() {
        "no association"
    } else {
        association
    };
    Verdict::turned_away(
        Outcome::NotAllowed,
        format!(
            "@{login} ({association}) is not allowed to give commands on {repository}: the bindings allow their allowed_associations and allowed_users only"
        ),
    )
}

/// Decides what a verified delivery may do. `fork` is the store's answer to [`fork_query`]
/// (default when there was none).
pub(crate) fn decide(
    bindings: &[Binding],
    mention: &str,
    event: &str,
    delivery_id: &str,
    payload: &Value,
    fork: ForkState,
) -> Verdict {
    let f = facts(event, payload);
    let (login, association) = commenter(payload);
    if is_comment_event(event) {
        let word = f
            .comment_body
            .as_deref()
            .and_then(|body| parse_command(body, mention));
        match word {
            Some(w) if is_cancel_command(w) => {
                return decide_cancel(bindings, mention, event, delivery_id, payload, &f)
            }
            Some(w) if w.eq_ignore_ascii_case(APPROVE_COMMAND) => {
                return decide_approve(bindings, event, &f, login, association)
            }
            _ => {}
        }
    }
    let matched = jobs_for_delivery(bindings, mention, event, delivery_id, payload);
    if matched.is_empty() {
        return Verdict::turned_away(
            Outcome::NoBinding,
            format!(
                "no binding takes `{event}`{} on {}",
                if f.action.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", f.action)
                },
                if f.repository_name.is_empty() {
                    "an unnamed repository"
                } else {
                    &f.repository_name
                }
            ),
        );
    }
    let binding = |j: &NewJob| bindings.iter().find(|b| b.id == j.job.binding_id);
    let jobs: Vec<NewJob> = if is_comment_event(event) {
        let allowed: Vec<NewJob> = matched
            .into_iter()
            .filter(|j| binding(j).is_some_and(|b| b.allows_commenter(login, association)))
            .collect();
        if allowed.is_empty() {
            return not_allowed(login, association, &f.repository_name);
        }
        allowed
    } else {
        matched
    };
    // Fork code: a pull request from a fork, or a check run on a held fork head.
    let fork_pr = match event {
        "pull_request" if is_fork(payload) => Some(f.pull_request_number),
        "check_run" if fork.held_pr != 0 => Some(fork.held_pr),
        _ => None,
    };
    let Some(number) = fork_pr else {
        return Verdict {
            outcome: Outcome::Accepted,
            reason: String::new(),
            action: Action::Jobs(jobs),
            held: None,
        };
    };
    let (run, held): (Vec<NewJob>, Vec<NewJob>) = jobs.into_iter().partition(|j| {
        match binding(j).map_or(ForkPolicy::Never, |b| b.fork_pull_requests) {
            ForkPolicy::Always => true,
            ForkPolicy::Approved => fork.approved,
            ForkPolicy::Never => false,
        }
    });
    let held = (!held.is_empty() && event == "pull_request").then(|| HeldFork {
        repository: f.repository_name.clone(),
        number,
        head_sha: f.sha.clone(),
    });
    if run.is_empty() {
        let head = payload
            .pointer("/pull_request/head/repo/full_name")
            .and_then(Value::as_str)
            .unwrap_or("a deleted fork");
        let what = if event == "check_run" {
            format!("check run on the head of fork pull request #{number}")
        } else {
            format!("pull request #{number} from {head}")
        };
        return Verdict {
            held,
            ..Verdict::turned_away(
                Outcome::ForkNotApproved,
                format!(
                    "{what} is not run: its bindings take fork pull requests only with fork_pull_requests = \"always\", or \"approved\" after `{mention} {APPROVE_COMMAND}` on the pull request"
                ),
            )
        };
    }
    Verdict {
        outcome: Outcome::Accepted,
        reason: String::new(),
        action: Action::Jobs(run),
        held,
    }
}

fn decide_cancel(
    bindings: &[Binding],
    mention: &str,
    event: &str,
    delivery_id: &str,
    payload: &Value,
    f: &Facts,
) -> Verdict {
    let (login, association) = commenter(payload);
    let takers: Vec<&Binding> = bindings
        .iter()
        .filter(|b| b.trigger == Trigger::CommentCommand && binding_takes(b, event, f))
        .collect();
    let number = if f.issue_number != 0 {
        f.issue_number
    } else {
        f.pull_request_number
    };
    let template = jobs_for_delivery(bindings, mention, event, delivery_id, payload)
        .into_iter()
        .next();
    let (Some(template), false) = (template, takers.is_empty() || number == 0) else {
        return Verdict::turned_away(
            Outcome::NoBinding,
            format!(
                "no comment_command binding of {} takes `{event}` on an issue or pull request",
                f.repository_name
            ),
        );
    };
    if !takers
        .iter()
        .any(|b| b.allows_commenter(login, association))
    {
        return not_allowed(login, association, &f.repository_name);
    }
    let mut template = template.job;
    // The cancel names runs by repository and number; no DAG or license of its own.
    template.dag_name.clear();
    template.license_id.clear();
    Verdict {
        outcome: Outcome::Accepted,
        reason: String::new(),
        action: Action::Cancel(Box::new(CancelCommand {
            template,
            repository: f.repository_name.clone(),
            number,
            login: login.to_owned(),
            only_job: None,
        })),
        held: None,
    }
}

fn decide_approve(
    bindings: &[Binding],
    event: &str,
    f: &Facts,
    login: &str,
    association: &str,
) -> Verdict {
    let repository = &f.repository_name;
    if f.action != "created" || f.pull_request_number == 0 {
        return Verdict::turned_away(
            Outcome::NoBinding,
            format!("`{APPROVE_COMMAND}` counts only in a new comment on a pull request ({event} {} on {repository})", f.action),
        );
    }
    let takers: Vec<&Binding> = bindings
        .iter()
        .filter(|b| {
            b.fork_pull_requests == ForkPolicy::Approved
                && b.repository.eq_ignore_ascii_case(repository)
        })
        .collect();
    if takers.is_empty() {
        return Verdict::turned_away(
            Outcome::NoBinding,
            format!(
                "no binding of {repository} takes approvals (fork_pull_requests = \"approved\")"
            ),
        );
    }
    let binding_ids: Vec<String> = takers
        .iter()
        .filter(|b| b.allows_commenter(login, association))
        .map(|b| b.id.clone())
        .collect();
    if binding_ids.is_empty() {
        return not_allowed(login, association, repository);
    }
    Verdict {
        outcome: Outcome::Accepted,
        reason: String::new(),
        action: Action::Approve(ApproveCommand {
            repository: repository.clone(),
            number: f.pull_request_number,
            login: login.to_owned(),
            binding_ids,
        }),
        held: None,
    }
}

/// The jobs an approval dispatches from the held event: the approving bindings that match it.
pub(crate) fn approved_jobs(
    bindings: &[Binding],
    mention: &str,
    binding_ids: &[String],
    event: &str,
    delivery_id: &str,
    payload: &str,
) -> Vec<NewJob> {
    let Ok(payload) = serde_json::from_str::<Value>(payload) else {
        return Vec::new();
    };
    let approving: Vec<Binding> = bindings
        .iter()
        .filter(|b| binding_ids.contains(&b.id))
        .cloned()
        .collect();
    jobs_for_delivery(&approving, mention, event, delivery_id, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const REPO: &str = "o/r";

    fn binding(dag: &str, trigger: Trigger, fork: ForkPolicy) -> Binding {
        Binding {
            id: format!("{dag}-id"),
            fork_pull_requests: fork,
            ..Binding::new(REPO, dag, trigger)
        }
    }

    fn comment(body: &str, login: &str, association: &str, on_pr: bool) -> Value {
        let mut issue = json!({"number": 7});
        if on_pr {
            issue["pull_request"] = json!({"url": "u"});
        }
        json!({"action": "created", "issue": issue, "repository": {"full_name": REPO},
               "comment": {"id": 1, "body": body, "author_association": association,
                           "user": {"login": login}}})
    }

    fn pull(head_repo: Option<&str>) -> Value {
        let head = match head_repo {
            Some(name) => json!({"sha": "a".repeat(40), "repo": {"full_name": name}}),
            None => json!({"sha": "a".repeat(40), "repo": null}),
        };
        json!({"action": "opened", "number": 3, "repository": {"full_name": REPO},
               "pull_request": {"number": 3, "head": head,
                                "base": {"ref": "main", "repo": {"full_name": REPO}}}})
    }

    fn run(bindings: &[Binding], event: &str, payload: &Value, fork: ForkState) -> Verdict {
        decide(bindings, "@dispatch", event, "d", payload, fork)
    }

    fn job_dags(v: &Verdict) -> Vec<String> {
        match &v.action {
            Action::Jobs(jobs) => jobs.iter().map(|j| j.job.dag_name.clone()).collect(),
            other => panic!("expected jobs, got {other:?}"),
        }
    }

    #[test]
    fn comment_commands_count_only_from_allowed_commenters() {
        let mut friendly = binding("build", Trigger::CommentCommand, ForkPolicy::Never);
        friendly.allowed_users = vec!["pal".into()];
        let mut open = binding("docs", Trigger::CommentCommand, ForkPolicy::Never);
        open.command_alias = "build".into();
        open.allowed_associations = vec!["CONTRIBUTOR".into(), "NONE".into()];
        let bindings = [friendly, open];
        let cases: [(&str, &str, &str, Outcome, &[&str]); 7] = [
            (
                "@dispatch build",
                "owner",
                "OWNER",
                Outcome::Accepted,
                &["build"],
            ),
            (
                "@dispatch build",
                "m",
                "MEMBER",
                Outcome::Accepted,
                &["build"],
            ),
            (
                "@dispatch build",
                "stranger",
                "NONE",
                Outcome::Accepted,
                &["docs"],
            ),
            (
                "@dispatch build",
                "PAL",
                "NONE",
                Outcome::Accepted,
                &["build", "docs"],
            ),
            (
                "@dispatch build",
                "x",
                "FIRST_TIMER",
                Outcome::NotAllowed,
                &[],
            ),
            ("@dispatch build", "x", "", Outcome::NotAllowed, &[]),
            (
                "@dispatch deploy",
                "owner",
                "OWNER",
                Outcome::NoBinding,
                &[],
            ),
        ];
        for (body, login, association, outcome, dags) in cases {
            let v = run(
                &bindings,
                "issue_comment",
                &comment(body, login, association, true),
                ForkState::default(),
            );
            assert_eq!(v.outcome, outcome, "{login} {association}: {}", v.reason);
            assert_eq!(job_dags(&v), dags, "{login} {association}");
            if outcome == Outcome::NotAllowed {
                assert!(v.reason.contains(&format!("@{login}")), "{}", v.reason);
            }
        }
    }

    #[test]
    fn cancel_needs_a_comment_binding_and_an_allowed_commenter() {
        let b = binding("build", Trigger::CommentCommand, ForkPolicy::Never);
        let cancel = |login: &str, association: &str, on_pr: bool| {
            run(
                std::slice::from_ref(&b),
                "issue_comment",
                &comment("@dispatch cancel", login, association, on_pr),
                ForkState::default(),
            )
        };
        let v = cancel("owner", "OWNER", true);
        let Action::Cancel(c) = &v.action else {
            panic!("{v:?}")
        };
        assert_eq!(
            (c.repository.as_str(), c.number, c.login.as_str()),
            (REPO, 7, "owner")
        );
        assert_eq!(c.template.command, "cancel");
        assert_eq!(
            (c.template.pull_request_number, c.template.issue_number),
            (7, 7)
        );
        assert!(c.template.dag_name.is_empty());
        assert!(
            matches!(cancel("owner", "OWNER", false).action, Action::Cancel(_)),
            "issues too"
        );
        assert_eq!(
            cancel("stranger", "NONE", true).outcome,
            Outcome::NotAllowed
        );
        let auto_only = binding("build", Trigger::Auto, ForkPolicy::Never);
        let v = run(
            &[auto_only],
            "issue_comment",
            &comment("@dispatch cancel", "owner", "OWNER", true),
            ForkState::default(),
        );
        assert_eq!(v.outcome, Outcome::NoBinding);
        let mut edited = comment("@dispatch cancel", "owner", "OWNER", true);
        edited["action"] = json!("edited");
        assert_eq!(
            run(&[b], "issue_comment", &edited, ForkState::default()).outcome,
            Outcome::NoBinding
        );
    }

    #[test]
    fn fork_pull_requests_follow_the_binding_policy() {
        let bindings = [
            binding("never", Trigger::Auto, ForkPolicy::Never),
            binding("approved", Trigger::Auto, ForkPolicy::Approved),
            binding("always", Trigger::Auto, ForkPolicy::Always),
        ];
        let approved = ForkState {
            held_pr: 0,
            approved: true,
        };
        // Head repository, fork state, outcome, DAGs run, whether the event is held.
        type Case<'a> = (Option<&'a str>, ForkState, Outcome, &'a [&'a str], bool);
        let cases: [Case; 5] = [
            (
                Some(REPO),
                ForkState::default(),
                Outcome::Accepted,
                &["never", "approved", "always"],
                false,
            ),
            (
                Some("O/R"),
                ForkState::default(),
                Outcome::Accepted,
                &["never", "approved", "always"],
                false,
            ),
            (
                Some("fork/r"),
                ForkState::default(),
                Outcome::Accepted,
                &["always"],
                true,
            ),
            (
                Some("fork/r"),
                approved,
                Outcome::Accepted,
                &["approved", "always"],
                true,
            ),
            (
                None,
                ForkState::default(),
                Outcome::Accepted,
                &["always"],
                true,
            ),
        ];
        for (head, state, outcome, dags, held) in cases {
            let v = run(&bindings, "pull_request", &pull(head), state);
            assert_eq!(v.outcome, outcome, "{head:?}");
            assert_eq!(job_dags(&v), dags, "{head:?}");
            assert_eq!(v.held.is_some(), held, "{head:?}");
        }
        let v = run(
            &bindings[..2],
            "pull_request",
            &pull(Some("fork/r")),
            ForkState::default(),
        );
        assert_eq!(v.outcome, Outcome::ForkNotApproved);
        assert!(
            v.reason.contains("fork/r") && v.reason.contains("@dispatch approve"),
            "{}",
            v.reason
        );
        assert_eq!(
            v.held,
            Some(HeldFork {
                repository: REPO.into(),
                number: 3,
                head_sha: "a".repeat(40)
            })
        );
        let v = run(
            &bindings[..1],
            "pull_request",
            &pull(None),
            ForkState::default(),
        );
        assert!(v.reason.contains("a deleted fork"), "{}", v.reason);
    }

    #[test]
    fn fork_query_and_check_runs_on_held_heads() {
        assert_eq!(fork_query("pull_request", &pull(Some(REPO))), None);
        assert_eq!(
            fork_query("pull_request", &pull(Some("fork/r"))),
            Some(ForkQuery::Pull {
                repository: REPO.into(),
                number: 3,
                sha: "a".repeat(40)
            })
        );
        let check = json!({"action": "rerequested", "repository": {"full_name": REPO},
                           "check_run": {"id": 4, "head_sha": "b".repeat(40), "pull_requests": []}});
        assert_eq!(
            fork_query("check_run", &check),
            Some(ForkQuery::CheckRun {
                repository: REPO.into(),
                sha: "b".repeat(40)
            })
        );
        assert_eq!(
            fork_query(
                "push",
                &json!({"after": "c", "repository": {"full_name": REPO}})
            ),
            None
        );
        let bindings = [
            binding("never", Trigger::Auto, ForkPolicy::Never),
            binding("approved", Trigger::Auto, ForkPolicy::Approved),
        ];
        let v = run(&bindings, "check_run", &check, ForkState::default());
        assert_eq!(
            job_dags(&v),
            ["never", "approved"],
            "not a held fork head: runs"
        );
        let held = ForkState {
            held_pr: 3,
            approved: false,
        };
        let v = run(&bindings, "check_run", &check, held);
        assert_eq!(v.outcome, Outcome::ForkNotApproved);
        assert!(v.held.is_none(), "a check run is not remembered");
        let v = run(
            &bindings,
            "check_run",
            &check,
            ForkState {
                approved: true,
                ..held
            },
        );
        assert_eq!(job_dags(&v), ["approved"]);
    }

    #[test]
    fn approve_needs_a_pull_request_an_approving_binding_and_an_allowed_commenter() {
        let mut approving = binding("test", Trigger::Auto, ForkPolicy::Approved);
        approving.allowed_users = vec!["pal".into()];
        let mut member_only = binding("deploy", Trigger::Auto, ForkPolicy::Approved);
        member_only.allowed_associations = vec!["MEMBER".into()];
        let bindings = [
            approving,
            member_only,
            binding("never", Trigger::Auto, ForkPolicy::Never),
        ];
        let approve = |login: &str, association: &str, on_pr: bool| {
            run(
                &bindings,
                "issue_comment",
                &comment("@dispatch approve", login, association, on_pr),
                ForkState::default(),
            )
        };
        let ids = |v: &Verdict| match &v.action {
            Action::Approve(a) => a.binding_ids.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(ids(&approve("m", "MEMBER", true)), ["test-id", "deploy-id"]);
        assert_eq!(ids(&approve("o", "OWNER", true)), ["test-id"]);
        assert_eq!(ids(&approve("pal", "NONE", true)), ["test-id"]);
        assert_eq!(
            approve("x", "CONTRIBUTOR", true).outcome,
            Outcome::NotAllowed
        );
        assert_eq!(approve("m", "MEMBER", false).outcome, Outcome::NoBinding);
        let v = run(
            &bindings[2..],
            "issue_comment",
            &comment("@dispatch approve", "m", "MEMBER", true),
            ForkState::default(),
        );
        assert_eq!(v.outcome, Outcome::NoBinding);
        assert!(v.reason.contains("approvals"), "{}", v.reason);
    }

    #[test]
    fn approved_jobs_come_from_the_approving_bindings_only() {
        let bindings = [
            binding("approved", Trigger::Auto, ForkPolicy::Approved),
            binding("other", Trigger::Auto, ForkPolicy::Approved),
            binding("always", Trigger::Auto, ForkPolicy::Always),
        ];
        let payload = pull(Some("fork/r")).to_string();
        let jobs = approved_jobs(
            &bindings,
            "@dispatch",
            &["approved-id".into()],
            "pull_request",
            "pr-delivery",
            &payload,
        );
        assert_eq!(jobs.len(), 1);
        assert_eq!(
            (
                jobs[0].job.dag_name.as_str(),
                jobs[0].job.delivery_id.as_str()
            ),
            ("approved", "pr-delivery")
        );
        assert_eq!(jobs[0].job.sha, "a".repeat(40));
        assert!(approved_jobs(
            &bindings,
            "@dispatch",
            &["approved-id".into()],
            "pull_request",
            "d",
            "not json"
        )
        .is_empty());
    }

    #[test]
    fn outcome_words() {
        let all = [
            Outcome::Accepted,
            Outcome::Duplicate,
            Outcome::NotAllowed,
            Outcome::ForkNotApproved,
            Outcome::NoBinding,
        ];
        let words: Vec<&str> = all.iter().map(|o| o.as_str()).collect();
        assert_eq!(
            words,
            [
                "accepted",
                "duplicate",
                "not_allowed",
                "fork_not_approved",
                "no_binding"
            ]
        );
    }
}
