//! The real `scheduler` binary against a wiremock cloud: license activation with a signed
//! token, one job from a real payload, the DAG's view of its params, the finish body, metrics,
//! config errors and signals.

use std::path::Path;

use nix::sys::signal::Signal;
use serde_json::json;
use wiremock::ResponseTemplate;

use crate::cloud::{bodies, Cloud};
use crate::support::{eventually, fixture, get_text, write, Proc};

const LICENSE_ID: &str = "lic-e2e";
const HEARTBEAT_SECRET: &str = "hb-secret-e2e";
const LICENSE_KEY: &str = "key-e2e-do-not-print";
const JOB_ID: &str = "job-e2e-1";

/// A DAG whose step records exactly what it received, into files under `out`.
fn write_env_dag(dags: &Path, out: &Path) {
    write(
        dags,
        "envdump.yaml",
        &format!(
            "steps:\n  - name: dump\n    command: |\n      printf '%s' \"$WEBHOOK_PAYLOAD\" > '{out}/payload.json'\n      printf '%s' \"$WEBHOOK_HEADERS\" > '{out}/headers.json'\n      env | grep '^GITHUB_' | sort > '{out}/github.env'\n",
            out = out.display()
        ),
    );
}

/// The `/metrics` URL the scheduler's banner names.
fn metrics_url(scheduler: &mut Proc) -> String {
    let banner = scheduler.wait_for("metrics:");
    banner.split_whitespace().next().unwrap().to_owned()
}

/// `scheduler start --home <home>`, then `args`.
fn start_scheduler(home: &Path, args: &[&str], envs: &[(&str, &str)]) -> Proc {
    let home = home.display().to_string();
    let mut all = vec!["start", "--home", &home];
    all.extend(args);
    Proc::spawn("scheduler", &all, envs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_a_job_runs_it_with_the_payload_and_finishes_it() {
    let home = tempfile::tempdir().unwrap();
    let out = home.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    write_env_dag(&home.path().join("dags"), &out);

    let cloud = Cloud::start(LICENSE_ID, HEARTBEAT_SECRET, 42).await;
    // The payload travels raw inside the job, exactly as a hub stores it.
    let payload = fixture("pull_request/opened.payload.json");
    let payload_text = std::str::from_utf8(&payload).unwrap().trim_end();
    let headers = r#"{"x-github-event":["pull_request"],"x-github-delivery":["d-e2e-1"]}"#;
    let job = format!(
        r#"{{"id":"{JOB_ID}","binding_id":"b1","repository_name":"Codertocat/Hello-World","license_id":"{LICENSE_ID}","dag_name":"envdump","event_name":"pull_request","event_action":"opened","delivery_id":"d-e2e-1","ref":"refs/pull/2/head","sha":"ec26c3e57ca3a959ca5aad62de7213c562f8c821","pull_request_number":2,"actor_login":"Codertocat","status":"claimed","payload":{payload_text},"headers":{headers}}}"#
    );
    cloud
        .hand_out_once(
            JOB_ID,
            ResponseTemplate::new(200)
                .insert_header("content-type", "application/json")
                .set_body_string(job),
        )
        .await;

    let mut args = cloud.scheduler_args();
    args.extend(["--metrics-addr".to_owned(), "127.0.0.1:0".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut scheduler =
        start_scheduler(home.path(), &args, &[("DISPATCH_LICENSE_KEY", LICENSE_KEY)]);
    let metrics_url = metrics_url(&mut scheduler);

    let finish = eventually("the finish call", async || {
        let requests = cloud.requests().await;
        bodies(
            &requests,
            &format!("/api/v1/github/dispatch/{JOB_ID}/finish"),
        )
        .into_iter()
        .next()
    })
    .await;
    let requests = cloud.requests().await;
    let server_id = std::fs::read_to_string(home.path().join("data/license/server_id")).unwrap();
    let server_id = server_id.trim();

    let activate = &bodies(&requests, "/api/v1/licenses/activate")[0];
    assert_eq!(activate["key"], LICENSE_KEY);
    assert_eq!(activate["server_id"], server_id);
    let pull = &bodies(&requests, "/api/v1/github/dispatch/pull")[0];
    assert_eq!(
        pull,
        &json!({ "license_id": LICENSE_ID, "server_id": server_id, "heartbeat_secret": HEARTBEAT_SECRET })
    );
    let accept = &bodies(
        &requests,
        &format!("/api/v1/github/dispatch/{JOB_ID}/accept"),
    )[0];
    assert_eq!(
        accept,
        &json!({ "license_id": LICENSE_ID, "server_id": server_id, "secret": HEARTBEAT_SECRET, "dag_run_id": JOB_ID })
    );
    assert_eq!(finish["license_id"], LICENSE_ID);
    assert_eq!(finish["server_id"], server_id);
    assert_eq!(finish["secret"], HEARTBEAT_SECRET);
    assert_eq!(
        finish["result_status"], "succeeded",
        "finish body: {finish}"
    );
    let summary = finish["result_summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains("envdump") && summary.contains("succeeded"),
        "summary: {summary}"
    );

    // The step saw the payload byte for byte, the headers, and the GitHub context.
    assert_eq!(
        std::fs::read_to_string(out.join("payload.json")).unwrap(),
        payload_text
    );
    assert_eq!(
        std::fs::read_to_string(out.join("headers.json")).unwrap(),
        headers
    );
    let env = std::fs::read_to_string(out.join("github.env")).unwrap();
    let env: Vec<&str> = env.lines().collect();
    assert_eq!(
        env,
        [
            "GITHUB_ACTOR=Codertocat",
            "GITHUB_EVENT_ACTION=opened",
            "GITHUB_EVENT_NAME=pull_request",
            "GITHUB_PR_NUMBER=2",
            "GITHUB_REF=refs/pull/2/head",
            "GITHUB_REPOSITORY=Codertocat/Hello-World",
            "GITHUB_SHA=ec26c3e57ca3a959ca5aad62de7213c562f8c821",
        ]
    );

    // The counters behind /metrics saw the same job.
    let metrics = get_text(&metrics_url).await;
    for line in [
        "dispatch_jobs_pulled_total 1",
        "dispatch_jobs_accepted_total 1",
        "dispatch_jobs_finished_total{status=\"succeeded\"} 1",
        "dispatch_runs_active 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing `{line}` in\n{metrics}"
        );
    }
    let health = reqwest::get(metrics_url.replace("/metrics", "/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    scheduler.stop_with(Signal::SIGTERM);
    let output = scheduler.output();
    assert!(
        !output.contains(LICENSE_KEY) && !output.contains(HEARTBEAT_SECRET),
        "a secret leaked:\n{output}"
    );
}

#[test]
fn config_errors_exit_2_and_name_the_setting() {
    let home = tempfile::tempdir().unwrap();
    let bad_file = write(home.path(), "bad.toml", "poll_interval = \"soon\"\n");
    let bad_file = bad_file.display().to_string();
    let missing = home.path().join("missing.toml").display().to_string();
    // (flags, environment, what stderr must name)
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec!["--poll-interval", "ten"], vec![], "poll-interval"),
        (
            vec![],
            vec![("DISPATCH_REPORT_INTERVAL", "x")],
            "report-interval",
        ),
        (vec!["--long-poll", "90"], vec![], "long-poll"),
        (vec!["--cloud-url", "not a url"], vec![], "cloud-url"),
        (
            vec!["--license-public-key", "bm90IGEga2V5"],
            vec![],
            "license-public-key",
        ),
        (vec!["--log-format", "xml"], vec![], "log-format"),
        (vec!["--metrics-addr", "nowhere"], vec![], "metrics-addr"),
        (vec!["--config", &bad_file], vec![], "poll_interval"),
        (vec!["--config", &missing], vec![], "missing.toml"),
        (vec!["--no-such-flag"], vec![], "--no-such-flag"),
    ];
    for (args, envs, setting) in cases {
        let mut all = vec!["--license-key", LICENSE_KEY];
        all.extend(&args);
        let mut proc = start_scheduler(home.path(), &all, &envs);
        let status = proc.wait();
        let stderr = proc.stderr();
        assert_eq!(
            status.code(),
            Some(2),
            "{args:?} {envs:?}\n{}",
            proc.output()
        );
        assert!(
            stderr.contains(setting),
            "{args:?}: stderr does not name `{setting}`:\n{stderr}"
        );
        assert!(
            !proc.output().contains(LICENSE_KEY),
            "license key printed:\n{}",
            proc.output()
        );
    }
    // Nothing was started, so nothing was created.
    assert!(!home.path().join("data").exists());
}

#[test]
fn sigterm_stops_cleanly_with_exit_0() {
    let home = tempfile::tempdir().unwrap();
    let mut scheduler = start_scheduler(home.path(), &["--hub-listen", "127.0.0.1:0"], &[]);
    // Embedded hub mode: the banner names the webhook URL and the secret's file, not the secret.
    let url = scheduler.wait_for("webhook URL:");
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with("/webhooks/github"),
        "{url}"
    );
    let secret_line = scheduler.wait_for("webhook secret:");
    let secret_path = home.path().join("webhook_secret");
    assert!(
        secret_line.contains(&secret_path.display().to_string()),
        "{secret_line}"
    );
    let secret = std::fs::read_to_string(&secret_path).unwrap();
    assert!(
        !scheduler.output().contains(secret.trim()),
        "webhook secret printed"
    );
    assert!(home.path().join("bindings.toml").is_file());
    scheduler.wait_for("dispatch worker started");
    scheduler.stop_with(Signal::SIGTERM);
    assert!(
        scheduler.stderr().contains("scheduler stopped"),
        "{}",
        scheduler.output()
    );
}

/// Behind a proxy or a tunnel: the banner's webhook URL is the one GitHub must use, and the next
/// line names where the hub listens.
#[test]
fn with_a_public_url_the_banner_gives_github_that_webhook_url() {
    let home = tempfile::tempdir().unwrap();
    let args = [
        "--hub-listen",
        "127.0.0.1:0",
        "--public-url",
        "https://hub.example.com/",
    ];
    let mut scheduler = start_scheduler(home.path(), &args, &[]);
    assert_eq!(
        scheduler.wait_for("webhook URL:"),
        "https://hub.example.com/webhooks/github"
    );
    let local = scheduler.wait_for("listening on:");
    assert!(
        local.starts_with("http://127.0.0.1:")
            && local.ends_with("/webhooks/github (public_url must lead here)"),
        "{local}"
    );
    scheduler.wait_for("dispatch worker started");
    scheduler.stop_with(Signal::SIGTERM);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_turns_503_when_no_pull_succeeds() {
    // No license key: the worker never pulls, so after three poll intervals counted from the
    // start the scheduler reports itself unhealthy.
    let home = tempfile::tempdir().unwrap();
    let mut scheduler = start_scheduler(
        home.path(),
        &[
            "--cloud-url",
            "http://127.0.0.1:9",
            "--poll-interval",
            "1",
            "--long-poll",
            "0",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
        &[],
    );
    let metrics_url = metrics_url(&mut scheduler);
    let health_url = metrics_url.replace("/metrics", "/healthz");
    let body = eventually("/healthz to answer 503", async || {
        let response = reqwest::get(&health_url).await.ok()?;
        (response.status() == 503).then_some(response.text().await.ok()?)
    })
    .await;
    assert!(body.contains("no successful pull"), "{body}");
    let metrics = get_text(&metrics_url).await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "dispatch_last_pull_age_seconds -1"),
        "{metrics}"
    );
    scheduler.stop_with(Signal::SIGTERM);
}

#[test]
fn a_second_scheduler_on_the_same_data_dir_exits_1() {
    let home = tempfile::tempdir().unwrap();
    let args = ["--hub-listen", "127.0.0.1:0"];
    let mut first = start_scheduler(home.path(), &args, &[]);
    first.wait_for("dispatch worker started");
    let mut second = start_scheduler(home.path(), &args, &[]);
    assert_eq!(second.wait().code(), Some(1), "{}", second.output());
    assert!(
        second.stderr().contains("already in use"),
        "{}",
        second.output()
    );
    // The second one stopped before starting anything: no second hub was announced.
    assert!(
        !second.stdout().contains("webhook URL"),
        "{}",
        second.output()
    );
    first.stop_with(Signal::SIGTERM);
}
