//! The `pull-batch` extension from the worker's side: against a cloud that advertises it, the
//! burst pullers ask for several jobs at once and accept them in one call, each job still tracked,
//! run, accepted once and finished once; a cloud that does not advertise it never sees a batched
//! call (see also `flow::a_burst_is_pulled_by_overlapping_pullers_and_each_job_finishes_once`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, Request, Respond, ResponseTemplate};

use crate::common::*;
use dispatch_worker::WorkerConfig;

const EXTENSIONS: &str = "X-Dispatch-Extensions";

/// Hands out the queued jobs, at most `max_jobs` per batched pull, as a hub would.
struct BatchPulls {
    queue: Arc<Mutex<VecDeque<String>>>,
}

impl Respond for BatchPulls {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let max = body["max_jobs"].as_u64().unwrap() as usize;
        let mut queue = self.queue.lock().unwrap();
        let jobs: Vec<String> = (0..max).map_while(|_| queue.pop_front()).collect();
        if jobs.is_empty() {
            return ResponseTemplate::new(204).insert_header(EXTENSIONS, "pull-batch");
        }
        ResponseTemplate::new(200)
            .insert_header(EXTENSIONS, "pull-batch")
            .set_body_raw(
                format!("{{\"jobs\":[{}]}}", jobs.join(",")),
                "application/json",
            )
    }
}

/// Answers every job of a batched accept with 204, as a hub that took them all.
struct AcceptAll;

impl Respond for AcceptAll {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let results: Vec<Value> = body["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| json!({"job_id": j["job_id"], "status": 204}))
            .collect();
        ResponseTemplate::new(200)
            .insert_header(EXTENSIONS, "pull-batch")
            .set_body_json(json!({ "results": results }))
    }
}

#[tokio::test]
async fn a_burst_from_an_advertising_cloud_is_pulled_and_accepted_in_batches() {
    let rig = Rig::bare().await;
    rig.write_dag("burst", "steps:\n  - name: noop\n    command: 'true'\n");
    let ids: Vec<String> = (0..30).map(|i| format!("batch-{i:02}")).collect();
    let job = |id: &str| {
        job_json(
            json!({"id": id, "dag_name": "burst", "repository_name": "o/r"}),
            Some("{}"),
            None,
        )
    };
    // The first job comes from the long-poll, with the advertisement; the rest wait for
    // batched pulls.
    let first = ResponseTemplate::new(200)
        .insert_header(EXTENSIONS, "pull-batch")
        .set_body_raw(job(&ids[0]).into_bytes(), "application/json");
    rig.answer_pulls(first, 1).await;
    Mock::given(method("POST"))
        .and(path(PULL))
        .respond_with(ResponseTemplate::new(204).insert_header(EXTENSIONS, "pull-batch"))
        .with_priority(100)
        .mount(&rig.server)
        .await;
    let queue = Arc::new(Mutex::new(ids[1..].iter().map(|id| job(id)).collect()));
    Mock::given(method("POST"))
        .and(path("/api/v1/github/dispatch/pull-batch"))
        .respond_with(BatchPulls {
            queue: queue.clone(),
        })
        .mount(&rig.server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/v1/github/dispatch/accept-batch"))
        .respond_with(AcceptAll)
        .mount(&rig.server)
        .await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/api/v1/github/dispatch/.+/(accept|finish)$"))
        .respond_with(ResponseTemplate::new(204).insert_header(EXTENSIONS, "pull-batch"))
        .mount(&rig.server)
        .await;

    let config = WorkerConfig {
        pull_concurrency: 3,
        pull_batch_size: 8,
        ..fast_config()
    };
    let w = rig.start(config, TestCreds::present()).await;
    eventually("every job finished", || async {
        w.stats.jobs_finished("succeeded") == ids.len() as u64
    })
    .await;

    let pulls = rig.bodies("/pull-batch").await;
    assert!(!pulls.is_empty());
    for (_, body) in &pulls {
        let max = body["max_jobs"].as_u64().unwrap();
        assert!((1..=8).contains(&max), "{body}");
        assert_eq!(body["license_id"], LICENSE);
        assert_eq!(body["heartbeat_secret"], SECRET);
    }
    // Every job accepted exactly once: the long-polled one alone, the others in batches.
    let mut accepted: Vec<String> = Vec::new();
    for (_, body) in rig.bodies("/accept-batch").await {
        assert_eq!(body["secret"], SECRET);
        for item in body["jobs"].as_array().unwrap() {
            assert_eq!(item["job_id"], item["dag_run_id"]);
            accepted.push(item["job_id"].as_str().unwrap().to_owned());
        }
    }
    for id in &ids {
        accepted.extend(
            rig.calls_for(id, "accept")
                .await
                .into_iter()
                .map(|_| id.clone()),
        );
    }
    accepted.sort();
    assert_eq!(accepted, ids);
    assert!(
        rig.count("/accept-batch").await < ids.len() - 1,
        "accepts were batched"
    );
    for id in &ids {
        rig.assert_succeeded_once(id, "burst").await;
    }
    assert_eq!(w.stats.jobs_pulled(), ids.len() as u64);
    assert!(queue.lock().unwrap().is_empty());
    w.stop().await;
    assert!(
        rig.with_tracker(|t| t.is_empty()).await,
        "nothing left tracked"
    );
}
