//! Enqueue against the real file stores, with faults injected by wrapper stores.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dispatch_dag::{
    Attempt, Dag, FileStoreConfig, ParamDefault, Priority, QueueItem, QueueStore, RunRecord,
    RunStatus, RunStore, Step, StoreError, Stores,
};
use dispatch_enqueue::{
    enqueue_webhook_run, enqueue_webhook_runs, EnqueueError, EnqueueOutcome, WebhookRun,
};

const PARAMS: &str =
    r#"WEBHOOK_PAYLOAD="{\"ref\":\"main\"}" WEBHOOK_HEADERS="{}" GITHUB_REF="refs/heads/main""#;

fn dag(dir: &Path) -> Dag {
    Dag {
        name: "build".into(),
        params: vec![ParamDefault {
            name: Some("GITHUB_REF".into()),
            value: "default".into(),
        }],
        steps: vec![Step {
            command: Some("true".into()),
            ..Step::named("one")
        }],
        max_clean_up_time_sec: 5,
        queue: "builds".into(),
        location: dir.join("build.yaml"),
        ..Default::default()
    }
}

/// A temp dir with real file stores in it and the DAG `build`.
fn home() -> (tempfile::TempDir, Stores, Dag) {
    let tmp = tempfile::tempdir().unwrap();
    let stores = open(tmp.path());
    let dag = dag(tmp.path());
    (tmp, stores, dag)
}

fn open(dir: &Path) -> Stores {
    Stores::open_files(FileStoreConfig {
        dags_dir: dir.join("dags"),
        data_dir: dir.join("data"),
        log_dir: dir.join("logs"),
    })
    .unwrap()
}

fn io_error() -> StoreError {
    StoreError::Io {
        action: "write",
        path: PathBuf::from("/injected"),
        source: std::io::Error::other("injected fault"),
    }
}

/// Where the injected fault strikes: before delegating (nothing written) or after (written,
/// yet reported as failed, like an fsync error after the rename).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum When {
    Before,
    After,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fault {
    method: &'static str,
    nth: usize,
    when: When,
}

impl Fault {
    /// Fails the first call of `method`.
    fn first(method: &'static str, when: When) -> Option<Fault> {
        Some(Fault {
            method,
            nth: 1,
            when,
        })
    }
}

/// Counts the calls of the faulty method and fails the nth one.
struct Injector {
    fault: Option<Fault>,
    calls: AtomicUsize,
}

impl Injector {
    fn new(fault: Option<Fault>) -> Injector {
        Injector {
            fault,
            calls: AtomicUsize::new(0),
        }
    }

    /// Runs `op`, failing per the fault when `method` is the faulty one and this is its nth call.
    fn call<T>(
        &self,
        method: &str,
        op: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let Some(fault) = self.fault.filter(|f| f.method == method) else {
            return op();
        };
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if n != fault.nth {
            return op();
        }
        if fault.when == When::After {
            op()?;
        }
        Err(io_error())
    }
}

struct FaultyRuns {
    inner: Arc<dyn RunStore>,
    injector: Injector,
    fail_remove: bool,
}

impl FaultyRuns {
    fn call<T>(
        &self,
        method: &str,
        op: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.injector.call(method, op)
    }
}

impl RunStore for FaultyRuns {
    fn find_attempt(&self, dag_name: &str, run_id: &str) -> Result<Attempt, StoreError> {
        self.call("find_attempt", || self.inner.find_attempt(dag_name, run_id))
    }
    fn create_attempt(&self, dag: &Dag, record: &RunRecord) -> Result<Attempt, StoreError> {
        self.call("create_attempt", || self.inner.create_attempt(dag, record))
    }
    fn write_status(&self, record: &RunRecord) -> Result<(), StoreError> {
        self.call("write_status", || self.inner.write_status(record))
    }
    fn remove_run(&self, dag_name: &str, run_id: &str) -> Result<(), StoreError> {
        if self.fail_remove {
            return Err(io_error());
        }
        self.call("remove_run", || self.inner.remove_run(dag_name, run_id))
    }
    fn list_attempts(&self) -> Result<Vec<Attempt>, StoreError> {
        self.inner.list_attempts()
    }
}

struct FaultyQueue {
    inner: Arc<dyn QueueStore>,
    injector: Injector,
}

impl QueueStore for FaultyQueue {
    fn enqueue(&self, queue: &str, priority: Priority, item: &QueueItem) -> Result<(), StoreError> {
        self.injector
            .call("enqueue", || self.inner.enqueue(queue, priority, item))
    }
    fn dequeue(&self, queue: &str) -> Result<Option<QueueItem>, StoreError> {
        self.inner.dequeue(queue)
    }
    fn remove(&self, queue: &str, item: &QueueItem) -> Result<bool, StoreError> {
        self.inner.remove(queue, item)
    }
    fn list(&self, queue: &str) -> Result<Vec<QueueItem>, StoreError> {
        self.inner.list(queue)
    }
    fn queues(&self) -> Result<Vec<String>, StoreError> {
        self.inner.queues()
    }
}

fn faulty(real: &Stores, fault: Option<Fault>, fail_remove: bool) -> Stores {
    Stores {
        runs: Arc::new(FaultyRuns {
            inner: real.runs.clone(),
            injector: Injector::new(fault),
            fail_remove,
        }),
        queue: Arc::new(FaultyQueue {
            inner: real.queue.clone(),
            injector: Injector::new(fault),
        }),
        ..real.clone()
    }
}

/// A home whose stores fail as `fault` says (and at removing a run when `fail_remove`), with the
/// error of enqueueing `run-1` through them.
struct Failed {
    _tmp: tempfile::TempDir,
    real: Stores,
    faulty: Stores,
    dag: Dag,
    err: EnqueueError,
}

fn enqueue_failing(fault: Option<Fault>, fail_remove: bool) -> Failed {
    let (_tmp, real, dag) = home();
    let faulty = faulty(&real, fault, fail_remove);
    let err = enqueue_webhook_run(&faulty, &dag, "run-1", PARAMS, 1).unwrap_err();
    Failed {
        _tmp,
        real,
        faulty,
        dag,
        err,
    }
}

fn assert_nothing_left(stores: &Stores) {
    let err = stores.runs.find_attempt("build", "run-1").unwrap_err();
    assert!(err.is_not_found(), "run left behind: {err}");
    assert!(stores.runs.list_attempts().unwrap().is_empty());
    assert!(stores.queue.list("builds").unwrap().is_empty());
}

#[tokio::test]
async fn happy_path_creates_a_queued_run_and_wakes_the_executor() {
    let (tmp, stores, dag) = home();
    let outcome = enqueue_webhook_run(&stores, &dag, "run-1", PARAMS, 1_700_000_000_123).unwrap();
    assert_eq!(outcome, EnqueueOutcome::Enqueued);

    let attempt = stores.runs.find_attempt("build", "run-1").unwrap();
    let rec = &attempt.record;
    assert_eq!(rec.status, RunStatus::Queued);
    assert_eq!(rec.trigger, "webhook");
    assert_eq!(rec.params, PARAMS);
    assert_eq!(rec.queued_at, Some(1_700_000_000_123));
    assert_eq!(
        rec.log_file,
        tmp.path()
            .join("logs/build/run-1")
            .join(&rec.attempt_id)
            .join("run.log")
    );
    // The snapshot carries the merged params: the runtime value overrides the default.
    let resolved = &attempt.dag.resolved_params;
    assert!(
        resolved.contains(&("GITHUB_REF".into(), "refs/heads/main".into())),
        "{resolved:?}"
    );
    assert!(resolved.contains(&("WEBHOOK_PAYLOAD".into(), r#"{"ref":"main"}"#.into())));
    assert_eq!(
        stores.queue.list("builds").unwrap(),
        vec![QueueItem {
            dag_name: "build".into(),
            run_id: "run-1".into()
        }]
    );
    // The wake-up permit is stored for the executor.
    tokio::time::timeout(Duration::from_secs(5), stores.enqueued.notified())
        .await
        .expect("enqueue must notify the executor");
}

#[test]
fn second_enqueue_of_the_same_run_is_a_no_op() {
    let (_tmp, stores, dag) = home();
    assert_eq!(
        enqueue_webhook_run(&stores, &dag, "run-1", PARAMS, 1).unwrap(),
        EnqueueOutcome::Enqueued
    );
    let first = stores.runs.find_attempt("build", "run-1").unwrap();
    // Different params and a different DAG: still nothing changes.
    let mut edited = dag.clone();
    edited.steps[0].command = Some("false".into());
    assert_eq!(
        enqueue_webhook_run(&stores, &edited, "run-1", "OTHER=1", 2).unwrap(),
        EnqueueOutcome::AlreadyExists
    );
    assert_eq!(stores.runs.list_attempts().unwrap().len(), 1);
    assert_eq!(stores.queue.list("builds").unwrap().len(), 1);
    assert_eq!(stores.runs.find_attempt("build", "run-1").unwrap(), first);
}

#[test]
fn a_fault_at_any_step_leaves_nothing_behind_and_a_retry_succeeds() {
    let faults = [
        ("create_attempt", When::Before),
        ("create_attempt", When::After),
        ("enqueue", When::Before),
        ("enqueue", When::After),
    ];
    for (method, when) in faults {
        let fault = Fault::first(method, when);
        let Failed {
            real,
            faulty: stores,
            dag,
            err,
            ..
        } = enqueue_failing(fault, false);
        let EnqueueError::Store(failure) = &err else {
            panic!("{fault:?}: unexpected error {err:?}");
        };
        let expected = if method == "enqueue" {
            "enqueue for"
        } else {
            "create the attempt for"
        };
        assert_eq!(failure.action, expected, "{fault:?}");
        assert_eq!(
            err.to_string(),
            format!("failed to {expected} run `build/run-1`"),
            "{fault:?}"
        );
        assert_nothing_left(&real);

        // The same wrapper fails only its first call: the retry goes through.
        assert_eq!(
            enqueue_webhook_run(&stores, &dag, "run-1", PARAMS, 2).unwrap(),
            EnqueueOutcome::Enqueued,
            "{fault:?}"
        );
        assert_eq!(
            real.runs
                .find_attempt("build", "run-1")
                .unwrap()
                .record
                .status,
            RunStatus::Queued
        );
        assert_eq!(real.queue.list("builds").unwrap().len(), 1, "{fault:?}");
    }
}

#[test]
fn a_failed_rollback_is_reported() {
    let err = enqueue_failing(Fault::first("enqueue", When::Before), true).err;
    assert!(
        matches!(err, EnqueueError::RollbackFailed { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("failed to enqueue for run `build/run-1`, and the rollback failed too: "),
        "{err}"
    );
    assert!(err.to_string().contains("removing the run"), "{err}");
}

#[test]
fn invalid_params_are_a_clear_error_and_create_nothing() {
    let (_tmp, stores, dag) = home();
    let err = enqueue_webhook_run(
        &stores,
        &dag,
        "run-1",
        r#"WEBHOOK_PAYLOAD="{unterminated"#,
        1,
    )
    .unwrap_err();
    assert!(matches!(err, EnqueueError::InvalidParams { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "invalid runtime params for run `build/run-1`"
    );
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(source.contains("unterminated"), "{source}");
    assert_nothing_left(&stores);
}

#[test]
fn lookup_errors_other_than_not_found_are_errors() {
    let Failed { real, dag, err, .. } =
        enqueue_failing(Fault::first("find_attempt", When::Before), false);
    assert!(matches!(err, EnqueueError::Lookup { .. }), "{err:?}");
    assert_nothing_left(&real);

    // A run id that could escape the store directory is refused before anything is written.
    let err = enqueue_webhook_run(&real, &dag, "../evil", PARAMS, 1).unwrap_err();
    let EnqueueError::Lookup { source, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(
        matches!(source, StoreError::InvalidName { .. }),
        "{source:?}"
    );
    assert!(real.runs.list_attempts().unwrap().is_empty());
}

#[test]
fn a_burst_gives_each_run_the_outcome_it_would_have_alone() {
    let (_tmp, real, dag) = home();
    enqueue_webhook_run(&real, &dag, "old", PARAMS, 1).unwrap();
    // The second new run's queue item fails: that run alone is rolled back.
    let stores = faulty(
        &real,
        Some(Fault {
            method: "enqueue",
            nth: 2,
            when: When::After,
        }),
        false,
    );
    let run = |run_id, params| WebhookRun {
        dag: &dag,
        run_id,
        params,
    };
    let outcomes = enqueue_webhook_runs(
        &stores,
        &[
            run("a", PARAMS),
            run("old", PARAMS),
            run("b", PARAMS),
            run("bad", "X=\"unterminated"),
            run("c", PARAMS),
        ],
        5,
    );
    assert_eq!(outcomes.len(), 5);
    assert_eq!(*outcomes[0].as_ref().unwrap(), EnqueueOutcome::Enqueued);
    assert_eq!(
        *outcomes[1].as_ref().unwrap(),
        EnqueueOutcome::AlreadyExists
    );
    assert!(
        matches!(&outcomes[2], Err(EnqueueError::Store(failure)) if failure.action == "enqueue for" && failure.run_id == "b"),
        "{:?}",
        outcomes[2]
    );
    assert!(
        matches!(&outcomes[3], Err(EnqueueError::InvalidParams { .. })),
        "{:?}",
        outcomes[3]
    );
    assert_eq!(*outcomes[4].as_ref().unwrap(), EnqueueOutcome::Enqueued);
    let mut queued: Vec<String> = real
        .queue
        .list("builds")
        .unwrap()
        .into_iter()
        .map(|item| item.run_id)
        .collect();
    queued.sort();
    assert_eq!(queued, ["a", "c", "old"]);
    assert!(real
        .runs
        .find_attempt("build", "b")
        .unwrap_err()
        .is_not_found());
    assert!(real
        .runs
        .find_attempt("build", "bad")
        .unwrap_err()
        .is_not_found());
    assert_eq!(
        real.runs
            .find_attempt("build", "c")
            .unwrap()
            .record
            .queued_at,
        Some(5)
    );
    assert!(enqueue_webhook_runs(&real, &[], 6).is_empty());
}
