//! The `progress` extension from the worker's side, against a wiremock cloud that advertises
//! it and keeps the chunks it is sent: the run start, the steps' states and each stream's text
//! arrive, in order and masked, and the job's finish comes only after its logs are complete.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{json, Value};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, Request, Respond, ResponseTemplate};

use crate::common::*;

const JOB: &str = "job-progress-1";
const EXTENSIONS: (&str, &str) = ("x-dispatch-extensions", "pull-batch, progress");

/// A cloud's progress endpoint in memory: takes each chunk as the hub does (what starts at or
/// before the end it holds, the rest a gap) and answers with the acknowledgements.
#[derive(Default)]
struct Logs(Mutex<HashMap<(String, String), String>>);

impl Respond for Logs {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let mut held = self.0.lock().unwrap();
        let mut acks = Vec::new();
        for chunk in body["logs"].as_array().cloned().unwrap_or_default() {
            let key = (
                chunk["step"].as_str().unwrap().to_owned(),
                chunk["stream"].as_str().unwrap().to_owned(),
            );
            let text = held.entry(key.clone()).or_default();
            let offset = chunk["offset"].as_u64().unwrap() as usize;
            let data = chunk["data"].as_str().unwrap_or_default();
            let accepted = offset <= text.len();
            if accepted && offset + data.len() > text.len() {
                text.push_str(&data[text.len() - offset..]);
            }
            acks.push(
                json!({"step": key.0, "stream": key.1, "next_offset": text.len(),
                             "accepted": accepted}),
            );
        }
        let total: usize = held.values().map(String::len).sum();
        ResponseTemplate::new(200)
            .insert_header(EXTENSIONS.0, EXTENSIONS.1)
            .set_body_json(
                json!({"logs": acks, "log_bytes": total, "log_cap": 10485760,
                                  "truncated": false}),
            )
    }
}

#[tokio::test]
async fn logs_reach_an_advertising_cloud_masked_and_before_the_finish() {
    let rig = Rig::bare().await;
    rig.write_dag(
        "talk",
        &format!(
            "steps:\n  - name: hello\n    command: printf 'hello %s\\n' {SECRET}\n  - name: oops\n    command: sh -c 'echo bad >&2; exit 3'\n    depends: [hello]\n"
        ),
    );
    let advertised =
        |status: u16| ResponseTemplate::new(status).insert_header(EXTENSIONS.0, EXTENSIONS.1);
    Mock::given(method("POST"))
        .and(path(PULL))
        .respond_with(
            json_answer(job_json(
                json!({"id": JOB, "dag_name": "talk", "license_id": LICENSE}),
                None,
                None,
            ))
            .insert_header(EXTENSIONS.0, EXTENSIONS.1),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&rig.server)
        .await;
    Mock::given(method("POST"))
        .and(path(PULL))
        .respond_with(advertised(204))
        .with_priority(2)
        .mount(&rig.server)
        .await;
    Mock::given(method("POST"))
        .and(path_regex(r"/(accept|finish)$"))
        .respond_with(advertised(204))
        .mount(&rig.server)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("/api/v1/github/dispatch/{JOB}/progress")))
        .respond_with(Logs::default())
        .mount(&rig.server)
        .await;
    let running = rig.start(fast_config(), TestCreds::present()).await;
    eventually("the finish", || async { rig.count("/finish").await == 1 }).await;
    running.stop().await;

    let requests = rig.server.received_requests().await.unwrap();
    let finish_at = requests
        .iter()
        .position(|r| r.url.path().ends_with("/finish"))
        .unwrap();
    let calls: Vec<Value> = requests[..finish_at]
        .iter()
        .filter(|r| r.url.path().ends_with("/progress"))
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert!(!calls.is_empty(), "no progress before the finish");
    for call in &calls {
        assert_eq!(
            (&call["license_id"], &call["server_id"], &call["secret"]),
            (&json!(LICENSE), &json!(SERVER), &json!(SECRET))
        );
    }
    assert!(calls.iter().any(|c| c["run_started_ms"].as_u64() > Some(0)));
    // Each step's last state sent is its final one.
    let mut last = HashMap::new();
    for step in calls
        .iter()
        .flat_map(|c| c["steps"].as_array().cloned().unwrap_or_default())
    {
        last.insert(step["name"].as_str().unwrap().to_owned(), step);
    }
    assert_eq!(last["hello"]["status"], "succeeded");
    assert_eq!(last["hello"]["exit_code"], 0);
    assert_eq!(last["oops"]["status"], "failed");
    assert_eq!(last["oops"]["exit_code"], 3);
    assert!(last["oops"]["finished_ms"].as_u64() >= last["oops"]["started_ms"].as_u64());
    // The text of each stream, from the chunks in the order sent, each ending with `eof`.
    let mut text: HashMap<(String, String), String> = HashMap::new();
    let mut ended = Vec::new();
    for chunk in calls
        .iter()
        .flat_map(|c| c["logs"].as_array().cloned().unwrap_or_default())
    {
        let key = (
            chunk["step"].as_str().unwrap().to_owned(),
            chunk["stream"].as_str().unwrap().to_owned(),
        );
        let held = text.entry(key.clone()).or_default();
        assert_eq!(chunk["offset"].as_u64(), Some(held.len() as u64), "{chunk}");
        held.push_str(chunk["data"].as_str().unwrap_or_default());
        if chunk["eof"] == true {
            ended.push(key);
        }
    }
    let stream = |step: &str, stream: &str| text[&(step.to_owned(), stream.to_owned())].clone();
    assert_eq!(stream("hello", "stdout"), "hello *******\n");
    assert_eq!(stream("oops", "stderr"), "bad\n");
    assert_eq!(stream("oops", "stdout"), "");
    ended.sort();
    assert_eq!(ended.len(), 4, "every stream complete: {ended:?}");
}
