//! Bad input in jobs: each is finished `rejected` with a reason, or runs when it can.

use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn bad_jobs_are_rejected_with_a_reason_and_the_loop_goes_on() {
    let rig = Rig::new().await;
    rig.write_step_dag("good", "\"true\"");
    rig.write_dag("broken", "steps:\n  - name: s\n    comand: typo\n");
    // (the job's fields, its id as escaped in the finish path, the summary)
    let mut cases = Vec::new();
    for (id, dag, why) in [
        ("j-dotdot", "../etc", "must not hold a path separator"),
        ("j-abs", "/etc/passwd", "must not hold a path separator"),
        ("j-empty", "", "must not be empty"),
    ] {
        let summary = format!("Rejected: invalid DAG name `{dag}`: {why}.");
        cases.push((json!({"id": id, "dag_name": dag}), id, summary));
    }
    cases.push((
        json!({"id": "j-unknown", "dag_name": "nope"}),
        "j-unknown",
        "Rejected: DAG `nope` not found on this server.".to_owned(),
    ));
    for (id, escaped) in [("a/b", "a%2Fb"), ("x?y%z", "x%3Fy%25z")] {
        let summary = format!(
            "Rejected: the job id is not a usable run id: invalid run id `{id}`: may only hold \
             A-Z, a-z, 0-9, `_` and `-`."
        );
        cases.push((json!({"id": id, "dag_name": "good"}), escaped, summary));
    }
    for (job, _, _) in &cases {
        rig.offer_job(job_json(job.clone(), Some("{}"), None)).await;
    }
    // And one that cannot be loaded (unknown key): its summary carries the loader's message.
    rig.offer(json!({"id": "j-broken", "dag_name": "broken"}))
        .await;
    // A good job after all of them still runs.
    rig.offer(json!({"id": "j-good", "dag_name": "good"})).await;

    let w = rig.start(fast_config(), TestCreds::present()).await;
    eventually("all finished", || async {
        rig.count("/finish").await >= cases.len() + 2
    })
    .await;
    for (_, escaped, summary) in &cases {
        rig.assert_finished_once(escaped, "rejected", summary).await;
        assert!(
            rig.calls_for(escaped, "accept").await.is_empty(),
            "{escaped}"
        );
    }
    let broken = rig.calls_for("j-broken", "finish").await;
    assert_eq!(broken.len(), 1);
    assert_eq!(broken[0]["result_status"], "rejected");
    let text = broken[0]["result_summary"].as_str().unwrap();
    assert!(
        text.starts_with("Rejected: DAG `broken` cannot be loaded: ") && text.contains("comand"),
        "{text}"
    );
    rig.assert_succeeded_once("j-good", "good").await;
    assert_eq!(w.stats.jobs_rejected(), cases.len() as u64 + 1);
    // Counted once the finish call has returned, which may be just after the hub saw it.
    eventually("rejections counted", || async {
        w.stats.jobs_finished("rejected") == cases.len() as u64 + 1
    })
    .await;
    // Nothing of the rejected jobs was tracked or enqueued.
    let attempts = w.stores.runs.list_attempts().unwrap();
    assert_eq!(attempts.len(), 1, "only the good job ran");
    w.stop().await;
    rig.assert_tracker_empty().await;
}

#[tokio::test]
async fn payload_not_json_and_headers_not_an_object_still_run() {
    let rig = Rig::new().await;
    let out = rig.out("env");
    rig.write_step_dag(
        "show",
        &format!("printf '%s|%s|%s|%s' \"$WEBHOOK_PAYLOAD\" \"$WEBHOOK_HEADERS\" \"$GITHUB_EVENT_NAME\" \"$GITHUB_PR_NUMBER\" > '{}'.$DAG_RUN_ID", out.display()),
    );
    // The payload is a JSON string holding text that is not JSON; the headers are an array.
    rig.offer_job(job_json(
        json!({"id": "j-text", "dag_name": "show", "event_name": "pull_request", "pull_request_number": 5}),
        Some(r#""this is {not json""#),
        Some(r#"["x-github-event","push"]"#),
    ))
    .await;
    // A number payload and a string for headers.
    rig.offer_job(job_json(
        json!({"id": "j-num", "dag_name": "show", "event_name": "push"}),
        Some("12"),
        Some(r#""x-github-event: push""#),
    ))
    .await;
    let w = rig.start(fast_config(), TestCreds::present()).await;
    eventually("both finished", || async {
        rig.count("/finish").await >= 2
    })
    .await;
    for id in ["j-text", "j-num"] {
        rig.assert_succeeded_once(id, "show").await;
    }
    let read = |id: &str| std::fs::read_to_string(format!("{}.{id}", out.display())).unwrap();
    assert_eq!(read("j-text"), r#""this is {not json"|{}|pull_request|5"#);
    assert_eq!(read("j-num"), "12|{}|push|");
    w.stop().await;
}
