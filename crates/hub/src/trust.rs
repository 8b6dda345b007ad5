//! Who may trigger: the gate between a signed delivery and the jobs it may create. Pure logic, no
//! IO; the webhook handler first reads the few facts it needs from the store (see [`ForkQuery`]),
//! then asks [`decide`].
//!
//! The rules (`docs/security.md`, "Who may trigger"):
//! - A comment command (`<mention> <alias>`, `cancel`, `approve`) counts only when the comment's
//!   author is allowed by the binding: `comment.author_association` in its
//!   `allowed_associations` or `comment.user.login` in its `allowed_users`. A cancel stops only
//!   jobs of bindings that allow the commenter.
//! - A `pull_request` event whose head repository is not the base repository (a fork, or a head
//!   repository that is gone) starts a binding only as its `fork_pull_requests` says: `never`,
//!   `approved` (held back, [`Verdict::held`], until `<mention> approve` dispatches it once) or
//!   `always`.
//! - A `check_run` event is fork code unless it names a pull request of the repository itself
//!   with its head SHA, or the hub saw that SHA pushed to the repository or as the head of one of
//!   its own pull requests; fork code runs only bindings with `fork_pull_requests = "always"`, and
//!   its branch name (chosen by the fork's author) never matches a branch pattern.
//! - A comment command on a pull request runs the head the hub last recorded for it (an
//!   `issue_comment` names no SHA); on a fork's pull request, a head newer than the comment is not
//!   run.
//! - Anything turned away creates no job and is recorded with its [`Outcome`] and a reason.

use dispatch_protocol::{is_cancel_command, DispatchJob};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::bindings::{Binding, ForkPolicy, Trigger, APPROVE_COMMAND};
use crate::matching::{
    binding_takes, facts, jobs_for_delivery, jobs_for_facts, parse_command_line, Facts, NewJob,
};

/// How a delivery was taken: recorded with it and counted in
/// `dispatch_hub_webhooks_received_total{outcome=...}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Taken: jobs were created, or a command was carried out.
    Accepted,
    /// A redelivery of a delivery already recorded, or a comment command already taken.
    Duplicate,
    /// A comment command from someone the bindings do not allow.
    NotAllowed,
    /// Fork code (a fork pull request, a check run on a fork's commit) that its bindings do not
    /// run, or not yet.
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

/// What came of a delivery, by the gate or by a button on the hub's own check runs: recorded
/// with the delivery like any other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Taken {
    /// `duplicate` for a redelivery, else what the delivery asked for came to.
    pub outcome: Outcome,
    /// The jobs created (a redelivery: the ones created the first time).
    pub job_ids: Vec<String>,
    /// Why it was turned away, or what was done (empty for a redelivery).
    pub reason: String,
}

/// Milliseconds since the Unix epoch of a GitHub timestamp: `2019-05-15T15:20:33Z`, or with an
/// offset (`2019-05-15T08:20:33-07:00`); fractions of a second are dropped. `None` when `text` is
/// not one.
pub(crate) fn github_time_ms(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let digits = b.get(from..from + len)?;
        digits.iter().try_fold(0_i64, |n, d| {
            d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0'))
        })
    };
    let sep = |at: usize, allowed: &[u8]| b.get(at).is_some_and(|c| allowed.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &fraction[digits..];
    }
    let offset_s = match rest.as_bytes() {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let two = |a: u8, b: u8| -> Option<i64> {
                (a.is_ascii_digit() && b.is_ascii_digit())
                    .then(|| i64::from(a - b'0') * 10 + i64::from(b - b'0'))
            };
            let (h, m) = (two(*h1, *h2)?, two(*m1, *m2)?);
            let s = (h * 60 + m) * 60;
            if *sign == b'-' {
                -s
            } else {
                s
            }
        }
        _ => return None,
    };
    // Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = ((days * 24 + hour) * 60 + minute) * 60 + second - offset_s;
    Some(seconds * 1000)
}

/// A pull request's head as one event showed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PrHead {
    pub number: i64,
    pub sha: String,
    /// The head repository is not the base repository (or is gone).
    pub fork: bool,
    /// When the event happened (`pull_request.updated_at`), not when it arrived; `None` when the
    /// payload does not say (the store then takes the arrival time).
    pub event_ms: Option<i64>,
}

/// What a delivery shows about heads, kept by the store whatever is decided about the delivery:
/// the latest head of each pull request (ordered by the events' own times), and the commits that
/// are the repository's own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Sighting {
    pub repository: String,
    pub pr_head: Option<PrHead>,
    /// A commit of the repository itself: a push's `after`, a same-repository pull request's head.
    pub own_sha: Option<String>,
}

fn is_commit_sha(text: &str) -> bool {
    text.len() == 40
        && text.bytes().all(|b| b.is_ascii_hexdigit())
        && text.bytes().any(|b| b != b'0')
}

/// What `event` shows about heads, if anything.
pub(crate) fn sighting(event: &str, payload: &Value) -> Option<Sighting> {
    let f = facts(event, payload);
    if f.repository_name.is_empty() || !is_commit_sha(&f.sha) {
        return None;
    }
    let mut seen = Sighting {
        repository: f.repository_name.clone(),
        ..Sighting::default()
    };
    match event {
        "push" if !f.ignore => seen.own_sha = Some(f.sha),
        "pull_request" | "pull_request_review_comment" if f.pull_request_number != 0 => {
            let fork = is_fork(payload);
            if !fork {
                seen.own_sha = Some(f.sha.clone());
            }
            seen.pr_head = Some(PrHead {
                number: f.pull_request_number,
                sha: f.sha,
                fork,
                event_ms: payload
                    .pointer("/pull_request/updated_at")
                    .and_then(Value::as_str)
                    .and_then(github_time_ms),
            });
        }
        _ => return None,
    }
    Some(seen)
}

/// The store lookup a delivery needs before it can be decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ForkQuery {
    /// Is `sha` a commit of the repository itself, and which fork pull request has it as head?
    CheckRun { repository: String, sha: String },
    /// The latest head recorded for pull request `number`.
    PullHead { repository: String, number: i64 },
}

/// What the store knows, the answer to a [`ForkQuery`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ForkState {
    /// `CheckRun`: the SHA came in a push to the repository or as the head of one of its own pull
    /// requests.
    pub own_head: bool,
    /// `CheckRun`: a fork pull request whose head the hub saw at this SHA (0: none known).
    pub fork_pr: i64,
    /// `PullHead`: the latest head recorded (its `event_ms` always set).
    pub latest_head: Option<PrHead>,
}

/// A fork pull request event held back: the store keeps the latest per pull request (by the
/// event's own time), with its payload and headers, so that `approve` can dispatch it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HeldFork {
    pub repository: String,
    pub number: i64,
    pub head_sha: String,
    /// As [`PrHead::event_ms`].
    pub event_ms: Option<i64>,
}

/// What the store keeps from a delivery besides its jobs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Keep {
    /// A fork pull request event held back, to dispatch on approval.
    pub held: Option<HeldFork>,
    pub sighting: Option<Sighting>,
}

/// `<mention> cancel` from an allowed commenter.
#[derive(Debug, Clone)]
pub(crate) struct CancelCommand {
    /// The cancel job each targeted server gets; the store fills in id, license, target and the
    /// job ids to stop.
    pub template: DispatchJob,
    pub repository: String,
    /// The pull request or issue number the comment is on.
    pub number: i64,
    /// Who asked.
    pub login: String,
    /// Only this job of the pull request or issue (the "Cancel" button of its check run).
    pub only_job: Option<String>,
    /// Only jobs of these bindings: those that allow the commenter. `None`: jobs of any binding
    /// (the "Cancel" button, which GitHub shows only to people with write access).
    pub only_bindings: Option<Vec<String>>,
}

/// Which head an approve names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ApproveTarget {
    /// `<mention> approve`: the held head, only if it is the pull request's latest head and the
    /// comment was written after that head arrived.
    Latest,
    /// `<mention> approve <sha>`: the held head, only if it starts with these hex digits (7 to
    /// 40, lowercase).
    Prefix(String),
    /// `<mention> approve <word>` where the word is no SHA prefix: nothing is dispatched.
    Invalid(String),
}

impl ApproveTarget {
    fn parse(word: Option<&str>) -> ApproveTarget {
        match word {
            None => ApproveTarget::Latest,
            Some(w) if (7..=40).contains(&w.len()) && w.bytes().all(|b| b.is_ascii_hexdigit()) => {
                ApproveTarget::Prefix(w.to_ascii_lowercase())
            }
            Some(w) => ApproveTarget::Invalid(w.chars().take(40).collect()),
        }
    }
}

/// `<mention> approve` from a commenter allowed by at least one binding that takes approvals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApproveCommand {
    pub repository: String,
    pub number: i64,
    pub login: String,
    /// Bindings with `fork_pull_requests = "approved"` whose allowed commenters include this one.
    pub binding_ids: Vec<String>,
    pub target: ApproveTarget,
    /// When the comment was written (`comment.created_at`), if the payload says.
    pub comment_ms: Option<i64>,
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
    /// A fork pull request event some `approved` binding held back, to remember.
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

/// Whether a `check_run` payload lists a pull request of the repository itself (head and base
/// repository the same) whose head is the check run's SHA. GitHub lists no fork pull requests
/// there.
fn lists_own_pull_request(payload: &Value, sha: &str) -> bool {
    let Some(prs) = payload
        .pointer("/check_run/pull_requests")
        .and_then(Value::as_array)
    else {
        return false;
    };
    prs.iter().any(|pr| {
        let id = |pointer: &str| pr.pointer(pointer).and_then(Value::as_i64);
        let head_repo = id("/head/repo/id");
        head_repo.is_some()
            && head_repo == id("/base/repo/id")
            && pr.pointer("/head/sha").and_then(Value::as_str) == Some(sha)
    })
}

/// The store lookup `decide` needs for this delivery, if any.
pub(crate) fn fork_query(event: &str, payload: &Value) -> Option<ForkQuery> {
    let f = facts(event, payload);
    if f.repository_name.is_empty() {
        return None;
    }
    match event {
        "check_run" if !f.sha.is_empty() => Some(ForkQuery::CheckRun {
            repository: f.repository_name,
            sha: f.sha,
        }),
        "issue_comment" if f.pull_request_number != 0 => Some(ForkQuery::PullHead {
            repository: f.repository_name,
            number: f.pull_request_number,
        }),
        _ => None,
    }
}

/// The comment a comment command came in: GitHub creates each comment once, with one id and
/// one text, so a command runs once per comment (a delivery id is not signed, and a captured
/// delivery could come again under a new one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CommandComment {
    pub event: String,
    pub comment_id: i64,
    /// SHA-256 of the comment's text, hex.
    pub body_sha256: String,
}

/// The comment of a comment command; `None` for anything but a new comment holding a command.
pub(crate) fn command_comment(
    event: &str,
    payload: &Value,
    mention: &str,
) -> Option<CommandComment> {
    if !is_comment_event(event) {
        return None;
    }
    let f = facts(event, payload);
    let body = f.comment_body.as_deref()?;
    if f.action != "created" || f.comment_id == 0 || parse_command_line(body, mention).is_none() {
        return None;
    }
    Some(CommandComment {
        event: event.to_owned(),
        comment_id: f.comment_id,
        body_sha256: dispatch_util::hex(&Sha256::digest(body.as_bytes())),
    })
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

/// When the comment was written.
fn comment_ms(payload: &Value) -> Option<i64> {
    payload
        .pointer("/comment/created_at")
        .and_then(Value::as_str)
        .and_then(github_time_ms)
}

fn is_comment_event(event: &str) -> bool {
    Trigger::CommentCommand.events().contains(&event)
}

fn short(sha: &str) -> &str {
    sha.get(..7).unwrap_or(sha)
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
    let mut f = facts(event, payload);
    let (login, association) = commenter(payload);
    let comment = is_comment_event(event);
    if comment {
        let line = f
            .comment_body
            .as_deref()
            .and_then(|body| parse_command_line(body, mention));
        match line {
            Some((w, _)) if is_cancel_command(w) => {
                return decide_cancel(bindings, mention, event, delivery_id, payload, &f)
            }
            Some((w, arg)) if w.eq_ignore_ascii_case(APPROVE_COMMAND) => {
                return decide_approve(bindings, event, &f, payload, arg)
            }
            _ => {}
        }
    }
    // An `issue_comment` names no SHA: the run gets the head the hub last recorded, so that code
    // pushed after the command is not what runs.
    let pinned = match (&fork.latest_head, event) {
        (Some(head), "issue_comment") if f.pull_request_number != 0 => {
            f.sha.clone_from(&head.sha);
            Some(head)
        }
        _ => None,
    };
    let fork_check_run =
        event == "check_run" && !lists_own_pull_request(payload, &f.sha) && !fork.own_head;
    if fork_check_run {
        f.treat_as_fork_code(fork.fork_pr);
    }
    let matched = jobs_for_facts(bindings, mention, event, delivery_id, &f);
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
    let jobs: Vec<NewJob> = if comment {
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
    if let Some(head) = pinned.filter(|h| h.fork) {
        let written = comment_ms(payload);
        let after_head = written.zip(head.event_ms).is_some_and(|(w, e)| w > e);
        if !after_head {
            return Verdict::turned_away(
                Outcome::ForkNotApproved,
                format!(
                    "the head of fork pull request #{} changed to {} after this comment was written; not run (comment again to run {})",
                    f.pull_request_number,
                    short(&head.sha),
                    short(&head.sha)
                ),
            );
        }
    }
    // Fork code: a pull request from a fork, or a check run on a commit not known as the
    // repository's own.
    let fork_pr = match event {
        "pull_request" if is_fork(payload) => Some(f.pull_request_number),
        "check_run" if fork_check_run => Some(fork.fork_pr),
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
    let policy = |j: &NewJob| binding(j).map_or(ForkPolicy::Never, |b| b.fork_pull_requests);
    // Only `always` runs fork code as it comes; `approved` waits for an approval, which
    // dispatches the held event once (a later event on the same SHA waits for a new one).
    let (run, held): (Vec<NewJob>, Vec<NewJob>) = jobs
        .into_iter()
        .partition(|j| policy(j) == ForkPolicy::Always);
    let awaits_approval = held.iter().any(|j| policy(j) == ForkPolicy::Approved);
    let held = (awaits_approval && event == "pull_request").then(|| HeldFork {
        repository: f.repository_name.clone(),
        number,
        head_sha: f.sha.clone(),
        event_ms: payload
            .pointer("/pull_request/updated_at")
            .and_then(Value::as_str)
            .and_then(github_time_ms),
    });
    if run.is_empty() {
        let reason = if event == "check_run" {
            let what = if number != 0 {
                format!("the head of fork pull request #{number}")
            } else {
                format!(
                    "a commit the hub has not seen pushed to {} nor as the head of one of its own pull requests",
                    f.repository_name
                )
            };
            format!(
                "check run on {} is fork code ({what}); it runs only bindings with fork_pull_requests = \"always\"",
                short(&f.sha)
            )
        } else {
            let head = payload
                .pointer("/pull_request/head/repo/full_name")
                .and_then(Value::as_str)
                .unwrap_or("a deleted fork");
            format!(
                "pull request #{number} from {head} is not run: its bindings take fork pull requests only with fork_pull_requests = \"always\", or \"approved\" after `{mention} {APPROVE_COMMAND}` on the pull request"
            )
        };
        return Verdict {
            held,
            ..Verdict::turned_away(Outcome::ForkNotApproved, reason)
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
    // Whatever binding made a job, the cancel reaches it only if that binding allows this
    // commenter: a binding open to contributors must not let them stop the owner's runs.
    let only_bindings: Vec<String> = bindings
        .iter()
        .filter(|b| {
            b.repository.eq_ignore_ascii_case(&f.repository_name)
                && b.allows_commenter(login, association)
        })
        .map(|b| b.id.clone())
        .collect();
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
            only_bindings: Some(only_bindings),
        })),
        held: None,
    }
}

fn decide_approve(
    bindings: &[Binding],
    event: &str,
    f: &Facts,
    payload: &Value,
    arg: Option<&str>,
) -> Verdict {
    let (login, association) = commenter(payload);
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
            target: ApproveTarget::parse(arg),
            comment_ms: comment_ms(payload),
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

    /// One `auto` binding per fork policy, its DAG named after the policy.
    fn each_fork_policy() -> [Binding; 3] {
        [
            binding("never", Trigger::Auto, ForkPolicy::Never),
            binding("approved", Trigger::Auto, ForkPolicy::Approved),
            binding("always", Trigger::Auto, ForkPolicy::Always),
        ]
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
               "pull_request": {"number": 3, "head": head, "updated_at": "2024-01-02T03:04:05Z",
                                "base": {"ref": "main", "repo": {"full_name": REPO}}}})
    }

    fn run(bindings: &[Binding], event: &str, payload: &Value, fork: ForkState) -> Verdict {
        decide(bindings, "@dispatch", event, "d", payload, fork)
    }

    /// Asserts that `v` turns fork code away with a reason that says each of `words`.
    fn assert_fork_refused(v: &Verdict, words: &[&str]) {
        assert_eq!(v.outcome, Outcome::ForkNotApproved, "{}", v.reason);
        for word in words {
            assert!(v.reason.contains(word), "{word:?} not in {:?}", v.reason);
        }
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
        let bindings = each_fork_policy();
        // Head repository, outcome, DAGs run, whether the event is held.
        type Case<'a> = (Option<&'a str>, Outcome, &'a [&'a str], bool);
        let cases: [Case; 4] = [
            (
                Some(REPO),
                Outcome::Accepted,
                &["never", "approved", "always"],
                false,
            ),
            (
                Some("O/R"),
                Outcome::Accepted,
                &["never", "approved", "always"],
                false,
            ),
            (Some("fork/r"), Outcome::Accepted, &["always"], true),
            (None, Outcome::Accepted, &["always"], true),
        ];
        for (head, outcome, dags, held) in cases {
            let v = run(&bindings, "pull_request", &pull(head), ForkState::default());
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
        assert_fork_refused(&v, &["fork/r", "@dispatch approve"]);
        assert_eq!(
            v.held,
            Some(HeldFork {
                repository: REPO.into(),
                number: 3,
                head_sha: "a".repeat(40),
                event_ms: github_time_ms("2024-01-02T03:04:05Z"),
            })
        );
        let v = run(
            &bindings[..1],
            "pull_request",
            &pull(None),
            ForkState::default(),
        );
        assert!(v.reason.contains("a deleted fork"), "{}", v.reason);
        assert_eq!(v.held, None, "no binding could approve it: nothing held");
    }

    /// A check run on `sha`, listing `prs`.
    fn check_run(sha: &str, prs: Value) -> Value {
        json!({"action": "rerequested", "repository": {"full_name": REPO, "id": 10},
               "check_run": {"id": 4, "head_sha": sha, "pull_requests": prs,
                             "check_suite": {"head_branch": "main"}}})
    }

    /// A `pull_requests` entry of a check run: head repository `head_repo`, head `sha`.
    fn listed(head_repo: i64, sha: &str) -> Value {
        json!({"number": 5, "head": {"ref": "main", "sha": sha, "repo": {"id": head_repo}},
               "base": {"ref": "main", "repo": {"id": 10}}})
    }

    #[test]
    fn a_check_run_is_fork_code_unless_the_repository_is_known_to_hold_it() {
        let sha = "b".repeat(40);
        assert_eq!(
            fork_query("check_run", &check_run(&sha, json!([]))),
            Some(ForkQuery::CheckRun {
                repository: REPO.into(),
                sha: sha.clone()
            })
        );
        let mut bindings = each_fork_policy();
        for b in &mut bindings {
            b.branch_pattern = "main".into();
        }
        let own = ForkState {
            own_head: true,
            ..ForkState::default()
        };
        // Pull requests listed, what the store knows, the DAGs run.
        let cases: [(Value, ForkState, &[&str]); 6] = [
            (json!([]), own.clone(), &["never", "approved", "always"]),
            (
                json!([listed(10, &sha)]),
                ForkState::default(),
                &["never", "approved", "always"],
            ),
            // Unknown, listing nothing: fork code, and its branch `main` (a fork's own) does not
            // match `main`.
            (json!([]), ForkState::default(), &[]),
            // A pull request from another repository, or of another head, proves nothing.
            (json!([listed(11, &sha)]), ForkState::default(), &[]),
            (
                json!([listed(10, &"c".repeat(40))]),
                ForkState::default(),
                &[],
            ),
            (
                json!([]),
                ForkState {
                    fork_pr: 3,
                    ..ForkState::default()
                },
                &[],
            ),
        ];
        for (prs, state, dags) in cases {
            let v = run(
                &bindings,
                "check_run",
                &check_run(&sha, prs.clone()),
                state.clone(),
            );
            assert_eq!(
                job_dags(&v),
                dags,
                "{prs} {state:?}: {} {}",
                v.outcome.as_str(),
                v.reason
            );
            assert!(v.held.is_none(), "a check run is not held");
        }
        let v = run(
            &bindings,
            "check_run",
            &check_run(&sha, json!([])),
            ForkState::default(),
        );
        assert_eq!(
            v.outcome,
            Outcome::NoBinding,
            "the fork's branch name matched nothing"
        );
        // Without patterns, only `always` runs fork code, on the pull request's ref.
        let plain = [
            binding("approved", Trigger::Auto, ForkPolicy::Approved),
            binding("always", Trigger::Auto, ForkPolicy::Always),
        ];
        let v = run(
            &plain,
            "check_run",
            &check_run(&sha, json!([])),
            ForkState {
                fork_pr: 3,
                ..ForkState::default()
            },
        );
        let Action::Jobs(jobs) = &v.action else {
            panic!("{v:?}")
        };
        assert_eq!(jobs.len(), 1);
        assert_eq!(
            (
                jobs[0].job.dag_name.as_str(),
                jobs[0].job.git_ref.as_str(),
                jobs[0].job.pull_request_number
            ),
            ("always", "refs/pull/3/head", 3)
        );
        let v = run(
            &plain[..1],
            "check_run",
            &check_run(&sha, json!([])),
            ForkState::default(),
        );
        assert_fork_refused(&v, &["bbbbbbb is fork code", "not seen pushed"]);
        let own_run = run(&plain, "check_run", &check_run(&sha, json!([])), own);
        let Action::Jobs(jobs) = &own_run.action else {
            panic!("{own_run:?}")
        };
        assert_eq!(
            jobs[0].job.git_ref, "refs/heads/main",
            "its branch is the repository's"
        );
    }

    #[test]
    fn sightings_record_heads_and_own_commits() {
        let sha = "a".repeat(40);
        let fork = sighting("pull_request", &pull(Some("fork/r"))).unwrap();
        assert_eq!(
            fork,
            Sighting {
                repository: REPO.into(),
                pr_head: Some(PrHead {
                    number: 3,
                    sha: sha.clone(),
                    fork: true,
                    event_ms: github_time_ms("2024-01-02T03:04:05Z"),
                }),
                own_sha: None,
            }
        );
        let same = sighting("pull_request", &pull(Some(REPO))).unwrap();
        assert_eq!(same.own_sha.as_deref(), Some(sha.as_str()));
        assert!(same.pr_head.is_some_and(|h| !h.fork));
        let push = |after: &str, deleted: bool| {
            json!({"ref": "refs/heads/x", "after": after, "deleted": deleted,
                   "repository": {"full_name": REPO}})
        };
        assert_eq!(
            sighting("push", &push(&"c".repeat(40), false))
                .unwrap()
                .own_sha,
            Some("c".repeat(40))
        );
        assert_eq!(sighting("push", &push(&"0".repeat(40), true)), None);
        assert_eq!(sighting("push", &push("abc", false)), None);
        assert_eq!(
            sighting("issue_comment", &comment("hi", "o", "OWNER", true)),
            None
        );
    }

    #[test]
    fn github_times() {
        let cases = [
            ("1970-01-01T00:00:00Z", Some(0)),
            ("2019-05-15T15:20:33Z", Some(1_557_933_633_000)),
            ("2019-05-15T08:20:33-07:00", Some(1_557_933_633_000)),
            ("2019-05-15T17:20:33+02:00", Some(1_557_933_633_000)),
            ("2019-05-15T15:20:33.123Z", Some(1_557_933_633_000)),
            ("2000-02-29T00:00:00Z", Some(951_782_400_000)),
            ("1969-12-31T23:59:59Z", Some(-1000)),
            ("2019-05-15 15:20:33Z", Some(1_557_933_633_000)),
            ("2019-05-15T15:20:33", None),
            ("2019-13-15T15:20:33Z", None),
            ("2019-05-15T15:20:33Zx", None),
            ("1557933633", None),
            ("", None),
            ("2019-05-15T15:20:3éZ", None),
        ];
        for (text, want) in cases {
            assert_eq!(github_time_ms(text), want, "{text}");
        }
    }

    #[test]
    fn a_comment_command_runs_the_latest_recorded_head() {
        let b = binding("build", Trigger::CommentCommand, ForkPolicy::Never);
        let head = |fork: bool, at: &str| ForkState {
            latest_head: Some(PrHead {
                number: 7,
                sha: "d".repeat(40),
                fork,
                event_ms: github_time_ms(at),
            }),
            ..ForkState::default()
        };
        let mut c = comment("@dispatch build", "o", "OWNER", true);
        c["comment"]["created_at"] = json!("2024-01-02T03:04:05Z");
        let sha_of = |v: &Verdict| match &v.action {
            Action::Jobs(jobs) => jobs[0].job.sha.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            fork_query("issue_comment", &c),
            Some(ForkQuery::PullHead {
                repository: REPO.into(),
                number: 7
            })
        );
        let v = run(
            std::slice::from_ref(&b),
            "issue_comment",
            &c,
            ForkState::default(),
        );
        assert_eq!(sha_of(&v), "", "no head recorded: none pinned");
        for fork in [false, true] {
            let v = run(
                std::slice::from_ref(&b),
                "issue_comment",
                &c,
                head(fork, "2024-01-02T03:00:00Z"),
            );
            assert_eq!(sha_of(&v), "d".repeat(40), "fork {fork}");
        }
        // A fork's head newer than the comment: the commenter cannot have seen it.
        let v = run(
            std::slice::from_ref(&b),
            "issue_comment",
            &c,
            head(true, "2024-01-02T03:04:05Z"),
        );
        assert_fork_refused(&v, &["changed to ddddddd after this comment"]);
        let v = run(
            &[b],
            "issue_comment",
            &c,
            head(false, "2024-01-02T05:00:00Z"),
        );
        assert_eq!(
            sha_of(&v),
            "d".repeat(40),
            "the repository's own head: pinned"
        );
        assert_eq!(
            fork_query(
                "issue_comment",
                &comment("@dispatch build", "o", "OWNER", false)
            ),
            None,
            "an issue has no head"
        );
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
    fn approve_names_a_head_by_its_sha_prefix() {
        let bindings = [binding("test", Trigger::Auto, ForkPolicy::Approved)];
        let target = |body: &str| {
            let mut c = comment(body, "m", "MEMBER", true);
            c["comment"]["created_at"] = json!("2024-01-02T03:04:05Z");
            match run(&bindings, "issue_comment", &c, ForkState::default()).action {
                Action::Approve(a) => {
                    assert_eq!(a.comment_ms, github_time_ms("2024-01-02T03:04:05Z"));
                    a.target
                }
                other => panic!("{other:?}"),
            }
        };
        let cases = [
            ("@dispatch approve", ApproveTarget::Latest),
            (
                "@dispatch approve EC26C3E",
                ApproveTarget::Prefix("ec26c3e".into()),
            ),
            (
                "@dispatch approve ec26c3e57ca3a959ca5aad62de7213c562f8c821 thanks",
                ApproveTarget::Prefix("ec26c3e57ca3a959ca5aad62de7213c562f8c821".into()),
            ),
            (
                "@dispatch approve ec26c3",
                ApproveTarget::Invalid("ec26c3".into()),
            ),
            (
                "@dispatch approve please",
                ApproveTarget::Invalid("please".into()),
            ),
            (
                "@dispatch approve ec26c3e57ca3a959ca5aad62de7213c562f8c8210",
                ApproveTarget::Invalid("ec26c3e57ca3a959ca5aad62de7213c562f8c821".into()),
            ),
        ];
        for (body, want) in cases {
            assert_eq!(target(body), want, "{body}");
        }
    }

    #[test]
    fn a_cancel_names_the_bindings_that_allow_the_commenter() {
        let mut open = binding("docs", Trigger::CommentCommand, ForkPolicy::Never);
        open.allowed_associations = vec!["NONE".into()];
        let owner_only = binding("build", Trigger::CommentCommand, ForkPolicy::Never);
        let auto = binding("test", Trigger::Auto, ForkPolicy::Never);
        let mut elsewhere = binding("other", Trigger::Auto, ForkPolicy::Never);
        elsewhere.repository = "o/elsewhere".into();
        let bindings = [open, owner_only, auto, elsewhere];
        let only = |login: &str, association: &str| {
            let c = comment("@dispatch cancel", login, association, true);
            match run(&bindings, "issue_comment", &c, ForkState::default()).action {
                Action::Cancel(c) => c.only_bindings,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(only("stranger", "NONE"), Some(vec!["docs-id".to_owned()]));
        assert_eq!(
            only("owner", "OWNER"),
            Some(vec!["build-id".to_owned(), "test-id".to_owned()])
        );
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
