//! One run, start to final status: step ordering, step records, handlers, DAG timeout.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use dispatch_dag::{
    final_status, handlers_for, Attempt, Dag, DagType, RunRecord, RunStatus, Step, StepRecord,
    StepStatus, Stores,
};
use dispatch_util::now_ms;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::env::{build_env, EnvContext};
use crate::process::{exit_code, run_process, ProcessEnd, ProcessSpec, TIMEOUT_EXIT_CODE};

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
    fn message(self) -> String {
        match self {
            StopReason::Stopped => "run stopped".to_owned(),
            StopReason::DagTimeout(secs) => format!("run timed out after {secs}s"),
            StopReason::Shutdown => "run stopped by scheduler shutdown".to_owned(),
        }
    }
}

/// The stop controls of one active run, shared with the executor handle.
#[derive(Debug, Default)]
pub(crate) struct RunControl {
    /// Stops the run's steps (SIGTERM, SIGKILL after the clean-up time); handlers still run.
    pub stop: CancellationToken,
    /// Also stops the handlers (shutdown cannot wait for them).
    pub hard_stop: CancellationToken,
    reason: Mutex<Option<StopReason>>,
}

impl RunControl {
    /// Cancels the run's steps, remembering the first reason.
    pub fn cancel(&self, reason: StopReason) {
        if let Ok(mut slot) = self.reason.lock() {
            slot.get_or_insert(reason);
        }
        self.stop.cancel();
    }

    fn reason(&self) -> Option<StopReason> {
        self.reason.lock().ok().and_then(|slot| *slot)
    }
}

/// The directory a run's step files go to: next to its log file.
fn run_dir(stores: &Stores, record: &RunRecord) -> PathBuf {
    match record.log_file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => stores
            .log_dir
            .join(&record.dag_name)
            .join(&record.run_id)
            .join(&record.attempt_id),
    }
}

/// Step names may hold any text; file names get a safe stem (the index keeps rewritten names
/// unique).
fn file_stem(index: usize, name: &str) -> String {
    let safe = !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if safe {
        name.to_owned()
    } else {
        let cleaned: String = name
            .chars()
            .take(60)
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        format!("{index}-{cleaned}")
    }
}

/// Durable status write; a failure is logged and the run goes on (the next write carries the
/// same information).
fn write_status(stores: &Stores, record: &RunRecord) -> bool {
    match stores.runs.write_status(record) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(dag = %record.dag_name, run_id = %record.run_id, error = %e, "failed to write run status");
            false
        }
    }
}

/// Human-readable run log next to the step output files; best effort.
struct RunLog(Option<std::fs::File>);

impl RunLog {
    fn open(path: &Path) -> RunLog {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(
                |e| tracing::warn!(path = %path.display(), error = %e, "failed to open run log"),
            )
            .ok();
        RunLog(file)
    }

    fn line(&mut self, text: &str) {
        if let Some(file) = &mut self.0 {
            let _ = writeln!(file, "{} {text}", now_ms());
        }
    }
}

/// Builds the process for `step` (a handler passes its record name as `step.name`).
fn process_spec(
    dag: &Dag,
    step: &Step,
    record: &RunRecord,
    dir: &Path,
    stem: &str,
) -> Result<ProcessSpec, String> {
    let (program, mut args) = match step.shell.as_deref().map(str::trim) {
        None | Some("") => ("sh".to_owned(), vec![OsString::from("-e")]),
        Some(shell) => {
            // A shell with options (`bash -o pipefail`) is split on whitespace.
            let mut words = shell.split_whitespace().map(str::to_owned);
            let program = words.next().unwrap_or_else(|| "sh".to_owned());
            (program, words.map(OsString::from).collect())
        }
    };
    match (&step.script, &step.command) {
        (Some(script), command) => {
            let path = dir.join(format!("{stem}.script"));
            std::fs::write(&path, script)
                .map_err(|e| format!("failed to write script `{}`: {e}", path.display()))?;
            match command {
                None => args.push(path.into_os_string()),
                Some(command) => {
                    // `command` is the interpreter of the script: the file path is its last
                    // argument, passed as `$1`, never spliced into the text.
                    args.push("-c".into());
                    args.push(format!("{command} \"$1\"").into());
                    args.push(program.clone().into());
                    args.push(path.into_os_string());
                }
            }
        }
        (None, Some(command)) => {
            args.push("-c".into());
            args.push(command.into());
        }
        (None, None) => return Err("step has neither `command` nor `script`".to_owned()),
    }
    let dag_dir = dag
        .location
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let working_dir = match &step.working_dir {
        None => dag_dir,
        Some(dir) if dir.is_absolute() => dir.clone(),
        Some(dir) => dag_dir.join(dir),
    };
    let mut extra_files = Vec::new();
    let ctx = EnvContext {
        dag,
        step,
        run_id: &record.run_id,
        log_file: &record.log_file,
    };
    // The step inherits the scheduler's environment; `$VAR` in env values may refer to it.
    let mut env = build_env(&ctx, &|name| std::env::var(name).ok());
    for (name, value) in &mut env {
        if !fits_in_environment(name, value) {
            let path = dir.join(format!("{stem}.{name}"));
            std::fs::write(&path, value.as_bytes())
                .map_err(|e| format!("failed to write `{}`: {e}", path.display()))?;
            tracing::info!(%name, bytes = value.len(), file = %path.display(),
                "value too long for one environment variable; passed as a file");
            *value = String::new();
            extra_files.push((format!("{name}_FILE"), path.display().to_string()));
        }
    }
    env.append(&mut extra_files);
    Ok(ProcessSpec {
        program,
        args,
        working_dir,
        env,
        stdout: dir.join(format!("{stem}.out")),
        stderr: dir.join(format!("{stem}.err")),
        timeout: step.timeout_sec.map(Duration::from_secs),
        clean_up: Duration::from_secs(dag.max_clean_up_time_sec),
    })
}

/// Applies how a process ended to its step record.
fn finish_step(rec: &mut StepRecord, end: ProcessEnd, step: &Step, reason: Option<StopReason>) {
    rec.finished_at = Some(now_ms());
    match end {
        ProcessEnd::Exited(status) => {
            rec.exit_code = exit_code(&status);
            if status.success() {
                rec.status = StepStatus::Succeeded;
            } else {
                rec.status = StepStatus::Failed;
                rec.error = Some(match status.code() {
                    Some(code) => format!("exit status {code}"),
                    None => format!("killed by signal {}", rec.exit_code.unwrap_or(0) - 128),
                });
            }
        }
        ProcessEnd::TimedOut => {
            rec.status = StepStatus::Failed;
            rec.exit_code = Some(TIMEOUT_EXIT_CODE);
            rec.error = Some(format!(
                "step timed out after {}s",
                step.timeout_sec.unwrap_or(0)
            ));
        }
        ProcessEnd::Stopped(status) => {
            rec.status = StepStatus::Aborted;
            rec.exit_code = exit_code(&status);
            rec.error = Some(reason.unwrap_or(StopReason::Stopped).message());
        }
        ProcessEnd::SpawnFailed(message) => {
            rec.status = StepStatus::Failed;
            rec.error = Some(message);
        }
    }
}

/// Indices each step waits for. A chain waits for the previous step even if the loader left
/// `depends` empty.
fn dependencies(dag: &Dag) -> Vec<Vec<usize>> {
    let index: HashMap<&str, usize> = dag
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    dag.steps
        .iter()
        .enumerate()
        .map(|(i, step)| {
            if dag.dag_type == DagType::Chain && step.depends.is_empty() && i > 0 {
                return vec![i - 1];
            }
            step.depends
                .iter()
                .filter_map(|d| {
                    let found = index.get(d.as_str()).copied();
                    if found.is_none() {
                        tracing::warn!(dag = %dag.name, step = %step.name, depends = %d, "ignoring unknown dependency");
                    }
                    found
                })
                .collect()
        })
        .collect()
}

/// Runs the attempt to its final status, writing the record as it goes; returns the final
/// record (also when its last write failed).
pub(crate) async fn execute_run(stores: &Stores, attempt: Attempt, ctl: &RunControl) -> RunRecord {
    let Attempt { dag, mut record } = attempt;
    let dir = run_dir(stores, &record);
    let stems: Vec<String> = dag
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| file_stem(i, &s.name))
        .collect();
    record.status = RunStatus::Running;
    record.pid = Some(std::process::id());
    record.started_at = Some(now_ms());
    record.finished_at = None;
    record.error = None;
    record.steps = dag
        .steps
        .iter()
        .zip(&stems)
        .map(|(step, stem)| StepRecord {
            name: step.name.clone(),
            stdout: dir.join(format!("{stem}.out")),
            stderr: dir.join(format!("{stem}.err")),
            ..StepRecord::default()
        })
        .collect();
    if let Err(e) = std::fs::create_dir_all(&dir) {
        record.error = Some(format!(
            "failed to create run directory `{}`: {e}",
            dir.display()
        ));
        return finish_run(stores, record, RunStatus::Failed).await;
    }
    let mut log = RunLog::open(&record.log_file);
    log.line(&format!(
        "run `{}` of `{}` started",
        record.run_id, dag.name
    ));
    if !run_steps(stores, &dag, &mut record, &dir, &stems, ctl, &mut log).await {
        record.error = Some("failed to record the run as running".to_owned());
        for rec in &mut record.steps {
            *rec = StepRecord {
                name: std::mem::take(&mut rec.name),
                stdout: std::mem::take(&mut rec.stdout),
                stderr: std::mem::take(&mut rec.stderr),
                ..StepRecord::default()
            };
        }
        return finish_run(stores, record, RunStatus::Failed).await;
    }

    let reason = ctl.reason();
    let cancelled = reason.is_some();
    let outcomes: Vec<(StepStatus, bool)> = record
        .steps
        .iter()
        .zip(&dag.steps)
        .map(|(rec, step)| (rec.status, step.continue_on.failure))
        .collect();
    let status = final_status(cancelled, &outcomes);
    if record.error.is_none() {
        record.error = reason.map(StopReason::message);
    }
    log.line(&format!("steps done: {status}"));

    for kind in handlers_for(status) {
        let Some(handler) = kind.step(&dag.handler_on) else {
            continue;
        };
        let mut step = handler.clone();
        step.name = kind.step_name().to_owned();
        let stem = kind.step_name();
        if ctl.hard_stop.is_cancelled() {
            // Shutdown ran out of time: no new process.
            record.steps.push(StepRecord {
                name: step.name.clone(),
                status: StepStatus::Skipped,
                error: Some(StopReason::Shutdown.message()),
                ..StepRecord::default()
            });
            continue;
        }
        let mut rec = StepRecord {
            name: step.name.clone(),
            status: StepStatus::Running,
            started_at: Some(now_ms()),
            stdout: dir.join(format!("{stem}.out")),
            stderr: dir.join(format!("{stem}.err")),
            ..StepRecord::default()
        };
        record.steps.push(rec.clone());
        write_status(stores, &record);
        log.line(&format!("handler `{stem}` started"));
        let end = match process_spec(&dag, &step, &record, &dir, stem) {
            Ok(spec) => run_process(spec, &ctl.hard_stop, |_| {}).await,
            Err(message) => ProcessEnd::SpawnFailed(message),
        };
        // A handler is only stopped by shutdown.
        let reason = ctl.hard_stop.is_cancelled().then_some(StopReason::Shutdown);
        finish_step(&mut rec, end, &step, reason);
        log.line(&format!("handler `{stem}` {}", rec.status));
        if let Some(last) = record.steps.last_mut() {
            *last = rec;
        }
    }
    log.line(&format!("run finished: {status}"));
    finish_run(stores, record, status).await
}

/// Writes the final status, retrying a few times: the worker reports what this write says.
async fn finish_run(stores: &Stores, mut record: RunRecord, status: RunStatus) -> RunRecord {
    record.status = status;
    record.finished_at = Some(now_ms());
    for attempt in 1..=3 {
        if write_status(stores, &record) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
    }
    record
}

/// Runs the DAG's steps in dependency order, independent steps in parallel, until every step
/// has ended or been skipped. Returns `false` (and starts nothing) when the run could not be
/// recorded as running.
///
/// Durable first, at one status write per transition: the records of the steps about to start
/// (and of the one that just ended) are written before their processes start. The write after
/// the last step ends is left to the final status write, which follows at once.
async fn run_steps(
    stores: &Stores,
    dag: &Dag,
    record: &mut RunRecord,
    dir: &Path,
    stems: &[String],
    ctl: &RunControl,
    log: &mut RunLog,
) -> bool {
    let deps = dependencies(dag);
    let mut tasks: JoinSet<ProcessEnd> = JoinSet::new();
    let mut task_step: HashMap<tokio::task::Id, usize> = HashMap::new();
    let dag_timeout = async {
        match dag.timeout_sec {
            Some(secs) => tokio::time::sleep(Duration::from_secs(secs)).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(dag_timeout);
    let mut timed_out = false;
    let mut to_start = schedule(dag, record, &deps, ctl, 0, log);
    if !write_status(stores, record) {
        return false;
    }
    loop {
        for i in to_start.drain(..) {
            let end = match process_spec(dag, &dag.steps[i], record, dir, &stems[i]) {
                Ok(spec) => {
                    let stop = ctl.stop.clone();
                    tasks.spawn(async move { run_process(spec, &stop, |_| {}).await })
                }
                Err(message) => tasks.spawn(async move { ProcessEnd::SpawnFailed(message) }),
            };
            task_step.insert(end.id(), i);
        }
        if tasks.is_empty() {
            return true;
        }
        tokio::select! {
            Some(joined) = tasks.join_next_with_id() => {
                let (id, end) = match joined {
                    Ok((id, end)) => (id, end),
                    Err(e) => (e.id(), ProcessEnd::SpawnFailed(format!("step task failed: {e}"))),
                };
                let Some(i) = task_step.remove(&id) else { continue };
                let rec = &mut record.steps[i];
                finish_step(rec, end, &dag.steps[i], ctl.reason());
                log.line(&format!("step `{}` {}{}", rec.name, rec.status,
                    rec.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()));
                if rec.status == StepStatus::Failed && record.error.is_none() {
                    record.error = Some(format!(
                        "step `{}`: {}",
                        dag.steps[i].name,
                        record.steps[i].error.as_deref().unwrap_or("failed")
                    ));
                }
                to_start = schedule(dag, record, &deps, ctl, tasks.len(), log);
                if !(tasks.is_empty() && to_start.is_empty()) {
                    write_status(stores, record);
                }
            }
            () = &mut dag_timeout, if !timed_out => {
                timed_out = true;
                ctl.cancel(StopReason::DagTimeout(dag.timeout_sec.unwrap_or(0)));
                log.line("run timed out");
            }
        }
    }
}

/// Marks every step whose dependencies are done as running (returning their indices, to be
/// started after the next status write) and every step that can no longer run as skipped.
/// `in_flight` is the number of steps still running.
fn schedule(
    dag: &Dag,
    record: &mut RunRecord,
    deps: &[Vec<usize>],
    ctl: &RunControl,
    in_flight: usize,
    log: &mut RunLog,
) -> Vec<usize> {
    let mut to_start = Vec::new();
    // Skips cascade through the graph, so repeat until nothing moves.
    loop {
        let mut progressed = false;
        for (i, step_deps) in deps.iter().enumerate() {
            if record.steps[i].status != StepStatus::NotStarted {
                continue;
            }
            let mut blocked_by = None;
            let mut waiting = false;
            for &d in step_deps {
                match record.steps[d].status {
                    StepStatus::Succeeded => {}
                    StepStatus::Failed if dag.steps[d].continue_on.failure => {}
                    StepStatus::NotStarted | StepStatus::Running => waiting = true,
                    StepStatus::Failed | StepStatus::Skipped | StepStatus::Aborted => {
                        blocked_by = Some(d);
                    }
                }
            }
            let rec = &mut record.steps[i];
            if ctl.stop.is_cancelled() || blocked_by.is_some() {
                rec.status = StepStatus::Skipped;
                rec.error = Some(match blocked_by {
                    Some(d) => format!("dependency `{}` did not succeed", dag.steps[d].name),
                    None => ctl.reason().unwrap_or(StopReason::Stopped).message(),
                });
                log.line(&format!("step `{}` skipped", rec.name));
            } else if waiting {
                continue;
            } else {
                rec.status = StepStatus::Running;
                rec.started_at = Some(now_ms());
                log.line(&format!("step `{}` started", rec.name));
                to_start.push(i);
            }
            progressed = true;
        }
        if !progressed {
            break;
        }
    }
    // Only a dependency cycle (which the loader rejects) can leave steps waiting on nothing.
    if in_flight == 0 && to_start.is_empty() {
        for rec in record
            .steps
            .iter_mut()
            .filter(|r| r.status == StepStatus::NotStarted)
        {
            rec.status = StepStatus::Skipped;
            rec.error = Some("dependency cycle".to_owned());
        }
    }
    to_start
}

/// Linux refuses to `exec` with any one `NAME=value` string longer than `MAX_ARG_STRLEN`
/// (32 pages: 128 KiB, counting the NUL). A GitHub payload can be larger, so such a value is
/// written to a file next to the step's logs instead: `NAME` is set empty and `NAME_FILE` holds
/// the path. Everything smaller travels in the environment as usual.
pub(crate) fn fits_in_environment(name: &str, value: &str) -> bool {
    const MAX_ARG_STRLEN: usize = 32 * 4096;
    // `NAME=value` plus its terminating NUL.
    name.len() + 1 + value.len() < MAX_ARG_STRLEN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_stems_are_safe_and_distinct() {
        assert_eq!(file_stem(0, "build"), "build");
        assert_eq!(file_stem(1, "a.b-c_d"), "a.b-c_d");
        assert_eq!(file_stem(2, "../etc"), "2-___etc");
        assert_eq!(file_stem(3, "a b"), "3-a_b");
        assert_ne!(file_stem(4, "a b"), file_stem(5, "a_b"));
        assert_eq!(file_stem(6, ""), "6-");
        assert_eq!(file_stem(7, ".hidden"), "7-_hidden");
    }
}
