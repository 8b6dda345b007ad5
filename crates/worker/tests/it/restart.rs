//! A restart at each phase of a job's life: every job is finished exactly once, with the real
//! status. State is prepared with the real tracker / enqueue / store APIs, as a process that
//! stopped at that instant would have left it.

use std::collections::BTreeMap;

use dispatch_dag::{RunStatus, StepRecord, StepStatus, Stores};
use dispatch_enqueue::{enqueue_webhook_run, EnqueueOutcome};
use dispatch_tracker::Phase;
use dispatch_worker::WorkerConfig;
use serde_json::json;
use wiremock::matchers::path_regex;
use wiremock::ResponseTemplate;

use crate::common::*;

const DAG: &str = "quick";

/// A DAG that records the `GITHUB_REF` it ran with.
fn setup(rig: &Rig) {
    rig.write_step_dag(
        DAG,
        &format!(
            "printf '%s' \"$GITHUB_REF\" > '{}'.$DAG_RUN_ID",
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

/// A rig with the ref-recording DAG whose tracker holds `job_id` in `phase`, as a process
/// stopped at that instant left it.
async fn stopped_at(job_id: &str, phase: Phase) -> Rig {
    let rig = Rig::new().await;
    setup(&rig);
    rig.with_tracker(|t| t.upsert(tracked(job_id, DAG, phase)).unwrap())
        .await;
    rig
}

/// Offers `job_id` as a run of `gated` (which waits for `out/<gate>`), starts a worker with `config`
/// and waits until the job is accepted and its run is running.
async fn start_gated(rig: &Rig, job_id: &str, gate: &str, config: WorkerConfig) -> Running {
    rig.write_gated_dag("gated", gate);
    rig.offer(json!({"id": job_id, "dag_name": "gated"})).await;
    let w = rig.start(config, TestCreds::present()).await;
    w.wait_for_run("gated", job_id, "running").await;
    eventually("accepted", || async { w.stats.jobs_accepted() == 1 }).await;
    w
}

/// The record of the DAG's one step, `s`.
fn step_s(status: StepStatus) -> StepRecord {
    StepRecord {
        name: "s".into(),
        status,
        ..StepRecord::default()
    }
}

/// A rig whose stopped process had accepted `job_id` and left its run in `status`, with `step`.
async fn stopped_with_run(job_id: &str, status: RunStatus, step: StepRecord) -> Rig {
    let rig = stopped_at(job_id, Phase::Accepted).await;
    let stores = rig.stores();
    enqueue(&stores, job_id);
    set_status(&stores, job_id, status, vec![step]);
    rig
}

/// Runs a worker until `job_id`, accepted before the stop, is finished; asserts that it was not
/// accepted again and was finished once, `failed`, with `details` after the summary's first
/// sentence.
async fn assert_reported_failed(rig: &Rig, job_id: &str, details: &str) {
    run_until_finished(rig, job_id).await;
    assert!(rig.calls_for(job_id, "accept").await.is_empty(), "{job_id}");
    let summary = format!("Run `{DAG}` finished with `failed`. {details}");
    rig.assert_finished_once(job_id, "failed", &summary).await;
}

/// Runs a worker until `job_id` is finished, then asserts that the job's run succeeded with its
/// own ref, was finished once, and was accepted by this start only when `accepted_here`.
async fn assert_recovered(rig: &Rig, job_id: &str, accepted_here: bool) {
    run_until_finished(rig, job_id).await;
    let accepts = if accepted_here {
        vec![accept_body(job_id)]
    } else {
        vec![]
    };
    assert_eq!(rig.calls_for(job_id, "accept").await, accepts, "{job_id}");
    rig.assert_succeeded_once(job_id, DAG).await;
    assert_eq!(ran_with_ref(rig, job_id), format!("refs/heads/{job_id}"));
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
    let rig = stopped_at("j1", Phase::PendingAccept).await;
    // The claim lapsed on the hub, which hands the job out again.
    rig.offer_job(job_json(
        json!({"id": "j1", "dag_name": DAG, "ref": "refs/heads/j1"}),
        Some("{}"),
        None,
    ))
    .await;
    assert_recovered(&rig, "j1", true).await;
}

#[tokio::test]
async fn stopped_after_tracker_write_without_redelivery_enqueues_nothing() {
    let rig = stopped_at("j1b", Phase::PendingAccept).await;
    let w = rig.start(fast_config(), TestCreds::present()).await;
    eventually("entry dropped", || async {
        // The tracker is owned by the worker; look at its effect instead: no run, no calls.
        w.stores.runs.list_attempts().unwrap().is_empty() && rig.count("/pull").await >= 3
    })
    .await;
    w.stop().await;
    rig.assert_tracker_empty().await;
    assert_eq!(
        rig.count("/accept").await,
        0,
        "never accepted without a run"
    );
    assert_eq!(rig.count("/finish").await, 0);
}

#[tokio::test]
async fn stopped_after_enqueue_accepts_then_finishes() {
    let rig = stopped_at("j2", Phase::PendingAccept).await;
    enqueue(&rig.stores(), "j2");
    assert_recovered(&rig, "j2", true).await;
}

#[tokio::test]
async fn stopped_after_accept_runs_and_finishes_without_a_second_accept() {
    let rig = stopped_at("j3", Phase::Accepted).await;
    enqueue(&rig.stores(), "j3");
    assert_recovered(&rig, "j3", false).await;
}

#[tokio::test]
async fn killed_while_running_finishes_failed_as_recovered() {
    let rig = stopped_with_run("j4", RunStatus::Running, step_s(StepStatus::Running)).await;
    assert_reported_failed(
        &rig,
        "j4",
        "First error: process terminated unexpectedly. Failed steps: `s`.",
    )
    .await;
}

#[tokio::test]
async fn graceful_stop_while_running_is_reported_by_the_next_start() {
    let rig = Rig::new().await;
    let w = start_gated(&rig, "j4b", "gate", fast_config()).await;
    let stores = w.stores.clone();
    // Stop: the run gets its grace period, and completes within it.
    w.cancel.cancel();
    std::fs::write(rig.out("gate"), "").unwrap();
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
    rig.assert_tracker_empty().await;
    assert_eq!(
        rig.calls_for("j4b", "accept").await,
        vec![accept_body("j4b")]
    );
    rig.assert_succeeded_once("j4b", "gated").await;
}

#[tokio::test]
async fn stopped_after_final_status_before_finish_finishes_once() {
    let failed_step = StepRecord {
        exit_code: Some(2),
        error: Some("exit status 2".into()),
        ..step_s(StepStatus::Failed)
    };
    let rig = stopped_with_run("j5", RunStatus::Failed, failed_step).await;
    assert_reported_failed(
        &rig,
        "j5",
        "First error: exit status 2. Failed steps: `s` (exit 2).",
    )
    .await;
    // The run was not started again.
    assert!(std::fs::metadata(format!("{}.j5", rig.out("ref").display())).is_err());
}

#[tokio::test]
async fn finish_failing_until_restart_is_sent_again_by_the_next_start() {
    let rig = Rig::bare().await;
    setup(&rig);
    rig.answer_all(
        path_regex(r"/finish$"),
        ResponseTemplate::new(500).set_body_string("db down"),
    )
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
    rig.assert_succeeded_once("j6", "quick").await;
    assert!(rig.calls_for("j6", "accept").await.is_empty());
}

#[tokio::test]
async fn accepted_job_whose_run_is_gone_finishes_failed() {
    let rig = stopped_at("j7", Phase::Accepted).await;
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
    let config = dispatch_worker::WorkerConfig {
        shutdown_grace: std::time::Duration::from_millis(200),
        ..fast_config()
    };
    let w = start_gated(&rig, "j8", "never", config).await;
    let stores = w.stores.clone();
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
    rig.assert_tracker_empty().await;
}
