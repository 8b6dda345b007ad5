//! The real `hub` and `scheduler` binaries as separate processes: a signed GitHub webhook goes
//! into the hub, the scheduler pulls the jobs over HTTP and runs the DAGs, and the hub reports
//! each result to a wiremock GitHub as a commit status with the right state and context.

use nix::sys::signal::Signal;
use serde_json::Value;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::{
    deliver_push, eventually, hub_public_key, hub_toml, push_binding, scheduler_against, serve_hub,
    write,
};

const WEBHOOK_SECRET: &str = "e2e-webhook-secret";
const LICENSE_KEY: &str = "team-key-e2e";
const GITHUB_TOKEN: &str = "gh-token-e2e";
const PUSH_SHA: &str = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_through_hub_and_scheduler_reports_commit_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let hub_data = dir.path().join("hub-data");
    let home = dir.path().join("scheduler");
    let github = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201).set_body_json(serde_json::json!({ "id": 1 })))
        .mount(&github)
        .await;

    let config = write(
        dir.path(),
        "hub.toml",
        &hub_toml(
            "127.0.0.1:0",
            &hub_data,
            WEBHOOK_SECRET,
            LICENSE_KEY,
            "",
            &format!(
                r#"[github]
api_url = "{api}"

{build}
[[binding]]
repository = "Codertocat/Hello-World"
dag = "lint"
trigger = "auto"
event_name = "push"
check_name = "ci/lint"
license = "team"
"#,
                api = github.uri(),
                build = push_binding("build"),
            ),
        ),
    );
    // The scheduler verifies the hub's tokens with the hub's public key, read from a file.
    let key_file = write(dir.path(), "hub.pub", &hub_public_key(&hub_data, &[]));
    let (mut hub, hub_url) =
        serve_hub(&config, &[], &[("DISPATCH_HUB_GITHUB_TOKEN", GITHUB_TOKEN)]);

    let dags = home.join("dags");
    write(
        &dags,
        "build.yaml",
        &format!("steps:\n  - name: check\n    command: test \"$GITHUB_SHA\" = {PUSH_SHA} && test \"$GITHUB_REF\" = refs/heads/master\n"),
    );
    write(
        &dags,
        "lint.yaml",
        "steps:\n  - name: lint\n    command: exit 3\n",
    );
    let mut scheduler = scheduler_against(
        &home,
        &hub_url,
        &["--license-public-key", &key_file.display().to_string()],
        &[("DISPATCH_LICENSE_KEY", LICENSE_KEY)],
    );

    let response = deliver_push(
        &reqwest::Client::new(),
        &format!("{hub_url}/webhooks/github"),
        WEBHOOK_SECRET,
        "e2e-delivery-1",
    )
    .await;
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(
        answer["job_ids"].as_array().map(Vec::len),
        Some(2),
        "{answer}"
    );

    // Each job's `pending` statuses ("queued", "running on ...") come before its final one.
    let statuses = eventually("two final commit statuses", async || {
        let requests = github.received_requests().await.unwrap_or_default();
        let statuses: Vec<_> = requests
            .into_iter()
            .filter(|r| {
                r.url.path() == format!("/repos/Codertocat/Hello-World/statuses/{PUSH_SHA}")
                    && serde_json::from_slice::<Value>(&r.body)
                        .is_ok_and(|b| b["state"] != "pending")
            })
            .collect();
        (statuses.len() >= 2).then_some(statuses)
    })
    .await;
    let mut seen: Vec<(String, String)> = statuses
        .iter()
        .map(|r| {
            let auth = r
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            assert!(
                auth.ends_with(GITHUB_TOKEN),
                "authorization header: {auth:?}"
            );
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            (
                body["context"].as_str().unwrap().to_owned(),
                body["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("ci/lint".to_owned(), "failure".to_owned()),
            ("dispatch/build".to_owned(), "success".to_owned())
        ],
        "{}",
        scheduler.output()
    );

    scheduler.stop_with(Signal::SIGTERM);
    hub.stop_with(Signal::SIGTERM);
    let output = scheduler.output() + &hub.output();
    for secret in [WEBHOOK_SECRET, LICENSE_KEY, GITHUB_TOKEN] {
        assert!(
            !output.contains(secret),
            "`{secret}` leaked into the output"
        );
    }
}
