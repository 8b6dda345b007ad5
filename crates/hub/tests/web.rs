//! The hub's web pages over loopback: a real hub with its store, a real HTTP client that keeps
//! no cookies of its own (each test hands the session cookie on itself) and follows no redirect.

use std::time::Duration;

use dispatch_hub::{Binding, Hub, HubConfig, HubHandle, LicenseKey, Trigger};
use dispatch_protocol::Secret;
use dispatch_test_support::fixture;
use reqwest::header::{AUTHORIZATION, COOKIE, LOCATION, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "webhook-secret";
const TOKEN: &str = "ui-token-for-tests";
const HELLO: &str = "Codertocat/Hello-World";
const PUSH: &str = "push/with-new-branch.payload.json";
const PR_OPENED: &str = "pull_request/opened.payload.json";
const SERVER: &str = "0190a000-0000-7000-8000-00000000beef";
/// Wrong tokens one address may send before the hub stops it for a minute.
const WRONG_TOKENS_PER_MINUTE: usize = 10;

struct TestHub {
    _dir: tempfile::TempDir,
    /// The PostgreSQL database of the store when the run asks for that backend.
    _db: Option<dispatch_test_support::PgDatabase>,
    handle: Option<HubHandle>,
    cancel: CancellationToken,
    base: String,
    http: reqwest::Client,
}

fn config(data_dir: &std::path::Path) -> HubConfig {
    HubConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_owned(),
        webhook_secret: Secret::new(SECRET),
        bindings: vec![
            Binding::new(HELLO, "build", Trigger::Auto),
            Binding::new(HELLO, "lint", Trigger::Auto),
        ],
        licenses: vec![LicenseKey {
            id: "lic".into(),
            key: Secret::new("key-lic"),
            plan: "pro".into(),
            features: vec!["dispatch".into()],
        }],
        ui_token: Some(Secret::new(TOKEN)),
        ..HubConfig::default()
    }
}

impl TestHub {
    async fn start(tweak: impl FnOnce(&mut HubConfig)) -> TestHub {
        let dir = tempfile::tempdir().unwrap();
        let db = dispatch_test_support::test_store_database();
        let mut cfg = config(&dir.path().join("data"));
        cfg.store_url = db.as_ref().map(|db| Secret::new(db.url()));
        tweak(&mut cfg);
        let cancel = CancellationToken::new();
        let handle = Hub::start(cfg, cancel.clone()).await.unwrap();
        TestHub {
            _dir: dir,
            _db: db,
            base: format!("http://{}", handle.addr),
            handle: Some(handle),
            cancel,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        }
    }

    async fn stop(mut self) {
        self.cancel.cancel();
        let handle = self.handle.take().unwrap();
        tokio::time::timeout(Duration::from_secs(60), handle.join())
            .await
            .expect("hub stops")
            .unwrap();
    }

    async fn webhook(&self, event: &str, delivery: &str, body: Vec<u8>) -> Value {
        let sig = dispatch_protocol::webhook_signature::sign(&Secret::new(SECRET), &body);
        let resp = self
            .http
            .post(format!("{}/webhooks/github", self.base))
            .header("X-GitHub-Event", event)
            .header("X-GitHub-Delivery", delivery)
            .header("Content-Type", "application/json")
            .header("X-Hub-Signature-256", sig)
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
        resp.json().await.unwrap()
    }

    /// The ids of the jobs a push delivery made (one per binding).
    async fn push(&self, delivery: &str) -> Vec<String> {
        job_ids(&self.webhook("push", delivery, fixture(PUSH)).await)
    }

    async fn get(&self, path: &str, auth: Auth<'_>) -> reqwest::Response {
        let req = self.http.get(format!("{}{path}", self.base));
        let req = match auth {
            Auth::None => req,
            Auth::Cookie(c) => req.header(COOKIE, c),
            Auth::Bearer(t) => req.header(AUTHORIZATION, format!("Bearer {t}")),
        };
        req.send().await.unwrap()
    }

    /// A page that must answer 200, as text.
    async fn page(&self, path: &str, auth: Auth<'_>) -> String {
        let resp = self.get(path, auth).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        resp.text().await.unwrap()
    }

    /// Logs in with the token; returns the `Cookie` header value of the session.
    async fn login(&self) -> String {
        let resp = self.get(&format!("/login?token={TOKEN}"), Auth::None).await;
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
        assert_eq!(resp.headers()[LOCATION], "/");
        let set = resp.headers()[SET_COOKIE].to_str().unwrap().to_owned();
        set.split(';').next().unwrap().to_owned()
    }

    async fn api(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Activates [`SERVER`] as machine `box`; returns its heartbeat secret.
    async fn activate(&self) -> String {
        let resp = self
            .api(
                "/api/v1/licenses/activate",
                json!({"key": "key-lic", "server_id": SERVER, "machine_name": "box"}),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value = resp.json().await.unwrap();
        body["heartbeat_secret"].as_str().unwrap().to_owned()
    }

    /// Pulls and accepts one job as [`SERVER`]; returns its id.
    async fn take(&self, secret: &str) -> String {
        let resp = self
            .api(
                "/api/v1/github/dispatch/pull",
                json!({"license_id": "lic", "server_id": SERVER, "heartbeat_secret": secret}),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let job: Value = resp.json().await.unwrap();
        let id = job["id"].as_str().unwrap().to_owned();
        let resp = self
            .api(
                &format!("/api/v1/github/dispatch/{id}/accept"),
                json!({"license_id": "lic", "server_id": SERVER, "secret": secret, "dag_run_id": id}),
            )
            .await;
        assert!(resp.status().is_success(), "{}", resp.status());
        id
    }

    /// Sends a progress call for job `id` as [`SERVER`]: `steps` and `logs` as the wire has them.
    async fn progress(&self, secret: &str, id: &str, steps: Value, logs: Value) {
        let resp = self
            .api(
                &format!("/api/v1/github/dispatch/{id}/progress"),
                json!({"license_id": "lic", "server_id": SERVER, "secret": secret,
                       "run_started_ms": 1_700_000_000_000_u64, "steps": steps, "logs": logs}),
            )
            .await;
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "{}",
            resp.text().await.unwrap()
        );
    }

    async fn finish(&self, secret: &str, id: &str, status: &str, summary: &str) {
        let resp = self
            .api(
                &format!("/api/v1/github/dispatch/{id}/finish"),
                json!({"license_id": "lic", "server_id": SERVER, "secret": secret,
                       "result_status": status, "result_summary": summary}),
            )
            .await;
        assert!(resp.status().is_success(), "{}", resp.status());
    }
}

#[derive(Clone, Copy)]
enum Auth<'a> {
    None,
    Cookie(&'a str),
    Bearer(&'a str),
}

fn job_ids(answer: &Value) -> Vec<String> {
    answer["job_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("no job_ids in {answer}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// Every page and a few of their query strings, with the job `id`.
fn every_page(id: &str) -> Vec<String> {
    vec![
        "/".into(),
        "/jobs".into(),
        format!("/jobs?repository={HELLO}&status=queued"),
        "/jobs?before=99999".into(),
        format!("/jobs/{id}"),
        format!("/jobs/{id}/log?step=build&stream=stdout"),
        format!("/jobs/{id}/events"),
        "/jobs/no-such-job".into(),
        "/deliveries".into(),
        "/deliveries?before_ms=99999999999999&before_id=x".into(),
        "/servers".into(),
        "/bindings".into(),
    ]
}

#[tokio::test]
async fn without_a_session_every_page_sends_to_the_login_and_shows_nothing() {
    let hub = TestHub::start(|_| {}).await;
    let ids = hub.push("d-1").await;
    for (i, path) in every_page(&ids[0]).into_iter().enumerate() {
        for auth in [
            Auth::None,
            Auth::Cookie(
                "dispatch_session=0000000000000000000000000000000000000000000000000000000000000000",
            ),
            Auth::Cookie("other=1"),
        ] {
            let resp = hub.get(&path, auth).await;
            assert_eq!(resp.status(), StatusCode::SEE_OTHER, "{path}");
            assert_eq!(resp.headers()[LOCATION], "/login", "{path}");
            let body = resp.text().await.unwrap();
            assert!(
                !body.contains(HELLO) && !body.contains(&ids[0]),
                "{path}: {body}"
            );
        }
        let resp = hub.get(&path, Auth::Bearer("not-the-token")).await;
        // Past ten wrong tokens from one address, it is stopped for a minute.
        let want = if i < WRONG_TOKENS_PER_MINUTE {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::TOO_MANY_REQUESTS
        };
        assert_eq!(resp.status(), want, "{path}");
        let body = resp.text().await.unwrap();
        assert!(
            !body.contains(HELLO) && !body.contains(&ids[0]),
            "{path}: {body}"
        );
    }
    hub.stop().await;
}

#[tokio::test]
async fn the_bearer_token_and_a_session_open_every_page() {
    let hub = TestHub::start(|_| {}).await;
    let ids = hub.push("d-1").await;
    let cookie = hub.login().await;
    for path in every_page(&ids[0]) {
        for auth in [Auth::Bearer(TOKEN), Auth::Cookie(&cookie)] {
            let resp = hub.get(&path, auth).await;
            let expected = match path.as_str() {
                "/" => StatusCode::SEE_OTHER,
                p if p.ends_with("/events") => StatusCode::OK,
                "/jobs/no-such-job" => StatusCode::NOT_FOUND,
                _ => StatusCode::OK,
            };
            assert_eq!(resp.status(), expected, "{path}");
            let h = resp.headers();
            assert_eq!(h["cache-control"], "no-store", "{path}");
            assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
            assert!(
                h["content-security-policy"]
                    .to_str()
                    .unwrap()
                    .contains("script-src 'self'"),
                "{path}"
            );
        }
    }
    assert_eq!(
        hub.get("/", Auth::Cookie(&cookie)).await.headers()[LOCATION],
        "/jobs"
    );
    hub.stop().await;
}

#[tokio::test]
async fn login_takes_only_the_token_and_sets_a_private_cookie() {
    let hub = TestHub::start(|_| {}).await;
    let form = hub.get("/login", Auth::None).await;
    assert_eq!(form.status(), StatusCode::OK);
    assert!(form.text().await.unwrap().contains("name=\"token\""));
    for wrong in ["wrong", "ui-token-for-test", "ui-token-for-testsx"] {
        let resp = hub.get(&format!("/login?token={wrong}"), Auth::None).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{wrong}");
        assert!(resp.headers().get(SET_COOKIE).is_none());
    }
    let resp = hub.get(&format!("/login?token={TOKEN}"), Auth::None).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let set = resp.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    assert!(set.starts_with("dispatch_session="), "{set}");
    for part in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(set.contains(part), "{set}");
    }
    assert!(!set.contains("Secure"), "http hub: {set}");
    assert!(!set.contains(TOKEN), "the cookie is not the token: {set}");
    let cookie = set.split(';').next().unwrap().to_owned();
    hub.page("/jobs", Auth::Cookie(&cookie)).await;
    // Two logins are two sessions; logging out ends one.
    let other = hub.login().await;
    assert_ne!(other, cookie);
    let out = hub
        .http
        .post(format!("{}/logout", hub.base))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert!(out.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    assert_eq!(
        hub.get("/jobs", Auth::Cookie(&cookie)).await.status(),
        StatusCode::SEE_OTHER
    );
    hub.page("/jobs", Auth::Cookie(&other)).await;
    hub.stop().await;
}

/// `POST /login` with the form's body.
async fn post_login(hub: &TestHub, token: &str) -> reqwest::Response {
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("token", token)
        .finish();
    hub.http
        .post(format!("{}/login", hub.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_typed_token_is_posted_and_an_address_guessing_it_is_stopped() {
    let hub = TestHub::start(|_| {}).await;
    let form = hub.get("/login", Auth::None).await.text().await.unwrap();
    assert!(
        form.contains(r#"<form method="post" action="/login">"#),
        "the typed token stays out of the address: {form}"
    );
    let resp = post_login(&hub, TOKEN).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let cookie = resp.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    hub.page("/jobs", Auth::Cookie(&cookie)).await;
    for i in 0..WRONG_TOKENS_PER_MINUTE {
        let resp = post_login(&hub, &format!("guess-{i}")).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
    // Now even the right token, by any route, waits for the window to end.
    let post = post_login(&hub, TOKEN).await;
    assert_eq!(post.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(post.headers()["retry-after"], "60");
    assert!(post.headers().get(SET_COOKIE).is_none());
    let link = hub.get(&format!("/login?token={TOKEN}"), Auth::None).await;
    assert_eq!(link.status(), StatusCode::TOO_MANY_REQUESTS);
    let bearer = hub.get("/jobs", Auth::Bearer(TOKEN)).await;
    assert_eq!(bearer.status(), StatusCode::TOO_MANY_REQUESTS);
    // A session already open is not a guess, and goes on.
    hub.page("/jobs", Auth::Cookie(&cookie)).await;
    hub.stop().await;
}

#[tokio::test]
async fn the_cookie_is_secure_when_the_hub_is_reached_over_https() {
    let hub = TestHub::start(|cfg| cfg.public_url = Some("https://hub.example.com".into())).await;
    let resp = hub.get(&format!("/login?token={TOKEN}"), Auth::None).await;
    let set = resp.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    assert!(set.contains("; Secure"), "{set}");
    hub.stop().await;
}

#[tokio::test]
async fn without_a_ui_token_the_pages_say_the_ui_is_disabled() {
    let hub = TestHub::start(|cfg| cfg.ui_token = None).await;
    let ids = hub.push("d-1").await;
    let mut paths = every_page(&ids[0]);
    paths.push(format!("/login?token={TOKEN}"));
    paths.push("/login?token=".into());
    for path in paths {
        for auth in [Auth::None, Auth::Bearer(TOKEN), Auth::Bearer("")] {
            let resp = hub.get(&path, auth).await;
            assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
            assert!(resp.headers().get(SET_COOKIE).is_none());
            let body = resp.text().await.unwrap();
            assert!(body.contains("Web UI disabled"), "{path}: {body}");
            assert!(!body.contains(HELLO) && !body.contains(&ids[0]), "{path}");
        }
    }
    // The cloud API is not affected.
    let health = hub.get("/healthz", Auth::None).await;
    assert_eq!(health.status(), StatusCode::OK);
    hub.stop().await;
}

#[tokio::test]
async fn text_from_the_payload_is_escaped_and_links_are_checked() {
    let hub = TestHub::start(|_| {}).await;
    let evil = "<script>alert(1)</script>";
    let mut push: Value = serde_json::from_slice(&fixture(PUSH)).unwrap();
    push["ref"] = json!(format!("refs/heads/{evil}"));
    push["sender"]["login"] = json!("javascript:alert(1)");
    let push_ids = job_ids(
        &hub.webhook("push", "d-push", push.to_string().into_bytes())
            .await,
    );
    let mut pr: Value = serde_json::from_slice(&fixture(PR_OPENED)).unwrap();
    pr["pull_request"]["title"] = json!(format!("fix {evil} \"quoted\" & more"));
    let pr_ids = job_ids(
        &hub.webhook("pull_request", "d-pr", pr.to_string().into_bytes())
            .await,
    );
    let escaped = "&lt;script&gt;alert(1)&lt;/script&gt;";
    for path in [
        "/jobs".to_owned(),
        format!("/jobs/{}", push_ids[0]),
        format!("/jobs/{}", pr_ids[0]),
    ] {
        let body = hub.page(&path, Auth::Bearer(TOKEN)).await;
        assert!(!body.contains(evil), "{path}: {body}");
        assert!(!body.contains("href=\"javascript:"), "{path}: {body}");
        if !path.contains(&pr_ids[0]) {
            assert!(body.contains(escaped), "{path}: {body}");
        }
    }
    let pr_page = hub
        .page(&format!("/jobs/{}", pr_ids[0]), Auth::Bearer(TOKEN))
        .await;
    assert!(
        pr_page.contains("fix &lt;script&gt;alert(1)&lt;/script&gt; &quot;quoted&quot; &amp; more"),
        "{pr_page}"
    );
    assert!(
        pr_page.contains("href=\"https://github.com/Codertocat/Hello-World/pull/2\""),
        "{pr_page}"
    );
    let push_page = hub
        .page(&format!("/jobs/{}", push_ids[0]), Auth::Bearer(TOKEN))
        .await;
    // The actor is shown, not linked: it is no login.
    assert!(push_page.contains("javascript:alert(1)"));
    hub.stop().await;
}

#[tokio::test]
async fn the_jobs_list_filters_and_pages_by_keyset() {
    let hub = TestHub::start(|_| {}).await;
    let mut all = Vec::new();
    // 30 pushes, each making a `build` and a `lint` job: 60 jobs, more than one page of 50.
    for i in 0..30 {
        all.extend(hub.push(&format!("d-{i}")).await);
    }
    let first = hub.page("/jobs", Auth::Bearer(TOKEN)).await;
    let newest = all.last().unwrap();
    assert!(first.contains(&format!("/jobs/{newest}")));
    assert!(
        !first.contains(&format!("/jobs/{}", all[0])),
        "the oldest is on page 2"
    );
    let next = first
        .split("href=\"")
        .filter_map(|s| s.split('"').next())
        .find(|href| href.starts_with("/jobs?before="))
        .expect("a link to older jobs")
        .replace("&amp;", "&");
    let second = hub.page(&next, Auth::Bearer(TOKEN)).await;
    let on = |page: &str| {
        all.iter()
            .filter(|id| page.contains(&format!("/jobs/{id}")))
            .count()
    };
    assert_eq!(on(&first), 50);
    assert_eq!(on(&second), 10);
    assert!(all[..10]
        .iter()
        .all(|id| second.contains(&format!("/jobs/{id}"))));
    assert!(!second.contains("rel=\"next\""), "no page after the last");
    // Filters: by DAG, by status, by repository (any case), and combined with paging.
    let lint = hub.page("/jobs?dag=lint", Auth::Bearer(TOKEN)).await;
    assert_eq!(on(&lint), 30);
    assert!(!lint.contains(">build<"));
    assert_eq!(
        on(&hub.page("/jobs?status=queued", Auth::Bearer(TOKEN)).await),
        50
    );
    assert_eq!(
        on(&hub.page("/jobs?status=finished", Auth::Bearer(TOKEN)).await),
        0
    );
    assert_eq!(
        on(&hub
            .page(
                "/jobs?repository=codertocat%2Fhello-world&dag=build",
                Auth::Bearer(TOKEN)
            )
            .await),
        30
    );
    assert_eq!(
        on(&hub
            .page("/jobs?repository=other%2Frepo", Auth::Bearer(TOKEN))
            .await),
        0
    );
    hub.stop().await;
}

#[tokio::test]
async fn the_job_page_shows_event_binding_server_timeline_and_summary() {
    let hub = TestHub::start(|_| {}).await;
    let ids = hub.push("d-1").await;
    let secret = hub.activate().await;
    let queued = hub
        .page(&format!("/jobs/{}", ids[1]), Auth::Bearer(TOKEN))
        .await;
    assert!(queued.contains("Not taken by a scheduler yet."));
    assert!(queued.contains("webhook received (push)"), "{queued}");
    let id = hub.take(&secret).await;
    let running = hub.page(&format!("/jobs/{id}"), Auth::Bearer(TOKEN)).await;
    assert!(
        running.contains(&format!("accepted by box ({SERVER})")),
        "{running}"
    );
    let servers = hub.page("/servers", Auth::Bearer(TOKEN)).await;
    assert!(servers.contains(SERVER) && servers.contains("box"));
    assert!(
        servers.contains(&format!("href=\"/jobs/{id}\"")),
        "active job listed: {servers}"
    );
    hub.finish(&secret, &id, "failed", "step `test` failed: exit 3")
        .await;
    let done = hub.page(&format!("/jobs/{id}"), Auth::Bearer(TOKEN)).await;
    for want in [
        "status status-failed",
        "step `test` failed: exit 3",
        "finished: failed",
        "refs/heads/master",
        "Codertocat/Hello-World/commit/",
        "href=\"https://github.com/Codertocat\"",
        "Codertocat/Hello-World/build/auto",
        "trigger auto",
        "d-1",
    ] {
        assert!(done.contains(want), "missing {want}: {done}");
    }
    let finished = hub.page("/jobs?status=failed", Auth::Bearer(TOKEN)).await;
    assert!(finished.contains(&format!("/jobs/{id}")));
    let servers = hub.page("/servers", Auth::Bearer(TOKEN)).await;
    assert!(
        !servers.contains(&format!("href=\"/jobs/{id}\"")),
        "no longer active"
    );
    hub.stop().await;
}

#[tokio::test]
async fn deliveries_show_outcomes_and_refused_requests_are_counted() {
    let hub = TestHub::start(|_| {}).await;
    let ids = hub.push("d-made-jobs").await;
    let mut other: Value = serde_json::from_slice(&fixture(PUSH)).unwrap();
    other["repository"]["full_name"] = json!("someone/else");
    let answer = hub
        .webhook("push", "d-no-binding", other.to_string().into_bytes())
        .await;
    assert!(job_ids(&answer).is_empty());
    let forged = hub
        .http
        .post(format!("{}/webhooks/github", hub.base))
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", "d-forged")
        .header("X-Hub-Signature-256", "sha256=00")
        .body(fixture(PUSH))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    let page = hub.page("/deliveries", Auth::Bearer(TOKEN)).await;
    for want in [
        "d-made-jobs",
        "d-no-binding",
        "no binding matched",
        "bad_signature",
    ] {
        assert!(page.contains(want), "missing {want}: {page}");
    }
    assert!(
        !page.contains("d-forged"),
        "a forged delivery is counted, not stored"
    );
    for id in &ids {
        assert!(page.contains(&format!("href=\"/jobs/{id}\"")));
    }
    let bindings = hub.page("/bindings", Auth::Bearer(TOKEN)).await;
    assert!(bindings.contains("Codertocat/Hello-World/lint/auto") && bindings.contains(">lint<"));
    hub.stop().await;
}

/// Reads server-sent events from `resp` until one named `name` whose data contains `needle`;
/// returns every event read, as text.
async fn events_until(resp: &mut reqwest::Response, seen: &mut String, name: &str, needle: &str) {
    let want = |seen: &str| {
        seen.split("\n\n")
            .any(|e| e.contains(&format!("event: {name}\n")) && e.contains(needle))
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !want(seen) {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .unwrap_or_else(|_| panic!("no {name} event with {needle} in time; got:\n{seen}"))
            .unwrap();
        match chunk {
            Some(bytes) => seen.push_str(&String::from_utf8_lossy(&bytes)),
            None => panic!("the stream ended before a {name} event with {needle}; got:\n{seen}"),
        }
    }
}

#[tokio::test]
async fn the_job_page_shows_steps_and_logs_and_the_tail_follows_the_run() {
    let hub = TestHub::start(|_| {}).await;
    hub.push("d-1").await;
    let secret = hub.activate().await;
    let id = hub.take(&secret).await;
    hub.progress(
        &secret,
        &id,
        json!([{"name": "build", "status": "running", "started_ms": 1_700_000_001_000_u64}]),
        json!([{"step": "build", "stream": "stdout", "offset": 0, "data": "compiling <b>\n"}]),
    )
    .await;
    let page = hub.page(&format!("/jobs/{id}"), Auth::Bearer(TOKEN)).await;
    for want in [
        "data-step=\"build\"",
        "status status-running",
        "compiling &lt;b&gt;\n",
        "data-offset=\"14\"",
        &format!("data-events=\"/jobs/{id}/events\""),
        "src=\"/assets/tail.js\"",
        "step build started",
        "run started on box",
    ] {
        assert!(page.contains(want), "missing {want}: {page}");
    }
    // The tail starts where the page's log ends: the first line is not sent again.
    let mut tail = hub
        .get(
            &format!("/jobs/{id}/events?s=stdout:14:build"),
            Auth::Bearer(TOKEN),
        )
        .await;
    assert_eq!(tail.status(), StatusCode::OK);
    assert_eq!(tail.headers()["content-type"], "text/event-stream");
    let mut seen = String::new();
    events_until(&mut tail, &mut seen, "job", "\"state\":\"accepted\"").await;
    assert!(seen.contains("event: step\n"), "{seen}");
    hub.progress(
        &secret,
        &id,
        json!([]),
        json!([{"step": "build", "stream": "stdout", "offset": 14, "data": "linking\n"}]),
    )
    .await;
    events_until(&mut tail, &mut seen, "log", "linking").await;
    assert!(!seen.contains("compiling"), "{seen}");
    assert!(
        seen.contains("\"offset\":14") && seen.contains("\"next\":22"),
        "{seen}"
    );
    hub.progress(
        &secret,
        &id,
        json!([{"name": "build", "status": "failed", "exit_code": 2,
                "started_ms": 1_700_000_001_000_u64, "finished_ms": 1_700_000_004_500_u64}]),
        json!([{"step": "build", "stream": "stderr", "offset": 0, "data": "error: boom\n", "eof": true}]),
    )
    .await;
    events_until(&mut tail, &mut seen, "log", "error: boom").await;
    events_until(&mut tail, &mut seen, "step", "\"exit_code\":2").await;
    hub.finish(&secret, &id, "failed", "build failed").await;
    events_until(&mut tail, &mut seen, "job", "\"status\":\"failed\"").await;
    events_until(&mut tail, &mut seen, "end", "").await;
    let rest = tokio::time::timeout(Duration::from_secs(60), tail.chunk()).await;
    assert!(
        matches!(rest, Ok(Ok(None))),
        "the stream ends after `end`: {rest:?}"
    );
    // The finished page: no tail, the table and the whole log.
    let done = hub.page(&format!("/jobs/{id}"), Auth::Bearer(TOKEN)).await;
    assert!(
        !done.contains("data-events") && !done.contains("tail.js"),
        "{done}"
    );
    assert!(done.contains("3.5 s") && done.contains(">2<"), "{done}");
    assert!(done.contains("step build failed, exit code 2"), "{done}");
    let log = hub
        .get(
            &format!("/jobs/{id}/log?step=build&stream=stdout"),
            Auth::Bearer(TOKEN),
        )
        .await;
    assert_eq!(log.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(log.text().await.unwrap(), "compiling <b>\nlinking\n");
    hub.stop().await;
}

#[tokio::test]
async fn a_job_without_progress_says_so_and_the_assets_are_public() {
    let hub = TestHub::start(|_| {}).await;
    let ids = hub.push("d-1").await;
    let page = hub
        .page(&format!("/jobs/{}", ids[0]), Auth::Bearer(TOKEN))
        .await;
    assert!(page.contains("No steps reported (yet)"), "{page}");
    for (path, kind) in [
        ("/assets/tail.js", "text/javascript; charset=utf-8"),
        ("/assets/style.css", "text/css; charset=utf-8"),
    ] {
        let resp = hub.get(path, Auth::None).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        assert_eq!(resp.headers()["content-type"], kind, "{path}");
    }
    assert_eq!(
        hub.get("/favicon.ico", Auth::None).await.status(),
        StatusCode::NO_CONTENT
    );
    hub.stop().await;
}

#[tokio::test]
async fn an_open_tail_does_not_hold_up_the_hubs_stop() {
    let hub = TestHub::start(|_| {}).await;
    let ids = hub.push("d-1").await;
    let mut tail = hub
        .get(&format!("/jobs/{}/events", ids[0]), Auth::Bearer(TOKEN))
        .await;
    let mut seen = String::new();
    events_until(&mut tail, &mut seen, "job", "\"state\":\"queued\"").await;
    // `stop` waits (at most a minute) for the server to end, which waits for the open tail.
    hub.stop().await;
    let rest = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(_)) = tail.chunk().await {}
    })
    .await;
    assert!(rest.is_ok(), "the tail ended with the hub");
}

/// Where `text` first appears in `page`; fails when it does not.
fn place_of(page: &str, text: &str) -> usize {
    page.find(text)
        .unwrap_or_else(|| panic!("missing {text}: {page}"))
}

#[tokio::test]
async fn the_timeline_keeps_the_latest_claim_and_the_accept_once_finished() {
    // A lease this short runs out before the second pull, so the job is claimed twice.
    let hub = TestHub::start(|cfg| cfg.lease = Duration::from_millis(1)).await;
    let ids = hub.push("d-1").await;
    let secret = hub.activate().await;
    let pull = || {
        hub.api(
            "/api/v1/github/dispatch/pull",
            json!({"license_id": "lic", "server_id": SERVER, "heartbeat_secret": secret}),
        )
    };
    let first: Value = pull().await.json().await.unwrap();
    assert_eq!(first["id"], ids[0].as_str());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let again: Value = pull().await.json().await.unwrap();
    assert_eq!(
        again["id"],
        ids[0].as_str(),
        "claimed again once its lease ran out"
    );
    let id = ids[0].clone();
    let accepted = hub
        .api(
            &format!("/api/v1/github/dispatch/{id}/accept"),
            json!({"license_id": "lic", "server_id": SERVER, "secret": secret, "dag_run_id": id}),
        )
        .await;
    assert!(accepted.status().is_success(), "{}", accepted.status());
    hub.finish(&secret, &id, "succeeded", "all good").await;
    let page = hub.page(&format!("/jobs/{id}"), Auth::Bearer(TOKEN)).await;
    let received = place_of(&page, "webhook received (push)");
    let claimed = place_of(
        &page,
        &format!("claimed by box ({SERVER}) (claim 2: the earlier claims"),
    );
    let accepted = place_of(&page, &format!("accepted by box ({SERVER})"));
    let finished = place_of(&page, "finished: succeeded");
    assert!(
        received < claimed && claimed < accepted && accepted < finished,
        "in order: {page}"
    );
    hub.stop().await;
}

#[tokio::test]
async fn the_servers_page_shows_the_version_each_scheduler_gave() {
    let hub = TestHub::start(|_| {}).await;
    let resp = hub
        .api(
            "/api/v1/licenses/activate",
            json!({"key": "key-lic", "server_id": SERVER, "machine_name": "box",
                   "client_version": "1.2.3"}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let secret = resp.json::<Value>().await.unwrap()["heartbeat_secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let servers = hub.page("/servers", Auth::Bearer(TOKEN)).await;
    assert!(
        servers.contains("<td class=\"version\">1.2.3</td>"),
        "{servers}"
    );
    // The job page names the version of the server that took the job.
    hub.push("d-1").await;
    let id = hub.take(&secret).await;
    let job = hub.page(&format!("/jobs/{id}"), Auth::Bearer(TOKEN)).await;
    assert!(job.contains("<dt>Version</dt><dd>1.2.3</dd>"), "{job}");
    // A scheduler upgraded in place says so on its next heartbeat.
    let resp = hub
        .api(
            "/api/v1/licenses/heartbeat",
            json!({"license_id": "lic", "server_id": SERVER, "heartbeat_secret": secret,
                   "client_version": "1.3.0"}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let servers = hub.page("/servers", Auth::Bearer(TOKEN)).await;
    assert!(
        servers.contains("<td class=\"version\">1.3.0</td>"),
        "{servers}"
    );
    hub.stop().await;
}

#[tokio::test]
async fn live_tails_stop_at_their_cap_and_a_finished_job_frees_its_tails() {
    // The hub's cap (`docs/security.md`, "Live tail").
    const MAX_TAILS: usize = 256;
    let hub = TestHub::start(|_| {}).await;
    let ids = hub.push("d-1").await;
    let events = format!("/jobs/{}/events", ids[0]);
    let mut open = Vec::with_capacity(MAX_TAILS);
    for n in 0..MAX_TAILS {
        let tail = hub.get(&events, Auth::Bearer(TOKEN)).await;
        assert_eq!(tail.status(), StatusCode::OK, "tail {n}");
        open.push(tail);
    }
    let refused = hub.get(&events, Auth::Bearer(TOKEN)).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused
        .text()
        .await
        .unwrap()
        .contains("Too many live tails"));
    // Once the job is finished every tail ends and gives its place back.
    let secret = hub.activate().await;
    let id = hub.take(&secret).await;
    assert_eq!(id, ids[0]);
    hub.finish(&secret, &id, "succeeded", "").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut tail = loop {
        let tail = hub.get(&events, Auth::Bearer(TOKEN)).await;
        if tail.status() == StatusCode::OK {
            break tail;
        }
        assert_eq!(tail.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            tokio::time::Instant::now() < deadline,
            "no tail freed within a minute of the finish"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut seen = String::new();
    events_until(&mut tail, &mut seen, "end", "").await;
    drop(open);
    hub.stop().await;
}
