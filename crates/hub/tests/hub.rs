//! End-to-end tests of the hub over loopback: real server, real SQLite file, real HTTP clients,
//! wiremock standing in for GitHub.

use std::path::Path;
use std::time::Duration;

use dispatch_hub::{Binding, GithubConfig, Hub, HubConfig, HubHandle, LicenseKey, Trigger};
use dispatch_protocol::Secret;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "webhook-secret";
const HELLO: &str = "Codertocat/Hello-World";
const OCTO: &str = "octo-org/octo-repo";
/// A push creating branch `master` of `Codertocat/Hello-World`.
const PUSH: &str = "push/with-new-branch.payload.json";

use dispatch_test_support::fixture;

fn license(id: &str) -> LicenseKey {
    LicenseKey {
        id: id.into(),
        key: Secret::new(format!("key-{id}")),
        plan: "pro".into(),
        features: vec!["dispatch".into()],
    }
}

fn config(data_dir: &Path, bindings: Vec<Binding>) -> HubConfig {
    HubConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_owned(),
        webhook_secret: Secret::new(SECRET),
        bindings,
        licenses: vec![license("lic-a"), license("lic-b")],
        github: GithubConfig::default(),
        lease: Duration::from_secs(60),
        mention: "@dispatch".into(),
        token_ttl: Duration::from_secs(3600),
        ..HubConfig::default()
    }
}

struct TestHub {
    _dir: Option<tempfile::TempDir>,
    /// The PostgreSQL database of the store when the run asks for that backend; kept for the
    /// hub's whole life, so a restart finds its rows again.
    _db: Option<dispatch_test_support::PgDatabase>,
    cfg: HubConfig,
    handle: Option<HubHandle>,
    cancel: CancellationToken,
    base: String,
    http: reqwest::Client,
}

impl TestHub {
    async fn start(bindings: Vec<Binding>) -> TestHub {
        Self::start_with(bindings, |_| {}).await
    }

    /// A hub on the store backend of this test run (`DISPATCH_TEST_STORE`).
    async fn start_with(bindings: Vec<Binding>, tweak: impl FnOnce(&mut HubConfig)) -> TestHub {
        let db = dispatch_test_support::test_store_database();
        Self::start_on(db, bindings, tweak).await
    }

    /// A hub on SQLite whatever the run's backend, for the tests that are about the SQLite file
    /// itself.
    async fn start_sqlite(bindings: Vec<Binding>) -> TestHub {
        Self::start_on(None, bindings, |_| {}).await
    }

    async fn start_on(
        db: Option<dispatch_test_support::PgDatabase>,
        bindings: Vec<Binding>,
        tweak: impl FnOnce(&mut HubConfig),
    ) -> TestHub {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut cfg = config(&data, bindings);
        cfg.store_url = db.as_ref().map(|db| Secret::new(db.url()));
        tweak(&mut cfg);
        let mut hub = TestHub {
            _dir: Some(dir),
            _db: db,
            cfg,
            handle: None,
            cancel: CancellationToken::new(),
            base: String::new(),
            http: reqwest::Client::new(),
        };
        hub.boot().await;
        hub
    }

    async fn boot(&mut self) {
        self.cancel = CancellationToken::new();
        let handle = Hub::start(self.cfg.clone(), self.cancel.clone())
            .await
            .unwrap();
        self.base = format!("http://{}", handle.addr);
        self.handle = Some(handle);
    }

    async fn stop(&mut self) {
        self.cancel.cancel();
        let handle = self.handle.take().unwrap();
        tokio::time::timeout(Duration::from_secs(30), handle.join())
            .await
            .expect("hub stops")
            .unwrap();
    }

    async fn restart(&mut self) {
        self.stop().await;
        self.boot().await;
    }

    fn handle(&self) -> &HubHandle {
        self.handle.as_ref().unwrap()
    }

    async fn webhook_raw(
        &self,
        event: &str,
        delivery: &str,
        body: Vec<u8>,
        signature: Option<String>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .post(format!("{}/webhooks/github", self.base))
            .header("X-GitHub-Event", event)
            .header("X-GitHub-Delivery", delivery)
            .header("Content-Type", "application/json")
            .header("User-Agent", "GitHub-Hookshot/test");
        if let Some(sig) = signature {
            req = req.header("X-Hub-Signature-256", sig);
        }
        req.body(body).send().await.unwrap()
    }

    async fn webhook(&self, event: &str, delivery: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let sig = sign(&body);
        let resp = self.webhook_raw(event, delivery, body, Some(sig)).await;
        let status = resp.status();
        (status, resp.json().await.unwrap())
    }

    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Activates `license_id` for the server [`server_id`] makes of `server`.
    async fn activate(&self, license_id: &str, server: &str) -> Creds {
        let server = server_id(server);
        let resp = self
            .post(
                "/api/v1/licenses/activate",
                json!({"key": format!("key-{license_id}"), "server_id": server, "machine_name": "box"}),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value = resp.json().await.unwrap();
        let token = body["token"].as_str().unwrap();
        let verified =
            dispatch_protocol::token::verify(token, &self.handle().public_key, now()).unwrap();
        assert_eq!(verified.claims.jti, license_id);
        Creds {
            license_id: verified.claims.jti,
            server_id: server,
            secret: body["heartbeat_secret"].as_str().unwrap().into(),
        }
    }

    async fn pull(&self, c: &Creds, wait: u32) -> reqwest::Response {
        self.post(
            "/api/v1/github/dispatch/pull",
            json!({"license_id": c.license_id, "server_id": c.server_id, "heartbeat_secret": c.secret, "wait_seconds": wait}),
        )
        .await
    }

    async fn pull_job(&self, c: &Creds) -> Value {
        let resp = self.pull(c, 0).await;
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json().await.unwrap()
    }

    async fn accept(&self, c: &Creds, id: &str) -> reqwest::Response {
        self.post(
            &format!("/api/v1/github/dispatch/{id}/accept"),
            json!({"license_id": c.license_id, "server_id": c.server_id, "secret": c.secret, "dag_run_id": id}),
        )
        .await
    }

    async fn finish(&self, c: &Creds, id: &str, status: &str, summary: &str) -> reqwest::Response {
        self.post(
            &format!("/api/v1/github/dispatch/{id}/finish"),
            json!({"license_id": c.license_id, "server_id": c.server_id, "secret": c.secret,
                   "result_status": status, "result_summary": summary}),
        )
        .await
    }

    /// Accepts job `id` as `c`; the hub must take it (204).
    async fn accept_ok(&self, c: &Creds, id: &str) {
        let status = self.accept(c, id).await.status();
        assert_eq!(status, StatusCode::NO_CONTENT, "accept {id}");
    }

    /// Finishes job `id` as `c` with `status`; the hub must take it (204).
    async fn finish_ok(&self, c: &Creds, id: &str, status: &str, summary: &str) {
        let answer = self.finish(c, id, status, summary).await.status();
        assert_eq!(answer, StatusCode::NO_CONTENT, "finish {id} as {status}");
    }

    /// Delivers the [`PUSH`] fixture under `delivery`.
    async fn push(&self, delivery: &str) -> (StatusCode, Value) {
        self.webhook("push", delivery, fixture(PUSH)).await
    }

    /// Pulls a job that must be there and returns its id.
    async fn pull_id(&self, c: &Creds) -> String {
        self.pull_job(c).await["id"].as_str().unwrap().to_owned()
    }

    /// Waits until the metrics page holds `line`.
    async fn wait_for_metric(&self, line: &str) {
        eventually(line, || async move { self.metrics().await.contains(line) }).await;
    }

    /// The metrics page, after checking that it holds every one of `lines`.
    async fn metrics_with(&self, lines: &[&str]) -> String {
        let m = self.metrics().await;
        for line in lines {
            assert!(m.contains(line), "missing {line} in\n{m}");
        }
        m
    }

    async fn metrics(&self) -> String {
        self.get("/metrics").await.text().await.unwrap()
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }
}

#[derive(Clone)]
struct Creds {
    license_id: String,
    server_id: String,
    secret: String,
}

fn sign(body: &[u8]) -> String {
    dispatch_protocol::webhook_signature::sign(&Secret::new(SECRET), body)
}

/// The server id (a UUID, as the hub wants) standing for `name` in a test: the same name always
/// gives the same id; a UUID is kept as it is.
fn server_id(name: &str) -> String {
    if name.len() == 36 {
        return name.to_owned();
    }
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("0190a000-0000-7000-8000-{:012x}", hash & 0xffff_ffff_ffff)
}

/// The DAG `build` bound to `trigger` on [`HELLO`], the repository of most fixtures.
fn build(trigger: Trigger) -> Binding {
    Binding::new(HELLO, "build", trigger)
}

/// A hub reporting to the GitHub stand-in `gh` with the token `gh-token`.
async fn reporting_hub(gh: &wiremock::MockServer, bindings: Vec<Binding>) -> TestHub {
    reporting_hub_with(gh, bindings, |_| {}).await
}

/// [`reporting_hub`], with `tweak` applied to its config.
async fn reporting_hub_with(
    gh: &wiremock::MockServer,
    bindings: Vec<Binding>,
    tweak: impl FnOnce(&mut HubConfig),
) -> TestHub {
    let api = gh.uri();
    TestHub::start_with(bindings, move |cfg| {
        cfg.github.api_url = api;
        cfg.github.token = Some(Secret::new("gh-token"));
        tweak(cfg);
    })
    .await
}

/// Makes the GitHub stand-in `gh` answer the first POST to `path` with `status`, ahead of the
/// mocks that answer the ones after it.
async fn fail_first_post(gh: &wiremock::MockServer, path: &str, status: u16) {
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .and(wiremock::matchers::path(path))
        .respond_with(wiremock::ResponseTemplate::new(status))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(gh)
        .await;
}

/// Seconds since the Unix epoch, as tokens count time.
fn now() -> i64 {
    i64::try_from(dispatch_util::now_ms() / 1000).unwrap()
}

/// The `hub` binary with `args`, then `path`.
fn hub_bin(args: &[&str], path: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_hub"));
    cmd.args(args).arg(path);
    cmd
}

/// Runs `cmd` to its end, which must be a success, and returns what it printed.
fn stdout_of(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    String::from_utf8(out.stdout).unwrap()
}

/// Writes `hub.toml` into `dir`: a loopback listener on any port and [`SECRET`], then `more`.
fn hub_toml(dir: &Path, more: &str) -> std::path::PathBuf {
    let path = dir.join("hub.toml");
    let text = format!("listen = \"127.0.0.1:0\"\nwebhook_secret = \"{SECRET}\"\n{more}");
    std::fs::write(&path, text).unwrap();
    path
}

/// A running `hub serve` process, as a service manager runs it.
struct Served {
    child: std::process::Child,
    /// `http://` and the address it says it listens on.
    base: String,
    /// Its stderr (the logs), read to the end on a thread of its own so the hub never blocks on
    /// a full pipe.
    logs: std::thread::JoinHandle<String>,
    // Kept open until the end so the hub's prints always have somewhere to go.
    _stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Served {
    /// Starts `hub serve --config <config>` with `env` set, and waits for the line that says
    /// where it listens.
    fn start(config: &Path, env: &[(&str, &str)]) -> Served {
        use std::io::{BufRead, Read};
        use std::process::Stdio;
        let mut child = hub_bin(&["serve", "--config"], config)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut stderr = child.stderr.take().unwrap();
        let logs = std::thread::spawn(move || {
            let mut text = String::new();
            stderr.read_to_string(&mut text).unwrap();
            text
        });
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let base = line
            .trim()
            .strip_prefix("hub listening on ")
            .expect(&line)
            .to_owned();
        Served {
            child,
            base,
            logs,
            _stdout: stdout,
        }
    }

    /// Sends SIGTERM, checks that the hub exits 0, and returns everything it logged.
    fn stop(mut self) -> String {
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let status = self.child.wait().unwrap();
        let logs = self.logs.join().unwrap();
        assert_eq!(status.code(), Some(0), "hub stderr:\n{logs}");
        logs
    }
}

/// Runs `work` on a runtime of its own: the tests that drive the binary are not async.
fn block_on<F: std::future::Future>(work: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(work)
}

fn ids(v: &Value) -> Vec<String> {
    v["job_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect()
}

fn comment_payload(body: &str, on_pr: bool) -> Vec<u8> {
    let mut p: Value =
        serde_json::from_slice(&fixture("issue_comment/created.payload.json")).unwrap();
    p["comment"]["body"] = json!(body);
    if on_pr {
        p["issue"]["pull_request"] =
            json!({"url": "https://api.github.com/repos/Codertocat/Hello-World/pulls/1"});
    }
    serde_json::to_vec(&p).unwrap()
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn push_job_carries_exact_fields_payload_and_headers() {
    let mut b = build(Trigger::Auto);
    b.branch_pattern = "master".into();
    let hub = TestHub::start(vec![b]).await;
    let body = fixture(PUSH);
    let (status, answer) = hub.webhook("push", "del-1", body.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let job_ids = ids(&answer);
    assert_eq!(job_ids.len(), 1);
    let c = hub.activate("lic-a", "srv-1").await;
    let resp = hub.pull(&c, 0).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    let job: dispatch_protocol::DispatchJob = serde_json::from_str(&text).unwrap();
    assert_eq!(job.id, job_ids[0]);
    assert!(
        job.id.len() <= 64
            && job
                .id
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    );
    assert_eq!(job.binding_id, "Codertocat/Hello-World/build/auto");
    assert_eq!(job.installation_id, 1);
    assert_eq!(job.repository_id, 186853002);
    assert_eq!(job.repository_name, HELLO);
    assert_eq!(job.license_id, "lic-a");
    assert_eq!(job.dag_name, "build");
    assert_eq!(job.event_name, "push");
    assert_eq!(job.event_action, "");
    assert_eq!(job.delivery_id, "del-1");
    assert_eq!(job.git_ref, "refs/heads/master");
    assert_eq!(job.sha, "6113728f27ae82c7b1a177c8d03f9e96e0adf246");
    assert_eq!(job.actor_login, "Codertocat");
    assert_eq!(
        (job.status.as_str(), job.claimed_by.as_str()),
        ("claimed", c.server_id.as_str())
    );
    let payload = job.payload.unwrap();
    assert_eq!(
        payload.get().as_bytes(),
        String::from_utf8(body).unwrap().trim().as_bytes(),
        "payload bytes untouched"
    );
    let headers: Value = serde_json::from_str(job.headers.unwrap().get()).unwrap();
    assert_eq!(
        headers,
        json!({"x-github-event": ["push"], "x-github-delivery": ["del-1"],
               "content-type": ["application/json"], "user-agent": ["GitHub-Hookshot/test"]})
    );
    assert!(
        !text.contains("sha256="),
        "the signature is never passed on"
    );
    assert_eq!(hub.pull(&c, 0).await.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn fixtures_map_to_job_fields() {
    let mut pr = Binding::new(HELLO, "pr", Trigger::Auto);
    pr.event_name = "pull_request".into();
    pr.branch_pattern = "master".into();
    let mut rel = Binding::new(HELLO, "release", Trigger::Auto);
    rel.event_name = "release".into();
    rel.action = "published".into();
    rel.tag_pattern = "0.*".into();
    let mut rd = Binding::new(OCTO, "rd", Trigger::ManualDispatch);
    rd.dispatch_event_type = "on-demand-test".into();
    let mut wd = Binding::new(OCTO, "wd", Trigger::ManualDispatch);
    wd.event_name = "workflow_dispatch".into();
    let mut create = Binding::new(HELLO, "tagged", Trigger::Auto);
    create.event_name = "create".into();
    create.tag_pattern = "simple-*".into();
    let hub = TestHub::start(vec![pr, rel, rd, wd, create]).await;
    let c = hub.activate("lic-a", "srv").await;

    let cases: [(&str, &str, Value); 5] = [
        (
            "create",
            "create/payload.json",
            json!({"dag_name": "tagged", "ref": "refs/tags/simple-tag", "repository_name": HELLO}),
        ),
        (
            "pull_request",
            "pull_request/opened.payload.json",
            json!({"dag_name": "pr", "event_action": "opened", "ref": "refs/pull/2/head",
                   "sha": "ec26c3e57ca3a959ca5aad62de7213c562f8c821", "pull_request_number": 2, "installation_id": 1}),
        ),
        (
            "release",
            "release/published.payload.json",
            json!({"dag_name": "release", "event_action": "published", "ref": "refs/tags/0.0.1"}),
        ),
        (
            "repository_dispatch",
            "repository_dispatch/payload.json",
            json!({"dag_name": "rd", "event_action": "on-demand-test", "ref": "refs/heads/master",
                   "installation_id": 375706, "repository_name": OCTO, "repository_id": 17273051}),
        ),
        (
            "workflow_dispatch",
            "workflow_dispatch/payload.json",
            json!({"dag_name": "wd", "ref": "refs/heads/master", "repository_name": OCTO}),
        ),
    ];
    for (i, (event, file, want)) in cases.into_iter().enumerate() {
        let (status, answer) = hub.webhook(event, &format!("d-{i}"), fixture(file)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{file}");
        assert_eq!(ids(&answer).len(), 1, "{file}: exactly one binding matches");
        let job = hub.pull_job(&c).await;
        for (k, v) in want.as_object().unwrap() {
            assert_eq!(&job[k], v, "{file}: field {k}");
        }
        assert_eq!(job["event_name"], event);
    }
    for (event, delivery, payload) in [
        // A closed PR is not built by default.
        (
            "pull_request",
            "d-closed",
            "pull_request/closed.payload.json",
        ),
        // The release binding wants `published`; the `created` fixture matches nothing.
        ("release", "d-created", "release/created.payload.json"),
    ] {
        let (status, answer) = hub.webhook(event, delivery, fixture(payload)).await;
        assert_eq!(
            (status, ids(&answer).len()),
            (StatusCode::OK, 0),
            "{delivery}"
        );
    }
}

#[tokio::test]
async fn comment_commands_make_run_and_cancel_jobs() {
    let mut b = build(Trigger::CommentCommand);
    b.license = "lic-b".into();
    let hub = TestHub::start(vec![b]).await;
    for (delivery, body, want) in [
        ("c1", "@dispatch build", (StatusCode::ACCEPTED, 1)),
        ("c3", "no command here", (StatusCode::OK, 0)),
    ] {
        let payload = comment_payload(body, true);
        let (status, answer) = hub.webhook("issue_comment", delivery, payload).await;
        assert_eq!((status, ids(&answer).len()), want, "{body:?}");
    }

    // Bound to lic-b: a lic-a scheduler never sees these jobs.
    let a = hub.activate("lic-a", "srv-a").await;
    assert_eq!(hub.pull(&a, 0).await.status(), StatusCode::NO_CONTENT);
    let bsrv = hub.activate("lic-b", "srv-b").await;
    let run = hub.pull_job(&bsrv).await;
    assert_eq!(run["command"], "build");
    assert_eq!(run["issue_number"], 1);
    assert_eq!(run["pull_request_number"], 1);
    assert_eq!(run["comment_id"], 492700400);
    assert_eq!(run["ref"], "refs/pull/1/head");
    assert_eq!(run["actor_login"], "Codertocat");
    let run_id = run["id"].as_str().unwrap();
    hub.accept_ok(&bsrv, run_id).await;

    // A cancel on issue #1 goes to the server running a job of #1.
    let payload = comment_payload("looks good\n@dispatch cancel", false);
    let (status, answer) = hub.webhook("issue_comment", "c2", payload).await;
    assert_eq!((status, ids(&answer).len()), (StatusCode::ACCEPTED, 1));
    assert_eq!(hub.pull(&a, 0).await.status(), StatusCode::NO_CONTENT);
    let cancel = hub.pull_job(&bsrv).await;
    assert_eq!(cancel["command"], "cancel");
    assert_eq!(cancel["issue_number"], 1);
    assert!(
        cancel.get("pull_request_number").is_none(),
        "a plain issue has no PR number"
    );
}

#[tokio::test]
async fn bad_webhooks_are_rejected_and_store_nothing() {
    let hub = TestHub::start(vec![build(Trigger::Auto)]).await;
    let body = fixture(PUSH);

    let resp = hub.webhook_raw("push", "x1", body.clone(), None).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.json::<Value>().await.unwrap()["message"].is_string());
    let resp = hub
        .webhook_raw(
            "push",
            "x2",
            body.clone(),
            Some(format!("sha256={}", "0".repeat(64))),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = hub
        .webhook_raw("push", "x3", body.clone(), Some("sha1=abc".into()))
        .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // Signed, but no delivery id to deduplicate on.
    let resp = hub
        .http
        .post(format!("{}/webhooks/github", hub.base))
        .header("X-GitHub-Event", "push")
        .header("X-Hub-Signature-256", sign(&body))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // Signed but not JSON.
    let (status, _) = hub.webhook("push", "x4", b"{not json".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // An event no trigger covers, and a ping.
    let (status, answer) = hub
        .webhook("issues", "x5", fixture("issues/opened.payload.json"))
        .await;
    assert_eq!((status, ids(&answer).len()), (StatusCode::OK, 0));
    let (status, _) = hub
        .webhook("ping", "x6", fixture("ping/payload.json"))
        .await;
    assert_eq!(status, StatusCode::OK);

    // Over GitHub's 25 MiB cap.
    let mut big = b"{\"pad\":\"".to_vec();
    big.resize(25 * 1024 * 1024 + 16, b'a');
    big.extend_from_slice(b"\"}");
    let sig = sign(&big);
    let resp = hub.webhook_raw("push", "x7", big, Some(sig)).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);

    let c = hub.activate("lic-a", "srv").await;
    assert_eq!(
        hub.pull(&c, 0).await.status(),
        StatusCode::NO_CONTENT,
        "no job was stored"
    );
    hub.metrics_with(&[
        "dispatch_hub_webhooks_received_total{outcome=\"bad_signature\"} 3",
        "dispatch_hub_webhooks_received_total{outcome=\"too_large\"} 1",
        "dispatch_hub_webhooks_received_total{outcome=\"bad_request\"} 2",
        "dispatch_hub_jobs{state=\"queued\"} 0",
    ])
    .await;

    // A signed body under the cap still works after all that.
    let (status, _) = hub.webhook("push", "ok", body).await;
    assert_eq!(status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn redelivery_creates_no_new_job() {
    let hub = TestHub::start(vec![build(Trigger::Auto)]).await;
    let body = fixture(PUSH);
    let (s1, first) = hub.webhook("push", "same", body.clone()).await;
    let (s2, again) = hub.webhook("push", "same", body).await;
    assert_eq!((s1, s2), (StatusCode::ACCEPTED, StatusCode::ACCEPTED));
    assert_eq!(ids(&first), ids(&again));
    assert_eq!(again["duplicate"], true);
    let c = hub.activate("lic-a", "srv").await;
    hub.pull_job(&c).await;
    assert_eq!(hub.pull(&c, 0).await.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn job_too_large_for_a_pull_answer_is_rejected_at_once() {
    let hub = TestHub::start(vec![build(Trigger::Auto)]).await;
    // A real push padded past the 1 MiB a scheduler reads of one pull answer.
    let mut event: Value = serde_json::from_slice(&fixture(PUSH)).unwrap();
    event["padding"] = Value::String("x".repeat(2 * 1024 * 1024));
    let (status, answer) = hub
        .webhook("push", "big", serde_json::to_vec(&event).unwrap())
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(ids(&answer).len(), 1);
    let c = hub.activate("lic-a", "srv").await;
    // Never handed out (it could not be read), and not left queued either.
    assert_eq!(hub.pull(&c, 0).await.status(), StatusCode::NO_CONTENT);
    let m = hub
        .metrics_with(&["dispatch_hub_jobs{state=\"finished\"} 1"])
        .await;
    assert!(!m.contains("dispatch_hub_jobs{state=\"queued\"} 1"), "{m}");
    // A normal-sized event still flows.
    hub.webhook("push", "small", fixture(PUSH)).await;
    hub.pull_job(&c).await;
}

#[tokio::test]
async fn cloud_api_rejects_wrong_credentials_and_unknown_jobs() {
    let hub = TestHub::start(vec![build(Trigger::Auto)]).await;
    let c = hub.activate("lic-a", "srv").await;
    for (path, body) in [
        (
            "/api/v1/licenses/activate",
            json!({"key": "nope", "server_id": server_id("s"), "machine_name": "m"}),
        ),
        (
            "/api/v1/licenses/heartbeat",
            json!({"license_id": "lic-a", "server_id": server_id("srv"), "heartbeat_secret": "wrong"}),
        ),
    ] {
        let status = hub.post(path, body).await.status();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
    let bad = Creds {
        secret: "wrong".into(),
        ..c.clone()
    };
    let other_license = Creds {
        license_id: "lic-b".into(),
        ..c.clone()
    };
    for creds in [&bad, &other_license] {
        for resp in [
            hub.pull(creds, 0).await,
            hub.accept(creds, "j").await,
            hub.finish(creds, "j", "succeeded", "").await,
        ] {
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
            let body: Value = resp.json().await.unwrap();
            assert!(!body["message"].as_str().unwrap().is_empty());
            assert!(
                !body.to_string().contains("wrong"),
                "the secret is not echoed"
            );
        }
    }
    assert_eq!(
        hub.accept(&c, "no-such-job").await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        hub.finish(&c, "no-such-job", "failed", "").await.status(),
        StatusCode::NOT_FOUND
    );
    let resp = hub
        .post("/api/v1/github/dispatch/pull", json!({"license_id": 5}))
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn accept_and_finish_rules_over_http() {
    let hub = TestHub::start(vec![build(Trigger::Auto)]).await;
    hub.push("d").await;
    let a = hub.activate("lic-a", "srv-a").await;
    let b = hub.activate("lic-a", "srv-b").await;
    let id = hub.pull_id(&a).await;
    assert_eq!(hub.accept(&b, &id).await.status(), StatusCode::CONFLICT);
    hub.accept_ok(&a, &id).await;
    assert_eq!(
        hub.accept(&a, &id).await.status(),
        StatusCode::NO_CONTENT,
        "repeat accept is idempotent"
    );
    assert_eq!(
        hub.finish(&b, &id, "succeeded", "").await.status(),
        StatusCode::CONFLICT
    );
    assert_eq!(
        hub.finish(&a, &id, "bogus", "").await.status(),
        StatusCode::BAD_REQUEST
    );
    hub.finish_ok(&a, &id, "succeeded", "done").await;
    assert_eq!(
        hub.finish(&a, &id, "succeeded", "done").await.status(),
        StatusCode::NO_CONTENT,
        "same status: idempotent"
    );
    assert_eq!(
        hub.finish(&a, &id, "failed", "").await.status(),
        StatusCode::CONFLICT,
        "different status: conflict"
    );
    assert_eq!(
        hub.accept(&a, &id).await.status(),
        StatusCode::CONFLICT,
        "accepting a finished job"
    );
    // A repeated finish answers like the first, so it is counted where an operator can see it.
    hub.metrics_with(&[
        "dispatch_hub_jobs{state=\"finished\"} 1",
        "dispatch_hub_finishes_total{outcome=\"done\"} 1",
        "dispatch_hub_finishes_total{outcome=\"repeated\"} 1",
        "dispatch_hub_finishes_total{outcome=\"conflict\"} 2",
    ])
    .await;
}

#[tokio::test]
async fn concurrent_pullers_get_each_job_exactly_once() {
    let hub = TestHub::start(vec![build(Trigger::Auto)]).await;
    let body = fixture(PUSH);
    let mut created = Vec::new();
    for i in 0..24 {
        let (_, answer) = hub.webhook("push", &format!("d{i}"), body.clone()).await;
        created.extend(ids(&answer));
    }
    let mut creds = Vec::new();
    for s in 0..4 {
        creds.push(
            hub.activate(
                if s % 2 == 0 { "lic-a" } else { "lic-b" },
                &format!("srv-{s}"),
            )
            .await,
        );
    }
    let hub = std::sync::Arc::new(hub);
    let mut tasks = Vec::new();
    for c in creds {
        let hub = hub.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let resp = hub.pull(&c, 0).await;
                if resp.status() == StatusCode::NO_CONTENT {
                    return got;
                }
                let job: Value = resp.json().await.unwrap();
                let id = job["id"].as_str().unwrap().to_owned();
                hub.accept_ok(&c, &id).await;
                got.push(id);
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    created.sort();
    assert_eq!(all, created, "every job handed out once, none twice");
}

#[tokio::test]
async fn long_poll_hands_over_a_job_that_arrives_while_waiting() {
    let hub = std::sync::Arc::new(TestHub::start(vec![build(Trigger::Auto)]).await);
    let c = hub.activate("lic-a", "srv").await;
    let waiting = {
        let (hub, c) = (hub.clone(), c.clone());
        tokio::spawn(async move { hub.pull(&c, 30).await })
    };
    // Give the pull a moment to start waiting; the test passes either way, but this makes the
    // wake-up path the one exercised.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, answer) = hub.push("lp").await;
    let resp = tokio::time::timeout(Duration::from_secs(25), waiting)
        .await
        .expect("the waiting pull returns once the job arrives")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let job: Value = resp.json().await.unwrap();
    assert_eq!(job["id"].as_str().unwrap(), ids(&answer)[0]);
    // Nothing queued: a short wait ends with 204.
    assert_eq!(hub.pull(&c, 1).await.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn expired_lease_goes_to_another_scheduler() {
    let hub = TestHub::start_with(vec![build(Trigger::Auto)], |cfg| {
        cfg.lease = Duration::from_millis(300);
    })
    .await;
    hub.push("d").await;
    let a = hub.activate("lic-a", "srv-a").await;
    let b = hub.activate("lic-a", "srv-b").await;
    let id = hub.pull_id(&a).await;
    // srv-a never accepts; a long-polling srv-b is handed the job when the lease runs out.
    let resp = hub.pull(&b, 30).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let job: Value = resp.json().await.unwrap();
    assert_eq!(
        (
            job["id"].as_str().unwrap(),
            job["claimed_by"].as_str().unwrap()
        ),
        (id.as_str(), b.server_id.as_str())
    );
    assert_eq!(hub.accept(&a, &id).await.status(), StatusCode::CONFLICT);
    hub.accept_ok(&b, &id).await;
}

#[tokio::test]
async fn state_survives_restarts() {
    let mut hub = TestHub::start(vec![build(Trigger::Auto)]).await;
    let c = hub.activate("lic-a", "srv").await;
    let (_, answer) = hub.push("d").await;
    let key_before = hub.handle().public_key;
    hub.restart().await;
    assert_eq!(
        hub.handle().public_key,
        key_before,
        "the signing key is kept"
    );
    let (_, again) = hub.push("d").await;
    assert_eq!(ids(&again), ids(&answer), "dedupe survives a restart");
    let job = hub.pull_job(&c).await;
    let id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(id, ids(&answer)[0]);
    hub.accept_ok(&c, &id).await;
    hub.restart().await;
    assert_eq!(
        hub.pull(&c, 0).await.status(),
        StatusCode::NO_CONTENT,
        "an accepted job is not handed out again"
    );
    hub.finish_ok(&c, &id, "succeeded", "ok").await;
    hub.restart().await;
    hub.metrics_with(&["dispatch_hub_jobs{state=\"finished\"} 1"])
        .await;
}

#[tokio::test]
async fn activation_heartbeat_and_revocation() {
    let mut hub = TestHub::start(vec![]).await;
    let first = hub.activate("lic-a", "srv").await;
    let second = hub.activate("lic-a", "srv").await;
    assert_ne!(first.secret, second.secret);
    assert_eq!(
        hub.pull(&first, 0).await.status(),
        StatusCode::UNAUTHORIZED,
        "re-activation replaces the secret"
    );
    assert_eq!(hub.pull(&second, 0).await.status(), StatusCode::NO_CONTENT);
    let hb = |c: &Creds| json!({"license_id": c.license_id, "server_id": c.server_id, "heartbeat_secret": c.secret});
    let resp = hub.post("/api/v1/licenses/heartbeat", hb(&second)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let token: Value = resp.json().await.unwrap();
    let claims = dispatch_protocol::token::verify(
        token["token"].as_str().unwrap(),
        &hub.handle().public_key,
        now(),
    )
    .unwrap()
    .claims;
    assert_eq!(
        (claims.jti.as_str(), claims.plan.as_str()),
        ("lic-a", "pro")
    );
    assert_eq!(claims.features, vec!["dispatch".to_owned()]);
    assert!(claims.exp > now() && claims.exp <= now() + 3600 + 5);
    // The license is removed from the config: heartbeat says 410, dispatch calls 401.
    hub.stop().await;
    hub.cfg.licenses.retain(|l| l.id != "lic-a");
    hub.boot().await;
    assert_eq!(
        hub.post("/api/v1/licenses/heartbeat", hb(&second))
            .await
            .status(),
        StatusCode::GONE
    );
    assert_eq!(
        hub.pull(&second, 0).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn health_and_metrics() {
    let hub = TestHub::start(vec![build(Trigger::Auto)]).await;
    let resp = hub.get("/healthz").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.text().await.unwrap(), "ok");
    hub.push("m1").await;
    let c = hub.activate("lic-a", "srv").await;
    hub.pull(&c, 0).await;
    hub.pull(&c, 0).await;
    hub.metrics_with(&[
        "dispatch_hub_webhooks_received_total{outcome=\"accepted\"} 1",
        "dispatch_hub_pulls_total{outcome=\"job\"} 1",
        "dispatch_hub_pulls_total{outcome=\"empty\"} 1",
        "dispatch_hub_jobs{state=\"claimed\"} 1",
    ])
    .await;
}

mod reporting {
    use super::*;
    use wiremock::matchers::{body_json, body_partial_json, header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    /// Where the report of a job made from [`PUSH`] goes: a commit status on the pushed SHA.
    const PUSH_STATUS: &str =
        "/repos/Codertocat/Hello-World/statuses/6113728f27ae82c7b1a177c8d03f9e96e0adf246";
    const ONE_SENT: &str = "dispatch_hub_reports_total{result=\"sent\"} 1";

    async fn run_job(
        hub: &TestHub,
        event: &str,
        delivery: &str,
        body: Vec<u8>,
        status: &str,
        summary: &str,
    ) {
        let (_, answer) = hub.webhook(event, delivery, body).await;
        assert_eq!(ids(&answer).len(), 1);
        let c = hub.activate("lic-a", "srv").await;
        let id = hub.pull_id(&c).await;
        hub.accept_ok(&c, &id).await;
        hub.finish_ok(&c, &id, status, summary).await;
    }

    #[tokio::test]
    async fn finish_posts_commit_status_with_exact_request() {
        let gh = MockServer::start().await;
        let summary = "é".repeat(150);
        Mock::given(method("POST"))
            .and(path(PUSH_STATUS))
            .and(header("authorization", "Bearer gh-token"))
            .and(header("accept", "application/vnd.github+json"))
            .and(body_partial_json(json!({
                "state": "failure",
                "context": "ci/build",
                "description": "é".repeat(140),
            })))
            .respond_with(ResponseTemplate::new(201))
            .expect(1)
            .mount(&gh)
            .await;
        // The `pending` statuses before it (tests/hub/github.rs checks those).
        Mock::given(method("POST"))
            .and(body_partial_json(json!({"state": "pending"})))
            .respond_with(ResponseTemplate::new(201))
            .mount(&gh)
            .await;
        let mut b = build(Trigger::Auto);
        b.check_name = "ci/build".into();
        let hub = reporting_hub(&gh, vec![b]).await;
        run_job(&hub, "push", "r1", fixture(PUSH), "failed", &summary).await;
        let is_final = |r: &wiremock::Request| {
            serde_json::from_slice::<Value>(&r.body).unwrap()["state"] == "failure"
        };
        eventually("the commit status", || async {
            gh.received_requests().await.unwrap().iter().any(is_final)
        })
        .await;
        let reqs = gh.received_requests().await.unwrap();
        let req = reqs.iter().find(|r| is_final(r)).unwrap();
        assert!(req
            .headers
            .get("user-agent")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("dispatch-hub/"));
        let body: Value = serde_json::from_slice(&req.body).unwrap();
        assert!(body["target_url"].as_str().unwrap().contains("/jobs/"));
        assert_eq!(req.url.path(), PUSH_STATUS);
        gh.verify().await;
    }

    #[tokio::test]
    async fn comment_command_gets_a_comment_and_failures_are_retried() {
        let gh = MockServer::start().await;
        fail_first_post(&gh, "/repos/Codertocat/Hello-World/issues/1/comments", 502).await;
        Mock::given(method("POST"))
            .and(path("/repos/Codertocat/Hello-World/issues/1/comments"))
            .and(header("authorization", "Bearer gh-token"))
            .and(body_json(
                json!({"body": "dispatch `build` (build): **succeeded**\n\n> all green\n"}),
            ))
            .respond_with(ResponseTemplate::new(201))
            .with_priority(2)
            .mount(&gh)
            .await;
        let hub = reporting_hub(&gh, vec![build(Trigger::CommentCommand)]).await;
        run_job(
            &hub,
            "issue_comment",
            "c",
            comment_payload("@dispatch build", true),
            "succeeded",
            "all green",
        )
        .await;
        hub.wait_for_metric(ONE_SENT).await;
        let reqs = gh.received_requests().await.unwrap();
        assert_eq!(reqs.len(), 2, "one failure, one success");
        assert_eq!(reqs[0].body, reqs[1].body);
        hub.metrics_with(&["dispatch_hub_reports_total{result=\"failed\"} 1"])
            .await;
    }

    #[tokio::test]
    async fn pending_reports_survive_a_restart() {
        let gh = MockServer::start().await;
        let mut hub = reporting_hub(&gh, vec![build(Trigger::Auto)]).await;
        // GitHub is down (no mock mounted answers 404, a permanent error, so use a 503 first).
        let down = Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(503))
            .mount_as_scoped(&gh)
            .await;
        run_job(&hub, "push", "p", fixture(PUSH), "succeeded", "").await;
        hub.wait_for_metric("dispatch_hub_reports_total{result=\"failed\"}")
            .await;
        hub.stop().await;
        drop(down);
        Mock::given(method("POST"))
            .and(path(PUSH_STATUS))
            .and(body_partial_json(json!({"state": "success", "context": "dispatch/build", "description": "build: succeeded"})))
            .respond_with(ResponseTemplate::new(201))
            .expect(1)
            .mount(&gh)
            .await;
        hub.boot().await;
        hub.wait_for_metric(ONE_SENT).await;
        gh.verify().await;
    }

    #[tokio::test]
    async fn no_token_means_no_report() {
        let gh = MockServer::start().await;
        let api = gh.uri();
        let hub = TestHub::start_with(vec![build(Trigger::Auto)], move |cfg| {
            cfg.github.api_url = api;
        })
        .await;
        run_job(&hub, "push", "n", fixture(PUSH), "succeeded", "").await;
        // The finish has returned and committed; a report would have been queued in the same
        // transaction, and there is no reporter to send one.
        assert!(gh.received_requests().await.unwrap().is_empty());
        assert!(!hub.metrics().await.contains("dispatch_hub_reports_total{"));
    }
}

mod binary {
    use super::{hub_bin, stdout_of, TestHub};

    /// What `hub print-public-key` prints verifies the tokens the running hub signs: on
    /// PostgreSQL the key every replica shares, read through the store URL (here from the
    /// environment, as `DISPATCH_HUB_STORE_URL`); on SQLite the data directory's key file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn print_public_key_gives_the_key_the_running_hub_signs_with() {
        let hub = TestHub::start(vec![]).await;
        let mut cmd = hub_bin(&["print-public-key", "--data-dir"], &hub.cfg.data_dir);
        if let Some(url) = &hub.cfg.store_url {
            cmd.env("DISPATCH_HUB_STORE_URL", url.expose());
            // The key file of the data directory is not the key on PostgreSQL.
            let file_key = dispatch_hub::keys::load_or_create_signing_key(&hub.cfg.data_dir)
                .unwrap()
                .verifying_key();
            assert_ne!(file_key, hub.handle().public_key);
        }
        let printed = tokio::task::spawn_blocking(move || stdout_of(&mut cmd))
            .await
            .unwrap();
        assert_eq!(
            dispatch_protocol::token::parse_public_key(&printed).unwrap(),
            hub.handle().public_key
        );
    }

    #[test]
    fn print_public_key_prints_the_signing_key() {
        let dir = tempfile::tempdir().unwrap();
        let run = || {
            stdout_of(&mut hub_bin(
                &["print-public-key", "--data-dir"],
                dir.path(),
            ))
        };
        let first = run();
        assert!(first.starts_with("-----BEGIN PUBLIC KEY-----"), "{first}");
        assert_eq!(first, run(), "the key is created once");
        let key = dispatch_protocol::token::parse_public_key(&first).unwrap();
        let signing = dispatch_hub::keys::load_or_create_signing_key(dir.path()).unwrap();
        assert_eq!(key, signing.verifying_key());
        let b64 = stdout_of(&mut hub_bin(
            &["print-public-key", "--format", "base64", "--data-dir"],
            dir.path(),
        ));
        assert_eq!(
            dispatch_protocol::token::parse_public_key(&b64).unwrap(),
            key
        );
    }

    #[test]
    fn config_errors_exit_2_naming_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:0\"\n").unwrap();
        let out = hub_bin(&["serve", "--config"], &path)
            .env_remove("DISPATCH_HUB_WEBHOOK_SECRET")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("webhook_secret"), "{err}");

        std::fs::write(
            &path,
            "[[binding]]\nrepository = \"o/r\"\ndag = \"d\"\ntrigger = \"never\"\n",
        )
        .unwrap();
        let out = hub_bin(&["serve", "--config"], &path).output().unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("hub.toml") && err.contains("trigger"), "{err}");
    }
}

/// The scheduler's own client (`dispatch_license::CloudClient`) against the hub: the two sides of
/// the wire contract (`docs/protocol.md`) agree on paths, bodies, 204s and error messages.
mod cloud_client {
    use super::*;
    use dispatch_license::{ClientConfig, CloudClient};
    use dispatch_protocol::{
        AcceptRequest, ActivateRequest, FinishRequest, HeartbeatRequest, PullRequest,
    };

    #[tokio::test]
    async fn full_job_life_through_the_real_client() {
        let hub = TestHub::start(vec![build(Trigger::Auto)]).await;
        let client = CloudClient::new(ClientConfig::new(hub.base.clone(), "test")).unwrap();
        let act = client
            .activate(&ActivateRequest {
                key: Secret::new("key-lic-a"),
                server_id: server_id("srv-1"),
                machine_name: "box".into(),
                client_version: "test".into(),
            })
            .await
            .unwrap();
        let claims =
            dispatch_protocol::token::verify(act.token.expose(), &hub.handle().public_key, now())
                .unwrap()
                .claims;
        let hb = client
            .heartbeat(&HeartbeatRequest {
                license_id: claims.jti.clone(),
                server_id: server_id("srv-1"),
                heartbeat_secret: act.heartbeat_secret.clone(),
                client_version: String::new(),
            })
            .await
            .unwrap();
        assert!(dispatch_protocol::token::verify(
            hb.token.expose(),
            &hub.handle().public_key,
            now()
        )
        .is_ok());

        let pull = PullRequest {
            license_id: claims.jti.clone(),
            server_id: server_id("srv-1"),
            heartbeat_secret: act.heartbeat_secret.clone(),
            wait_seconds: 0,
        };
        assert!(client.pull_dispatch(&pull).await.unwrap().is_none());
        let (_, answer) = hub.push("cc").await;
        let job = client.pull_dispatch(&pull).await.unwrap().unwrap();
        assert_eq!(job.id, ids(&answer)[0]);
        assert_eq!(job.git_ref, "refs/heads/master");

        let accept = AcceptRequest {
            license_id: claims.jti.clone(),
            server_id: server_id("srv-1"),
            secret: act.heartbeat_secret.clone(),
            dag_run_id: job.id.clone(),
        };
        client.accept_dispatch(&job.id, &accept).await.unwrap();
        let finish = FinishRequest {
            license_id: claims.jti.clone(),
            server_id: server_id("srv-1"),
            secret: act.heartbeat_secret.clone(),
            result_status: "succeeded".into(),
            result_summary: "all steps succeeded".into(),
        };
        client.finish_dispatch(&job.id, &finish).await.unwrap();
        client.finish_dispatch(&job.id, &finish).await.unwrap();

        // Errors carry the hub's JSON message; odd job ids stay one path segment.
        for odd in ["a/b", "x?y=1", "50%", "ünï"] {
            let err = client.accept_dispatch(odd, &accept).await.unwrap_err();
            assert_eq!(err.status, Some(404), "{odd}: {err}");
            assert!(err.message.contains(odd), "{odd}: {}", err.message);
        }
        let wrong = FinishRequest {
            secret: Secret::new("nope"),
            ..finish.clone()
        };
        let err = client.finish_dispatch(&job.id, &wrong).await.unwrap_err();
        assert!(err.is_unauthorized(), "{err}");
        assert_eq!(err.message, "unknown license, server or secret");
        let conflict = FinishRequest {
            result_status: "failed".into(),
            ..finish
        };
        assert_eq!(
            client
                .finish_dispatch(&job.id, &conflict)
                .await
                .unwrap_err()
                .status,
            Some(409)
        );
    }

    #[tokio::test]
    async fn revoked_license_is_gone_for_the_client() {
        let mut hub = TestHub::start(vec![]).await;
        let c = hub.activate("lic-b", "srv").await;
        hub.stop().await;
        hub.cfg.licenses.retain(|l| l.id != "lic-b");
        hub.boot().await;
        let client = CloudClient::new(ClientConfig::new(hub.base.clone(), "test")).unwrap();
        let err = client
            .heartbeat(&HeartbeatRequest {
                license_id: c.license_id,
                server_id: c.server_id,
                heartbeat_secret: Secret::new(c.secret),
                client_version: String::new(),
            })
            .await
            .unwrap_err();
        assert!(err.is_gone(), "{err}");
    }
}

mod serve_process {
    use super::*;

    /// The real binary: serves, logs without secrets, and stops with exit code 0 on SIGTERM.
    #[test]
    fn serve_logs_no_secrets_and_stops_cleanly_on_sigterm() {
        let dir = tempfile::tempdir().unwrap();
        let path = hub_toml(
            dir.path(),
            &format!(
                "[[license]]\nid = \"lic-a\"\nkey = \"key-lic-a\"\n\
                 [github]\napi_url = \"http://127.0.0.1:9\"\ntoken = \"gh-token-123\"\n\
                 [[binding]]\nrepository = \"{HELLO}\"\ndag = \"build\"\ntrigger = \"auto\"\n"
            ),
        );
        let hub = Served::start(&path, &[("DISPATCH_HUB_LOG", "trace")]);
        let base = &hub.base;
        let wrong = block_on(async {
            let http = reqwest::Client::new();
            assert_eq!(
                http.get(format!("{base}/healthz"))
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap(),
                "ok"
            );
            let post = |p: &str, v: Value| http.post(format!("{base}{p}")).json(&v).send();
            let srv = server_id("srv");
            let act: Value = post(
                "/api/v1/licenses/activate",
                json!({"key": "key-lic-a", "server_id": srv, "machine_name": "box"}),
            )
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
            let secret = act["heartbeat_secret"].as_str().unwrap().to_owned();
            let body = fixture(PUSH);
            let resp = http
                .post(format!("{base}/webhooks/github"))
                .header("X-GitHub-Event", "push")
                .header("X-GitHub-Delivery", "d1")
                .header("X-Hub-Signature-256", sign(&body))
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::ACCEPTED);
            let creds =
                json!({"license_id": "lic-a", "server_id": srv, "heartbeat_secret": secret});
            let job: Value = post("/api/v1/github/dispatch/pull", creds)
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let id = job["id"].as_str().unwrap();
            let auth = |extra: Value| {
                let mut v = json!({"license_id": "lic-a", "server_id": srv, "secret": secret});
                v.as_object_mut()
                    .unwrap()
                    .extend(extra.as_object().unwrap().clone());
                v
            };
            let accept = post(
                &format!("/api/v1/github/dispatch/{id}/accept"),
                auth(json!({"dag_run_id": id})),
            );
            assert_eq!(accept.await.unwrap().status(), StatusCode::NO_CONTENT);
            let finish = post(
                &format!("/api/v1/github/dispatch/{id}/finish"),
                auth(json!({"result_status": "succeeded"})),
            );
            assert_eq!(finish.await.unwrap().status(), StatusCode::NO_CONTENT);
            let bad = json!({"license_id": "lic-a", "server_id": srv, "heartbeat_secret": "wrong-secret-456"});
            assert_eq!(
                post("/api/v1/github/dispatch/pull", bad)
                    .await
                    .unwrap()
                    .status(),
                StatusCode::UNAUTHORIZED
            );
            let bad_key =
                json!({"key": "bad-key-789", "server_id": server_id("s"), "machine_name": "m"});
            assert_eq!(
                post("/api/v1/licenses/activate", bad_key)
                    .await
                    .unwrap()
                    .status(),
                StatusCode::UNAUTHORIZED
            );
            secret
        });

        let logs = hub.stop();
        assert!(
            logs.contains("job claimed") && logs.contains("shutting down"),
            "{logs}"
        );
        assert!(logs.contains("TRACE"), "trace logging was on:\n{logs}");
        for secret in [
            SECRET,
            "key-lic-a",
            wrong.as_str(),
            "wrong-secret-456",
            "bad-key-789",
            "gh-token-123",
        ] {
            assert!(
                !logs.contains(secret),
                "a secret leaked into the logs:\n{logs}"
            );
        }
        assert!(dir.path().join("data/hub.sqlite3").exists());
        assert!(dir.path().join("data/hub_ed25519.key").exists());
    }
}

#[path = "hub/hostile.rs"]
mod hostile;

#[path = "hub/storage.rs"]
mod storage;

#[path = "hub/trust.rs"]
mod trust;

#[path = "hub/github.rs"]
mod github;

#[path = "hub/fleet.rs"]
mod fleet;

#[path = "hub/batch.rs"]
mod batch;

#[path = "hub/progress.rs"]
mod progress;
