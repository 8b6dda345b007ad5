//! The executor against the real file stores, with real processes in temp dirs. Every wait polls
//! with a generous timeout; nothing asserts on timing.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use dispatch_dag::{
    Dag, DagType, FileStoreConfig, HandlerOn, ParamDefault, QueueItem, RunRecord, RunStatus, Step,
    StepRecord, StepStatus, Stores,
};
use dispatch_enqueue::{enqueue_webhook_run, EnqueueOutcome};
use dispatch_executor::{Executor, ExecutorConfig, ExecutorHandle, RunFinished};
use dispatch_test_support::process_gone;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

// A folder of its own for the Dagu-format tests, kept out of Cargo's list of test binaries.
#[path = "executor/dagu.rs"]
mod dagu;
#[path = "executor/fanout.rs"]
mod fanout;

const WAIT: Duration = Duration::from_secs(60);

struct Harness {
    tmp: tempfile::TempDir,
    stores: Stores,
    cancel: CancellationToken,
    /// The executor [`Harness::started`] started, kept for the test's length, and its
    /// notifications of finished runs (subscribed at the start, so none is missed).
    running: Option<(
        ExecutorHandle,
        tokio::sync::Mutex<broadcast::Receiver<RunFinished>>,
    )>,
}

impl Harness {
    fn new() -> Harness {
        let tmp = tempfile::tempdir().unwrap();
        let stores = Stores::open_files(FileStoreConfig::in_home(tmp.path())).unwrap();
        Harness {
            tmp,
            stores,
            cancel: CancellationToken::new(),
            running: None,
        }
    }

    /// The executor [`Harness::started`] started.
    fn handle(&self) -> &ExecutorHandle {
        &self.running.as_ref().expect("Harness::started").0
    }

    /// Waits until the executor [`Harness::started`] started announces that `run_id` finished;
    /// its final status.
    async fn finished(&self, run_id: &str) -> RunStatus {
        let notices = &self.running.as_ref().expect("Harness::started").1;
        finished(&mut *notices.lock().await, run_id).await
    }

    /// A harness with an executor running on it.
    fn started() -> Harness {
        let mut h = Harness::new();
        let (handle, rx) = h.start();
        h.running = Some((handle, tokio::sync::Mutex::new(rx)));
        h
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn start(&self) -> (ExecutorHandle, broadcast::Receiver<RunFinished>) {
        self.start_with(ExecutorConfig {
            scan_interval: Duration::from_millis(200),
            ..ExecutorConfig::default()
        })
    }

    fn start_with(
        &self,
        config: ExecutorConfig,
    ) -> (ExecutorHandle, broadcast::Receiver<RunFinished>) {
        let handle = Executor::start(config, self.stores.clone(), self.cancel.clone()).unwrap();
        let rx = handle.subscribe();
        (handle, rx)
    }

    fn dag(&self, name: &str, steps: Vec<Step>) -> Dag {
        Dag {
            name: name.into(),
            steps,
            queue: name.into(),
            location: self.tmp.path().join("dags").join(format!("{name}.yaml")),
            ..Default::default()
        }
    }

    fn enqueue(&self, dag: &Dag, run_id: &str, params: &str) {
        let outcome = enqueue_webhook_run(&self.stores, &chained(dag), run_id, params, 1).unwrap();
        assert_eq!(outcome, EnqueueOutcome::Enqueued);
    }

    /// Enqueues a hand-built DAG as run `r1` and returns its final record (whose status the
    /// executor announced).
    async fn run_steps(&self, dag: &Dag) -> RunRecord {
        self.enqueue(dag, "r1", "");
        let status = self.finished("r1").await;
        let rec = self.record(&dag.name, "r1");
        assert_eq!(rec.status, status);
        rec
    }

    fn record(&self, dag: &str, run_id: &str) -> RunRecord {
        self.stores.runs.find_attempt(dag, run_id).unwrap().record
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// What the loader does for a chain DAG, which these hand-built DAGs skip: a step without
/// `depends` waits for the one before it.
fn chained(dag: &Dag) -> Dag {
    let mut dag = dag.clone();
    if dag.dag_type == DagType::Chain {
        for i in 1..dag.steps.len() {
            if dag.steps[i].depends.is_empty() {
                dag.steps[i].depends = vec![dag.steps[i - 1].name.clone()];
            }
        }
    }
    dag
}

fn step(name: &str, command: &str) -> Step {
    Step {
        command: Some(command.into()),
        ..Step::named(name)
    }
}

fn after(mut s: Step, deps: &[&str]) -> Step {
    s.depends = deps.iter().map(|d| d.to_string()).collect();
    s
}

async fn finished(rx: &mut broadcast::Receiver<RunFinished>, run_id: &str) -> RunStatus {
    let found = tokio::time::timeout(WAIT, async {
        loop {
            let event = rx.recv().await.expect("executor dropped the channel");
            if event.run_id == run_id {
                return event.status;
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("run {run_id} did not finish in time"))
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path.as_ref())
        .unwrap_or_else(|e| panic!("read {}: {e}", path.as_ref().display()))
}

/// Asserts that `step` failed with an error holding `fragment`.
#[track_caller]
fn assert_step_error(step: &StepRecord, fragment: &str) {
    let error = step.error.as_deref().unwrap_or_default();
    assert!(
        error.contains(fragment),
        "step `{}`: {error:?} lacks {fragment:?}",
        step.name
    );
}

/// A run's outcome as one line: its status, then each step's `name=status` in order
/// (`failed: one=failed two=skipped`).
fn outcome(rec: &RunRecord) -> String {
    let steps: Vec<String> = rec
        .steps
        .iter()
        .map(|s| format!("{}={}", s.name, s.status))
        .collect();
    format!("{}: {}", rec.status, steps.join(" "))
}

#[tokio::test]
async fn a_chain_succeeds_with_records_output_files_and_a_notification() {
    let h = Harness::started();
    let handle = h.handle();
    let dag = h.dag(
        "ok",
        vec![
            step("one", "echo hello; echo warn >&2"),
            step("two", "echo second"),
        ],
    );
    h.enqueue(&dag, "r1", "");
    assert_eq!(h.finished("r1").await, RunStatus::Succeeded);

    let rec = h.record("ok", "r1");
    assert_eq!(rec.status, RunStatus::Succeeded);
    assert_eq!(rec.pid, Some(std::process::id()));
    assert!(rec.started_at.is_some() && rec.finished_at.is_some());
    assert_eq!(rec.error, None);
    assert_eq!(outcome(&rec), "succeeded: one=succeeded two=succeeded");
    let one = &rec.steps[0];
    assert_eq!(one.exit_code, Some(0));
    let dir = rec.log_file.parent().unwrap();
    assert_eq!(one.stdout, dir.join("one.out"));
    assert_eq!(one.stderr, dir.join("one.err"));
    assert_eq!(read(&one.stdout), "hello\n");
    assert_eq!(read(&one.stderr), "warn\n");
    assert_eq!(read(&rec.steps[1].stdout), "second\n");
    assert!(read(&rec.log_file).contains("run finished: succeeded"));
    // The second step started only after the first finished.
    assert!(rec.steps[1].started_at >= one.finished_at);
    h.stores
        .queue
        .list("ok")
        .unwrap()
        .is_empty()
        .then_some(())
        .expect("queue drained");
    wait_for("idle", || handle.active_runs() == 0).await;
}

#[tokio::test]
async fn a_failure_records_the_first_error_and_skips_the_rest() {
    let h = Harness::started();
    let dag = h.dag(
        "bad",
        vec![
            step("one", "echo boom >&2; exit 3"),
            step("two", "touch ../../never"),
        ],
    );
    let rec = h.run_steps(&dag).await;
    assert_eq!(rec.status, RunStatus::Failed);
    assert_eq!(rec.error.as_deref(), Some("step `one`: exit status 3"));
    assert_eq!(outcome(&rec), "failed: one=failed two=skipped");
    assert_eq!(rec.steps[0].exit_code, Some(3));
    assert_eq!(read(&rec.steps[0].stderr), "boom\n");
}

#[tokio::test]
async fn a_step_that_cannot_start_fails_with_a_clear_error() {
    let h = Harness::started();
    // A working directory that is missing is created; one under a regular file cannot be.
    std::fs::write(h.path("a-file"), "").unwrap();
    let mut nowhere = step("nowhere", "true");
    nowhere.working_dir = Some(h.path("a-file/missing-dir"));
    let mut no_shell = step("no_shell", "true");
    no_shell.shell = Some("/nonexistent/shell -x".into());
    no_shell.continue_on.failure = true;
    let mut dag = h.dag("nostart", vec![no_shell, nowhere]);
    dag.dag_type = DagType::Graph;
    let rec = h.run_steps(&dag).await;
    assert_eq!(rec.status, RunStatus::Failed);
    assert_eq!(outcome(&rec), "failed: no_shell=failed nowhere=failed");
    assert_step_error(&rec.steps[0], "/nonexistent/shell");
    assert_step_error(&rec.steps[1], "missing-dir");
    assert_eq!(rec.steps[1].exit_code, None);
}

#[tokio::test]
async fn sh_runs_with_dash_e_by_default_only() {
    let h = Harness::started();
    let mut plain_sh = step("explicit", "false; echo reached > explicit");
    plain_sh.shell = Some("sh".into());
    let dag = h.dag(
        "shells",
        vec![
            plain_sh,
            step(
                "default",
                &format!("false; echo reached > {}", h.path("default").display()),
            ),
        ],
    );
    std::fs::create_dir_all(h.path("dags")).unwrap();
    let rec = h.run_steps(&dag).await;
    assert_eq!(rec.status, RunStatus::Failed);
    assert_eq!(outcome(&rec), "failed: explicit=succeeded default=failed");
    assert!(h.path("dags/explicit").exists(), "explicit `sh` has no -e");
    assert!(
        !h.path("default").exists(),
        "default shell stops at the first failure"
    );
}

#[tokio::test]
async fn continue_on_failure_makes_a_partial_success() {
    let h = Harness::started();
    let mut flaky = step("flaky", "exit 1");
    flaky.continue_on.failure = true;
    let dag = h.dag("partial", vec![flaky, step("after", "echo ran")]);
    let rec = h.run_steps(&dag).await;
    assert_eq!(rec.status, RunStatus::PartiallySucceeded);
    assert_eq!(
        outcome(&rec),
        "partially_succeeded: flaky=failed after=succeeded"
    );
    assert_eq!(read(&rec.steps[1].stdout), "ran\n");
}

#[tokio::test]
async fn a_graph_runs_independent_steps_in_parallel_and_joins() {
    let h = Harness::started();
    let m = |name: &str| h.path(name).display().to_string();
    // `a` and `b` each wait for the other's marker: they can only both finish if they run at the
    // same time. The timeouts turn a serial executor into a failure instead of a hang.
    let rendezvous = |me: &str, other: &str| {
        let mut s = step(
            me,
            &format!(
                "touch {mine}; while [ ! -e {theirs} ]; do sleep 0.05; done; touch {done}",
                mine = m(&format!("{me}_started")),
                theirs = m(&format!("{other}_started")),
                done = m(&format!("{me}_done")),
            ),
        );
        s.timeout_sec = Some(30);
        s
    };
    let join = step(
        "c",
        &format!(
            "[ -e {a} ] && [ -e {b} ] && echo both > {c}",
            a = m("a_done"),
            b = m("b_done"),
            c = m("c_saw_both")
        ),
    );
    let mut dag = h.dag(
        "graph",
        vec![
            rendezvous("a", "b"),
            rendezvous("b", "a"),
            after(join, &["a", "b"]),
        ],
    );
    dag.dag_type = DagType::Graph;
    h.enqueue(&dag, "r1", "");
    assert_eq!(h.finished("r1").await, RunStatus::Succeeded);
    assert_eq!(read(h.path("c_saw_both")), "both\n");
    let rec = h.record("graph", "r1");
    assert!(rec.steps[2].started_at >= rec.steps[0].finished_at);
    assert!(rec.steps[2].started_at >= rec.steps[1].finished_at);
}

#[tokio::test]
async fn a_failed_dependency_skips_dependents_unless_continue_on() {
    let h = Harness::started();
    let mut dag = h.dag(
        "deps",
        vec![
            step("a", "exit 2"),
            after(step("b", "true"), &["a"]),
            after(step("c", "true"), &["b"]),
            step("independent", "true"),
        ],
    );
    dag.dag_type = DagType::Graph;
    let rec = h.run_steps(&dag).await;
    assert_eq!(rec.status, RunStatus::Failed);
    assert_eq!(
        outcome(&rec),
        "failed: a=failed b=skipped c=skipped independent=succeeded"
    );

    dag.steps[0].continue_on.failure = true;
    h.enqueue(&dag, "r2", "");
    assert_eq!(h.finished("r2").await, RunStatus::PartiallySucceeded);
    let rec = h.record("deps", "r2");
    assert_eq!(
        outcome(&rec),
        "partially_succeeded: a=failed b=succeeded c=succeeded independent=succeeded"
    );
}

#[tokio::test]
async fn handlers_run_per_final_status_then_exit() {
    let h = Harness::started();
    let log = h.path("handlers.txt");
    let record = format!(
        "echo \"$DAG_RUN_ID $DAG_RUN_STEP_NAME\" >> {}",
        log.display()
    );
    let handlers = HandlerOn {
        success: Some(step("s", &record)),
        failure: Some(step("f", &record)),
        abort: Some(step("a", &record)),
        exit: Some(step("e", &record)),
    };
    let mut flaky = step("main", "exit 1");
    flaky.continue_on.failure = true;
    let cases = [
        (
            "succeeded",
            step("main", "true"),
            None,
            RunStatus::Succeeded,
            "on_success",
        ),
        (
            "partial",
            flaky,
            None,
            RunStatus::PartiallySucceeded,
            "on_success",
        ),
        (
            "failed",
            step("main", "exit 1"),
            None,
            RunStatus::Failed,
            "on_failure",
        ),
        (
            "aborted",
            step("main", "sleep 30"),
            Some(1),
            RunStatus::Aborted,
            "on_abort",
        ),
    ];
    for (run_id, main, timeout, want, handler) in cases {
        let mut dag = h.dag("handlers", vec![main]);
        dag.handler_on = handlers.clone();
        dag.timeout_sec = timeout;
        dag.max_clean_up_time_sec = 1;
        h.enqueue(&dag, run_id, "");
        assert_eq!(h.finished(run_id).await, want, "{run_id}");
        let rec = h.record("handlers", run_id);
        let names: Vec<&str> = rec.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["main", handler, "on_exit"], "{run_id}");
        assert!(
            rec.steps[1..]
                .iter()
                .all(|s| s.status == StepStatus::Succeeded),
            "{run_id}: {rec:?}"
        );
        assert!(rec.steps[2].stdout.ends_with("on_exit.out"));
    }
    assert_eq!(
        read(&log),
        "succeeded on_success\nsucceeded on_exit\npartial on_success\npartial on_exit\n\
         failed on_failure\nfailed on_exit\naborted on_abort\naborted on_exit\n"
    );
}

#[tokio::test]
async fn environment_precedence_and_dag_variables() {
    let h = Harness::started();
    std::fs::create_dir_all(h.path("dags")).unwrap();
    let mut dag = h.dag("envs", vec![]);
    dag.params = vec![ParamDefault {
        name: Some("FROM_DEFAULT".into()),
        value: "default".into(),
    }];
    dag.env = vec![
        ("IN_DAG_AND_PARAM".into(), "dag".into()),
        ("IN_ALL".into(), "dag".into()),
        ("EXPANDED".into(), "${ONLY_PARAM}-$IN_DAG_AND_PARAM".into()),
        ("DAG_NAME".into(), "spoofed".into()),
    ];
    let names = [
        "ONLY_PARAM",
        "FROM_DEFAULT",
        "IN_DAG_AND_PARAM",
        "IN_ALL",
        "EXPANDED",
        "HOME",
        "PATH_COPY",
        "DAG_NAME",
        "DAG_RUN_ID",
        "DAG_RUN_LOG_FILE",
        "DAG_RUN_STEP_NAME",
        "DAG_PARAMS_JSON",
    ];
    let mut command: String = names
        .iter()
        .map(|n| format!("printf '{n}=%s\\n' \"${n}\"; "))
        .collect();
    command.push_str("pwd");
    let mut s = step("show", &command);
    s.env = vec![
        ("IN_ALL".into(), "step".into()),
        ("PATH_COPY".into(), "$PATH".into()),
    ];
    dag.steps = vec![s];
    let params =
        "ONLY_PARAM=param IN_DAG_AND_PARAM=param IN_ALL=param HOME=/param-home DAG_RUN_ID=spoofed";
    h.enqueue(&dag, "r1", params);
    assert_eq!(h.finished("r1").await, RunStatus::Succeeded);
    let rec = h.record("envs", "r1");
    let out = read(&rec.steps[0].stdout);
    let vars: HashMap<&str, &str> = out.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(vars["ONLY_PARAM"], "param");
    assert_eq!(vars["FROM_DEFAULT"], "default");
    assert_eq!(vars["IN_DAG_AND_PARAM"], "dag", "DAG env beats params");
    assert_eq!(vars["IN_ALL"], "step", "step env beats DAG env");
    assert_eq!(vars["EXPANDED"], "param-dag");
    assert_eq!(
        vars["HOME"], "/param-home",
        "params beat the scheduler's environment"
    );
    assert_eq!(
        vars["PATH_COPY"],
        std::env::var("PATH").unwrap(),
        "expands the scheduler's environment"
    );
    assert_eq!(vars["DAG_NAME"], "envs");
    assert_eq!(vars["DAG_RUN_ID"], "r1");
    assert_eq!(vars["DAG_RUN_LOG_FILE"], rec.log_file.display().to_string());
    assert_eq!(vars["DAG_RUN_STEP_NAME"], "show");
    let json: serde_json::Value = serde_json::from_str(vars["DAG_PARAMS_JSON"]).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "FROM_DEFAULT": "default", "ONLY_PARAM": "param", "IN_DAG_AND_PARAM": "param",
            "IN_ALL": "param", "HOME": "/param-home", "DAG_RUN_ID": "spoofed"
        })
    );
    // Working directory: the DAG file's directory.
    let cwd = out.lines().last().unwrap();
    assert_eq!(Path::new(cwd), h.path("dags").canonicalize().unwrap());
}

#[tokio::test]
async fn params_reach_commands_only_as_environment_variables() {
    let h = Harness::started();
    let tmp = h.tmp.path().display().to_string();
    let values: BTreeMap<String, String> = [
        ("EVIL_SUBST", format!("$(touch {tmp}/pwned)")),
        ("EVIL_SEMI", format!("; touch {tmp}/pwned2")),
        ("EVIL_TICKS", format!("`touch {tmp}/pwned3`")),
        ("EVIL_QUOTE", format!("\"; touch {tmp}/pwned4; echo \"")),
        (
            "EVIL_VAR",
            "${HOME} $DAG_NAME \\n 'single' \u{e9}\t\nline2".to_owned(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let payload = format!("{{\"title\":\"$(touch {tmp}/pwned5)\"}}");
    let params = dispatch_webhook_params::build_runtime_params(&payload, "", &values);
    let mut command = String::new();
    for name in values
        .keys()
        .map(String::as_str)
        .chain(["WEBHOOK_PAYLOAD", "VIA_ENV"])
    {
        command.push_str(&format!("printf '%s' \"${name}\" > {tmp}/{name}.txt; "));
    }
    let mut dag = h.dag("inject", vec![step("echo", &command)]);
    // An env value that refers to a param gets the value as data, never as code.
    dag.env = vec![("VIA_ENV".into(), "${EVIL_SUBST}".into())];
    h.enqueue(&dag, "r1", &params);
    assert_eq!(h.finished("r1").await, RunStatus::Succeeded);
    for pwned in ["pwned", "pwned2", "pwned3", "pwned4", "pwned5"] {
        assert!(
            !h.path(pwned).exists(),
            "{pwned} exists: a param was executed"
        );
    }
    for (name, value) in &values {
        assert_eq!(read(h.path(&format!("{name}.txt"))), *value, "{name}");
    }
    assert_eq!(read(h.path("WEBHOOK_PAYLOAD.txt")), payload);
    assert_eq!(read(h.path("VIA_ENV.txt")), values["EVIL_SUBST"]);
}

#[tokio::test]
async fn a_payload_too_long_for_the_environment_arrives_as_a_file() {
    let h = Harness::started();
    let tmp = h.tmp.path().display().to_string();
    // 300 KiB: over Linux's 128 KiB limit for one environment string, under the hub's 1 MiB.
    let payload = format!("{{\"blob\":\"{}\"}}", "p".repeat(300 * 1024));
    let params = dispatch_webhook_params::build_runtime_params(&payload, "", &BTreeMap::new());
    let command = format!(
        "printf '%s' \"$WEBHOOK_PAYLOAD\" > {tmp}/inline.txt; cp \"$WEBHOOK_PAYLOAD_FILE\" {tmp}/file.txt; \
         cp \"$DAG_PARAMS_JSON_FILE\" {tmp}/params.json; printf '%s' \"$WEBHOOK_HEADERS\" > {tmp}/headers.txt"
    );
    let dag = h.dag("big", vec![step("show", &command)]);
    h.enqueue(&dag, "r1", &params);
    assert_eq!(h.finished("r1").await, RunStatus::Succeeded);
    assert_eq!(read(h.path("file.txt")), payload);
    assert_eq!(
        read(h.path("inline.txt")),
        "",
        "the long value is not also inline"
    );
    let json: serde_json::Value = serde_json::from_str(&read(h.path("params.json"))).unwrap();
    assert_eq!(json["WEBHOOK_PAYLOAD"], payload.as_str());
    // Short values stay in the environment.
    assert_eq!(read(h.path("headers.txt")), "{}");
}

#[tokio::test]
async fn scripts_run_from_a_file_next_to_the_logs() {
    let h = Harness::started();
    let mut plain = step("plain", "");
    plain.command = None;
    plain.script = Some("echo one\necho \"$DAG_RUN_STEP_NAME\"\n".into());
    let mut interpreted = step("interp", "cat");
    interpreted.script = Some("not run, just printed\n".into());
    let dag = h.dag("scripts", vec![plain, interpreted]);
    let rec = h.run_steps(&dag).await;
    assert_eq!(rec.status, RunStatus::Succeeded);
    assert_eq!(read(&rec.steps[0].stdout), "one\nplain\n");
    assert_eq!(read(&rec.steps[1].stdout), "not run, just printed\n");
    assert!(rec.log_file.parent().unwrap().join("plain.script").exists());
}

#[tokio::test]
async fn a_step_timeout_fails_the_step_with_124() {
    let h = Harness::started();
    let mut slow = step("slow", "sleep 30");
    slow.timeout_sec = Some(1);
    let mut dag = h.dag("steptimeout", vec![slow, step("next", "true")]);
    dag.max_clean_up_time_sec = 1;
    let rec = h.run_steps(&dag).await;
    assert_eq!(rec.status, RunStatus::Failed);
    assert_eq!(outcome(&rec), "failed: slow=failed next=skipped");
    assert_eq!(rec.steps[0].exit_code, Some(124));
    assert!(
        rec.steps[0].error.as_deref().unwrap().contains("timed out"),
        "{rec:?}"
    );
    assert!(rec.error.as_deref().unwrap().contains("timed out"));
}

#[tokio::test]
async fn a_dag_timeout_aborts_the_run() {
    let h = Harness::started();
    let mut dag = h.dag(
        "dagtimeout",
        vec![step("slow", "sleep 30"), step("next", "true")],
    );
    dag.timeout_sec = Some(1);
    dag.max_clean_up_time_sec = 1;
    let rec = h.run_steps(&dag).await;
    assert_eq!(rec.status, RunStatus::Aborted);
    assert_eq!(outcome(&rec), "aborted: slow=aborted next=skipped");
    assert_eq!(rec.error.as_deref(), Some("run timed out after 1s"));
}

#[tokio::test]
async fn stop_lets_a_step_that_traps_term_exit_gracefully() {
    let h = Harness::started();
    let handle = h.handle();
    let m = |n: &str| h.path(n).display().to_string();
    let dag = h.dag(
        "graceful",
        vec![
            step(
                "wait",
                &format!(
                    "trap 'echo term > {got}; exit 0' TERM; touch {started}; sleep 60 & wait",
                    got = m("got_term"),
                    started = m("started")
                ),
            ),
            step("never", &format!("touch {}", m("never"))),
        ],
    );
    h.enqueue(&dag, "r1", "");
    wait_for("step start", || h.path("started").exists()).await;
    assert!(handle.stop("graceful", "r1").unwrap());
    assert_eq!(h.finished("r1").await, RunStatus::Aborted);
    assert_eq!(read(h.path("got_term")), "term\n");
    assert!(!h.path("never").exists());
    let rec = h.record("graceful", "r1");
    assert_eq!(outcome(&rec), "aborted: wait=aborted never=skipped");
    assert_eq!(rec.steps[0].exit_code, Some(0));
    assert_eq!(rec.error.as_deref(), Some("run stopped"));
    // Not active any more.
    assert!(!handle.stop("graceful", "r1").unwrap());
    assert!(!handle.stop("graceful", "no-such-run").unwrap());
}

#[tokio::test]
async fn stop_kills_a_step_that_ignores_term_after_the_clean_up_time() {
    let h = Harness::started();
    let handle = h.handle();
    let pid_file = h.path("pid");
    let mut dag = h.dag(
        "stubborn",
        vec![step(
            "ignore",
            &format!("trap '' TERM; echo $$ > {}; sleep 60", pid_file.display()),
        )],
    );
    dag.max_clean_up_time_sec = 1;
    h.enqueue(&dag, "r1", "");
    wait_for("pid file", || read_pid(&pid_file).is_some()).await;
    let pid = read_pid(&pid_file).unwrap();
    assert!(handle.stop("stubborn", "r1").unwrap());
    assert_eq!(h.finished("r1").await, RunStatus::Aborted);
    wait_for("the killed step to be gone", || process_gone(pid)).await;
    let rec = h.record("stubborn", "r1");
    assert_eq!(rec.steps[0].status, StepStatus::Aborted);
    assert_eq!(rec.steps[0].exit_code, Some(128 + 9), "killed by SIGKILL");
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[tokio::test]
async fn stop_of_a_queued_run_removes_it_and_marks_it_aborted() {
    let h = Harness::started();
    let handle = h.handle();
    let blocker = h.dag(
        "q",
        vec![step(
            "block",
            &format!("touch {}; sleep 60", h.path("a_started").display()),
        )],
    );
    let mut second = blocker.clone();
    second.steps = vec![step(
        "mark",
        &format!("touch {}", h.path("b_ran").display()),
    )];
    h.enqueue(&blocker, "a", "");
    wait_for("a to start", || h.path("a_started").exists()).await;
    h.enqueue(&second, "b", "");
    assert_eq!(h.record("q", "b").status, RunStatus::Queued);
    assert!(handle.stop("q", "b").unwrap());
    assert_eq!(h.finished("b").await, RunStatus::Aborted);
    let rec = h.record("q", "b");
    assert_eq!(rec.status, RunStatus::Aborted);
    assert!(rec.finished_at.is_some());
    assert!(h.stores.queue.list("q").unwrap().is_empty());

    assert!(handle.stop("q", "a").unwrap());
    assert_eq!(h.finished("a").await, RunStatus::Aborted);
    wait_for("idle", || handle.active_runs() == 0).await;
    assert!(
        !h.path("b_ran").exists(),
        "a stopped queued run must never run"
    );
}

#[tokio::test]
async fn one_run_per_queue_at_a_time() {
    let h = Harness::started();
    let handle = h.handle();
    let m = |n: &str| h.path(n).display().to_string();
    // Each run notes overlap with another, then waits for its own release file.
    let body = format!(
        "if [ -e {busy} ]; then touch {overlap}; fi; touch {busy} {started}_$DAG_RUN_ID; \
         while [ ! -e {release}_$DAG_RUN_ID ]; do sleep 0.05; done; rm {busy}",
        busy = m("busy"),
        overlap = m("overlap"),
        started = m("started"),
        release = m("release"),
    );
    let dag = h.dag("serial", vec![step("work", &body)]);
    h.enqueue(&dag, "r1", "");
    h.enqueue(&dag, "r2", "");
    wait_for("r1 to start", || h.path("started_r1").exists()).await;
    // Several scan intervals pass while r1 holds the queue: r2 must stay queued.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(h.record("serial", "r2").status, RunStatus::Queued);
        assert!(!h.path("started_r2").exists());
        assert_eq!(handle.active_runs(), 1);
        let r1 = QueueItem {
            dag_name: "serial".into(),
            run_id: "r1".into(),
        };
        assert_eq!(
            handle.active_run_items(),
            [r1],
            "the queued run is not active"
        );
    }
    std::fs::write(h.path("release_r1"), "").unwrap();
    assert_eq!(h.finished("r1").await, RunStatus::Succeeded);
    wait_for("r2 to start", || h.path("started_r2").exists()).await;
    std::fs::write(h.path("release_r2"), "").unwrap();
    assert_eq!(h.finished("r2").await, RunStatus::Succeeded);
    assert!(
        handle.active_run_items().is_empty(),
        "a run is let go before its end is announced"
    );
    assert!(!h.path("overlap").exists(), "runs of one queue overlapped");
}

#[tokio::test]
async fn queue_concurrency_two_runs_two_at_once() {
    let h = Harness::new();
    let (_handle, mut rx) = h.start_with(ExecutorConfig {
        queue_concurrency: HashMap::from([("pair".to_owned(), 2)]),
        max_concurrent_runs: 4,
        scan_interval: Duration::from_millis(200),
    });
    let m = |n: &str| h.path(n).display().to_string();
    // Each run waits for the other to have started: only concurrent runs can finish.
    let body = format!(
        "touch {s}_$DAG_RUN_ID; while [ ! -e {s}_r1 ] || [ ! -e {s}_r2 ]; do sleep 0.05; done",
        s = m("started")
    );
    let mut work = step("work", &body);
    work.timeout_sec = Some(30);
    let mut dag = h.dag("pairdag", vec![work]);
    dag.queue = "pair".into();
    h.enqueue(&dag, "r1", "");
    h.enqueue(&dag, "r2", "");
    // Either may finish first.
    let mut done = HashMap::new();
    while done.len() < 2 {
        let event = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("runs did not finish")
            .unwrap();
        done.insert(event.run_id, event.status);
    }
    assert_eq!(done["r1"], RunStatus::Succeeded);
    assert_eq!(done["r2"], RunStatus::Succeeded);
}

#[tokio::test]
async fn recovery_fails_orphaned_runs_and_runs_what_is_queued() {
    let h = Harness::new();
    let dag = h.dag("recover", vec![step("one", "echo ran")]);

    // A run a dead process left `running`.
    h.enqueue(&dag, "orphan", "");
    h.stores
        .queue
        .remove("recover", &item("recover", "orphan"))
        .unwrap();
    let mut rec = h.record("recover", "orphan");
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    rec.status = RunStatus::Running;
    rec.pid = Some(dead_pid);
    rec.started_at = Some(2);
    h.stores.runs.write_status(&rec).unwrap();

    // A queued run still in the queue, and one whose item was lost between dequeue and the
    // `running` write.
    h.enqueue(&dag, "queued", "");
    h.enqueue(&dag, "stranded", "");
    assert!(h
        .stores
        .queue
        .remove("recover", &item("recover", "stranded"))
        .unwrap());

    let (_handle, mut rx) = h.start();
    let rec = h.record("recover", "orphan");
    assert_eq!(rec.status, RunStatus::Failed);
    assert_eq!(
        rec.error.as_deref(),
        Some("process terminated unexpectedly")
    );
    assert!(rec.finished_at.is_some());

    let mut done = vec![];
    for _ in 0..2 {
        let event = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(event.status, RunStatus::Succeeded, "{event:?}");
        done.push(event.run_id);
    }
    done.sort();
    assert_eq!(done, ["queued", "stranded"]);
    assert_eq!(
        read(&h.record("recover", "stranded").steps[0].stdout),
        "ran\n"
    );
    // The orphan was not run.
    assert!(h.record("recover", "orphan").steps.is_empty());
}

fn item(dag: &str, run_id: &str) -> QueueItem {
    QueueItem {
        dag_name: dag.into(),
        run_id: run_id.into(),
    }
}

#[tokio::test]
async fn runs_enqueued_by_another_process_are_found_by_the_scan() {
    let h = Harness::started();
    let dag = h.dag("scan", vec![step("one", "true")]);
    // A second `Stores` over the same directories has its own wake-up, like another process.
    let other = Stores::open_files(FileStoreConfig {
        dags_dir: h.path("dags"),
        data_dir: h.path("data"),
        log_dir: h.path("logs"),
    })
    .unwrap();
    enqueue_webhook_run(&other, &dag, "r1", "", 1).unwrap();
    assert_eq!(h.finished("r1").await, RunStatus::Succeeded);
}

#[tokio::test]
async fn shutdown_waits_for_grace_then_aborts_and_leaves_the_queue() {
    let h = Harness::started();
    let handle = h.handle();
    let mut dag = h.dag(
        "shut",
        vec![step(
            "long",
            &format!("touch {}; sleep 60", h.path("started").display()),
        )],
    );
    dag.max_clean_up_time_sec = 1;
    h.enqueue(&dag, "r1", "");
    wait_for("start", || h.path("started").exists()).await;
    h.enqueue(&dag, "r2", "");
    handle.shutdown(Duration::from_millis(100)).await;
    assert_eq!(h.finished("r1").await, RunStatus::Aborted);
    assert_eq!(handle.active_runs(), 0);
    assert_eq!(
        h.record("shut", "r1").error.as_deref(),
        Some("run stopped by scheduler shutdown")
    );
    // Queued work stays for the next start.
    assert_eq!(h.record("shut", "r2").status, RunStatus::Queued);
    assert_eq!(
        h.stores.queue.list("shut").unwrap(),
        vec![item("shut", "r2")]
    );
}

#[tokio::test]
async fn invalid_config_is_rejected() {
    let h = Harness::new();
    let err = Executor::start(
        ExecutorConfig {
            max_concurrent_runs: 0,
            ..ExecutorConfig::default()
        },
        h.stores.clone(),
        h.cancel.clone(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("max_concurrent_runs"), "{err}");
}

#[test]
fn the_handle_can_be_shared_across_tasks() {
    fn assert_shareable<T: Clone + Send + Sync + 'static>() {}
    assert_shareable::<ExecutorHandle>();
    assert_shareable::<RunFinished>();
}
