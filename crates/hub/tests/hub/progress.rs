//! The `progress` extension over HTTP: the server holding a job sends its run start, step
//! states and log chunks; chunks are idempotent by offset, a gap is answered with the offset the
//! hub expects, the job's log is cut at the cap (`job_log_cap_mib`), and nobody else may send.

use super::*;

const CAP: u64 = dispatch_protocol::DEFAULT_JOB_LOG_CAP;

async fn progress(hub: &TestHub, c: &Creds, id: &str, body: Value) -> reqwest::Response {
    let mut body = body;
    body["license_id"] = json!(c.license_id);
    body["server_id"] = json!(c.server_id);
    body["secret"] = json!(c.secret);
    hub.post(&format!("/api/v1/github/dispatch/{id}/progress"), body)
        .await
}

/// Sends one chunk of `build`'s stdout; the hub must take the call (200). Its answer.
async fn chunk(hub: &TestHub, c: &Creds, id: &str, offset: u64, data: &str) -> Value {
    let resp = progress(
        hub,
        c,
        id,
        json!({"logs": [{"step": "build", "stream": "stdout", "offset": offset, "data": data}]}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

/// A hub with one job, pulled and accepted by `srv-1` of `lic-a`.
async fn accepted_job() -> (TestHub, Creds, String) {
    accepted_job_with(|_| {}).await
}

/// [`accepted_job`] on a hub whose config `tweak` changed.
async fn accepted_job_with(tweak: impl FnOnce(&mut HubConfig)) -> (TestHub, Creds, String) {
    let hub = TestHub::start_with(vec![build(Trigger::Auto)], tweak).await;
    let c = hub.activate("lic-a", "srv-1").await;
    hub.push("d1").await;
    let id = hub.pull_id(&c).await;
    hub.accept_ok(&c, &id).await;
    (hub, c, id)
}

#[tokio::test]
async fn chunks_are_acknowledged_by_offset_and_a_gap_names_the_offset_expected() {
    let (mut hub, c, id) = accepted_job().await;
    let resp = progress(
        &hub,
        &c,
        &id,
        json!({"run_started_ms": 5,
               "steps": [{"name": "build", "status": "running", "started_ms": 6}],
               "logs": [{"step": "build", "stream": "stdout", "offset": 0, "data": "hello\n"}]}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["x-dispatch-extensions"],
        "pull-batch, progress"
    );
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(
        answer,
        json!({"logs": [{"step": "build", "stream": "stdout", "next_offset": 6, "accepted": true}],
               "log_bytes": 6, "log_cap": CAP, "truncated": false})
    );
    // The same chunk again changes nothing; one that overlaps adds only what is new.
    assert_eq!(chunk(&hub, &c, &id, 0, "hello\n").await["log_bytes"], 6);
    assert_eq!(
        chunk(&hub, &c, &id, 3, "lo\nworld\n").await["log_bytes"],
        12
    );
    let gap = chunk(&hub, &c, &id, 40, "later\n").await;
    assert_eq!(
        gap["logs"][0],
        json!({"step": "build", "stream": "stdout", "next_offset": 12, "accepted": false})
    );
    // After a restart of the hub, an empty chunk at 0 tells the scheduler where to go on.
    hub.restart().await;
    let probe = chunk(&hub, &c, &id, 0, "").await;
    assert_eq!(probe["logs"][0]["next_offset"], 12);
    // Logs that trail the finish are still taken.
    hub.finish_ok(&c, &id, "succeeded", "").await;
    let resp = progress(
        &hub,
        &c,
        &id,
        json!({"steps": [{"name": "build", "status": "succeeded", "exit_code": 0,
                          "started_ms": 6, "finished_ms": 9}],
               "logs": [{"step": "build", "stream": "stdout", "offset": 12, "data": "bye\n",
                         "eof": true}]}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["log_bytes"], 16);
}

#[tokio::test]
async fn only_the_server_holding_the_job_may_send_its_progress() {
    let (hub, c, id) = accepted_job().await;
    let other = hub.activate("lic-a", "srv-2").await;
    let other_license = hub.activate("lic-b", "srv-3").await;
    let body = json!({"logs": [{"step": "build", "stream": "stdout", "offset": 0, "data": "x"}]});
    let wrong_secret = Creds {
        license_id: c.license_id.clone(),
        server_id: c.server_id.clone(),
        secret: "nope".into(),
    };
    for (who, job, want) in [
        (&wrong_secret, id.as_str(), StatusCode::UNAUTHORIZED),
        (&other, id.as_str(), StatusCode::CONFLICT),
        (&other_license, id.as_str(), StatusCode::CONFLICT),
        (&c, "no-such-job", StatusCode::NOT_FOUND),
    ] {
        let resp = progress(&hub, who, job, body.clone()).await;
        assert_eq!(resp.status(), want, "{}", resp.text().await.unwrap());
    }
    // A job still queued is nobody's.
    let (status, answer) = hub.push("d2").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let waiting = ids(&answer).remove(0);
    let resp = progress(&hub, &c, &waiting, body.clone()).await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    // Nothing of these reached the job's log.
    let probe = chunk(&hub, &c, &id, 0, "").await;
    assert_eq!(probe["log_bytes"], 0);
}

#[tokio::test]
async fn malformed_progress_is_a_400_naming_the_rule() {
    let (hub, c, id) = accepted_job().await;
    let too_much = "x".repeat(dispatch_protocol::MAX_PROGRESS_DATA_BYTES + 1);
    for (body, word) in [
        (
            json!({"logs": [{"step": "", "stream": "stdout", "offset": 0, "data": "x"}]}),
            "step name",
        ),
        (
            json!({"logs": [{"step": "s", "stream": "stdout", "offset": 0, "data": too_much}]}),
            "bytes of log text",
        ),
        (
            json!({"logs": [{"step": "s", "stream": "stdin", "offset": 0}]}),
            "invalid request body",
        ),
        (
            json!({"steps": [{"name": "s", "status": "done"}]}),
            "unknown step status `done`",
        ),
        // Times the pages could not show, or that would overflow a duration.
        (
            json!({"run_started_ms": 253_402_300_800_000u64}),
            "more than a day past the hub's clock",
        ),
        (
            json!({"steps": [{"name": "s", "status": "failed", "started_ms": 5,
                              "finished_ms": 9_223_372_036_854_775_808u64}]}),
            "more than a day past the hub's clock",
        ),
        (
            json!({"steps": [{"name": "s", "status": "failed", "started_ms": 5, "finished_ms": 4}]}),
            "step `s` finished (4) before it started (5)",
        ),
    ] {
        let resp = progress(&hub, &c, &id, body).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let message = resp.text().await.unwrap();
        assert!(message.contains(word), "{message}");
    }
}

#[tokio::test]
async fn a_job_keeps_at_most_its_step_limit() {
    let (hub, c, id) = accepted_job().await;
    let limit = dispatch_protocol::MAX_STEPS_PER_JOB;
    let steps: Vec<Value> = (0..limit)
        .map(|i| json!({"name": format!("s{i}"), "status": "not_started"}))
        .collect();
    let resp = progress(&hub, &c, &id, json!({ "steps": steps })).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let one_more =
        json!({"logs": [{"step": "extra", "stream": "stdout", "offset": 0, "data": "x"}]});
    let resp = progress(&hub, &c, &id, one_more).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let message = resp.text().await.unwrap();
    assert!(message.contains("at most 1000"), "{message}");
    // The steps it has still take their logs.
    let known = json!({"logs": [{"step": "s7", "stream": "stdout", "offset": 0, "data": "x"}]});
    assert_eq!(
        progress(&hub, &c, &id, known).await.status(),
        StatusCode::OK
    );
}

/// Sends `build`'s stdout in the largest pieces a call takes until the hub cuts the log: it must
/// cut it at `cap` exactly, name `cap` as its cap, and take nothing after it.
async fn fill_until_cut(hub: &TestHub, c: &Creds, id: &str, cap: u64) {
    let piece = "y".repeat(dispatch_protocol::MAX_PROGRESS_DATA_BYTES);
    let mut offset = 0;
    let last = loop {
        let answer = chunk(hub, c, id, offset, &piece).await;
        assert_eq!(answer["log_cap"], cap);
        offset = answer["logs"][0]["next_offset"].as_u64().unwrap();
        if answer["truncated"] == true {
            break answer;
        }
        assert!(offset <= cap, "past the cap without being cut");
    };
    assert_eq!((offset, last["log_bytes"].as_u64().unwrap()), (cap, cap));
    let more = chunk(hub, c, id, offset, "z").await;
    assert_eq!(more["logs"][0]["next_offset"], cap, "nothing after the cap");
    assert_eq!(more["truncated"], true);
}

#[tokio::test]
async fn a_job_log_is_cut_at_the_cap() {
    let (hub, c, id) = accepted_job().await;
    fill_until_cut(&hub, &c, &id, CAP).await;
}

/// `hub serve --job-log-cap-mib` (and `DISPATCH_HUB_JOB_LOG_CAP_MIB`) out of 1 to 1024: exit 2,
/// naming the setting.
#[test]
fn an_out_of_range_job_log_cap_is_a_config_error_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let path = hub_toml(dir.path(), "");
    for (flag, env) in [
        ("--job-log-cap-mib=0", None),
        ("--job-log-cap-mib=1025", None),
        ("--listen=127.0.0.1:0", Some("2048")),
    ] {
        let mut serve = hub_bin(&["serve", flag, "--config"], &path);
        if let Some(value) = env {
            serve.env("DISPATCH_HUB_JOB_LOG_CAP_MIB", value);
        }
        let out = serve.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {env:?}: {err}");
        assert!(err.contains("`job_log_cap_mib`"), "{flag} {env:?}: {err}");
    }
}

/// `job_log_cap_mib` below the default: the log is cut there, and the answers say so.
#[tokio::test]
async fn a_smaller_configured_cap_cuts_the_log_at_that_size() {
    let small = dispatch_hub::config::mib(1);
    assert!(small < CAP);
    let (hub, c, id) = accepted_job_with(|cfg| cfg.job_log_cap = small).await;
    fill_until_cut(&hub, &c, &id, small).await;
}
