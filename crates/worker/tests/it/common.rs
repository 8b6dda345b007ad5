//! Shared test rig: a wiremock cloud, real stores, tracker and executor in a temp dir, and a
//! worker running over them.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dispatch_dag::{FileStoreConfig, Stores};
use dispatch_executor::{Executor, ExecutorConfig};
use dispatch_license::{ClientConfig, CloudClient, CredentialSource, MachineCredentials};
use dispatch_protocol::Secret;
use dispatch_tracker::{Phase, TrackedJob, Tracker};
use dispatch_worker::{Worker, WorkerConfig, WorkerDeps, WorkerError, WorkerStats};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

pub const LICENSE: &str = "lic-1";
pub const SERVER: &str = "srv-1";
pub const SECRET: &str = "hb-secret-XYZ";
pub const PULL: &str = "/api/v1/github/dispatch/pull";

/// Generous: the machine is slow and shared.
pub const WAIT: Duration = Duration::from_secs(30);

/// Credentials that can appear or vanish; counts how often they were asked for.
#[derive(Default)]
pub struct TestCreds {
    current: Mutex<Option<MachineCredentials>>,
    pub calls: AtomicUsize,
}

impl TestCreds {
    pub fn present() -> Arc<Self> {
        let c = Self::default();
        c.set(true);
        Arc::new(c)
    }

    pub fn absent() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn set(&self, present: bool) {
        *self.current.lock().unwrap() = present.then(|| MachineCredentials {
            license_id: LICENSE.into(),
            server_id: SERVER.into(),
            heartbeat_secret: Secret::new(SECRET),
        });
    }

    /// The credentials as the worker sees them, without counting a call.
    pub fn cloud_machine_credentials_for_test(&self) -> Option<MachineCredentials> {
        self.current.lock().unwrap().clone()
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl CredentialSource for TestCreds {
    fn cloud_machine_credentials(&self) -> Option<MachineCredentials> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.current.lock().unwrap().clone()
    }
}

/// Short intervals so tests run in real time without multi-second sleeps.
pub fn fast_config() -> WorkerConfig {
    WorkerConfig {
        idle_delay: Duration::from_millis(30),
        report_interval: Duration::from_millis(50),
        long_poll: Duration::ZERO,
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        credentials_recheck: Duration::from_millis(20),
        shutdown_grace: Duration::from_secs(10),
        intake_concurrency: 4,
        pull_concurrency: 1,
        pull_batch_size: 32,
    }
}

/// Temp dirs and a mock cloud; workers come and go over the same dirs.
pub struct Rig {
    pub dir: TempDir,
    pub server: MockServer,
}

pub struct Running {
    pub cancel: CancellationToken,
    pub handle: JoinHandle<Result<(), WorkerError>>,
    pub stats: Arc<WorkerStats>,
    pub stores: Stores,
}

impl Rig {
    /// A rig whose cloud answers 204 to pulls (lowest priority) and 204 to accept and finish
    /// (unless a test mounts something more specific first).
    pub async fn new() -> Rig {
        let rig = Rig::bare().await;
        rig.mount_defaults().await;
        rig
    }

    /// A rig with the default answers (see [`Rig::new`]) and the DAG `quick`.
    pub async fn with_quick_dag() -> Rig {
        let rig = Rig::new().await;
        rig.write_quick_dag();
        rig
    }

    /// A rig with no mocks at all.
    pub async fn bare() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["dags", "data", "logs", "tracker", "out"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        Rig {
            dir,
            server: MockServer::start().await,
        }
    }

    pub async fn mount_defaults(&self) {
        Mock::given(method("POST"))
            .and(path(PULL))
            .respond_with(ResponseTemplate::new(204))
            .with_priority(100)
            .mount(&self.server)
            .await;
        Mock::given(method("POST"))
            .and(path_regex(r"^/api/v1/github/dispatch/.+/(accept|finish)$"))
            .respond_with(ResponseTemplate::new(204))
            .with_priority(100)
            .mount(&self.server)
            .await;
    }

    pub fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    /// Output file the DAG steps write to (absolute path, inside the temp dir).
    pub fn out(&self, name: &str) -> PathBuf {
        self.path("out").join(name)
    }

    pub fn write_dag(&self, name: &str, yaml: &str) {
        std::fs::write(self.path("dags").join(format!("{name}.yaml")), yaml).unwrap();
    }

    /// Writes the DAG `name`, whose one step waits for the file `out/<gate>` to exist; returns
    /// the gate's path.
    pub fn write_gated_dag(&self, name: &str, gate: &str) -> PathBuf {
        let gate = self.out(gate);
        let yaml = format!(
            "steps:\n  - name: wait\n    command: while [ ! -f '{}' ]; do sleep 0.02; done\n",
            gate.display()
        );
        self.write_dag(name, &yaml);
        gate
    }

    /// Writes the DAG `name` of one step, `s`, that runs the shell line `command`.
    pub fn write_step_dag(&self, name: &str, command: &str) {
        self.write_dag(
            name,
            &format!("steps:\n  - name: s\n    command: {command}\n"),
        );
    }

    /// The DAG `quick`: one step that succeeds at once.
    pub fn write_quick_dag(&self) {
        self.write_step_dag("quick", "\"true\"");
    }

    pub fn stores(&self) -> Stores {
        Stores::open_files(FileStoreConfig {
            dags_dir: self.path("dags"),
            data_dir: self.path("data"),
            log_dir: self.path("logs"),
        })
        .unwrap()
    }

    /// Opens the tracker, waiting for a previous worker to let go of its lock.
    pub async fn tracker(&self) -> Arc<Tracker> {
        let dir = self.path("tracker");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match Tracker::open(&dir) {
                Ok(t) => return Arc::new(t),
                Err(e) if tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("tracker did not open: {e}"),
            }
        }
    }

    /// Direct view of the tracker (only while no worker runs).
    pub async fn with_tracker<T>(&self, f: impl FnOnce(&Tracker) -> T) -> T {
        let t = self.tracker().await;
        f(&t)
    }

    pub async fn start(&self, config: WorkerConfig, creds: Arc<TestCreds>) -> Running {
        self.start_with_timeout(config, creds, Duration::from_secs(5))
            .await
    }

    pub async fn start_with_timeout(
        &self,
        config: WorkerConfig,
        creds: Arc<TestCreds>,
        request_timeout: Duration,
    ) -> Running {
        self.start_against(self.server.uri(), config, creds, request_timeout)
            .await
    }

    /// A worker over this rig's dirs whose cloud is at `base_url` (the mock server or another).
    pub async fn start_against(
        &self,
        base_url: String,
        config: WorkerConfig,
        creds: Arc<TestCreds>,
        request_timeout: Duration,
    ) -> Running {
        let stores = self.stores();
        let cancel = CancellationToken::new();
        let executor = Executor::start(
            ExecutorConfig {
                max_concurrent_runs: 4,
                scan_interval: Duration::from_millis(50),
                ..ExecutorConfig::default()
            },
            stores.clone(),
            cancel.child_token(),
        )
        .unwrap();
        let tracker = self.tracker().await;
        let client = CloudClient::new(ClientConfig {
            base_url,
            version: "test".into(),
            request_timeout,
        })
        .unwrap();
        let worker = Worker::new(
            config,
            WorkerDeps {
                client,
                credentials: creds,
                tracker,
                stores: stores.clone(),
                executor,
            },
        );
        let stats = worker.stats();
        let handle = tokio::spawn(worker.run(cancel.clone()));
        Running {
            cancel,
            handle,
            stats,
            stores,
        }
    }

    /// Bodies (as JSON) of requests whose path ends with `suffix`, in arrival order.
    pub async fn bodies(&self, suffix: &str) -> Vec<(String, Value)> {
        self.server
            .received_requests()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.url.path().ends_with(suffix))
            .map(|r: Request| {
                (
                    r.url.path().to_owned(),
                    serde_json::from_slice(&r.body).unwrap_or(Value::Null),
                )
            })
            .collect()
    }

    pub async fn count(&self, suffix: &str) -> usize {
        self.bodies(suffix).await.len()
    }

    /// Requests to `/api/v1/github/dispatch/<escaped id>/<what>`.
    pub async fn calls_for(&self, job_id_escaped: &str, what: &str) -> Vec<Value> {
        let want = format!("/api/v1/github/dispatch/{job_id_escaped}/{what}");
        self.bodies(&format!("/{what}"))
            .await
            .into_iter()
            .filter(|(p, _)| *p == want)
            .map(|(_, b)| b)
            .collect()
    }

    /// Makes the next pull (one time) answer with a job of these fields, without payload or
    /// headers.
    pub async fn offer(&self, fields: Value) {
        self.offer_job(job_json(fields, None, None)).await;
    }

    /// Asserts that the hub received exactly one finish of `job_id_escaped`, with this status
    /// and summary.
    pub async fn assert_finished_once(&self, job_id_escaped: &str, status: &str, summary: &str) {
        assert_eq!(
            self.calls_for(job_id_escaped, "finish").await,
            vec![finish_body(status, summary)],
            "{job_id_escaped}"
        );
    }

    /// Asserts that the hub received exactly one finish of `job_id_escaped`: its run of `dag`
    /// succeeded.
    pub async fn assert_succeeded_once(&self, job_id_escaped: &str, dag: &str) {
        let summary = format!("Run `{dag}` finished with `succeeded`.");
        self.assert_finished_once(job_id_escaped, "succeeded", &summary)
            .await;
    }

    /// Asserts that no job is left in the tracker (only while no worker runs).
    pub async fn assert_tracker_empty(&self) {
        let left = self.with_tracker(|t| t.list().unwrap()).await;
        assert!(left.is_empty(), "left in the tracker: {left:?}");
    }

    /// Makes the next pull (one time) answer with `job_json`.
    pub async fn offer_job(&self, job_json: String) {
        self.answer_pulls(json_answer(job_json), 1).await;
    }

    /// Answers the next `times` pulls with `answer`.
    pub async fn answer_pulls(&self, answer: ResponseTemplate, times: u64) {
        self.answer_first(path(PULL), answer, times).await;
    }

    /// Answers the first `times` POSTs that `matcher` matches with `answer`, ahead of the
    /// defaults and of the mocks mounted later.
    pub async fn answer_first(
        &self,
        matcher: impl wiremock::Match + 'static,
        answer: ResponseTemplate,
        times: u64,
    ) {
        ahead_of_defaults(matcher, answer)
            .up_to_n_times(times)
            .mount(&self.server)
            .await;
    }

    /// Answers every POST that `matcher` matches with `answer`, ahead of the defaults.
    pub async fn answer_all(
        &self,
        matcher: impl wiremock::Match + 'static,
        answer: ResponseTemplate,
    ) {
        ahead_of_defaults(matcher, answer).mount(&self.server).await;
    }
}

fn ahead_of_defaults(matcher: impl wiremock::Match + 'static, answer: ResponseTemplate) -> Mock {
    Mock::given(method("POST"))
        .and(matcher)
        .respond_with(answer)
        .with_priority(1)
}

impl Running {
    /// Waits until the run `run_id` of `dag` has the status `status`.
    pub async fn wait_for_run(&self, dag: &str, run_id: &str, status: &str) {
        eventually(&format!("run `{run_id}` {status}"), || async {
            run_status(&self.stores, dag, run_id).as_deref() == Some(status)
        })
        .await;
    }

    /// Cancels and waits for the worker (and its executor shutdown).
    pub async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(WAIT, self.handle)
            .await
            .expect("worker did not stop in time")
            .expect("worker task panicked")
            .expect("worker returned an error");
    }
}

/// A 200 answer with this JSON body, byte for byte.
pub fn json_answer(body: impl Into<Vec<u8>>) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_raw(body, "application/json")
}

pub fn accept_body(job_id: &str) -> Value {
    json!({"license_id": LICENSE, "server_id": SERVER, "secret": SECRET, "dag_run_id": job_id})
}

pub fn finish_body(status: &str, summary: &str) -> Value {
    json!({
        "license_id": LICENSE,
        "server_id": SERVER,
        "secret": SECRET,
        "result_status": status,
        "result_summary": summary,
    })
}

pub fn fixture(rel: &str) -> String {
    dispatch_test_support::fixture_str(rel)
}

/// A job JSON with `payload`/`headers` spliced in as raw text (bytes kept exact).
pub fn job_json(fields: Value, payload: Option<&str>, headers: Option<&str>) -> String {
    let mut text = serde_json::to_string(&fields).unwrap();
    assert!(text.ends_with('}'));
    text.pop();
    if let Some(p) = payload {
        text.push_str(",\"payload\":");
        text.push_str(p);
    }
    if let Some(h) = headers {
        text.push_str(",\"headers\":");
        text.push_str(h);
    }
    text.push('}');
    text
}

/// Polls `cond` every 20 ms until it holds or [`WAIT`] passes.
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn tracked(job_id: &str, dag: &str, phase: Phase) -> TrackedJob {
    TrackedJob {
        job_id: job_id.into(),
        dag_name: dag.into(),
        dag_run_id: job_id.into(),
        phase,
        repository: "octo/repo".into(),
        pr_number: 0,
        issue_number: 0,
        updated_at_ms: 1,
    }
}

/// Status word of a run, or `None` when it does not exist.
pub fn run_status(stores: &Stores, dag: &str, run_id: &str) -> Option<String> {
    match stores.runs.find_attempt(dag, run_id) {
        Ok(a) => Some(a.record.status.as_str().to_owned()),
        Err(e) if e.is_not_found() => None,
        Err(e) => panic!("find_attempt: {e}"),
    }
}
