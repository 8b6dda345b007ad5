//! `scheduler run <DAG> [--home DIR] [-- PARAMS...]`: one DAG, now, in the foreground, through
//! the same enqueue, executor and stores as a dispatched run.
//!
//! - The DAG is a file (anything with a `/`, a `.yaml`/`.yml` ending, or an existing file) or a
//!   name looked up in `<home>/dags/` (`--home`, else the default home of `scheduler start`).
//! - Steps without their own `working_dir` run in the current directory, as Dagu's `start` runs
//!   a DAG file (a dispatched run uses the DAG file's directory).
//! - The params after `--` become a runtime-param string and go through the webhook runs' merge.
//! - Without `--home` the stores live in a temporary home removed at the end. With it, the run
//!   is recorded in that home, whose tracker lock is taken first so that no scheduler starts on
//!   it meanwhile (its recovery would fail this run) and none is running there now.
//! - The executor sees this run only: the run store is viewed through [`OneRun`] and the queue is
//!   a private one, so a home's queued webhook runs stay for its scheduler.
//! - Each step's stdout (to stdout) and stderr (to stderr) is printed as it is written, each line
//!   prefixed with `[step]`; then the steps' outcome and the run's status.
//! - Exit 0 for `succeeded` and `partially_succeeded` (Dagu's runner exits 0 on partial
//!   success: a failure the DAG allowed with `continue_on` does not fail the run), 1 otherwise.
//! - SIGINT/SIGTERM stop the run as a cancel does (steps get SIGTERM, then SIGKILL after
//!   `max_clean_up_time_sec`; the abort and exit handlers run; the run ends `aborted`). A second
//!   one kills every step process group at once and exits 1; with `--home` the record stays
//!   `running` until the next `scheduler start` marks it failed, as after a crash.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dispatch_dag::{
    load_dag_file_with, Attempt, Dag, DagStore as _, FileDagStore, FileQueueStore, LoadOptions,
    RunRecord, RunStatus, RunStore, StoreError, Stores,
};
use dispatch_enqueue::enqueue_webhook_run;
use dispatch_executor::{Executor, ExecutorConfig, ExecutorHandle};
use dispatch_tracker::TrackerError;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::cli::{RunArgs, StartArgs};
use crate::config::Settings;
use crate::error::AppError;
use crate::follow::{Follower, Stream};
use crate::run_error::RunError;

/// How often the run record and the step output files are looked at.
const TICK: Duration = Duration::from_millis(100);
/// The trigger recorded for a run started by hand (Dagu's word for it).
const TRIGGER: &str = "manual";

/// Where `scheduler run` finds what the environment says (read by `main`).
pub(crate) struct Env<'a> {
    /// `$HOME`.
    pub(crate) user_home: Option<&'a Path>,
    /// `$DISPATCH_HOME`.
    pub(crate) dispatch_home: Option<PathBuf>,
}

/// Runs the DAG of `args` to its end; see the module docs.
pub(crate) async fn run(args: RunArgs, env: Env<'_>) -> Result<(), AppError> {
    // Taken over first, so that an interrupt during set-up stops the run once it exists
    // instead of killing this process with its temporary home still on disk.
    let signals = Interrupts::install()?;
    let cwd = std::env::current_dir()
        .map_err(|err| AppError::component("read the current directory", err))?;
    // Settings are read only when they matter, so that a broken config file in the default
    // home does not stop `scheduler run ./file.yaml`.
    let settings = |home: Option<PathBuf>| {
        Settings::resolve(
            StartArgs {
                home,
                ..StartArgs::default()
            },
            env.user_home,
        )
    };
    let file = if is_file_arg(&args.dag) {
        cwd.join(&args.dag)
    } else {
        let home = args.home.clone().or(env.dispatch_home.clone());
        find_dag(&args.dag, &settings(home)?.dags_dir)?
    };
    let options = LoadOptions {
        base_dir: Some(cwd.clone()),
    };
    let mut dag = load_dag_file_with(&file, &options).map_err(RunError::Load)?;
    run_from(&mut dag);
    let params = param_string(&args.params);

    let run_id = uuid::Uuid::now_v7().to_string();
    let mut home = match &args.home {
        Some(home) => RunHome::keep_in(&settings(Some(home.clone()))?)?,
        None => RunHome::temporary()?,
    };
    let stores = home.stores_for(&dag.name, &run_id)?;

    enqueue_webhook_run(&stores, &dag, &run_id, &params, dispatch_util::now_ms())
        .map_err(RunError::Enqueue)?;
    mark_manual(&stores, &dag.name, &run_id)?;

    let consumer = CancellationToken::new();
    let executor = Executor::start(
        ExecutorConfig {
            max_concurrent_runs: 1,
            ..ExecutorConfig::default()
        },
        stores.clone(),
        consumer.clone(),
    )
    .map_err(|err| AppError::component("start the executor", err))?;
    say!("run `{}` {run_id}", dag.name);
    let temp_paths: Vec<PathBuf> = home.temp.iter().map(|t| t.path().to_owned()).collect();
    let record = follow(
        &stores,
        &executor,
        signals,
        (&dag.name, &run_id),
        &temp_paths,
    )
    .await?;
    consumer.cancel();
    executor.shutdown(Duration::from_secs(1)).await;

    print_summary(&record);
    if args.home.is_some() {
        say!("logs: {}", run_log_dir(&record).display());
    }
    match record.status {
        RunStatus::Succeeded | RunStatus::PartiallySucceeded => Ok(()),
        status => Err(RunError::Unsuccessful {
            dag: record.dag_name,
            run_id: record.run_id,
            status,
            error: record.error,
        }
        .into()),
    }
}

/// Where a run by hand keeps its record, logs and queue, for as long as it runs.
struct RunHome {
    stores: Stores,
    /// With `--home`: the home's tracker, held so that its lock keeps schedulers off the home.
    _lock: Option<dispatch_tracker::Tracker>,
    /// Removed when dropped: the temporary home (without `--home`) and the run's own queue.
    temp: Vec<tempfile::TempDir>,
}

impl RunHome {
    /// The home of `settings`, as `scheduler start` opens it.
    fn keep_in(settings: &Settings) -> Result<RunHome, AppError> {
        let (tracker, stores) = crate::app::open_home(settings).map_err(|err| match err {
            AppError::Component { action, source }
                if matches!(
                    source.downcast_ref::<TrackerError>(),
                    Some(TrackerError::InUse { .. })
                ) =>
            {
                AppError::Component {
                    action: format!(
                        "{action} (is a scheduler running on this home? run without --home)"
                    ),
                    source,
                }
            }
            other => other,
        })?;
        Ok(RunHome {
            stores,
            _lock: Some(tracker),
            temp: Vec::new(),
        })
    }

    /// A temporary home.
    fn temporary() -> Result<RunHome, AppError> {
        let temp = temp_dir("dispatch-run-")?;
        let stores = Stores::open_files(dispatch_dag::FileStoreConfig {
            dags_dir: temp.path().join("dags"),
            data_dir: temp.path().join("data"),
            log_dir: temp.path().join("logs"),
        })
        .map_err(|err| AppError::component("open the run stores", err))?;
        Ok(RunHome {
            stores,
            _lock: None,
            temp: vec![temp],
        })
    }

    /// The stores the run goes through: the home's, with its run store seen through [`OneRun`]
    /// and a queue of its own.
    fn stores_for(&mut self, dag_name: &str, run_id: &str) -> Result<Stores, AppError> {
        let scratch = temp_dir("dispatch-run-queue-")?;
        let queue = FileQueueStore::open(scratch.path())
            .map_err(|err| AppError::component("open the run's queue", err))?;
        self.temp.push(scratch);
        Ok(Stores {
            runs: Arc::new(OneRun {
                runs: self.stores.runs.clone(),
                dag_name: dag_name.to_owned(),
                run_id: run_id.to_owned(),
            }),
            queue: Arc::new(queue),
            enqueued: Arc::new(tokio::sync::Notify::new()),
            ..self.stores.clone()
        })
    }
}

/// Anything with a path separator or a YAML ending, or an existing file, is a file; the rest
/// is a DAG name.
fn is_file_arg(arg: &str) -> bool {
    arg.contains(std::path::MAIN_SEPARATOR)
        || arg.ends_with(".yaml")
        || arg.ends_with(".yml")
        || Path::new(arg).is_file()
}

/// The file of the DAG named `name` in `dags_dir` (also when it does not load: the run reloads
/// it to report every error).
fn find_dag(name: &str, dags_dir: &Path) -> Result<PathBuf, RunError> {
    match FileDagStore::new(dags_dir).load(name) {
        Ok(dag) => Ok(dag.location),
        Err(StoreError::Dag(err)) => Ok(err.path),
        Err(StoreError::NotFound { .. }) => Err(RunError::NotFound {
            name: name.to_owned(),
            dir: dags_dir.to_owned(),
        }),
        Err(source) => Err(RunError::Lookup {
            name: name.to_owned(),
            dir: dags_dir.to_owned(),
            source,
        }),
    }
}

/// Steps and handlers without their own `working_dir` get the DAG's, which the loader set to
/// the current directory (its base) unless the file names one. Said on each step, the choice
/// holds for any executor, including one that reads only the step's directory.
fn run_from(dag: &mut Dag) {
    let Some(dir) = dag.working_dir.clone().filter(|d| d.is_absolute()) else {
        return;
    };
    let handlers = &mut dag.handler_on;
    let steps = dag.steps.iter_mut().chain(
        [
            &mut handlers.success,
            &mut handlers.failure,
            &mut handlers.abort,
            &mut handlers.exit,
        ]
        .into_iter()
        .flatten(),
    );
    for step in steps {
        step.working_dir.get_or_insert_with(|| dir.clone());
    }
}

/// The runtime-param string of the values after `--`: `NAME=value` with a param name before
/// the `=` is named, anything else positional. Values are quoted as a webhook's are, so the
/// string parses back to exactly these params and the run records it like any other.
fn param_string(args: &[String]) -> String {
    args.iter()
        .map(|arg| match arg.split_once('=') {
            Some((name, value)) if is_param_name(name) => {
                format!("{name}={}", dispatch_webhook_params::quote(value))
            }
            _ => dispatch_webhook_params::quote(arg),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn is_param_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Records the run's trigger as `manual` (the enqueue writes `webhook`) while it is still
/// queued, before any executor sees it.
fn mark_manual(stores: &Stores, dag_name: &str, run_id: &str) -> Result<(), AppError> {
    let action = || format!("record run `{dag_name}/{run_id}` as started by hand");
    let mut record = stores
        .runs
        .find_attempt(dag_name, run_id)
        .map_err(|err| AppError::component(action(), err))?
        .record;
    record.trigger = TRIGGER.to_owned();
    stores
        .runs
        .write_status(&record)
        .map_err(|err| AppError::component(action(), err))
}

/// SIGINT and SIGTERM, taken over from their default (which ends the process at once).
struct Interrupts {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Interrupts {
    fn install() -> Result<Interrupts, AppError> {
        let err = |err| AppError::component("install signal handlers", err);
        Ok(Interrupts {
            int: signal(SignalKind::interrupt()).map_err(err)?,
            term: signal(SignalKind::terminate()).map_err(err)?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

/// Prints the steps' output as it comes until the run's status is final; handles the signals.
async fn follow(
    stores: &Stores,
    executor: &ExecutorHandle,
    mut signals: Interrupts,
    (dag_name, run_id): (&str, &str),
    temp_paths: &[PathBuf],
) -> Result<RunRecord, AppError> {
    let mut finished = executor.subscribe();
    let mut tick = tokio::time::interval(TICK);
    let mut follower = Follower::default();
    let mut stopping = false;
    loop {
        let interrupted = tokio::select! {
            () = signals.recv() => true,
            _ = finished.recv() => false,
            _ = tick.tick() => false,
        };
        if interrupted && stopping {
            eprintln!("second interrupt: killing the steps now");
            kill_step_groups();
            for path in temp_paths {
                let _ = std::fs::remove_dir_all(path);
            }
            std::process::exit(1);
        }
        if interrupted {
            stopping = true;
            eprintln!("stopping the run (interrupt again to kill the steps at once)");
            if let Err(err) = executor.stop(dag_name, run_id) {
                tracing::warn!(error = %dispatch_util::error_chain(&err), "failed to stop the run");
            }
        }
        let attempt = match stores.runs.find_attempt(dag_name, run_id) {
            Ok(attempt) => attempt,
            Err(err) => {
                tracing::debug!(error = %err, "run record not readable yet");
                continue;
            }
        };
        let done = attempt.record.status.is_final();
        let steps = dispatch_dag::steps_with_sub_runs(&*stores.runs, &attempt.record.steps);
        let lines = if done {
            follower.finish(&steps)
        } else {
            follower.poll(&steps)
        };
        for line in lines {
            match line.stream {
                Stream::Stdout => say!("[{}] {}", line.step, line.text),
                Stream::Stderr => eprintln!("[{}] {}", line.step, line.text),
            }
        }
        if done {
            return Ok(attempt.record);
        }
    }
}

fn print_summary(record: &RunRecord) {
    let width = record.steps.iter().map(|s| s.name.len()).max().unwrap_or(0);
    say!();
    for step in &record.steps {
        let detail = match (&step.error, step.exit_code) {
            (Some(error), _) => format!("  {error}"),
            (None, Some(code)) if code != 0 => format!("  exit {code}"),
            _ => String::new(),
        };
        say!(
            "  {:width$}  {:<9}{detail}",
            step.name,
            step.status.as_str()
        );
    }
    say!(
        "run `{}` {}: {}",
        record.dag_name,
        record.run_id,
        record.status
    );
}

/// The directory holding the run's log and step files.
fn run_log_dir(record: &RunRecord) -> PathBuf {
    record
        .log_file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn temp_dir(prefix: &str) -> Result<tempfile::TempDir, AppError> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|err| AppError::component("create a temporary directory", err))
}

/// The home's run store as one run by hand sees it: reads and writes go through, but listings
/// show this run only. The executor lists runs at start to repair them (re-enqueueing `queued`
/// runs missing from their queue, failing `running` ones), and the other runs of a home are its
/// scheduler's business.
struct OneRun {
    runs: Arc<dyn RunStore>,
    dag_name: String,
    run_id: String,
}

impl RunStore for OneRun {
    fn find_attempt(&self, dag_name: &str, run_id: &str) -> Result<Attempt, StoreError> {
        self.runs.find_attempt(dag_name, run_id)
    }

    fn create_attempt(&self, dag: &Dag, record: &RunRecord) -> Result<Attempt, StoreError> {
        self.runs.create_attempt(dag, record)
    }

    fn write_status(&self, record: &RunRecord) -> Result<(), StoreError> {
        self.runs.write_status(record)
    }

    fn remove_run(&self, dag_name: &str, run_id: &str) -> Result<(), StoreError> {
        self.runs.remove_run(dag_name, run_id)
    }

    fn list_attempts(&self) -> Result<Vec<Attempt>, StoreError> {
        match self.runs.find_attempt(&self.dag_name, &self.run_id) {
            Ok(attempt) => Ok(vec![attempt]),
            Err(err) if err.is_not_found() => Ok(Vec::new()),
            Err(err) => Err(err),
        }
    }
}

/// SIGKILL to the process group of every child of this process. In `scheduler run` the only
/// children are step processes, each the leader of its own group, so this ends every process a
/// step started, now, without waiting for the clean-up time.
fn kill_step_groups() {
    kill_groups(&children());
}

fn kill_groups(leaders: &[i32]) {
    use nix::sys::signal::{kill, killpg, Signal};
    use nix::unistd::Pid;
    for &leader in leaders {
        let pid = Pid::from_raw(leader);
        let _ = killpg(pid, Signal::SIGKILL);
        // Also the process itself, in case it left its group.
        let _ = kill(pid, Signal::SIGKILL);
    }
}

/// Pids whose parent is this process (Linux: read from `/proc`; elsewhere none).
fn children() -> Vec<i32> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // `pid (comm) state ppid …`: comm may hold spaces and parentheses.
            let after_comm = &stat[stat.rfind(')')? + 1..];
            let ppid: u32 = after_comm.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == me).then_some(pid)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use dispatch_webhook_params::{parse_runtime_params, Param};

    use super::*;

    #[test]
    fn params_after_the_separator_parse_back_as_given() {
        let args: Vec<String> = [
            "ENV=prod",
            "MSG=two words \"quoted\" and a\nnewline",
            "EMPTY=",
            "positional value",
            "9LIVES=cat",
            "=x",
            "A=b=c",
        ]
        .map(str::to_owned)
        .to_vec();
        let parsed = parse_runtime_params(&param_string(&args)).unwrap();
        assert_eq!(
            parsed,
            vec![
                Param::named("ENV", "prod"),
                Param::named("MSG", "two words \"quoted\" and a\nnewline"),
                Param::named("EMPTY", ""),
                Param::positional("positional value"),
                Param::positional("9LIVES=cat"),
                Param::positional("=x"),
                Param::named("A", "b=c"),
            ]
        );
        assert_eq!(param_string(&[]), "");
    }

    #[test]
    fn files_and_names() {
        for file in ["./build.yaml", "dags/build", "build.yaml", "x.yml"] {
            assert!(is_file_arg(file), "{file}");
        }
        assert!(!is_file_arg("build"));
        let dir = tempfile::tempdir().unwrap();
        let text = "steps:\n  - name: a\n    command: 'true'\n";
        std::fs::write(dir.path().join("build.yaml"), text).unwrap();
        std::fs::write(dir.path().join("other.yml"), format!("name: named\n{text}")).unwrap();
        assert_eq!(
            find_dag("build", dir.path()).unwrap(),
            dir.path().join("build.yaml")
        );
        assert_eq!(
            find_dag("named", dir.path()).unwrap(),
            dir.path().join("other.yml")
        );
        let err = find_dag("nope", dir.path()).unwrap_err();
        assert!(matches!(err, RunError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("nope"), "{err}");
        // A broken file is found all the same: loading it reports its errors.
        std::fs::write(dir.path().join("bad.yaml"), "steps: 3\n").unwrap();
        assert_eq!(
            find_dag("bad", dir.path()).unwrap(),
            dir.path().join("bad.yaml")
        );
    }

    #[test]
    fn steps_run_in_the_current_directory_unless_the_dag_says_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("d.yaml");
        let steps = "steps:\n  - name: a\n    command: 'true'\n  - name: b\n    command: 'true'\n    working_dir: /srv\n  - name: c\n    command: 'true'\n    working_dir: sub\nhandler_on:\n  exit:\n    command: 'true'\n";
        std::fs::write(&file, steps).unwrap();
        let here = LoadOptions {
            base_dir: Some(PathBuf::from("/here")),
        };
        let mut dag = load_dag_file_with(&file, &here).unwrap();
        run_from(&mut dag);
        let dirs: Vec<_> = dag.steps.iter().map(|s| s.working_dir.clone()).collect();
        assert_eq!(
            dirs,
            [
                Some("/here".into()),
                Some("/srv".into()),
                Some("/here/sub".into())
            ]
        );
        let exit = dag.handler_on.exit.as_ref().unwrap();
        assert_eq!(exit.working_dir.as_deref(), Some(Path::new("/here")));

        // The DAG's own `working_dir` is taken from the current directory too, and wins.
        std::fs::write(&file, format!("working_dir: build\n{steps}")).unwrap();
        let mut dag = load_dag_file_with(&file, &here).unwrap();
        run_from(&mut dag);
        assert_eq!(
            dag.steps[0].working_dir.as_deref(),
            Some(Path::new("/here/build"))
        );
    }

    #[test]
    fn one_run_lists_only_its_run() {
        let dir = tempfile::tempdir().unwrap();
        let stores = Stores::open_files(dispatch_dag::FileStoreConfig {
            dags_dir: dir.path().join("dags"),
            data_dir: dir.path().join("data"),
            log_dir: dir.path().join("logs"),
        })
        .unwrap();
        std::fs::write(
            dir.path().join("dags/d.yaml"),
            "steps:\n  - name: a\n    command: 'true'\n",
        )
        .unwrap();
        let dag = stores.dags.load("d").unwrap();
        for run_id in ["mine", "webhook-1"] {
            enqueue_webhook_run(&stores, &dag, run_id, "", 1).unwrap();
        }
        let view = OneRun {
            runs: stores.runs.clone(),
            dag_name: "d".into(),
            run_id: "mine".into(),
        };
        let listed: Vec<String> = view
            .list_attempts()
            .unwrap()
            .into_iter()
            .map(|a| a.record.run_id)
            .collect();
        assert_eq!(listed, ["mine"]);
        assert!(view.find_attempt("d", "webhook-1").is_ok());
        assert_eq!(stores.runs.list_attempts().unwrap().len(), 2);
    }

    #[test]
    fn children_are_found_and_their_groups_killed() {
        use std::io::BufRead as _;
        use std::os::unix::process::CommandExt as _;
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & echo $!; wait"])
            .stdout(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let background: u32 = line.trim().parse().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        assert!(children().contains(&pid));
        // Only this child: the test process may have others (other tests' processes).
        kill_groups(&[pid]);
        assert!(!child.wait().unwrap().success());
        // The background `sleep` was in the same group: it is gone or a zombie waiting for
        // init, never still sleeping.
        let stat = format!("/proc/{background}/stat");
        for _ in 0..200 {
            match std::fs::read_to_string(&stat) {
                Err(_) => return,
                Ok(text)
                    if text[text.rfind(')').unwrap() + 1..]
                        .trim_start()
                        .starts_with('Z') =>
                {
                    return
                }
                Ok(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        panic!("the step's background process survived");
    }
}
