//! Waiting pulls: a stored job wakes one waiting pull that may take it (the longest waiting), not
//! all of them; a job for one license passes the other license's pulls by; a claim whose lease
//! runs out wakes a waiting pull; and no wake-up is lost when jobs are stored while pulls look.

use std::sync::Arc;

use tokio::task::JoinHandle;

use super::*;

/// Waits until `n` pulls wait on the hub.
async fn waiting(hub: &TestHub, n: usize) {
    hub.wait_for_metric(&format!("dispatch_hub_pulls_waiting {n}\n"))
        .await;
}

/// Starts a long-poll for `c`, and waits until the hub counts `then_waiting` waiting pulls.
async fn long_poll(hub: &Arc<TestHub>, c: &Creds, then_waiting: usize) -> JoinHandle<Value> {
    let task = {
        let (hub, c) = (hub.clone(), c.clone());
        tokio::spawn(async move {
            let resp = hub.pull(&c, 60).await;
            let status = resp.status();
            let body = resp.text().await.unwrap();
            json!({ "status": status.as_u16(), "job": serde_json::from_str::<Value>(&body).ok() })
        })
    };
    waiting(hub, then_waiting).await;
    task
}

/// The job id a finished long-poll got (it must have got one).
async fn job_of(task: JoinHandle<Value>) -> String {
    let answer = task.await.unwrap();
    assert_eq!(answer["status"], 200, "{answer}");
    answer["job"]["id"].as_str().unwrap().to_owned()
}

/// Checks that the hub woke one pull, and that it found its job: no pull was woken for nothing.
async fn one_wake_up_that_found_its_job(hub: &TestHub) {
    let m = hub
        .metrics_with(&["dispatch_hub_pull_wakeups_total{outcome=\"job\"} 1\n"])
        .await;
    assert!(!m.contains("outcome=\"nothing\""), "{m}");
}

/// The binding of [`build`] for `license`'s schedulers only.
fn build_for(license: &str) -> Binding {
    let mut b = build(Trigger::Auto);
    b.license = license.into();
    b
}

#[tokio::test]
async fn a_stored_job_wakes_the_longest_waiting_pull_only() {
    let hub = Arc::new(TestHub::start(vec![build_for("lic-a")]).await);
    let mut creds = Vec::new();
    for s in 0..3 {
        creds.push(hub.activate("lic-a", &format!("wait-{s}")).await);
    }
    let mut polls = Vec::new();
    for (n, c) in creds.iter().enumerate() {
        polls.push(long_poll(&hub, c, n + 1).await);
    }
    let (status, answer) = hub.push("one").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let first = polls.remove(0);
    assert_eq!(job_of(first).await, ids(&answer)[0]);
    waiting(&hub, 2).await;
    // One wake-up, and it found its job: the other pulls were never woken.
    one_wake_up_that_found_its_job(&hub).await;
    assert!(polls.iter().all(|p| !p.is_finished()));
    // The next job goes to the next in line.
    let (_, answer) = hub.push("two").await;
    let second = polls.remove(0);
    assert_eq!(job_of(second).await, ids(&answer)[0]);
    waiting(&hub, 1).await;
    assert!(!polls[0].is_finished());
}

#[tokio::test]
async fn a_job_for_license_b_reaches_a_b_pull_waiting_behind_a_pulls() {
    let hub = Arc::new(TestHub::start(vec![build_for("lic-b")]).await);
    let a1 = hub.activate("lic-a", "a1").await;
    let a2 = hub.activate("lic-a", "a2").await;
    let b = hub.activate("lic-b", "b").await;
    let pa1 = long_poll(&hub, &a1, 1).await;
    let pa2 = long_poll(&hub, &a2, 2).await;
    let pb = long_poll(&hub, &b, 3).await;
    let (_, answer) = hub.push("for-b").await;
    assert_eq!(job_of(pb).await, ids(&answer)[0]);
    waiting(&hub, 2).await;
    one_wake_up_that_found_its_job(&hub).await;
    assert!(!pa1.is_finished() && !pa2.is_finished());
}

#[tokio::test]
async fn a_claim_whose_lease_runs_out_wakes_a_waiting_pull() {
    let hub = TestHub::start_with(vec![build(Trigger::Auto)], |cfg| {
        cfg.lease = Duration::from_secs(2);
    })
    .await;
    let hub = Arc::new(hub);
    let (_, answer) = hub.push("lapse").await;
    let id = ids(&answer)[0].clone();
    let gone = hub.activate("lic-a", "gone").await;
    let next = hub.activate("lic-b", "next").await;
    let later = hub.activate("lic-a", "later").await;
    // Claimed by a scheduler that never accepts; two pulls wait while its lease runs.
    assert_eq!(hub.pull_id(&gone).await, id);
    let mut polls = vec![
        long_poll(&hub, &next, 1).await,
        long_poll(&hub, &later, 2).await,
    ];
    // The job goes back to the queue and to one of them (the first in line, unless the other's
    // first look came after the lease had run out); the other goes on waiting.
    while !polls.iter().any(|p| p.is_finished()) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let done = polls.iter().position(|p| p.is_finished()).unwrap();
    assert_eq!(job_of(polls.remove(done)).await, id);
    waiting(&hub, 1).await;
    assert!(!polls[0].is_finished());
}

#[tokio::test]
async fn no_wake_up_is_lost_while_jobs_are_stored_as_pulls_look() {
    let hub = Arc::new(TestHub::start(vec![build(Trigger::Auto)]).await);
    const PULLS: usize = 8;
    const ROUNDS: usize = 50;
    let mut creds = Vec::new();
    for s in 0..PULLS {
        let license = if s % 2 == 0 { "lic-a" } else { "lic-b" };
        creds.push(hub.activate(license, &format!("race-{s}")).await);
    }
    let mut stored = Vec::new();
    let mut handed = Vec::new();
    for round in 0..ROUNDS {
        // Pulls and stores start together, so some stores land between a pull's claim attempt
        // and its wait. Each pull takes at most one job: a pull ending without one means a job
        // sat queued through its whole wait, a lost wake-up.
        let pulls: Vec<_> = creds
            .iter()
            .map(|c| {
                let (hub, c) = (hub.clone(), c.clone());
                tokio::spawn(async move {
                    let resp = hub.pull(&c, 30).await;
                    assert_eq!(resp.status(), StatusCode::OK, "a pull got no job");
                    let job: Value = resp.json().await.unwrap();
                    job["id"].as_str().unwrap().to_owned()
                })
            })
            .collect();
        let stores: Vec<_> = (0..PULLS)
            .map(|n| {
                let hub = hub.clone();
                tokio::spawn(async move {
                    let (status, answer) = hub.push(&format!("race-{round}-{n}")).await;
                    assert_eq!(status, StatusCode::ACCEPTED);
                    ids(&answer)
                })
            })
            .collect();
        for s in stores {
            stored.extend(s.await.unwrap());
        }
        for p in pulls {
            handed.push(p.await.unwrap());
        }
    }
    stored.sort();
    handed.sort();
    assert_eq!(stored.len(), PULLS * ROUNDS);
    assert_eq!(handed, stored, "every job handed out exactly once");
    waiting(&hub, 0).await;
}
