//! A restart at each phase of a job's life: every job is finished exactly once, with the real
//! status. State is prepared with the real tracker / enqueue / store APIs, as a process that
//! stopped at that instant would have left it.

use std::collections::BTreeMap;

use dispatch_dag::{RunStatus, StepRecord, StepStatus, Stores};
use dispatch_enqueue::{enqueue_webhook_run, EnqueueOutcome};
use dispatch_tracker::Phase;
use serde_json::json;
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, ResponseTemplate};

use crate::common::*;

const DAG: &str = "quick";

/// A DAG that records the `GITHUB_REF` it ran with.
fn setup(rig: &Rig) {
    rig.write_dag(
        DAG,
        &format!(
            "steps:\n  - name: s\n    command: printf '%s' \"$GITHUB_REF\" > '{}'.$DAG_RUN_ID\n",
            rig.out("ref").display()
        ),
    );
}

fn ran_with_ref(rig: &Rig, job_id: &str) -> String {
    std::fs::read_to_string(format!("{}.{job_id}", rig.out("ref").display())).unwrap()
}

fn enqueue(stores: &Stores, job_id: &str) {
    let dag = stores.dags.load(DAG).unwrap();
    let extras = BTreeMap::from([("GITHUB_REF".to_owned(), format!("refs/heads/{job_id}"))]);
    let params = dispatch_webhook_params::build_runtime_params("{}", "{}", &extras);
    let outcome = enqueue_webhook_run(stores, &dag, job_id, &params, 1).unwrap();
    assert_eq!(outcome, EnqueueOutcome::Enqueued);
}

/// Takes the run out of its queue and records `status`, as an executor would have.
fn set_status(stores: &Stores, job_id: &str, status: RunStatus, steps: Vec<StepRecord>) {
    let attempt = stores.runs.find_attempt(DAG, job_id).unwrap();
    let item = stores.queue.dequeue(&attempt.dag.queue).unwrap().unwrap();
    assert_eq!(item.run_id, job_id);
    let mut record = attempt.record;
    record.status = status;
    record.steps = steps;
    // A pid no live process has.
    record.pid = Some(u32::MAX - 7);
    stores.runs.write_status(&record).unwrap();
}

async fn track(rig: &Rig, job_id: &str, phase: Phase) {
    rig.with_tracker(|t| t.upsert(tracked(job_id, DAG, phase)).unwrap())
        .await;
}

/// Starts a worker, waits for `job_id` to be finished and the tracker to drain, stops it.
async fn run_until_finished(rig: &Rig, job_id: &str) {
    let w = rig.start(fast_config(), TestCreds::present()).await;
    eventually("finish", || async {
        !rig.calls_for(job_id, "finish").await.is_empty()
    })
    .await;
    eventually("finish recorded", || async {
        w.stats.jobs_finished_total() >= 1
    })
    .await;
    w.stop().await;
    assert!(
        rig.with_tracker(|t| t.list().unwrap()).await.is_empty(),
        "tracker drained"
    );
}

#[tokio::test]
async fn stopped_after_tracker_write_the_hub_hands_the_job_out_again() {
    let rig = Rig::new().await;
    setup(&rig);
    track(&rig, "j1", Phase::PendingAccept).await;
    // The claim lapsed on the hub, which hands the job out again.
    rig.offer_job(job_json(
        json!({"id": "j1", "dag_name": DAG, "ref": "refs/heads/j1"}),
        Some("{}"),
        None,
    ))
    .await;
    run_until_finished(&rig, "j1").await;
    assert_eq!(rig.calls_for("j1", "accept").await, vec![accept_body("j1")]);
    rig.assert_finished_once("j1", "succeeded", "Run `quick` finished with `succeeded`.")
        .await;
    assert_eq!(ran_with_ref(&rig, "j1"), "refs/heads/j1");
}

#[tokio::test]
async fn stopped_after_tracker_write_without_redelivery_enqueues_nothing() {
    let rig = Rig::new().await;
    setup(&rig);
    track(&rig, "j1b", Phase::PendingAccept).await;
    let w = rig.start(fast_config(), TestCreds::present()).await;
    eventually("entry dropped", || async {
        // The tracker is owned by the worker; look at its effect instead: no run, no calls.
        w.stores.runs.list_attempts().unwrap().is_empty() && rig.count("/pull").await >= 3
    })
    .await;
    w.stop().await;
    assert!(rig.with_tracker(|t| t.list().unwrap()).await.is_empty());
    assert_eq!(
        rig.count("/accept").await,
        0,
        "never accepted without a run"
    );
    assert_eq!(rig.count("/finish").await, 0);
}

#[tokio::test]
async fn stopped_after_enqueue_accepts_then_finishes() {
    let rig = Rig::new().await;
    setup(&rig);
    track(&rig, "j2", Phase::PendingAccept).await;
    enqueue(&rig.stores(), "j2");
    run_until_finished(&rig, "j2").await;
    assert_eq!(rig.calls_for("j2", "accept").await, vec![accept_body("j2")]);
    rig.assert_finished_once("j2", "succeeded", "Run `quick` finished with `succeeded`.")
        .await;
    assert_eq!(ran_with_ref(&rig, "j2"), "refs/heads/j2");
}

#[tokio::test]
async fn stopped_after_accept_runs_and_finishes_without_a_second_accept() {
    let rig = Rig::new().await;
    setup(&rig);
    track(&rig, "j3", Phase::Accepted).await;
    enqueue(&rig.stores(), "j3");
    run_until_finished(&rig, "j3").await;
    assert!(rig.calls_for("j3", "accept").await.is_empty());
    rig.assert_finished_once("j3", "succeeded", "Run `quick` finished with `succeeded`.")
        .await;
    assert_eq!(ran_with_ref(&rig, "j3"), "refs/heads/j3");
}

#[tokio::test]
async fn killed_while_running_finishes_failed_as_recovered() {
    let rig = Rig::new().await;
    setup(&rig);
    track(&rig, "j4", Phase::Accepted).await;
    let stores = rig.stores();
    enqueue(&stores, "j4");
    let running_step = StepRecord {
        name: "s".into(),
        status: StepStatus::Running,
        ..StepRecord::default()
    };
    set_status(&stores, "j4", RunStatus::Running, vec![running_step]);
    run_until_finished(&rig, "j4").await;
    assert!(rig.calls_for("j4", "accept").await.is_empty());
    rig.assert_finished_once("j4", "failed", "Run `quick` finished with `failed`. First error: process terminated unexpectedly. Failed steps: `s`.").await;
}

#[tokio::test]
async fn graceful_stop_while_running_is_reported_by_the_next_start() {
    let rig = Rig::new().await;
    let gate = rig.out("gate");
    rig.write_dag("gated", &gated_dag(&gate));
    rig.offer(json!({"id": "j4b", "dag_name": "gated"})).await;
    let w = rig.start(fast_config(), TestCreds::present()).await;
    let stores = w.stores.clone();
    eventually("running", || async {
        run_status(&stores, "gated", "j4b").as_deref() == Some("running")
    })
    .await;
    eventually("accepted", || async { w.stats.jobs_accepted() == 1 }).await;
    // Stop: the run gets its grace period, and completes within it.
    w.cancel.cancel();
    std::fs::write(&gate, "").unwrap();
    w.stop().await;
    assert_eq!(
        run_status(&stores, "gated", "j4b").as_deref(),
        Some("succeeded")
    );
    // A report pass already in progress at cancellation may still finish it (its call is let
    // complete); otherwise the tracker kept the job for the next start.
    if rig.count("/finish").await == 0 {
        let kept = rig.with_tracker(|t| t.list().unwrap()).await;
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].phase, Phase::Accepted);
    }

    let w = rig.start(fast_config(), TestCreds::present()).await;
    eventually("finish", || async { rig.count("/finish").await >= 1 }).await;
    w.stop().await;
    assert!(rig.with_tracker(|t| t.list().unwrap()).await.is_empty());
    assert_eq!(
        rig.calls_for("j4b", "accept").await,
        vec![accept_body("j4b")]
    );
    rig.assert_finished_once("j4b", "succeeded", "Run `gated` finished with `succeeded`.")
        .await;
}

#[tokio::test]
async fn stopped_after_final_status_before_finish_finishes_once() {
    let rig = Rig::new().await;
    setup(&rig);
    track(&rig, "j5", Phase::Accepted).await;
    let stores = rig.stores();
    enqueue(&stores, "j5");
    let failed_step = StepRecord {
        name: "s".into(),
        status: StepStatus::Failed,
        exit_code: Some(2),
        error: Some("exit status 2".into()),
        ..StepRecord::default()
    };
    set_status(&stores, "j5", RunStatus::Failed, vec![failed_step]);
    run_until_finished(&rig, "j5").await;
    assert!(rig.calls_for("j5", "accept").await.is_empty());
    rig.assert_finished_once("j5", "failed", "Run `quick` finished with `failed`. First error: exit status 2. Failed steps: `s` (exit 2).").await;
    // The run was not started again.
    assert!(std::fs::metadata(format!("{}.j5", rig.out("ref").display())).is_err());
}

#[tokio::test]
async fn finish_failing_until_restart_is_sent_again_by_the_next_start() {
    let rig = Rig::bare().await;
    setup(&rig);
    Mock::given(method("POST"))
        .and(path_regex(r"/finish$"))
        .respond_with(ResponseTemplate::new(500).set_body_string("db down"))
        .with_priority(1)
        .mount(&rig.server)
        .await;
    rig.mount_defaults().await;
    rig.offer(json!({"id": "j6", "dag_name": DAG})).await;
    let w = rig.start(fast_config(), TestCreds::present()).await;
    eventually("finish retried", || async {
        rig.count("/finish").await >= 3
    })
    .await;
    assert_eq!(w.stats.jobs_finished_total(), 0);
    w.stop().await;
    assert_eq!(rig.with_tracker(|t| t.list().unwrap()).await.len(), 1);

    rig.server.reset().await;
    rig.mount_defaults().await;
    run_until_finished(&rig, "j6").await;
    rig.assert_finished_once("j6", "succeeded", "Run `quick` finished with `succeeded`.")
        .await;
    assert!(rig.calls_for("j6", "accept").await.is_empty());
}

#[tokio::test]
async fn accepted_job_whose_run_is_gone_finishes_failed() {
    let rig = Rig::new().await;
    setup(&rig);
    track(&rig, "j7", Phase::Accepted).await;
    run_until_finished(&rig, "j7").await;
    rig.assert_finished_once(
        "j7",
        "failed",
        "Run `quick` cannot be reported: its run record (`j7`) is gone from this server.",
    )
    .await;
}

#[tokio::test]
async fn run_outliving_the_grace_period_is_stopped_and_reported_aborted_by_the_next_start() {
    let rig = Rig::new().await;
    let gate = rig.out("never");
    rig.write_dag("gated", &gated_dag(&gate));
    rig.offer(json!({"id": "j8", "dag_name": "gated"})).await;
    let config = dispatch_worker::WorkerConfig {
        shutdown_grace: std::time::Duration::from_millis(200),
        ..fast_config()
    };
    let w = rig.start(config, TestCreds::present()).await;
    let stores = w.stores.clone();
    eventually("running", || async {
        run_status(&stores, "gated", "j8").as_deref() == Some("running")
    })
    .await;
    eventually("accepted", || async { w.stats.jobs_accepted() == 1 }).await;
    w.stop().await;
    assert_eq!(
        run_status(&stores, "gated", "j8").as_deref(),
        Some("aborted")
    );
    assert_eq!(rig.count("/finish").await, 0);
    assert_eq!(rig.with_tracker(|t| t.list().unwrap()).await.len(), 1);

    let w = rig.start(fast_config(), TestCreds::present()).await;
    eventually("finish", || async { rig.count("/finish").await >= 1 }).await;
    w.stop().await;
    rig.assert_finished_once(
        "j8",
        "aborted",
        "Run `gated` finished with `aborted`. First error: run stopped by scheduler shutdown.",
    )
    .await;
    assert!(rig.with_tracker(|t| t.list().unwrap()).await.is_empty());
}
