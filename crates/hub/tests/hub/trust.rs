//! Who may trigger (`docs/security.md`, "Who may trigger"): comment authors, fork pull requests
//! and their approval, the outcome recorded for every delivery; cancel routing to the servers that
//! hold the runs; comments cut to GitHub's limit; too-large jobs reported.

use super::*;
use dispatch_hub::ForkPolicy;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

/// Server ids are UUIDs (the scheduler makes UUIDv7s); these stand for three machines.
const SRV_1: &str = "0190c000-0000-7000-8000-000000000001";
const SRV_2: &str = "0190c000-0000-7000-8000-000000000002";
const SRV_3: &str = "0190c000-0000-7000-8000-000000000003";
/// The head repository of the fork pull requests.
const FORK: &str = "fork-owner/Hello-World";
/// Head SHA of the `pull_request/opened` fixture (pull request #2 of [`HELLO`]).
const PR_SHA: &str = "ec26c3e57ca3a959ca5aad62de7213c562f8c821";
/// A later push to that pull request.
const NEW_SHA: &str = "0123456789abcdef0123456789abcdef01234567";

/// A webhook delivery's event: its name (`X-GitHub-Event`) and its body.
#[derive(Clone)]
struct Event {
    name: &'static str,
    body: Vec<u8>,
}

impl Event {
    fn new(name: &'static str, body: Vec<u8>) -> Event {
        Event { name, body }
    }

    fn json(name: &'static str, payload: &Value) -> Event {
        Event::new(name, serde_json::to_vec(payload).unwrap())
    }

    /// This event with the field at the JSON `pointer` set to `value`.
    fn with(self, pointer: &str, value: Value) -> Event {
        let mut payload: Value = serde_json::from_slice(&self.body).unwrap();
        *payload.pointer_mut(pointer).expect(pointer) = value;
        Event::json(self.name, &payload)
    }
}

fn json_of(name: &str) -> Value {
    serde_json::from_slice(&fixture(name)).unwrap()
}

/// What the answer to a delivery must say: its status, how many jobs it made, its outcome.
type Want<'a> = (StatusCode, usize, &'a str);

/// The answer to a delivery that dispatched `n` jobs.
fn dispatched(n: usize) -> Want<'static> {
    (StatusCode::ACCEPTED, n, "accepted")
}

/// The answer to a fork's event held until someone approves it.
fn held() -> Want<'static> {
    no_job("fork_not_approved")
}

/// The answer to a command taken but with nothing to dispatch (its comment says why).
fn answered() -> Want<'static> {
    no_job("accepted")
}

/// The answer to a delivery that dispatched nothing, recorded as `outcome`.
fn no_job(outcome: &str) -> Want<'_> {
    (StatusCode::OK, 0, outcome)
}

/// When the comments of [`comment_by`] are written: after every event of these tests.
const LATER: &str = "2030-01-01T00:00:00Z";

/// The time of the `n`th event of a test, as GitHub writes it: a minute apart.
fn at(n: u32) -> String {
    format!("2024-05-01T10:{n:02}:00Z")
}

/// The issue comment fixture as `login` with `association`, saying `body`, on pull request
/// `number` of [`HELLO`], written [`LATER`].
fn comment_by(body: &str, login: &str, association: &str, number: i64) -> Event {
    comment_at(body, login, association, number, LATER)
}

/// [`comment_by`], written at `created_at`, with its own comment id (a comment command runs once
/// per comment id).
fn comment_at(body: &str, login: &str, association: &str, number: i64, created_at: &str) -> Event {
    use std::sync::atomic::{AtomicI64, Ordering};
    static NEXT_ID: AtomicI64 = AtomicI64::new(1);
    let mut p = json_of("issue_comment/created.payload.json");
    p["comment"]["id"] = json!(NEXT_ID.fetch_add(1, Ordering::Relaxed));
    p["comment"]["created_at"] = json!(created_at);
    p["comment"]["body"] = json!(body);
    p["comment"]["author_association"] = json!(association);
    p["comment"]["user"]["login"] = json!(login);
    p["issue"]["number"] = json!(number);
    p["issue"]["pull_request"] =
        json!({"url": "https://api.github.com/repos/Codertocat/Hello-World/pulls/2"});
    Event::json("issue_comment", &p)
}

/// The owner's comment `body` on pull request `number`.
fn owner_says(body: &str, number: i64) -> Event {
    comment_by(body, "Codertocat", "OWNER", number)
}

/// The `pull_request/opened` fixture (#2) with `action`, coming from [`FORK`] at `sha`.
fn fork_pr(action: &str, sha: &str) -> Event {
    let mut p = json_of("pull_request/opened.payload.json");
    p["action"] = json!(action);
    p["pull_request"]["head"]["repo"]["full_name"] = json!(FORK);
    p["pull_request"]["head"]["sha"] = json!(sha);
    Event::json("pull_request", &p)
}

/// [`fork_pr`] of an event that happened at `updated_at`.
fn fork_pr_at(action: &str, sha: &str, updated_at: &str) -> Event {
    fork_pr(action, sha).with("/pull_request/updated_at", json!(updated_at))
}

/// The `pull_request/opened` fixture: #2 of [`HELLO`], from a branch of the repository itself.
fn opened_pr() -> Event {
    Event::new("pull_request", fixture("pull_request/opened.payload.json"))
}

/// A `check_run` re-run on `sha` of [`HELLO`]; fork heads come with no pull requests.
fn check_rerun(sha: &str) -> Event {
    let run = json!({
        "action": "rerequested",
        "check_run": {"id": 4, "head_sha": sha, "pull_requests": [],
                      "check_suite": {"head_branch": "changes"}},
        "repository": {"full_name": HELLO, "id": 186853002},
        "sender": {"login": "Codertocat"}
    });
    Event::json("check_run", &run)
}

/// The DAG `dag` bound to `pull_request` events of [`HELLO`] with fork policy `fork`.
fn pr_binding(dag: &str, fork: ForkPolicy) -> Binding {
    let mut b = Binding::new(HELLO, dag, Trigger::Auto);
    b.event_name = "pull_request".into();
    b.fork_pull_requests = fork;
    b
}

/// A GitHub stand-in that answers every call 201.
async fn github() -> MockServer {
    let gh = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201))
        .mount(&gh)
        .await;
    gh
}

/// Waits until the hub has sent `n` reports in all.
async fn reports_sent(hub: &TestHub, n: usize) {
    hub.wait_for_metric(&format!(
        "dispatch_hub_reports_total{{result=\"sent\"}} {n}\n"
    ))
    .await;
}

/// The bodies GitHub received on `path`, in order.
async fn bodies(gh: &MockServer, path: &str) -> Vec<Value> {
    gh.received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == path)
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect()
}

/// The comments GitHub received on pull request or issue `number` of [`HELLO`].
async fn comments(gh: &MockServer, number: i64) -> Vec<String> {
    let path = format!("/repos/{HELLO}/issues/{number}/comments");
    bodies(gh, &path)
        .await
        .iter()
        .map(|b| b["body"].as_str().unwrap().to_owned())
        .collect()
}

/// The web pages' token of [`pages_hub`].
const UI_TOKEN: &str = "ui-token-of-the-trust-tests";

/// A hub with `bindings` whose web pages are open to [`UI_TOKEN`], where a test reads what the
/// hub recorded on whichever store backend it runs.
async fn pages_hub(bindings: Vec<Binding>) -> TestHub {
    TestHub::start_with(bindings, |cfg| cfg.ui_token = Some(Secret::new(UI_TOKEN))).await
}

/// The outcome and reason recorded for a delivery, as the deliveries page of a [`pages_hub`]
/// shows them.
async fn recorded(hub: &TestHub, delivery: &str) -> (String, String) {
    let resp = hub
        .http
        .get(format!("{}/deliveries", hub.base))
        .bearer_auth(UI_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let page = resp.text().await.unwrap();
    let row = page
        .split("<tr>")
        .find(|row| row.contains(&format!("<code>{delivery}</code>")))
        .unwrap_or_else(|| panic!("no row for {delivery} in\n{page}"));
    let outcome = row
        .split_once("<span class=\"status\">")
        .and_then(|(_, rest)| rest.split_once("</span>"))
        .map(|(outcome, _)| outcome)
        .unwrap_or_else(|| panic!("no outcome in {row}"));
    let mut reason = row
        .split_once("<br>")
        .map_or("", |(_, rest)| rest.split("</td>").next().unwrap_or(""))
        .to_owned();
    // `&amp;` last, so an escaped `&lt;` in the text stays `&lt;`.
    let escapes = [
        ("&lt;", "<"),
        ("&gt;", ">"),
        ("&quot;", "\""),
        ("&#39;", "'"),
        ("&amp;", "&"),
    ];
    for (escaped, text) in escapes {
        reason = reason.replace(escaped, text);
    }
    (outcome.to_owned(), reason)
}

/// Delivers `event` as `delivery` and checks the answer against `want`; returns the answer.
async fn expect(hub: &TestHub, delivery: &str, event: Event, want: Want<'_>) -> Value {
    let (status, answer) = hub.webhook(event.name, delivery, event.body).await;
    assert_eq!(
        (
            status,
            ids(&answer).len(),
            answer["outcome"].as_str().unwrap()
        ),
        want,
        "{delivery}: {answer}"
    );
    answer
}

/// The answer to a command: its reason, which must hold `has`.
fn reason_of(answer: &Value, has: &str) -> String {
    let reason = answer["reason"].as_str().unwrap_or_default().to_owned();
    assert!(reason.contains(has), "{has:?} not in {answer}");
    reason
}

/// Pulls, accepts and returns the id of the next job, which must be there.
async fn take(hub: &TestHub, c: &Creds) -> String {
    let id = hub.pull_id(c).await;
    hub.accept_ok(c, &id).await;
    id
}

#[tokio::test]
async fn a_strangers_comment_runs_nothing_and_cancels_nothing() {
    let hub = pages_hub(vec![build(Trigger::CommentCommand)]).await;
    let c = hub.activate("lic-a", SRV_1).await;
    expect(&hub, "own", owner_says("@dispatch build", 1), dispatched(1)).await;
    take(&hub, &c).await;

    for (delivery, body) in [("run", "@dispatch build"), ("cancel", "@dispatch cancel")] {
        let answer = expect(
            &hub,
            delivery,
            comment_by(body, "stranger", "NONE", 1),
            no_job("not_allowed"),
        )
        .await;
        let reason = answer["reason"].as_str().unwrap();
        assert!(reason.contains("@stranger (NONE)"), "{reason}");
        assert_eq!(
            recorded(&hub, delivery).await,
            ("not_allowed".to_owned(), reason.to_owned())
        );
    }
    assert_eq!(
        hub.pull(&c, 0).await.status(),
        StatusCode::NO_CONTENT,
        "no run, no cancel"
    );
    hub.metrics_with(&[
        "dispatch_hub_webhooks_received_total{outcome=\"not_allowed\"} 2",
        "dispatch_hub_jobs{state=\"accepted\"} 1",
    ])
    .await;
}

#[tokio::test]
async fn allowed_users_and_associations_are_the_bindings_choice() {
    let mut b = build(Trigger::CommentCommand);
    b.allowed_users = vec!["Friendly-Stranger".into()];
    b.allowed_associations = vec!["CONTRIBUTOR".into()];
    let hub = TestHub::start(vec![b]).await;
    let cases = [
        ("friendly-stranger", "NONE", dispatched(1)),
        ("someone", "CONTRIBUTOR", dispatched(1)),
        ("Codertocat", "OWNER", no_job("not_allowed")),
        ("someone", "FIRST_TIME_CONTRIBUTOR", no_job("not_allowed")),
    ];
    for (i, (login, association, want)) in cases.into_iter().enumerate() {
        let body = comment_by("@dispatch build", login, association, 1);
        expect(&hub, &format!("c{i}"), body, want).await;
    }
    let c = hub.activate("lic-a", SRV_1).await;
    let job = hub.pull_job(&c).await;
    assert_eq!(job["command"], "build");
}

#[tokio::test]
async fn delivery_outcomes_are_recorded_and_counted() {
    let hub = pages_hub(vec![
        build(Trigger::CommentCommand),
        pr_binding("test", ForkPolicy::Never),
    ])
    .await;
    let stranger = comment_by("@dispatch build", "stranger", "NONE", 1);
    expect(
        &hub,
        "d-allowed",
        owner_says("@dispatch build", 1),
        dispatched(1),
    )
    .await;
    expect(
        &hub,
        "d-allowed",
        owner_says("@dispatch build", 1),
        (StatusCode::ACCEPTED, 1, "duplicate"),
    )
    .await;
    expect(&hub, "d-stranger", stranger.clone(), no_job("not_allowed")).await;
    expect(&hub, "d-stranger", stranger, no_job("duplicate")).await;
    expect(&hub, "d-fork", fork_pr("opened", PR_SHA), held()).await;
    let issue = Event::new("issues", fixture("issues/opened.payload.json"));
    expect(&hub, "d-none", issue, no_job("no_binding")).await;
    for (delivery, outcome, reason_has) in [
        ("d-allowed", "accepted", ""),
        ("d-stranger", "not_allowed", "@stranger"),
        ("d-fork", "fork_not_approved", FORK),
        ("d-none", "no_binding", "no binding takes `issues`"),
    ] {
        let (got, reason) = recorded(&hub, delivery).await;
        assert_eq!(got, outcome, "{delivery}");
        assert!(reason.contains(reason_has), "{delivery}: {reason}");
    }
    hub.metrics_with(&[
        "dispatch_hub_webhooks_received_total{outcome=\"accepted\"} 1",
        "dispatch_hub_webhooks_received_total{outcome=\"duplicate\"} 2",
        "dispatch_hub_webhooks_received_total{outcome=\"not_allowed\"} 1",
        "dispatch_hub_webhooks_received_total{outcome=\"fork_not_approved\"} 1",
        "dispatch_hub_webhooks_received_total{outcome=\"no_binding\"} 1",
        "dispatch_hub_jobs{state=\"queued\"} 1",
    ])
    .await;
}

#[tokio::test]
async fn fork_pull_requests_run_only_where_the_binding_says_always() {
    let hub = TestHub::start(vec![
        pr_binding("never", ForkPolicy::Never),
        pr_binding("always", ForkPolicy::Always),
    ])
    .await;
    let c = hub.activate("lic-a", SRV_1).await;
    expect(&hub, "fork", fork_pr("opened", PR_SHA), dispatched(1)).await;
    let job = hub.pull_job(&c).await;
    assert_eq!(
        (job["dag_name"].as_str(), job["sha"].as_str()),
        (Some("always"), Some(PR_SHA))
    );
    assert_eq!(hub.pull(&c, 0).await.status(), StatusCode::NO_CONTENT);
    // A pull request from the repository itself is no fork.
    let same = opened_pr();
    expect(&hub, "same", same, dispatched(2)).await;
    // A fork that was deleted leaves no head repository: still a fork.
    let gone = opened_pr().with("/pull_request/head/repo", Value::Null);
    let answer = expect(&hub, "gone", gone, dispatched(1)).await;
    let jobs = [
        hub.pull_job(&c).await,
        hub.pull_job(&c).await,
        hub.pull_job(&c).await,
    ];
    let gone_job = jobs
        .iter()
        .find(|j| j["id"] == ids(&answer)[0].as_str())
        .unwrap();
    assert_eq!(gone_job["dag_name"], "always");

    let default_only = TestHub::start(vec![pr_binding("test", ForkPolicy::default())]).await;
    let answer = expect(&default_only, "f", fork_pr("opened", PR_SHA), held()).await;
    reason_of(&answer, "pull request #2 from fork-owner/Hello-World");
    let c = default_only.activate("lic-a", SRV_1).await;
    assert_eq!(
        default_only.pull(&c, 0).await.status(),
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn approve_dispatches_a_fork_head_once_and_each_new_head_needs_its_own() {
    let gh = github().await;
    let hub = reporting_hub(&gh, vec![pr_binding("test", ForkPolicy::Approved)]).await;
    let c = hub.activate("lic-a", SRV_1).await;
    let member = |body: &str| comment_by(body, "maintainer", "MEMBER", 2);

    // Nothing held yet.
    let answer = expect(&hub, "a0", member("@dispatch approve"), answered()).await;
    assert!(
        answer["reason"]
            .as_str()
            .unwrap()
            .starts_with("Nothing to approve"),
        "{answer}"
    );
    expect(&hub, "pr-1", fork_pr("opened", PR_SHA), held()).await;
    assert_eq!(hub.pull(&c, 0).await.status(), StatusCode::NO_CONTENT);
    // Someone the binding does not allow cannot approve.
    let outsider = comment_by("@dispatch approve", "outsider", "CONTRIBUTOR", 2);
    expect(&hub, "a-out", outsider, no_job("not_allowed")).await;

    let answer = expect(&hub, "a1", member("@dispatch approve"), dispatched(1)).await;
    assert_eq!(answer["reason"], "Approved ec26c3e: dispatching `test`.");
    let job = hub.pull_job(&c).await;
    assert_eq!(job["id"].as_str(), Some(ids(&answer)[0].as_str()));
    assert_eq!(
        (
            job["dag_name"].as_str(),
            job["sha"].as_str(),
            job["event_name"].as_str(),
            job["delivery_id"].as_str()
        ),
        (
            Some("test"),
            Some(PR_SHA),
            Some("pull_request"),
            Some("pr-1")
        )
    );
    assert_eq!(job["ref"], "refs/pull/2/head");
    assert_eq!(
        job["payload"]["pull_request"]["head"]["repo"]["full_name"], FORK,
        "the held event itself"
    );

    // The same head again: nothing more.
    let answer = expect(&hub, "a2", member("@dispatch approve"), answered()).await;
    reason_of(&answer, "already approved");
    // A new push is held again until a new approval.
    expect(&hub, "pr-2", fork_pr("synchronize", NEW_SHA), held()).await;
    assert_eq!(hub.pull(&c, 0).await.status(), StatusCode::NO_CONTENT);
    let answer = expect(&hub, "a3", member("@dispatch approve"), dispatched(1)).await;
    assert_eq!(answer["reason"], "Approved 0123456: dispatching `test`.");
    assert_eq!(hub.pull_job(&c).await["sha"], NEW_SHA);
    // An approval dispatches once: the fork's author reopening the pull request on the approved
    // head does not run it again without a new approval.
    expect(&hub, "pr-3", fork_pr("reopened", NEW_SHA), held()).await;
    assert_eq!(hub.pull(&c, 0).await.status(), StatusCode::NO_CONTENT);
    let answer = expect(&hub, "a4", member("@dispatch approve"), dispatched(1)).await;
    assert_eq!(answer["reason"], "Approved 0123456: dispatching `test`.");
    let job = hub.pull_job(&c).await;
    assert_eq!(
        (job["sha"].as_str(), job["delivery_id"].as_str()),
        (Some(NEW_SHA), Some("pr-3"))
    );

    // One answer per approve command of an allowed commenter; none for the outsider. (And the
    // `pending` "queued" status of each of the three jobs dispatched.)
    reports_sent(&hub, 8).await;
    assert_eq!(
        comments(&gh, 2).await,
        [
            "Nothing to approve: no pull request event from a fork is waiting for #2.",
            "Approved ec26c3e: dispatching `test`.",
            "ec26c3e is already approved; nothing is dispatched again (a new push needs a new approval).",
            "Approved 0123456: dispatching `test`.",
            "Approved 0123456: dispatching `test`.",
        ]
    );
}

#[tokio::test]
async fn approve_needs_a_binding_that_takes_approvals() {
    let hub = TestHub::start(vec![pr_binding("test", ForkPolicy::Never)]).await;
    expect(&hub, "pr", fork_pr("opened", PR_SHA), held()).await;
    let approve = comment_by("@dispatch approve", "maintainer", "MEMBER", 2);
    let answer = expect(&hub, "a", approve, no_job("no_binding")).await;
    reason_of(&answer, "takes approvals");
}

#[tokio::test]
async fn a_check_run_is_fork_code_unless_the_repository_is_known_to_hold_its_commit() {
    let mut checks = Binding::new(HELLO, "checks", Trigger::Auto);
    checks.fork_pull_requests = ForkPolicy::Approved;
    let mut on_main = Binding::new(HELLO, "main-checks", Trigger::Auto);
    on_main.event_name = "check_run".into();
    on_main.branch_pattern = "main".into();
    on_main.fork_pull_requests = ForkPolicy::Always;
    let hub = TestHub::start(vec![checks, on_main]).await;
    expect(&hub, "pr", fork_pr("opened", PR_SHA), held()).await;
    let answer = expect(&hub, "cr-fork", check_rerun(PR_SHA), held()).await;
    reason_of(&answer, "the head of fork pull request #2");
    // A commit the hub never saw, listing no pull request: fork code too (it fails closed).
    let answer = expect(&hub, "cr-unknown", check_rerun(NEW_SHA), held()).await;
    reason_of(&answer, "not seen pushed");
    // A fork's branch named `main` does not match `branch_pattern = "main"`.
    let fork_main = check_rerun(NEW_SHA).with("/check_run/check_suite/head_branch", json!("main"));
    expect(&hub, "cr-fork-main", fork_main.clone(), held()).await;
    // Once pushed to the repository, the commit is its own.
    let push = Event::new("push", fixture(PUSH)).with("/after", json!(NEW_SHA));
    expect(&hub, "push", push, dispatched(1)).await;
    expect(&hub, "cr-own", check_rerun(NEW_SHA), dispatched(1)).await;
    let answer = expect(&hub, "cr-own-main", fork_main, dispatched(2)).await;
    assert_eq!(ids(&answer).len(), 2, "the repository's own `main`");
    // A check run listing a pull request of the repository itself with its head.
    let own_pr_sha = "1111111111111111111111111111111111111111";
    let pull_request = json!({
        "number": 3,
        "head": {"ref": "feature", "sha": own_pr_sha, "repo": {"id": 186853002}},
        "base": {"ref": "master", "repo": {"id": 186853002}}
    });
    let listed = check_rerun(own_pr_sha).with("/check_run/pull_requests", json!([pull_request]));
    expect(&hub, "cr-listed", listed, dispatched(1)).await;
    // An approval dispatches the held pull request event, not check runs on its head.
    let approve = comment_by("@dispatch approve", "maintainer", "MEMBER", 2);
    expect(&hub, "a", approve, dispatched(1)).await;
    expect(&hub, "cr-approved", check_rerun(PR_SHA), held()).await;
}

#[tokio::test]
async fn cancel_reaches_each_server_holding_a_run_once_and_answers_once() {
    let gh = github().await;
    let hub = reporting_hub(&gh, vec![build(Trigger::CommentCommand)]).await;
    let (s1, s2, s3) = (
        hub.activate("lic-a", SRV_1).await,
        hub.activate("lic-a", SRV_2).await,
        hub.activate("lic-a", SRV_3).await,
    );
    // Two runs of #1 on two servers, one of #7 on a third, one job of #1 still queued.
    expect(&hub, "r1", owner_says("@dispatch build", 1), dispatched(1)).await;
    take(&hub, &s1).await;
    expect(&hub, "r2", owner_says("@dispatch build", 1), dispatched(1)).await;
    take(&hub, &s2).await;
    expect(&hub, "r3", owner_says("@dispatch build", 7), dispatched(1)).await;
    take(&hub, &s3).await;
    let queued = expect(&hub, "r4", owner_says("@dispatch build", 1), dispatched(1)).await;

    let answer = expect(&hub, "x1", owner_says("@dispatch cancel", 1), dispatched(2)).await;
    let said = "Cancelling 2 runs (`build` on box, `build` on box); 1 queued job dropped.";
    assert_eq!(answer["reason"], said);
    // Asked again before the servers pulled: no second cancel for the same server.
    expect(&hub, "x2", owner_says("@dispatch cancel", 1), answered()).await;

    assert_eq!(
        hub.pull(&s3, 0).await.status(),
        StatusCode::NO_CONTENT,
        "not the unrelated server"
    );
    for s in [&s1, &s2] {
        let cancel = hub.pull_job(s).await;
        assert_eq!(cancel["command"], "cancel");
        assert_eq!(
            (
                cancel["pull_request_number"].as_i64(),
                cancel["issue_number"].as_i64()
            ),
            (Some(1), Some(1))
        );
        assert!(ids(&answer).contains(&cancel["id"].as_str().unwrap().to_owned()));
        assert_eq!(
            hub.pull(s, 0).await.status(),
            StatusCode::NO_CONTENT,
            "one cancel per server, and the queued job is gone"
        );
        let id = cancel["id"].as_str().unwrap();
        let resp = hub
            .finish(
                s,
                id,
                "succeeded",
                "Cancelled 1 run(s) for Codertocat/Hello-World #1.",
            )
            .await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    }
    // The queued job ended at the hub (with the two cancel jobs); the three runs go on.
    assert_eq!(ids(&queued).len(), 1);
    hub.metrics_with(&[
        "dispatch_hub_jobs{state=\"queued\"} 0",
        "dispatch_hub_jobs{state=\"accepted\"} 3",
        "dispatch_hub_jobs{state=\"finished\"} 3",
    ])
    .await;

    // A later command's answer marks the end of the queue: everything before it has been sent.
    expect(&hub, "x3", owner_says("@dispatch cancel", 9), answered()).await;
    reports_sent(&hub, 3).await;
    assert_eq!(
        comments(&gh, 1).await,
        [said, "Cancelling 2 runs (`build` on box, `build` on box)."],
        "one comment per command; none from the cancel jobs or the dropped job"
    );
    assert_eq!(comments(&gh, 9).await, ["Nothing to cancel."]);
}

#[tokio::test]
async fn a_cancel_for_a_job_not_yet_accepted_is_sent_after_the_accept() {
    let hub = TestHub::start(vec![build(Trigger::CommentCommand)]).await;
    let (s1, s2) = (
        hub.activate("lic-a", SRV_1).await,
        hub.activate("lic-a", SRV_2).await,
    );
    expect(&hub, "r", owner_says("@dispatch build", 1), dispatched(1)).await;
    let run = hub.pull_id(&s1).await;
    for delivery in ["x1", "x2"] {
        let answer = expect(
            &hub,
            delivery,
            owner_says("@dispatch cancel", 1),
            answered(),
        )
        .await;
        reason_of(&answer, "1 job being handed to a scheduler");
    }
    assert_eq!(
        hub.pull(&s1, 0).await.status(),
        StatusCode::NO_CONTENT,
        "nothing before the accept"
    );
    hub.accept_ok(&s1, &run).await;
    let cancel = hub.pull_job(&s1).await;
    assert_eq!(
        (cancel["command"].as_str(), cancel["issue_number"].as_i64()),
        (Some("cancel"), Some(1))
    );
    assert_eq!(
        hub.pull(&s1, 0).await.status(),
        StatusCode::NO_CONTENT,
        "two commands, one cancel"
    );
    assert_eq!(hub.pull(&s2, 0).await.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn a_long_summary_is_cut_to_githubs_comment_limit() {
    let gh = github().await;
    let hub = reporting_hub(&gh, vec![build(Trigger::CommentCommand)]).await;
    let c = hub.activate("lic-a", SRV_1).await;
    expect(&hub, "r", owner_says("@dispatch build", 1), dispatched(1)).await;
    let id = take(&hub, &c).await;
    let summary = "é".repeat(70_000);
    hub.finish_ok(&c, &id, "succeeded", &summary).await;
    reports_sent(&hub, 1).await;
    let posted = comments(&gh, 1).await;
    let body = &posted[0];
    assert_eq!(body.chars().count(), 65_536);
    let head: String = body.chars().take(60).collect();
    assert!(
        head.starts_with("dispatch `build` (build): **succeeded**\n\n> ééé"),
        "{head}"
    );
    assert!(
        body.ends_with("ééé\n\n... (truncated)"),
        "{}",
        report_tail(body)
    );
}

#[tokio::test]
async fn a_job_too_large_for_a_pull_gets_an_error_status_with_the_reason() {
    let gh = github().await;
    let hub = reporting_hub(&gh, vec![build(Trigger::Auto)]).await;
    let mut event = json_of(PUSH);
    event["padding"] = Value::String("x".repeat(2 * 1024 * 1024));
    let (status, answer) = hub
        .webhook("push", "big", serde_json::to_vec(&event).unwrap())
        .await;
    assert_eq!((status, ids(&answer).len()), (StatusCode::ACCEPTED, 1));
    reports_sent(&hub, 1).await;
    let sent = bodies(
        &gh,
        "/repos/Codertocat/Hello-World/statuses/6113728f27ae82c7b1a177c8d03f9e96e0adf246",
    )
    .await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["state"], "error");
    assert_eq!(sent[0]["context"], "dispatch/build");
    let description = sent[0]["description"].as_str().unwrap();
    assert!(
        description.contains("bytes; a dispatch job carries at most 1048576 bytes"),
        "{description}"
    );
}

/// The last characters of a comment, for a failure message.
fn report_tail(body: &str) -> String {
    let chars: Vec<char> = body.chars().collect();
    chars[chars.len().saturating_sub(40)..].iter().collect()
}

#[tokio::test]
async fn approve_dispatches_only_the_latest_head_the_approver_could_have_seen() {
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C: &str = "cccccccccccccccccccccccccccccccccccccccc";
    const D: &str = "dddddddddddddddddddddddddddddddddddddddd";
    let hub = TestHub::start(vec![pr_binding("test", ForkPolicy::Approved)]).await;
    let c = hub.activate("lic-a", SRV_1).await;
    // The owner's `@dispatch approve [sha]`, written at minute `t`.
    let approve_at = |sha: &str, t: u32| {
        let body = format!("@dispatch approve {sha}");
        comment_at(body.trim_end(), "Codertocat", "OWNER", 2, &at(t))
    };

    // Opened at A (minute 1), approved (2): A runs.
    expect(&hub, "a", fork_pr_at("opened", PR_SHA, &at(1)), held()).await;
    expect(&hub, "ok-a", approve_at("", 2), dispatched(1)).await;
    assert_eq!(hub.pull_job(&c).await["sha"], PR_SHA);
    // The fork's author pushes B (3), then force-pushes A back (4); GitHub delivers the two out
    // of order. The held event is A, the latest by the events' own times, not B.
    expect(
        &hub,
        "back-to-a",
        fork_pr_at("synchronize", PR_SHA, &at(4)),
        held(),
    )
    .await;
    expect(&hub, "b", fork_pr_at("synchronize", B, &at(3)), held()).await;
    let answer = expect(&hub, "ok-2", approve_at("", 5), dispatched(1)).await;
    reason_of(&answer, "Approved ec26c3e");
    let job = hub.pull_job(&c).await;
    assert_eq!(
        (job["sha"].as_str(), job["delivery_id"].as_str()),
        (Some(PR_SHA), Some("back-to-a"))
    );

    // C is pushed (7); a bare approve written before it (6) arrives after: the approver saw
    // something else. Naming C runs it.
    expect(&hub, "c", fork_pr_at("synchronize", C, &at(7)), held()).await;
    let refusals = [
        (
            "old",
            "",
            6,
            "#2's head became ccccccc after this comment was written",
        ),
        (
            "other",
            "bbbbbbb",
            8,
            "Not approved: bbbbbbb is not the head waiting for approval (ccccccc)",
        ),
        ("word", "it", 8, "`it` is not a commit SHA"),
    ];
    for (delivery, sha, minute, why) in refusals {
        let answer = expect(&hub, delivery, approve_at(sha, minute), answered()).await;
        assert!(
            reason_of(&answer, why).starts_with("Not approved: "),
            "{answer}"
        );
    }
    assert_eq!(hub.pull(&c, 0).await.status(), StatusCode::NO_CONTENT);
    let answer = expect(&hub, "named", approve_at("CCCCCCC", 6), dispatched(1)).await;
    reason_of(&answer, "Approved ccccccc");
    assert_eq!(hub.pull_job(&c).await["sha"], C);

    // An event no binding takes moves the head to D (9): the held C is no longer the head.
    let labeled = fork_pr_at("labeled", D, &at(9));
    expect(&hub, "d", labeled, no_job("no_binding")).await;
    expect(&hub, "c-again", fork_pr_at("reopened", C, &at(8)), held()).await;
    let answer = expect(&hub, "stale", approve_at("", 10), answered()).await;
    reason_of(
        &answer,
        "the event waiting for approval is for ccccccc, but the head of #2 is now ddddddd",
    );
    assert_eq!(hub.pull(&c, 0).await.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn approvals_are_per_binding_and_each_dispatches_once() {
    let mut lint = pr_binding("lint", ForkPolicy::Approved);
    lint.allowed_users = vec!["pal".into()];
    let mut deploy = pr_binding("deploy", ForkPolicy::Approved);
    deploy.allowed_associations = vec!["OWNER".into()];
    let hub = TestHub::start(vec![lint, deploy]).await;
    let c = hub.activate("lic-a", SRV_1).await;
    let pal = || comment_by("@dispatch approve", "pal", "NONE", 2);
    let owner = || comment_by("@dispatch approve", "Codertocat", "OWNER", 2);
    expect(&hub, "pr", fork_pr("opened", PR_SHA), held()).await;

    // `pal` may approve for `lint` only: `deploy` does not run on that approval.
    let answer = expect(&hub, "pal", pal(), dispatched(1)).await;
    reason_of(&answer, "dispatching `lint`.");
    assert_eq!(hub.pull_job(&c).await["dag_name"], "lint");
    // The owner's approval of the same head still dispatches `deploy` (and not `lint` again).
    let answer = expect(&hub, "owner", owner(), dispatched(1)).await;
    assert_eq!(answer["reason"], "Approved ec26c3e: dispatching `deploy`.");
    assert_eq!(hub.pull_job(&c).await["dag_name"], "deploy");
    let answer = expect(&hub, "owner-2", owner(), answered()).await;
    reason_of(&answer, "already approved");

    // The author closes and reopens on the same head: held again, nothing runs.
    expect(&hub, "reopen", fork_pr("reopened", PR_SHA), held()).await;
    assert_eq!(hub.pull(&c, 0).await.status(), StatusCode::NO_CONTENT);
    // `pal`'s new approval runs `lint` again, and only `lint`.
    expect(&hub, "pal-2", pal(), dispatched(1)).await;
    assert_eq!(hub.pull_job(&c).await["dag_name"], "lint");
    assert_eq!(hub.pull(&c, 0).await.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn a_comment_command_runs_the_head_the_hub_recorded_for_the_pull_request() {
    let hub = TestHub::start(vec![build(Trigger::CommentCommand)]).await;
    let c = hub.activate("lic-a", SRV_1).await;
    // No head recorded for #2 yet: no SHA, as before.
    expect(&hub, "c1", owner_says("@dispatch build", 2), dispatched(1)).await;
    assert!(hub.pull_job(&c).await.get("sha").is_none());
    // The pull request's events tell the hub its head, whatever their bindings.
    expect(&hub, "pr", opened_pr(), no_job("no_binding")).await;
    expect(&hub, "c2", owner_says("@dispatch build", 2), dispatched(1)).await;
    let job = hub.pull_job(&c).await;
    assert_eq!(
        (job["sha"].as_str(), job["ref"].as_str()),
        (Some(PR_SHA), Some("refs/pull/2/head"))
    );
    // A fork's head pushed after the comment was written is not run.
    let fork_push = fork_pr_at("synchronize", NEW_SHA, &at(5));
    expect(&hub, "fork-push", fork_push, no_job("no_binding")).await;
    let late = comment_at("@dispatch build", "Codertocat", "OWNER", 2, &at(4));
    let answer = expect(&hub, "c3", late, held()).await;
    reason_of(&answer, "changed to 0123456 after this comment was written");
    expect(&hub, "c4", owner_says("@dispatch build", 2), dispatched(1)).await;
    assert_eq!(hub.pull_job(&c).await["sha"], NEW_SHA);
}

#[tokio::test]
async fn a_comment_command_runs_once_whatever_its_delivery_id() {
    let hub = pages_hub(vec![build(Trigger::CommentCommand)]).await;
    let c = hub.activate("lic-a", SRV_1).await;
    let comment = owner_says("@dispatch build", 1);
    expect(&hub, "first", comment.clone(), dispatched(1)).await;
    // GitHub's redelivery (same id) and a replay under a new id: neither runs it again.
    expect(
        &hub,
        "first",
        comment.clone(),
        (StatusCode::ACCEPTED, 1, "duplicate"),
    )
    .await;
    let answer = expect(&hub, "replayed", comment, no_job("duplicate")).await;
    reason_of(&answer, "was taken before, in delivery first");
    assert_eq!(
        recorded(&hub, "replayed").await.0,
        "duplicate",
        "the replay is recorded"
    );
    hub.pull_job(&c).await;
    assert_eq!(hub.pull(&c, 0).await.status(), StatusCode::NO_CONTENT);
    hub.metrics_with(&["dispatch_hub_webhooks_received_total{outcome=\"duplicate\"} 2"])
        .await;
}

#[tokio::test]
async fn a_cancel_stops_only_jobs_of_bindings_that_allow_the_commenter() {
    let mut docs = Binding::new(HELLO, "docs", Trigger::CommentCommand);
    docs.allowed_associations = vec!["OWNER".into(), "NONE".into()];
    let hub = TestHub::start(vec![build(Trigger::CommentCommand), docs]).await;
    let (s1, s2) = (
        hub.activate("lic-a", SRV_1).await,
        hub.activate("lic-a", SRV_2).await,
    );
    let stranger_says = |body: &str| comment_by(body, "stranger", "NONE", 1);
    // The owner's `build` and a stranger's `docs` run on server 1; another `build` on server 2.
    expect(&hub, "b1", owner_says("@dispatch build", 1), dispatched(1)).await;
    let build_1 = take(&hub, &s1).await;
    let docs_answer = expect(&hub, "d1", stranger_says("@dispatch docs"), dispatched(1)).await;
    let docs_1 = take(&hub, &s1).await;
    assert_eq!(ids(&docs_answer), std::slice::from_ref(&docs_1));
    expect(&hub, "b2", owner_says("@dispatch build", 1), dispatched(1)).await;
    take(&hub, &s2).await;

    // The stranger may cancel: `docs` allows them. Their cancel reaches `docs` only.
    let answer = expect(&hub, "x", stranger_says("@dispatch cancel"), dispatched(1)).await;
    assert_eq!(answer["reason"], "Cancelling 1 run (`docs` on box).");
    assert_eq!(
        hub.pull(&s2, 0).await.status(),
        StatusCode::NO_CONTENT,
        "server 2 holds only the owner's run"
    );
    let cancel = hub.pull_job(&s1).await;
    assert_eq!(cancel["command"], "cancel");
    assert_eq!(cancel["cancel_job_ids"], json!([docs_1]));
    assert!(!cancel["cancel_job_ids"]
        .as_array()
        .unwrap()
        .contains(&json!(build_1)));

    // The owner's cancel (both bindings allow the owner) names every run of the pull request on
    // each server.
    let answer = expect(&hub, "y", owner_says("@dispatch cancel", 1), dispatched(2)).await;
    reason_of(&answer, "Cancelling 3 runs");
    let one = hub.pull_job(&s1).await;
    let mut named: Vec<&str> = one["cancel_job_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    named.sort_unstable();
    let mut want = vec![build_1.as_str(), docs_1.as_str()];
    want.sort_unstable();
    assert_eq!(named, want);
    assert_eq!(
        hub.pull_job(&s2).await["cancel_job_ids"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
