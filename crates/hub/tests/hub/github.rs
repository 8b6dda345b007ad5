//! Reporting as a GitHub App (check runs) and the status lifecycle, against wiremock standing in
//! for GitHub: the app token, installation tokens, every check-run call across a job's life,
//! re-run and cancel from GitHub, rate limits, restarts; and commit statuses with a token.

use super::*;
use dispatch_hub::{GithubApp, HubError};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use wiremock::matchers::{body_partial_json, header, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const APP_ID: u64 = 4242;
/// A key made for these tests only (see `tests/fixtures/README.md`).
const KEY: &str = include_str!("../fixtures/github-app.test-only.pem");
const PUBLIC_KEY: &str = include_str!("../fixtures/github-app.test-only.pub.pem");
const PUBLIC_URL: &str = "https://hub.example.com";
/// The head of [`PUSH`], installation 1.
const SHA: &str = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";
const CHECK_RUNS: &str = "/repos/Codertocat/Hello-World/check-runs";
const STATUSES: &str =
    "/repos/Codertocat/Hello-World/statuses/6113728f27ae82c7b1a177c8d03f9e96e0adf246";

/// A hub reporting as the App to `gh`, its key file beside the data directory.
async fn app_hub(gh: &MockServer, bindings: Vec<Binding>) -> TestHub {
    let api = gh.uri();
    TestHub::start_with(bindings, move |cfg| {
        let key_file = cfg.data_dir.with_file_name("app.pem");
        std::fs::write(&key_file, KEY).unwrap();
        cfg.github = GithubConfig {
            api_url: api,
            token: None,
            app: Some(GithubApp {
                app_id: APP_ID,
                private_key_file: key_file,
            }),
        };
        cfg.public_url = Some(PUBLIC_URL.to_owned());
    })
    .await
}

/// Installation `id` gets token `token` (as often as asked, unless `times` is set).
async fn mount_token(gh: &MockServer, id: i64, token: &str, times: Option<u64>) {
    let mock = Mock::given(method("POST"))
        .and(path(format!("/app/installations/{id}/access_tokens")))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(json!({"token": token, "expires_at": "2999-01-01T00:00:00Z"})),
        );
    match times {
        Some(n) => mock.up_to_n_times(n).with_priority(1).mount(gh).await,
        None => mock.with_priority(2).mount(gh).await,
    }
}

/// Check runs are created in `repo` with id `id`, and updated.
async fn mount_check_runs(gh: &MockServer, repo: &str, id: i64) {
    let create = format!("/repos/{repo}/check-runs");
    let update = format!("{create}/{id}");
    for (verb, at, status) in [("POST", create, 201), ("PATCH", update, 200)] {
        Mock::given(method(verb))
            .and(path(at))
            .respond_with(ResponseTemplate::new(status).set_body_json(json!({"id": id})))
            .with_priority(5)
            .mount(gh)
            .await;
    }
}

/// GitHub with a token for installation 1 (`ghs_one`) and check runs of [`HELLO`] (id 700).
async fn github_with_check_runs() -> MockServer {
    let gh = MockServer::start().await;
    mount_token(&gh, 1, "ghs_one", None).await;
    mount_check_runs(&gh, HELLO, 700).await;
    gh
}

/// [`github_with_check_runs`], and a hub reporting to it as the App that builds every push.
async fn app_building() -> (MockServer, TestHub) {
    let gh = github_with_check_runs().await;
    let hub = app_hub(&gh, vec![build(Trigger::Auto)]).await;
    (gh, hub)
}

/// The requests GitHub received with this method and path, in order.
async fn requests(gh: &MockServer, verb: &str, p: &str) -> Vec<Request> {
    gh.received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.method.as_str() == verb && r.url.path() == p)
        .collect()
}

fn body(r: &Request) -> Value {
    serde_json::from_slice(&r.body).unwrap()
}

/// Waits until GitHub received `n` such requests; returns their bodies.
async fn wait_for(gh: &MockServer, verb: &str, p: &str, n: usize) -> Vec<Value> {
    eventually(&format!("{n} × {verb} {p}"), || async {
        requests(gh, verb, p).await.len() >= n
    })
    .await;
    requests(gh, verb, p).await.iter().map(body).collect()
}

fn bearer(r: &Request) -> String {
    r.headers
        .get("authorization")
        .unwrap()
        .to_str()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap()
        .to_owned()
}

fn push_on(repository: &str, installation: i64) -> Vec<u8> {
    let mut p: Value = serde_json::from_slice(&fixture(PUSH)).unwrap();
    p["repository"]["full_name"] = json!(repository);
    p["installation"]["id"] = json!(installation);
    serde_json::to_vec(&p).unwrap()
}

/// A `check_run` delivery about the check run of `job_id`, made by this App.
fn check_run_event(action: &str, job_id: &str, extra: Value) -> Vec<u8> {
    let mut p = json!({
        "action": action,
        "check_run": {
            "id": 555, "name": "dispatch/build", "head_sha": SHA, "external_id": job_id,
            "status": "completed", "app": {"id": APP_ID},
            "check_suite": {"head_branch": "master", "head_sha": SHA}, "pull_requests": []
        },
        "repository": {"full_name": HELLO, "id": 186853002},
        "installation": {"id": 1},
        "sender": {"login": "Codertocat"}
    });
    if let (Some(p), Some(extra)) = (p.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            p.insert(k.clone(), v.clone());
        }
    }
    serde_json::to_vec(&p).unwrap()
}

#[tokio::test]
async fn app_token_is_rs256_and_one_exchange_serves_two_reports() {
    let gh = github_with_check_runs().await;
    let mut test = build(Trigger::Auto);
    test.dag = "test".into();
    let hub = app_hub(&gh, vec![build(Trigger::Auto), test]).await;
    let (_, answer) = hub.push("d1").await;
    assert_eq!(ids(&answer).len(), 2);
    let created = wait_for(&gh, "POST", CHECK_RUNS, 2).await;
    let names: Vec<&str> = created
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"dispatch/build") && names.contains(&"dispatch/test"));
    let exchanges = requests(&gh, "POST", "/app/installations/1/access_tokens").await;
    assert_eq!(exchanges.len(), 1, "the token is cached");
    for create in requests(&gh, "POST", CHECK_RUNS).await {
        assert_eq!(bearer(&create), "ghs_one");
    }
    // The app token, checked with the public key.
    let jwt = bearer(&exchanges[0]);
    assert_eq!(
        jsonwebtoken::decode_header(&jwt).unwrap().alg,
        Algorithm::RS256
    );
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&[APP_ID.to_string()]);
    let claims = jsonwebtoken::decode::<Value>(
        &jwt,
        &DecodingKey::from_rsa_pem(PUBLIC_KEY.as_bytes()).unwrap(),
        &validation,
    )
    .unwrap()
    .claims;
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    let t = now();
    assert!(iat <= t - 59 && iat >= t - 120, "iat {iat}, now {t}");
    assert!(exp > t && exp <= t + 600, "exp {exp}, now {t}");
    assert_eq!(claims["iss"], APP_ID.to_string());
}

#[tokio::test]
async fn a_check_run_goes_queued_in_progress_completed_with_exact_bodies() {
    let (gh, hub) = app_building().await;
    let (_, answer) = hub.push("d1").await;
    let id = ids(&answer).remove(0);
    let created = wait_for(&gh, "POST", CHECK_RUNS, 1).await;
    let details = format!("{PUBLIC_URL}/jobs/{id}");
    assert_eq!(
        created[0],
        json!({"name": "dispatch/build", "head_sha": SHA, "external_id": id,
               "details_url": details, "status": "queued",
               "output": {"title": "Queued", "summary": "Waiting for a scheduler to take the job."}})
    );
    let c = hub.activate("lic-a", "srv").await;
    assert_eq!(hub.pull_id(&c).await, id);
    hub.accept_ok(&c, &id).await;
    let update = format!("{CHECK_RUNS}/700");
    let updates = wait_for(&gh, "PATCH", &update, 1).await;
    let running = &updates[0];
    assert_eq!(running["status"], "in_progress");
    assert_eq!(running["external_id"], id.as_str());
    assert_eq!(running["details_url"], details.as_str());
    assert!(running.get("head_sha").is_none(), "{running}");
    assert!(running["started_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(running["output"]["title"], "Running on box");
    assert_eq!(
        running["actions"],
        json!([{"label": "Cancel", "description": "Stop this run", "identifier": "cancel"}])
    );
    let summary = "Run `build` finished with `failed`. Failed steps: `compile` (exit 2).";
    hub.finish_ok(&c, &id, "failed", summary).await;
    let updates = wait_for(&gh, "PATCH", &update, 2).await;
    let done = &updates[1];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["conclusion"], "failure");
    assert!(done["completed_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(done["output"]["title"], "build: failed");
    let text = done["output"]["summary"].as_str().unwrap();
    assert!(
        text.starts_with("| DAG | Server | Result | Duration |\n| --- | --- | --- | --- |\n| `build` | `box` | **failed** | "),
        "{text}"
    );
    assert!(text.ends_with(&format!("\n{summary}\n")), "{text}");
    assert_eq!(done["actions"], json!([]));
    hub.wait_for_metric("dispatch_hub_reports_total{result=\"sent\"} 3")
        .await;
    assert_eq!(requests(&gh, "POST", CHECK_RUNS).await.len(), 1);
}

#[tokio::test]
async fn conclusions_per_result_status() {
    let (gh, hub) = app_building().await;
    let c = hub.activate("lic-a", "srv").await;
    let cases = [
        ("succeeded", "success"),
        ("partially_succeeded", "neutral"),
        ("aborted", "cancelled"),
    ];
    for (i, (status, conclusion)) in cases.into_iter().enumerate() {
        hub.push(&format!("d{i}")).await;
        let id = hub.pull_id(&c).await;
        hub.finish(&c, &id, status, "").await;
        // Finished before its queued check run was sent, or after: either way the last report
        // of the job is its completion.
        eventually(conclusion, || async {
            gh.received_requests().await.unwrap().iter().any(|r| {
                r.url.path().starts_with(CHECK_RUNS)
                    && body(r)["external_id"] == id.as_str()
                    && body(r)["conclusion"] == conclusion
            })
        })
        .await;
    }
}

#[tokio::test]
async fn a_401_fetches_a_new_installation_token() {
    let gh = MockServer::start().await;
    mount_token(&gh, 1, "ghs_old", Some(1)).await;
    mount_token(&gh, 1, "ghs_new", None).await;
    Mock::given(method("POST"))
        .and(path(CHECK_RUNS))
        .and(header("authorization", "Bearer ghs_old"))
        .respond_with(ResponseTemplate::new(401))
        .with_priority(1)
        .mount(&gh)
        .await;
    mount_check_runs(&gh, HELLO, 700).await;
    let hub = app_hub(&gh, vec![build(Trigger::Auto)]).await;
    hub.push("d1").await;
    hub.wait_for_metric("dispatch_hub_reports_total{result=\"sent\"} 1")
        .await;
    let creates = requests(&gh, "POST", CHECK_RUNS).await;
    assert_eq!(
        creates.iter().map(bearer).collect::<Vec<_>>(),
        ["ghs_old", "ghs_new"]
    );
    assert_eq!(
        requests(&gh, "POST", "/app/installations/1/access_tokens")
            .await
            .len(),
        2
    );
}

#[tokio::test]
async fn a_rate_limited_installation_waits_while_another_goes_on() {
    let gh = MockServer::start().await;
    mount_token(&gh, 1, "ghs_one", None).await;
    mount_token(&gh, 2, "ghs_two", None).await;
    let reset = now() + 3000;
    Mock::given(method("POST"))
        .and(path(CHECK_RUNS))
        .respond_with(
            ResponseTemplate::new(403)
                .insert_header("x-ratelimit-remaining", "0")
                .insert_header("x-ratelimit-reset", reset.to_string().as_str()),
        )
        .mount(&gh)
        .await;
    mount_check_runs(&gh, OCTO, 900).await;
    let hub = app_hub(
        &gh,
        vec![
            build(Trigger::Auto),
            Binding::new(OCTO, "build", Trigger::Auto),
        ],
    )
    .await;
    hub.webhook("push", "d1", push_on(HELLO, 1)).await;
    hub.wait_for_metric("dispatch_hub_reports_total{result=\"rate_limited\"} 1")
        .await;
    hub.webhook("push", "d2", push_on(OCTO, 2)).await;
    hub.webhook("push", "d3", push_on(OCTO, 2)).await;
    wait_for(&gh, "POST", "/repos/octo-org/octo-repo/check-runs", 2).await;
    hub.webhook("push", "d4", push_on(HELLO, 1)).await;
    hub.webhook("push", "d5", push_on(OCTO, 2)).await;
    wait_for(&gh, "POST", "/repos/octo-org/octo-repo/check-runs", 3).await;
    // Installation 1 was asked once: its reports wait for the reset, untried.
    assert_eq!(requests(&gh, "POST", CHECK_RUNS).await.len(), 1);
    hub.metrics_with(&["dispatch_hub_reports_total{result=\"rate_limited\"}"])
        .await;
}

#[tokio::test]
async fn a_restart_between_queued_and_completed_completes_the_same_check_run_once() {
    let (gh, mut hub) = app_building().await;
    let c = hub.activate("lic-a", "srv").await;
    let (_, answer) = hub.push("d1").await;
    let id = ids(&answer).remove(0);
    wait_for(&gh, "POST", CHECK_RUNS, 1).await;
    hub.restart().await;
    assert_eq!(hub.pull_id(&c).await, id);
    hub.accept(&c, &id).await;
    hub.finish(&c, &id, "succeeded", "ok").await;
    let update = format!("{CHECK_RUNS}/700");
    eventually("the completion", || async {
        requests(&gh, "PATCH", &update)
            .await
            .iter()
            .any(|r| body(r)["status"] == "completed")
    })
    .await;
    hub.restart().await;
    hub.push("d2").await;
    wait_for(&gh, "POST", CHECK_RUNS, 2).await;
    assert_eq!(
        requests(&gh, "POST", CHECK_RUNS).await.len(),
        2,
        "one create per job"
    );
    let completions = requests(&gh, "PATCH", &update)
        .await
        .iter()
        .filter(|r| body(r)["status"] == "completed")
        .count();
    assert_eq!(completions, 1);
}

#[tokio::test]
async fn a_create_whose_answer_was_lost_is_found_by_external_id_not_made_twice() {
    let gh = MockServer::start().await;
    mount_token(&gh, 1, "ghs_one", None).await;
    // GitHub made the check run but the answer did not arrive.
    Mock::given(method("POST"))
        .and(path(CHECK_RUNS))
        .respond_with(ResponseTemplate::new(502))
        .mount(&gh)
        .await;
    let hub = app_hub(&gh, vec![build(Trigger::Auto)]).await;
    let (_, answer) = hub.push("d1").await;
    let id = ids(&answer).remove(0);
    Mock::given(method("GET"))
        .and(path(format!(
            "/repos/Codertocat/Hello-World/commits/{SHA}/check-runs"
        )))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"total_count": 2,
            "check_runs": [{"id": 1, "external_id": "another"}, {"id": 801, "external_id": id}]})),
        )
        .mount(&gh)
        .await;
    Mock::given(method("PATCH"))
        .and(path(format!("{CHECK_RUNS}/801")))
        .and(body_partial_json(json!({"status": "queued"})))
        .respond_with(ResponseTemplate::new(200))
        .mount(&gh)
        .await;
    wait_for(&gh, "PATCH", &format!("{CHECK_RUNS}/801"), 1).await;
    assert_eq!(requests(&gh, "POST", CHECK_RUNS).await.len(), 1);
    let lookup = &requests(
        &gh,
        "GET",
        &format!("/repos/Codertocat/Hello-World/commits/{SHA}/check-runs"),
    )
    .await[0];
    assert_eq!(
        lookup.url.query(),
        Some("check_name=dispatch%2Fbuild&filter=all&per_page=100")
    );
}

#[tokio::test]
async fn rerequested_check_run_and_suite_dispatch_the_dag_again_for_the_same_event() {
    let (gh, hub) = app_building().await;
    let c = hub.activate("lic-a", "srv").await;
    let (_, answer) = hub.push("d1").await;
    let first = ids(&answer).remove(0);
    assert_eq!(hub.pull_id(&c).await, first);
    hub.finish(&c, &first, "failed", "").await;

    let rerun = check_run_event("rerequested", &first, json!({}));
    let (status, answer) = hub.webhook("check_run", "r1", rerun.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let again = ids(&answer);
    assert_eq!(again.len(), 1);
    assert_ne!(again[0], first);
    let job = hub.pull_job(&c).await;
    assert_eq!(job["id"], again[0].as_str());
    assert_eq!(job["dag_name"], "build");
    assert_eq!(job["event_name"], "push");
    assert_eq!(job["sha"], SHA);
    assert_eq!(job["delivery_id"], "d1");
    assert_eq!(job["payload"]["after"], SHA, "the original event's payload");
    eventually("a check run of the new job", || async {
        requests(&gh, "POST", CHECK_RUNS)
            .await
            .iter()
            .any(|r| body(r)["external_id"] == again[0].as_str())
    })
    .await;
    // A redelivery of the re-run request dispatches nothing more.
    let (_, dup) = hub.webhook("check_run", "r1", rerun).await;
    assert_eq!(ids(&dup), again);

    // "Re-run all checks": the latest job of each binding on the suite's head.
    hub.finish(&c, &again[0], "failed", "").await;
    let mut suite: Value =
        serde_json::from_slice(&fixture("check_suite/rerequested.payload.json")).unwrap();
    suite["check_suite"]["head_sha"] = json!(SHA);
    suite["check_suite"]["app"]["id"] = json!(APP_ID);
    suite["installation"]["id"] = json!(1);
    let (status, answer) = hub
        .webhook("check_suite", "s1", serde_json::to_vec(&suite).unwrap())
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(ids(&answer).len(), 1);
    assert_eq!(hub.pull_job(&c).await["dag_name"], "build");

    // Another App's check run is an event for the bindings as before, not a re-run of a job.
    let other = check_run_event(
        "rerequested",
        &first,
        json!({"check_run": {"id": 1, "external_id": first, "app": {"id": 1}, "head_sha": SHA}}),
    );
    let (_, answer) = hub.webhook("check_run", "r2", other).await;
    if !ids(&answer).is_empty() {
        assert_eq!(hub.pull_job(&c).await["event_name"], "check_run");
    }
    // A check run of this App the hub has no job for dispatches nothing.
    let (_, answer) = hub
        .webhook(
            "check_run",
            "r3",
            check_run_event("rerequested", "nope", json!({})),
        )
        .await;
    assert!(ids(&answer).is_empty(), "{answer}");
}

#[tokio::test]
async fn the_cancel_button_cancels_that_job() {
    let (gh, hub) = app_building().await;
    let cancel = |id: &str| {
        check_run_event(
            "requested_action",
            id,
            json!({"requested_action": {"identifier": "cancel"}}),
        )
    };

    // Still queued: finished at the hub as aborted, and its check run says cancelled.
    let (_, answer) = hub.push("d1").await;
    let queued = ids(&answer).remove(0);
    let (status, _) = hub.webhook("check_run", "x1", cancel(&queued)).await;
    assert!(status.is_success());
    eventually("a cancelled check run", || async {
        gh.received_requests().await.unwrap().iter().any(|r| {
            r.url.path().starts_with(CHECK_RUNS)
                && body(r)["external_id"] == queued.as_str()
                && body(r)["conclusion"] == "cancelled"
        })
    })
    .await;
    let c = hub.activate("lic-a", "srv").await;
    assert_eq!(hub.pull(&c, 0).await.status(), StatusCode::NO_CONTENT);

    // Accepted: a cancel job goes to the server that runs it, and to no other.
    let (_, answer) = hub.push("d2").await;
    let running = ids(&answer).remove(0);
    assert_eq!(hub.pull_id(&c).await, running);
    hub.accept(&c, &running).await;
    let other = hub.activate("lic-a", "srv2").await;
    let (status, _) = hub.webhook("check_run", "x2", cancel(&running)).await;
    assert!(status.is_success());
    assert_eq!(hub.pull(&other, 0).await.status(), StatusCode::NO_CONTENT);
    let job = hub.pull_job(&c).await;
    assert_eq!(job["command"], "cancel");
    assert_eq!(job["repository_name"], HELLO);
}

#[tokio::test]
async fn commit_statuses_follow_the_lifecycle_with_target_url() {
    let gh = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(STATUSES))
        .and(header("authorization", "Bearer gh-token"))
        .respond_with(ResponseTemplate::new(201))
        .mount(&gh)
        .await;
    let hub = reporting_hub_with(&gh, vec![build(Trigger::Auto)], |cfg| {
        cfg.public_url = Some(format!("{PUBLIC_URL}/"));
    })
    .await;
    assert_eq!(hub.handle().public_url.as_deref(), Some(PUBLIC_URL));
    let (_, answer) = hub.push("d1").await;
    let id = ids(&answer).remove(0);
    let target = format!("{PUBLIC_URL}/jobs/{id}");
    let status = |state: &str, description: &str| {
        json!({"state": state, "context": "dispatch/build", "description": description,
               "target_url": target})
    };
    assert_eq!(
        wait_for(&gh, "POST", STATUSES, 1).await[0],
        status("pending", "queued")
    );
    let c = hub.activate("lic-a", "srv").await;
    hub.pull_id(&c).await;
    hub.accept(&c, &id).await;
    assert_eq!(
        wait_for(&gh, "POST", STATUSES, 2).await[1],
        status("pending", "running on box")
    );
    hub.finish(&c, &id, "succeeded", "all green").await;
    assert_eq!(
        wait_for(&gh, "POST", STATUSES, 3).await[2],
        status("success", "all green")
    );
}

#[tokio::test]
async fn a_final_status_is_never_followed_by_a_pending_one() {
    let gh = MockServer::start().await;
    // GitHub is slow to take the first status: it is retried after a second, by which time the
    // job has finished.
    fail_first_post(&gh, STATUSES, 503).await;
    Mock::given(method("POST"))
        .and(path(STATUSES))
        .respond_with(ResponseTemplate::new(201))
        .with_priority(2)
        .mount(&gh)
        .await;
    let hub = reporting_hub(&gh, vec![build(Trigger::Auto)]).await;
    assert_eq!(hub.handle().public_url, None);
    let (_, answer) = hub.push("d1").await;
    let id = ids(&answer).remove(0);
    wait_for(&gh, "POST", STATUSES, 1).await;
    let c = hub.activate("lic-a", "srv").await;
    hub.pull_id(&c).await;
    hub.accept(&c, &id).await;
    hub.finish(&c, &id, "failed", "").await;
    hub.wait_for_metric("dispatch_hub_reports_total{result=\"sent\"} 1")
        .await;
    let states: Vec<String> = requests(&gh, "POST", STATUSES)
        .await
        .iter()
        .map(|r| body(r)["state"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        states,
        ["pending", "failure"],
        "the unsent pending ones were dropped"
    );
    assert_eq!(
        body(&requests(&gh, "POST", STATUSES).await[1])["target_url"],
        format!("http://{}/jobs/{id}", hub.handle().addr),
        "public_url defaults to the listen address"
    );
}

/// `hub serve` behind a proxy: it announces the webhook URL GitHub must use, `public_url`'s,
/// not the address it listens on.
#[test]
fn hub_serve_announces_the_webhook_url_of_its_public_url() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("DISPATCH_HUB_PUBLIC_URL", "https://hub.example.com/")];
    let hub = Served::start(&hub_toml(dir.path(), ""), &env);
    assert!(hub.base.starts_with("http://127.0.0.1:"), "{}", hub.base);
    let logs = hub.stop();
    assert!(
        logs.contains("webhook=https://hub.example.com/webhooks/github"),
        "{logs}"
    );
}

#[tokio::test]
async fn a_bad_key_file_stops_the_hub_naming_the_file_not_its_content() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("broken.pem");
    std::fs::write(
        &key,
        "-----BEGIN RSA PRIVATE KEY-----\nQ0FOQVJZLXNlY3JldA==\n-----END RSA PRIVATE KEY-----\n",
    )
    .unwrap();
    for file in [key, dir.path().join("missing.pem")] {
        let mut cfg = config(&dir.path().join("data"), Vec::new());
        cfg.github.app = Some(GithubApp {
            app_id: APP_ID,
            private_key_file: file.clone(),
        });
        let err = match Hub::start(cfg, CancellationToken::new()).await {
            Err(e) => e,
            Ok(_) => panic!("a hub started with {}", file.display()),
        };
        assert!(err.is_config(), "{err}");
        let text = dispatch_util::error_chain(&err);
        let name = file.file_name().unwrap().to_str().unwrap();
        assert!(text.contains(name), "{text}");
        assert!(!text.contains("Q0FOQVJZ"), "{text}");
        assert!(matches!(err, HubError::GithubApp(_)), "{err:?}");
    }
}

#[test]
fn the_manifest_command_prints_the_app_and_where_to_create_it() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hub"))
        .args([
            "github-app",
            "manifest",
            "--public-url",
            "https://hub.example.com",
            "--org",
            "octo-org",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        manifest["hook_attributes"]["url"],
        "https://hub.example.com/webhooks/github"
    );
    assert_eq!(manifest["default_permissions"]["checks"], "write");
    assert_eq!(manifest["public"], false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("https://github.com/organizations/octo-org/settings/apps/new"),
        "{err}"
    );
    let html = std::process::Command::new(env!("CARGO_BIN_EXE_hub"))
        .args([
            "github-app",
            "manifest",
            "--public-url",
            "https://h",
            "--html",
        ])
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&html.stdout);
    assert!(
        page.contains("action=\"https://github.com/settings/apps/new\""),
        "{page}"
    );
}
