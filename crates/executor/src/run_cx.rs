//! What the parts of one run share: its stop controls, its log, the facts and prepared values
//! every step reads, and the way a sub-DAG call starts a child run (handed in by `run`, so that
//! `subdag` does not import the module that imports it).

use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use dispatch_dag::{Attempt, Dag, RunRecord, Stores};
use dispatch_util::now_ms;
use tokio_util::sync::CancellationToken;

use crate::context::RunFacts;
use crate::mask::Secrets;

/// Why a run was cancelled; the first reason wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopReason {
    /// `ExecutorHandle::stop`.
    Stopped,
    /// The DAG's `timeout_sec` elapsed.
    DagTimeout(u64),
    /// `ExecutorHandle::shutdown` ran out of grace.
    Shutdown,
}

impl StopReason {
    pub(crate) fn message(self) -> String {
        match self {
            StopReason::Stopped => "run stopped".to_owned(),
            StopReason::DagTimeout(secs) => format!("run timed out after {secs}s"),
            StopReason::Shutdown => "run stopped by scheduler shutdown".to_owned(),
        }
    }
}

/// The stop controls of one active run, shared with the executor handle (and, for a sub-DAG
/// run, linked to its parent's).
#[derive(Debug, Default)]
pub(crate) struct RunControl {
    /// Stops the run's steps (SIGTERM, SIGKILL after the clean-up time); handlers still run.
    pub stop: CancellationToken,
    /// Also stops the handlers (shutdown cannot wait for them).
    pub hard_stop: CancellationToken,
    reason: Mutex<Option<StopReason>>,
    /// The run that started this one by a sub-DAG call: its stop stops this run too.
    parent: Option<Arc<RunControl>>,
}

impl RunControl {
    /// Controls of a child run started by a step of `parent`; `step_stop` is what stops that
    /// step (the run's stop, or its hard stop for a handler).
    pub(crate) fn child_of(parent: &Arc<RunControl>, step_stop: &CancellationToken) -> RunControl {
        RunControl {
            stop: step_stop.child_token(),
            hard_stop: parent.hard_stop.child_token(),
            reason: Mutex::new(None),
            parent: Some(parent.clone()),
        }
    }

    /// Cancels the run's steps, remembering the first reason.
    pub fn cancel(&self, reason: StopReason) {
        if let Ok(mut slot) = self.reason.lock() {
            slot.get_or_insert(reason);
        }
        self.stop.cancel();
    }

    /// Why the run was stopped: its own reason, else (when its stop came from the parent) the
    /// parent's.
    pub(crate) fn reason(&self) -> Option<StopReason> {
        let own = self.reason.lock().ok().and_then(|slot| *slot);
        own.or_else(|| {
            self.stop
                .is_cancelled()
                .then(|| self.parent.as_ref().and_then(|p| p.reason()))
                .flatten()
                .or_else(|| self.stop.is_cancelled().then_some(StopReason::Stopped))
        })
    }
}

/// Human-readable run log next to the step output files; best effort.
pub(crate) struct RunLog(Mutex<Option<std::fs::File>>);

impl RunLog {
    pub(crate) fn open(path: &Path) -> RunLog {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(
                |e| tracing::warn!(path = %path.display(), error = %e, "failed to open run log"),
            )
            .ok();
        RunLog(Mutex::new(file))
    }

    pub(crate) fn line(&self, text: &str) {
        if let Ok(mut file) = self.0.lock() {
            if let Some(file) = file.as_mut() {
                let _ = writeln!(file, "{} {text}", now_ms());
            }
        }
    }
}

/// Where a run sits among sub-DAG calls.
#[derive(Debug, Clone, Default)]
pub(crate) struct Lineage {
    /// DAG name and run id of the top-level run (none for a top-level run).
    pub(crate) root: Option<(String, String)>,
    /// Sub-DAG nesting depth (0 for a top-level run).
    pub(crate) depth: u32,
    /// The `---` documents of the top-level DAG's file, callable by name.
    pub(crate) local_dags: Arc<Vec<Dag>>,
    /// The secret values of the runs above this one (a parent may pass one as a param): masked
    /// here too.
    pub(crate) secrets: Vec<String>,
    /// Who started the top-level run (`${trigger.actor}`), when known.
    pub(crate) actor: Option<String>,
}

/// A boxed future of a run's final record.
pub(crate) type RunFuture = Pin<Box<dyn Future<Output = RunRecord> + Send>>;

/// Runs an attempt to its final status (`run::execute_run`).
pub(crate) type ChildRunner = fn(Stores, Attempt, Arc<RunControl>, Lineage) -> RunFuture;

/// What every step of a run reads.
pub(crate) struct RunCx {
    pub(crate) stores: Stores,
    /// The DAG snapshot, with the params after `eval`.
    pub(crate) dag: Dag,
    pub(crate) facts: RunFacts,
    /// The run's own directory: log, step output, scripts.
    pub(crate) dir: PathBuf,
    /// The DAG's working directory.
    pub(crate) work_dir: PathBuf,
    pub(crate) dotenv: Vec<(String, String)>,
    pub(crate) secret_vars: Vec<(String, String)>,
    pub(crate) secrets: Secrets,
    pub(crate) control: Arc<RunControl>,
    pub(crate) log: RunLog,
    /// Largest captured output (`output:`, `DAGU_OUTPUT_FILE`), in bytes.
    pub(crate) max_output: usize,
    pub(crate) lineage: Lineage,
    pub(crate) run_child: ChildRunner,
}

impl RunCx {
    /// Time between SIGTERM and SIGKILL when the run's processes are stopped.
    pub(crate) fn clean_up(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.dag.max_clean_up_time_sec)
    }
}

/// Default of `max_output_size`: 1 MiB, as in Dagu.
pub(crate) const DEFAULT_MAX_OUTPUT: usize = 1024 * 1024;
