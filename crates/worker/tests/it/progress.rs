//! The `progress` extension from the worker's side, against a wiremock cloud that advertises
//! it and keeps the chunks it is sent: the run start, the steps' states and each stream's text
//! arrive, in order and masked, and the job's finish comes only after its logs are complete.
//! The streams of a run the worker ran are sent from offset 0 at once; those of a run that
//! ended before it started are resumed from where the hub's copy ends.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use dispatch_dag::{RunStatus, StepRecord, StepStatus};
use dispatch_enqueue::{enqueue_webhook_run, EnqueueOutcome};
use dispatch_tracker::Phase;
use serde_json::{json, Value};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, Request, Respond, ResponseTemplate};

use crate::common::*;

const JOB: &str = "job-progress-1";
const EXTENSIONS: (&str, &str) = ("x-dispatch-extensions", "pull-batch, progress");

/// A cloud's progress endpoint in memory: takes each chunk as the hub does (what starts at or
/// before the end it holds, the rest a gap) and answers with the acknowledgements.
/// Clones share the text held.
#[derive(Default, Clone)]
struct Logs(Arc<Mutex<HashMap<(String, String), String>>>);

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

/// Mounts a cloud that advertises the extension: the first pull answers `first_job` (when
/// given), later pulls 204, accepts and finishes 204, progress calls go to `logs`.
async fn advertise(rig: &Rig, first_job: Option<Value>, logs: Logs) {
    let advertised =
        |status: u16| ResponseTemplate::new(status).insert_header(EXTENSIONS.0, EXTENSIONS.1);
    if let Some(fields) = first_job {
        Mock::given(method("POST"))
            .and(path(PULL))
            .respond_with(
                json_answer(job_json(fields, None, None)).insert_header(EXTENSIONS.0, EXTENSIONS.1),
            )
            .up_to_n_times(1)
            .with_priority(1)
            .mount(&rig.server)
            .await;
    }
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
        .and(path_regex(r"^/api/v1/github/dispatch/[^/]+/progress$"))
        .respond_with(logs)
        .mount(&rig.server)
        .await;
}

/// Runs a worker until the job is finished; the progress calls the cloud received before the
/// finish, each with the worker's credentials.
async fn progress_before_the_finish(rig: &Rig) -> Vec<Value> {
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
    calls
}

/// The chunks of each stream, `(step, stream)`, in the order sent.
fn chunks_by_stream(calls: &[Value]) -> BTreeMap<(String, String), Vec<Value>> {
    let mut streams: BTreeMap<(String, String), Vec<Value>> = BTreeMap::new();
    for chunk in calls
        .iter()
        .flat_map(|c| c["logs"].as_array().cloned().unwrap_or_default())
    {
        let key = (
            chunk["step"].as_str().unwrap().to_owned(),
            chunk["stream"].as_str().unwrap().to_owned(),
        );
        streams.entry(key).or_default().push(chunk);
    }
    streams
}

/// A chunk that only asks where the hub's copy of its stream ends.
fn asks(chunk: &Value) -> bool {
    chunk["offset"] == 0
        && chunk["data"].as_str().unwrap_or_default().is_empty()
        && chunk["eof"] != true
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
    let job = json!({"id": JOB, "dag_name": "talk", "license_id": LICENSE});
    advertise(&rig, Some(job), Logs::default()).await;
    let calls = progress_before_the_finish(&rig).await;

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
    // The text of each stream, from its chunks in the order sent, the last one ending it. The
    // run was seen here, so the hub holds none of its text: no call is spent asking for it.
    let mut text = HashMap::new();
    for (key, chunks) in chunks_by_stream(&calls) {
        let mut held = String::new();
        for chunk in &chunks {
            assert_eq!(chunk["offset"].as_u64(), Some(held.len() as u64), "{chunk}");
            assert!(!asks(chunk), "a chunk that only asks: {chunk}");
            held.push_str(chunk["data"].as_str().unwrap_or_default());
        }
        assert_eq!(chunks.last().unwrap()["eof"], true, "{key:?} complete");
        text.insert(key, held);
    }
    let stream = |step: &str, stream: &str| text[&(step.to_owned(), stream.to_owned())].clone();
    assert_eq!(stream("hello", "stdout"), "hello *******\n");
    assert_eq!(stream("oops", "stderr"), "bad\n");
    assert_eq!(stream("oops", "stdout"), "");
    assert_eq!(text.len(), 4, "every stream: {text:?}");
}

#[tokio::test]
async fn a_running_steps_output_reaches_the_hub_before_the_run_ends() {
    let rig = Rig::bare().await;
    let gate = rig.out("gate");
    // The wait is bounded (a minute), so that a failed test leaves no step behind for long.
    rig.write_step_dag(
        "live",
        &format!("echo started; i=0; while [ ! -f '{}' ] && [ $i -lt 3000 ]; do sleep 0.02; i=$((i+1)); done; echo done", gate.display()),
    );
    let logs = Logs::default();
    let job = json!({"id": "job-live-1", "dag_name": "live", "license_id": LICENSE});
    advertise(&rig, Some(job), logs.clone()).await;
    let running = rig.start(fast_config(), TestCreds::present()).await;
    let stdout = ("s".to_owned(), "stdout".to_owned());
    let held = || {
        logs.0
            .lock()
            .unwrap()
            .get(&stdout)
            .cloned()
            .unwrap_or_default()
    };
    eventually("the first line on the hub", || async {
        held() == "started\n"
    })
    .await;
    let status = run_status(&rig.stores(), "live", "job-live-1");
    assert_eq!(status.as_deref(), Some("running"));
    std::fs::write(&gate, "").unwrap();
    eventually("the finish", || async { rig.count("/finish").await == 1 }).await;
    running.stop().await;
    assert_eq!(held(), "started\ndone\n");
}

#[tokio::test]
async fn a_run_that_ended_before_the_start_is_resumed_from_the_hubs_end() {
    let rig = Rig::bare().await;
    rig.write_step_dag("ended", "'true'");
    // The run ended under a process that stopped after sending the first part of its output.
    let job = "job-ended-1";
    rig.with_tracker(|t| t.upsert(tracked(job, "ended", Phase::Accepted)).unwrap())
        .await;
    let stores = rig.stores();
    let dag = stores.dags.load("ended").unwrap();
    let params = dispatch_webhook_params::build_runtime_params("{}", "{}", &BTreeMap::new());
    let outcome = enqueue_webhook_run(&stores, &dag, job, &params, 1).unwrap();
    assert_eq!(outcome, EnqueueOutcome::Enqueued);
    let attempt = stores.runs.find_attempt("ended", job).unwrap();
    stores.queue.dequeue(&attempt.dag.queue).unwrap().unwrap();
    let (stdout, stderr) = (rig.out("s.out"), rig.out("s.err"));
    std::fs::write(&stdout, "sent before the stop\nand after it\n").unwrap();
    std::fs::write(&stderr, "").unwrap();
    let record = dispatch_dag::RunRecord {
        status: RunStatus::Succeeded,
        started_at: Some(1_000),
        finished_at: Some(2_000),
        steps: vec![StepRecord {
            name: "s".into(),
            status: StepStatus::Succeeded,
            exit_code: Some(0),
            started_at: Some(1_000),
            finished_at: Some(2_000),
            stdout,
            stderr,
            ..StepRecord::default()
        }],
        ..attempt.record
    };
    stores.runs.write_status(&record).unwrap();
    let logs = Logs::default();
    let key = ("s".to_owned(), "stdout".to_owned());
    logs.0
        .lock()
        .unwrap()
        .insert(key.clone(), "sent before the stop\n".to_owned());
    advertise(&rig, None, logs).await;
    let calls = progress_before_the_finish(&rig).await;

    // Each stream is asked for first, then sent on from the hub's end.
    let streams = chunks_by_stream(&calls);
    assert_eq!(streams.len(), 2, "{streams:?}");
    for chunks in streams.values() {
        assert!(asks(&chunks[0]), "{}", chunks[0]);
        assert_eq!(chunks.last().unwrap()["eof"], true);
    }
    let stdout: Vec<(u64, &str)> = streams[&key][1..]
        .iter()
        .map(|c| (c["offset"].as_u64().unwrap(), c["data"].as_str().unwrap()))
        .collect();
    assert_eq!(stdout, [(21, "and after it\n")]);
    let steps: Vec<Value> = calls
        .iter()
        .flat_map(|c| c["steps"].as_array().cloned().unwrap_or_default())
        .collect();
    assert_eq!(steps.last().unwrap()["status"], "succeeded");
}

/// A step that calls a sub-DAG: the child's steps and their logs reach the hub under the calling
/// step, `<step>/<child step>`, as `scheduler run` prints them; with two children (`parallel`)
/// as `<step>[<i>]/<child step>`.
#[tokio::test]
async fn the_steps_and_logs_of_sub_dag_runs_go_under_the_calling_step() {
    let rig = Rig::bare().await;
    rig.write_dag(
        "parent",
        "steps:\n  - name: before\n    command: echo parent\n\
         \x20 - name: deploy\n    call: child\n    params: \"WHERE=eu\"\n    depends: [before]\n\
         \x20 - name: fan\n    call: child\n    parallel: [a, b]\n    params: \"WHERE=${ITEM}\"\n    depends: [deploy]\n\
         ---\nname: child\nparams:\n  - WHERE: nowhere\nsteps:\n  - name: shout\n    command: echo \"child in $WHERE\"\n",
    );
    let job = json!({"id": JOB, "dag_name": "parent", "license_id": LICENSE});
    advertise(&rig, Some(job), Logs::default()).await;
    let calls = progress_before_the_finish(&rig).await;

    let mut last = HashMap::new();
    for step in calls
        .iter()
        .flat_map(|c| c["steps"].as_array().cloned().unwrap_or_default())
    {
        last.insert(step["name"].as_str().unwrap().to_owned(), step);
    }
    for name in [
        "before",
        "deploy",
        "deploy/shout",
        "fan",
        "fan[0]/shout",
        "fan[1]/shout",
    ] {
        assert_eq!(last[name]["status"], "succeeded", "{name}: {last:?}");
    }
    assert_eq!(last.len(), 6, "{last:?}");
    let text: HashMap<(String, String), String> = chunks_by_stream(&calls)
        .into_iter()
        .map(|(key, chunks)| {
            let held: String = chunks
                .iter()
                .map(|c| c["data"].as_str().unwrap_or_default())
                .collect();
            (key, held)
        })
        .collect();
    let stdout = |step: &str| text[&(step.to_owned(), "stdout".to_owned())].clone();
    assert_eq!(stdout("before"), "parent\n");
    assert_eq!(stdout("deploy/shout"), "child in eu\n");
    let mut fanned = [stdout("fan[0]/shout"), stdout("fan[1]/shout")];
    fanned.sort();
    assert_eq!(fanned, ["child in a\n", "child in b\n"]);
}
