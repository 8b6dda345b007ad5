//! Cloud faults: errors, Retry-After, timeouts, malformed answers, refusals; credentials that
//! come and go; long-poll.

use std::time::Duration;

use serde_json::json;
use wiremock::matchers::{path, path_regex};
use wiremock::ResponseTemplate;

use crate::common::*;

#[tokio::test]
async fn pull_errors_and_malformed_answers_back_off_then_the_job_runs() {
    let rig = Rig::with_quick_dag().await;
    // Two server errors, then three answers that hold no job: empty, without an id, not JSON.
    let failures = [
        (ResponseTemplate::new(500).set_body_string("boom"), 2),
        (ResponseTemplate::new(200), 1),
        (json_answer(r#"{"dag_name":"quick"}"#), 1),
        (json_answer("{not json"), 1),
    ];
    for (answer, times) in failures {
        rig.answer_pulls(answer, times).await;
    }
    rig.offer(json!({"id": "j-after", "dag_name": "quick"}))
        .await;
    let w = rig.start(fast_config(), TestCreds::present()).await;
    eventually("finish", || async { rig.count("/finish").await >= 1 }).await;
    assert_eq!(w.stats.pull_errors(), 5);
    rig.assert_succeeded_once("j-after", "quick").await;
    w.stop().await;
}

#[tokio::test]
async fn pull_timeout_is_an_error_and_the_loop_goes_on() {
    let rig = Rig::with_quick_dag().await;
    rig.answer_pulls(
        ResponseTemplate::new(204).set_delay(Duration::from_secs(1)),
        1,
    )
    .await;
    rig.offer(json!({"id": "j-late", "dag_name": "quick"}))
        .await;
    let w = rig
        .start_with_timeout(
            fast_config(),
            TestCreds::present(),
            Duration::from_millis(300),
        )
        .await;
    eventually("finish counted", || async {
        w.stats.jobs_finished("succeeded") == 1
    })
    .await;
    // At least the held pull timed out (on a loaded machine another call might too).
    assert!(w.stats.pull_errors() >= 1);
    w.stop().await;
}

#[tokio::test]
async fn accept_failures_are_retried_until_accepted() {
    let rig = Rig::with_quick_dag().await;
    rig.answer_first(
        path_regex(r"/accept$"),
        ResponseTemplate::new(503).set_body_json(json!({"message": "busy"})),
        2,
    )
    .await;
    rig.offer(json!({"id": "j-acc", "dag_name": "quick"})).await;
    // No periodic pass to lean on: the retries are served by their own schedule.
    let config = dispatch_worker::WorkerConfig {
        report_interval: Duration::from_secs(3600),
        ..fast_config()
    };
    let w = rig.start(config, TestCreds::present()).await;
    eventually("finish", || async { rig.count("/finish").await >= 1 }).await;
    eventually("finish counted", || async {
        w.stats.jobs_finished_total() == 1
    })
    .await;
    w.stop().await;
    assert_eq!(
        rig.calls_for("j-acc", "accept").await,
        vec![accept_body("j-acc"); 3]
    );
    rig.assert_succeeded_once("j-acc", "quick").await;
    rig.assert_tracker_empty().await;
}

#[tokio::test]
async fn one_job_failing_to_finish_does_not_hold_up_another() {
    let rig = Rig::with_quick_dag().await;
    rig.answer_all(
        path("/api/v1/github/dispatch/j-stuck/finish"),
        ResponseTemplate::new(500),
    )
    .await;
    rig.offer(json!({"id": "j-stuck", "dag_name": "quick"}))
        .await;
    let w = rig.start(fast_config(), TestCreds::present()).await;
    eventually("stuck job retried", || async {
        rig.calls_for("j-stuck", "finish").await.len() >= 3
    })
    .await;
    rig.offer(json!({"id": "j-free", "dag_name": "quick"}))
        .await;
    eventually("free job finished", || async {
        !rig.calls_for("j-free", "finish").await.is_empty()
    })
    .await;
    w.stop().await;
    let left = rig.with_tracker(|t| t.list().unwrap()).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].job_id, "j-stuck");
}

#[tokio::test]
async fn finish_404_or_409_drops_the_entry_without_retry() {
    let rig = Rig::with_quick_dag().await;
    for (id, code) in [("j-404", 404), ("j-409", 409)] {
        let refusal = ResponseTemplate::new(code).set_body_json(json!({"message": "no such job"}));
        rig.answer_all(
            path(format!("/api/v1/github/dispatch/{id}/finish")),
            refusal,
        )
        .await;
        rig.offer(json!({"id": id, "dag_name": "quick"})).await;
    }
    let w = rig.start(fast_config(), TestCreds::present()).await;
    eventually("both finish calls", || async {
        rig.count("/finish").await >= 2
    })
    .await;
    // Several report intervals later there is still exactly one call each.
    tokio::time::sleep(Duration::from_millis(400)).await;
    w.stop().await;
    for id in ["j-404", "j-409"] {
        rig.assert_succeeded_once(id, "quick").await;
    }
    rig.assert_tracker_empty().await;
}

#[tokio::test]
async fn accept_409_stops_the_run_and_drops_the_job() {
    let rig = Rig::bare().await;
    rig.write_gated_dag("gated", "never");
    rig.answer_all(
        path_regex(r"/accept$"),
        ResponseTemplate::new(409).set_body_json(json!({"message": "claimed by another server"})),
    )
    .await;
    rig.mount_defaults().await;
    rig.offer(json!({"id": "j-taken", "dag_name": "gated"}))
        .await;
    let w = rig.start(fast_config(), TestCreds::present()).await;
    w.wait_for_run("gated", "j-taken", "aborted").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.stop().await;
    assert_eq!(rig.calls_for("j-taken", "accept").await.len(), 1);
    assert_eq!(rig.count("/finish").await, 0);
    rig.assert_tracker_empty().await;
}

#[tokio::test]
async fn credentials_appearing_later_start_the_pulls_without_restart() {
    let rig = Rig::new().await;
    let creds = TestCreds::absent();
    let w = rig.start(fast_config(), creds.clone()).await;
    eventually("re-checked several times", || async { creds.calls() >= 6 }).await;
    assert_eq!(rig.count(PULL).await, 0, "no pull without credentials");
    creds.set(true);
    eventually("pulls", || async { rig.count(PULL).await >= 2 }).await;
    assert_eq!(
        rig.bodies(PULL).await[0].1,
        json!({"license_id": LICENSE, "server_id": SERVER, "heartbeat_secret": SECRET})
    );
    // Credentials gone again (license revoked): the pulls stop. A pull already on its way may
    // still land, so wait for the count to settle first.
    creds.set(false);
    let mut pulls = rig.count(PULL).await;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = rig.count(PULL).await;
        if now == pulls {
            break;
        }
        pulls = now;
    }
    let calls = creds.calls();
    eventually("still re-checking", || async { creds.calls() >= calls + 5 }).await;
    assert_eq!(rig.count(PULL).await, pulls);
    w.stop().await;
}

#[tokio::test]
async fn long_poll_sends_wait_seconds_and_pulls_again_when_the_server_held_it() {
    let rig = Rig::bare().await;
    // The server holds each empty pull for 600 ms (as a long-poll server would for 1 s).
    rig.answer_pulls(
        ResponseTemplate::new(204).set_delay(Duration::from_millis(600)),
        100,
    )
    .await;
    let config = dispatch_worker::WorkerConfig {
        long_poll: Duration::from_secs(1),
        // An hour: if the held pull were not recognised, the second pull would never come.
        idle_delay: Duration::from_secs(3600),
        ..fast_config()
    };
    let w = rig.start(config, TestCreds::present()).await;
    eventually("three pulls", || async { rig.count(PULL).await >= 3 }).await;
    w.stop().await;
    for (_, body) in rig.bodies(PULL).await {
        assert_eq!(
            body,
            json!({"license_id": LICENSE, "server_id": SERVER, "heartbeat_secret": SECRET, "wait_seconds": 1})
        );
    }
}

#[tokio::test]
async fn server_ignoring_wait_seconds_gets_the_idle_delay_and_wait_is_capped_at_60() {
    let rig = Rig::new().await;
    let config = dispatch_worker::WorkerConfig {
        long_poll: Duration::from_secs(90),
        idle_delay: Duration::from_secs(3600),
        ..fast_config()
    };
    let w = rig.start(config, TestCreds::present()).await;
    eventually("first pull", || async { rig.count(PULL).await >= 1 }).await;
    // An immediate 204 despite wait_seconds: the server ignored it, so no busy loop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rig.count(PULL).await, 1);
    assert_eq!(rig.bodies(PULL).await[0].1["wait_seconds"], 60);
    w.stop().await;
}

/// Lets every ready task run (no time passes; the clock is paused).
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

/// Waits in real time for `cond` while the clock stays paused: a running blocking task keeps
/// Tokio from auto-advancing the paused clock (it would otherwise jump to the next timer while
/// the worker waits on real network IO).
async fn wait_frozen(what: &str, cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(10)))
            .await
            .unwrap();
    }
}

/// Paused time proves the wait after a failed pull: the loop asks for credentials again (its
/// first act on waking) only once `expected` has passed. The clock is paused before the worker
/// starts, so the worker computes its deadline on the paused clock and no real time slips in.
async fn assert_pull_waits(
    case: &str,
    template: ResponseTemplate,
    backoff_min: Duration,
    expected: Duration,
) {
    let rig = Rig::bare().await;
    rig.answer_pulls(template, 1).await;
    rig.mount_defaults().await;
    let config = dispatch_worker::WorkerConfig {
        idle_delay: Duration::from_secs(3600),
        report_interval: Duration::from_secs(3600),
        credentials_recheck: Duration::from_secs(3600),
        backoff_min,
        backoff_max: Duration::from_secs(60),
        ..fast_config()
    };
    let creds = TestCreds::present();
    tokio::time::pause();
    let w = rig
        .start_with_timeout(config, creds.clone(), Duration::from_secs(3600))
        .await;
    // One credentials call by the pull loop, one by the report loop's first pass; after the
    // error is counted, the pull loop sleeps (this runtime has one thread, so it has yielded).
    let stats = w.stats.clone();
    wait_frozen(&format!("{case}: pull failed"), || {
        stats.pull_errors() == 1 && creds.calls() == 2
    })
    .await;
    tokio::time::advance(expected - Duration::from_millis(1)).await;
    settle().await;
    assert_eq!(creds.calls(), 2, "{case}: woke before {expected:?}");
    tokio::time::advance(Duration::from_millis(2)).await;
    settle().await;
    assert_eq!(creds.calls(), 3, "{case}: did not wake after {expected:?}");
    tokio::time::resume();
    eventually(
        &format!("{case}: second pull reached the server"),
        || async { rig.count(PULL).await >= 2 },
    )
    .await;
    w.stop().await;
}

#[tokio::test]
async fn a_failed_pull_waits_out_retry_after_or_else_backoff_min() {
    let fast = Duration::from_millis(10);
    let second = Duration::from_secs(1);
    let retry_after =
        |status, seconds| ResponseTemplate::new(status).insert_header("Retry-After", seconds);
    // (case, the failed pull's answer, backoff_min, the wait expected)
    let cases = [
        (
            "429 with Retry-After: 2",
            retry_after(429, "2"),
            fast,
            2 * second,
        ),
        (
            "503 with Retry-After: 3",
            retry_after(503, "3"),
            fast,
            3 * second,
        ),
        // The first failure's window is exactly [min, min]: no jitter to account for.
        ("a first 500", ResponseTemplate::new(500), second, second),
    ];
    for (case, answer, backoff_min, expected) in cases {
        assert_pull_waits(case, answer, backoff_min, expected).await;
    }
}
