//! Jobs from pull to finish: success, failure, duplicates, cancel.

use dispatch_worker::WorkerConfig;
use serde_json::json;

use crate::common::*;

const PUSH_HEADERS: &str = r#"{"x-github-event":["push"],"x-github-delivery":["d-1"]}"#;

#[tokio::test]
async fn push_job_runs_and_finishes_succeeded_with_the_event_as_params() {
    let rig = Rig::new().await;
    let out = rig.out("push");
    rig.write_dag(
        "on-push",
        &format!(
            "steps:\n  - name: record\n    command: |\n      printf '%s' \"$WEBHOOK_PAYLOAD\" > '{o}.payload'\n      printf '%s' \"$WEBHOOK_HEADERS\" > '{o}.headers'\n      printf '%s %s %s %s %s' \"$GITHUB_EVENT_NAME\" \"$GITHUB_REF\" \"$GITHUB_REPOSITORY\" \"$GITHUB_ACTOR\" \"$DAG_RUN_ID\" > '{o}.extras'\n",
            o = out.display()
        ),
    );
    let payload = fixture("push/with-new-branch.payload.json");
    let job_id = "job-push-1";
    rig.offer_job(job_json(
        json!({
            "id": job_id,
            "binding_id": "b-1",
            "installation_id": 42,
            "repository_name": "Codertocat/Hello-World",
            "dag_name": "on-push",
            "event_name": "push",
            "delivery_id": "d-1",
            "ref": "refs/heads/master",
            "sha": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
            "actor_login": "Codertocat",
            "some_future_field": {"ignored": true},
        }),
        Some(&payload),
        Some(PUSH_HEADERS),
    ))
    .await;
    let creds = TestCreds::present();
    let w = rig.start(fast_config(), creds).await;

    eventually("finish", || async { rig.count("/finish").await >= 1 }).await;
    assert_eq!(
        rig.calls_for(job_id, "accept").await,
        vec![accept_body(job_id)]
    );
    rig.assert_succeeded_once(job_id, "on-push").await;
    // The raw payload reached the step byte for byte, with the headers and the extras.
    // (The file's trailing newline is whitespace after the JSON value, not part of it.)
    let seen = |what| std::fs::read_to_string(out.with_extension(what)).unwrap();
    assert!(
        seen("payload") == payload.trim_end(),
        "payload bytes changed on the way"
    );
    assert_eq!(seen("headers"), PUSH_HEADERS);
    assert_eq!(
        seen("extras"),
        "push refs/heads/master Codertocat/Hello-World Codertocat job-push-1"
    );
    // Pull bodies carry the credentials and no wait_seconds when long-poll is off.
    let pulls = rig.bodies(PULL).await;
    assert_eq!(
        pulls[0].1,
        json!({"license_id": LICENSE, "server_id": SERVER, "heartbeat_secret": SECRET})
    );
    eventually("tracker entry removed", || async {
        w.stats.jobs_finished("succeeded") == 1
    })
    .await;
    assert_eq!(w.stats.jobs_pulled(), 1);
    assert_eq!(w.stats.jobs_accepted(), 1);
    assert_eq!(w.stats.dispatch_latency().count, 1);
    assert!(w.stats.last_successful_pull_ms() > 0);
    let stores = w.stores.clone();
    w.stop().await;
    assert_eq!(
        run_status(&stores, "on-push", job_id).as_deref(),
        Some("succeeded")
    );
    rig.assert_tracker_empty().await;
    assert_eq!(rig.count("/finish").await, 1);
}

#[tokio::test]
async fn failing_dag_finishes_failed_with_first_error_and_failed_steps() {
    let rig = Rig::new().await;
    rig.write_dag(
        "fail",
        "steps:\n  - name: ok\n    command: \"true\"\n  - name: explode\n    command: echo boom >&2; exit 3\n  - name: never\n    command: \"true\"\n",
    );
    rig.offer_job(job_json(
        json!({"id": "job-fail", "dag_name": "fail", "event_name": "push"}),
        Some("{}"),
        None,
    ))
    .await;
    let w = rig.start(fast_config(), TestCreds::present()).await;
    eventually("finish", || async { rig.count("/finish").await >= 1 }).await;
    rig.assert_finished_once("job-fail", "failed", "Run `fail` finished with `failed`. First error: step `explode`: exit status 3. Failed steps: `explode` (exit 3).").await;
    assert_eq!(
        rig.calls_for("job-fail", "accept").await,
        vec![accept_body("job-fail")]
    );
    w.stop().await;
}

#[tokio::test]
async fn same_job_pulled_twice_runs_once_accepts_twice_finishes_once() {
    let rig = Rig::new().await;
    let gate = rig.write_gated_dag("gated", "gate");
    let job = job_json(
        json!({"id": "job-dup", "dag_name": "gated"}),
        Some("{}"),
        None,
    );
    rig.offer_job(job.clone()).await;
    rig.offer_job(job).await;
    let w = rig.start(fast_config(), TestCreds::present()).await;
    eventually("two accepts", || async {
        rig.calls_for("job-dup", "accept").await.len() == 2
    })
    .await;
    std::fs::write(&gate, "").unwrap();
    eventually("finish", || async { rig.count("/finish").await >= 1 }).await;
    // Give a duplicate finish a chance to show up before stopping.
    eventually("tracker drained", || async {
        w.stats.jobs_finished_total() == 1
    })
    .await;
    let stores = w.stores.clone();
    w.stop().await;
    assert_eq!(
        rig.calls_for("job-dup", "accept").await,
        vec![accept_body("job-dup"), accept_body("job-dup")]
    );
    rig.assert_succeeded_once("job-dup", "gated").await;
    // One run, one attempt: the second intake found it and left it alone.
    let runs = stores.runs.list_attempts().unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].record.run_id, "job-dup");
}

#[tokio::test]
async fn cancel_command_stops_the_pr_run_and_both_jobs_are_finished() {
    let rig = Rig::new().await;
    rig.write_gated_dag("slow", "never-created");
    rig.offer_job(job_json(
        json!({
            "id": "job-pr-7",
            "dag_name": "slow",
            "event_name": "pull_request",
            "repository_name": "octo/repo",
            "pull_request_number": 7,
        }),
        Some("{}"),
        None,
    ))
    .await;
    let w = rig.start(fast_config(), TestCreds::present()).await;
    let stores = w.stores.clone();
    w.wait_for_run("slow", "job-pr-7", "running").await;
    // A comment "@dispatch cancel" on the PR: an issue_comment job naming the same number.
    rig.offer_job(job_json(
        json!({
            "id": "job-cancel-1",
            "dag_name": "slow",
            "event_name": "issue_comment",
            "command": "Cancel",
            "repository_name": "Octo/Repo",
            "issue_number": 7,
        }),
        Some("{}"),
        None,
    ))
    .await;
    eventually("both finished", || async {
        rig.count("/finish").await >= 2
    })
    .await;
    rig.assert_finished_once(
        "job-cancel-1",
        "succeeded",
        "Cancelled 1 run(s) for Octo/Repo #7: `slow` (run `job-pr-7`).",
    )
    .await;
    rig.assert_finished_once(
        "job-pr-7",
        "aborted",
        "Run `slow` finished with `aborted`. First error: run stopped.",
    )
    .await;
    // The cancel job is never accepted or run.
    assert!(rig.calls_for("job-cancel-1", "accept").await.is_empty());
    assert_eq!(
        run_status(&stores, "slow", "job-pr-7").as_deref(),
        Some("aborted")
    );

    // A second cancel finds nothing left to stop.
    rig.offer(json!({"id": "job-cancel-2", "command": "cancel", "repository_name": "octo/repo", "pull_request_number": 7}))
    .await;
    eventually("second cancel finished", || async {
        !rig.calls_for("job-cancel-2", "finish").await.is_empty()
    })
    .await;
    rig.assert_finished_once(
        "job-cancel-2",
        "rejected",
        "Rejected: nothing to cancel: no active run for octo/repo #7.",
    )
    .await;
    w.stop().await;
}

#[tokio::test]
async fn finish_is_sent_when_the_run_ends_not_at_the_next_report_interval() {
    let rig = Rig::new().await;
    let gate = rig.write_gated_dag("gated", "gate");
    rig.offer(json!({"id": "job-event", "dag_name": "gated"}))
        .await;
    let config = dispatch_worker::WorkerConfig {
        report_interval: std::time::Duration::from_secs(3600),
        ..fast_config()
    };
    let w = rig.start(config, TestCreds::present()).await;
    eventually("accepted", || async { w.stats.jobs_accepted() == 1 }).await;
    std::fs::write(&gate, "").unwrap();
    eventually("finish", || async { rig.count("/finish").await >= 1 }).await;
    rig.assert_succeeded_once("job-event", "gated").await;
    w.stop().await;
}

#[tokio::test]
async fn a_burst_is_pulled_by_overlapping_pullers_and_each_job_finishes_once() {
    let rig = Rig::new().await;
    rig.write_dag("burst", "steps:\n  - name: noop\n    command: 'true'\n");
    let ids: Vec<String> = (0..20).map(|i| format!("burst-{i}")).collect();
    for id in &ids {
        rig.offer_job(job_json(
            json!({"id": id, "dag_name": "burst", "repository_name": "o/r"}),
            Some("{}"),
            None,
        ))
        .await;
    }
    let config = WorkerConfig {
        pull_concurrency: 4,
        ..fast_config()
    };
    let w = rig.start(config, TestCreds::present()).await;
    eventually("every job finished", || async {
        w.stats.jobs_finished("succeeded") == 20
    })
    .await;
    for id in &ids {
        assert_eq!(
            rig.calls_for(id, "accept").await,
            vec![accept_body(id)],
            "{id}"
        );
        rig.assert_succeeded_once(id, "burst").await;
    }
    assert_eq!(w.stats.jobs_pulled(), 20);
    // The cloud never advertised the `pull-batch` extension: no batched call was made.
    assert_eq!(rig.count("/pull-batch").await, 0);
    assert_eq!(rig.count("/accept-batch").await, 0);
    w.stop().await;
}
