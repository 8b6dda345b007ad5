//! The `pull-batch` extension: every API answer advertises it; a batched pull claims several
//! jobs at once (each handed out once, within `max_jobs` and `max_bytes`) and a batched accept
//! answers each job as its single accept would.

use super::*;

async fn pull_batch(hub: &TestHub, c: &Creds, max_jobs: u32, max_bytes: u64) -> reqwest::Response {
    hub.post(
        "/api/v1/github/dispatch/pull-batch",
        json!({"license_id": c.license_id, "server_id": c.server_id, "heartbeat_secret": c.secret,
               "max_jobs": max_jobs, "max_bytes": max_bytes}),
    )
    .await
}

async fn batch_ids(resp: reqwest::Response) -> Vec<String> {
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Delivers `n` pushes (deliveries `d0`, `d1`, …); the ids of the jobs they made, in order.
async fn pushes(hub: &TestHub, n: usize) -> Vec<String> {
    let mut created = Vec::new();
    for i in 0..n {
        let (_, answer) = hub.push(&format!("d{i}")).await;
        created.extend(ids(&answer));
    }
    created
}

#[tokio::test]
async fn api_answers_advertise_the_extension() {
    let hub = TestHub::start(vec![build(Trigger::Auto)]).await;
    let c = hub.activate("lic-a", "srv-1").await;
    let resp = hub.pull(&c, 0).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        resp.headers()["x-dispatch-extensions"],
        "pull-batch, progress"
    );
    // A refusal carries it too; the webhook endpoint does not.
    let resp = hub.post("/api/v1/licenses/heartbeat", json!({})).await;
    assert!(resp.status().is_client_error());
    assert!(resp.headers().contains_key("x-dispatch-extensions"));
    let resp = hub
        .webhook_raw("push", "d0", fixture(PUSH), Some(sign(&fixture(PUSH))))
        .await;
    assert!(!resp.headers().contains_key("x-dispatch-extensions"));
}

#[tokio::test]
async fn batched_pulls_hand_each_job_out_once_within_the_limits() {
    let hub = TestHub::start(vec![build(Trigger::Auto)]).await;
    let created = pushes(&hub, 7).await;
    let c = hub.activate("lic-a", "srv-1").await;
    let first = batch_ids(pull_batch(&hub, &c, 3, 1 << 20).await).await;
    assert_eq!(first, created[..3]);
    // A limit below one job's size still gets one job, alone, and claims no other.
    let second = batch_ids(pull_batch(&hub, &c, 3, 10).await).await;
    assert_eq!(second, created[3..4]);
    let rest = batch_ids(pull_batch(&hub, &c, 64, 1 << 20).await).await;
    assert_eq!(rest, created[4..]);
    assert_eq!(
        pull_batch(&hub, &c, 64, 1 << 20).await.status(),
        StatusCode::NO_CONTENT
    );
    for bad in [0, 65] {
        assert_eq!(
            pull_batch(&hub, &c, bad, 1 << 20).await.status(),
            StatusCode::BAD_REQUEST
        );
    }
    let wrong = Creds {
        secret: "wrong".into(),
        ..c.clone()
    };
    assert_eq!(
        pull_batch(&hub, &wrong, 1, 1 << 20).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_job_past_max_bytes_is_handed_out_again_after_its_lease() {
    let hub = TestHub::start_with(vec![build(Trigger::Auto)], |cfg| {
        cfg.lease = Duration::from_secs(1);
    })
    .await;
    let created = pushes(&hub, 3).await;
    let c = hub.activate("lic-a", "srv-1").await;
    // The size of one job's answer; the jobs differ only in their ids.
    let answer = pull_batch(&hub, &c, 1, 1 << 20).await.text().await.unwrap();
    assert!(answer.contains(&created[0]));
    hub.accept_ok(&c, &created[0]).await;
    // Room for one job and a half: the second is claimed, left out, and comes back only once
    // its lease has run out.
    let limited = pull_batch(&hub, &c, 2, answer.len() as u64 * 3 / 2).await;
    assert_eq!(batch_ids(limited).await, created[1..2]);
    hub.accept_ok(&c, &created[1]).await;
    assert_eq!(
        pull_batch(&hub, &c, 2, 1 << 20).await.status(),
        StatusCode::NO_CONTENT
    );
    eventually("the left-out job to be handed out again", || async {
        let resp = pull_batch(&hub, &c, 2, 1 << 20).await;
        resp.status() == StatusCode::OK && batch_ids(resp).await == created[2..]
    })
    .await;
}

#[tokio::test]
async fn batched_accepts_answer_each_job_as_its_single_accept() {
    let hub = TestHub::start(vec![build(Trigger::Auto)]).await;
    pushes(&hub, 3).await;
    let a = hub.activate("lic-a", "srv-1").await;
    let b = hub.activate("lic-a", "srv-2").await;
    let mine = batch_ids(pull_batch(&hub, &a, 2, 1 << 20).await).await;
    let theirs = hub.pull_id(&b).await;
    let accept = |c: &Creds, jobs: Vec<&str>| {
        let items: Vec<Value> = jobs
            .iter()
            .map(|id| json!({"job_id": id, "dag_run_id": id}))
            .collect();
        hub.post(
            "/api/v1/github/dispatch/accept-batch",
            json!({"license_id": c.license_id, "server_id": c.server_id, "secret": c.secret,
                   "jobs": items}),
        )
    };
    let resp = accept(&a, vec![&mine[0], &mine[1], &theirs, "no-such-job"]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    let statuses: Vec<(String, u64)> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["job_id"].as_str().unwrap().to_owned(),
                r["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        vec![
            (mine[0].clone(), 204),
            (mine[1].clone(), 204),
            (theirs.clone(), 409),
            ("no-such-job".to_owned(), 404),
        ]
    );
    assert!(!body["results"][2]["message"].as_str().unwrap().is_empty());
    // A repeat is answered as a repeated single accept.
    let again: Value = accept(&a, vec![&mine[0]]).await.json().await.unwrap();
    assert_eq!(again["results"][0]["status"], 204);
    // The jobs are accepted: their finish works as after a single accept.
    hub.finish_ok(&a, &mine[0], "succeeded", "ok").await;
    assert_eq!(accept(&a, vec![]).await.status(), StatusCode::BAD_REQUEST);
}
