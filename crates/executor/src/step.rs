//! One step (or handler) from start to end: its working directory, preconditions, output
//! files, its attempts with `retry_policy` and `repeat_policy`, its outputs and `continue_on`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dispatch_dag::{Foreach, StepStatus, SubDagCall};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::conditions::{all_met, check, CheckCx};
use crate::env::{expand, lookup};
use crate::foreach::run_foreach;
use crate::invocation::{invocations, positional, Invocation, Shell};
use crate::outputs::parse_output_file;
use crate::policy::{
    continues_after_failure, repeat_delay, retry_delay, should_repeat, should_retry,
};
use crate::prepare::expand_home;
use crate::process::{
    exit_code, run_process, Captured, ProcessEnd, ProcessSpec, Sink, TIMEOUT_EXIT_CODE,
};
use crate::run_cx::{RunCx, StopReason};
use crate::step_job::StepJob;
use crate::subdag::{run_call, CallEnd, Caller};

/// How a step ended and what it left for the steps after it.
#[derive(Debug, Default)]
pub(crate) struct StepResult {
    pub(crate) status: StepStatus,
    pub(crate) exit_code: Option<i32>,
    pub(crate) error: Option<String>,
    /// Published `outputs`.
    pub(crate) outputs: BTreeMap<String, String>,
    /// The value of its `output:` variable.
    pub(crate) output_value: Option<String>,
    /// What a `parallel` or `foreach` step collected (a JSON array).
    pub(crate) collected: Option<String>,
    /// It failed, but `continue_on` lets the run go on (and counts it as a covered failure).
    pub(crate) continued: bool,
    /// It was skipped because its preconditions were not met.
    pub(crate) by_preconditions: bool,
    pub(crate) attempts: u32,
    pub(crate) sub_runs: Vec<String>,
}

impl StepResult {
    fn failed(error: String) -> StepResult {
        StepResult {
            status: StepStatus::Failed,
            error: Some(error),
            ..StepResult::default()
        }
    }
}

/// One run of the step's action.
#[derive(Debug, Default)]
struct AttemptEnd {
    status: StepStatus,
    exit_code: Option<i32>,
    error: Option<String>,
    stdout: Captured,
    stderr: Captured,
    outputs: BTreeMap<String, String>,
    sub_runs: Vec<String>,
    /// A call's or `foreach`'s value for the `output:` variable (instead of stdout).
    output: Option<String>,
    collected: Option<String>,
}

/// What the step runs.
enum Action<'a> {
    Processes(Vec<Invocation>),
    Call(&'a SubDagCall),
    Foreach(&'a Foreach),
}

/// Everything an attempt needs besides the action.
struct AttemptCx<'a> {
    run: &'a Arc<RunCx>,
    job: &'a StepJob,
    work_dir: &'a Path,
    env: &'a [(String, String)],
    stdout_copy: Option<&'a PathBuf>,
    stderr_copy: Option<&'a PathBuf>,
}

/// Runs the step to its end. Never panics on input: every problem is the step's error.
pub(crate) async fn run_step(run: Arc<RunCx>, job: StepJob) -> StepResult {
    let step = &job.step;
    for path in [&job.stdout, &job.stderr] {
        if let Err(e) = std::fs::File::create(path) {
            return StepResult::failed(format!("failed to create `{}`: {e}", path.display()));
        }
    }
    let inherited = |var: &str| std::env::var(var).ok();
    let var = |name: &str| lookup(&job.env, name).or_else(|| inherited(name));
    let work_dir = match &step.working_dir {
        None => run.work_dir.clone(),
        Some(written) => {
            let text = written.to_string_lossy();
            let expanded = expand_home(&expand(&text, &var));
            if expanded.as_os_str().is_empty() {
                return StepResult::failed(format!("`working_dir` `{text}` expands to nothing"));
            }
            run.work_dir.join(expanded)
        }
    };
    if let Err(e) = std::fs::create_dir_all(&work_dir) {
        return StepResult::failed(format!(
            "failed to create the working directory `{}`: {e}",
            work_dir.display()
        ));
    }
    let shell = Shell::select(step.shell.as_deref(), run.dag.shell.as_deref());

    if !step.preconditions.is_empty() {
        let cx = CheckCx {
            shell: &shell,
            env: &job.env,
            working_dir: &work_dir,
            stop: &job.stop,
            clean_up: run.clean_up(),
            limit: run.max_output,
        };
        match all_met(&step.preconditions, &cx).await {
            Ok(true) => {}
            Ok(false) => {
                return StepResult {
                    status: StepStatus::Skipped,
                    error: Some("preconditions not met".to_owned()),
                    by_preconditions: true,
                    ..StepResult::default()
                }
            }
            Err(_) if job.stop.is_cancelled() => return stopped(&run, &job),
            Err(e) => return StepResult::failed(e),
        }
    }

    // `stdout` / `stderr`: copies of the streams, relative to the working directory.
    let mut copies = Vec::new();
    for written in [&step.stdout, &step.stderr] {
        let Some(written) = written else {
            copies.push(None);
            continue;
        };
        let path = work_dir.join(expand_home(&expand(written, &var)));
        let created = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::File::create(&path));
        if let Err(e) = created {
            return StepResult::failed(format!("failed to create `{}`: {e}", path.display()));
        }
        copies.push(Some(path));
    }

    let env = match spill_long_values(&run.dir, &job.stem, job.env.clone()) {
        Ok(env) => env,
        Err(e) => return StepResult::failed(e),
    };
    let action = match (&step.call, &step.foreach) {
        (Some(call), _) => Action::Call(call),
        (None, Some(foreach)) => Action::Foreach(foreach),
        (None, None) => {
            let script = match &step.script {
                None => None,
                Some(text) => {
                    let path = run.dir.join(format!("{}.script", job.stem));
                    if let Err(e) = std::fs::write(&path, text) {
                        return StepResult::failed(format!(
                            "failed to write script `{}`: {e}",
                            path.display()
                        ));
                    }
                    Some(path)
                }
            };
            let positional = positional(&run.facts.params);
            match invocations(
                step,
                run.dag.shell.as_deref(),
                script.as_deref(),
                &positional,
            ) {
                Ok(list) => Action::Processes(list),
                Err(e) => return StepResult::failed(e),
            }
        }
    };
    let cx = AttemptCx {
        run: &run,
        job: &job,
        work_dir: &work_dir,
        env: &env,
        stdout_copy: copies[0].as_ref(),
        stderr_copy: copies[1].as_ref(),
    };

    let mut attempts = 0u32;
    let mut sub_runs = Vec::new();
    let mut runs = 0u64;
    let last = 'repeat: loop {
        let mut retries = 0u64;
        let end = loop {
            attempts += 1;
            let mut end = attempt(&cx, &action).await;
            sub_runs.append(&mut end.sub_runs);
            let retry = end.status == StepStatus::Failed
                && !job.stop.is_cancelled()
                && step
                    .retry_policy
                    .as_ref()
                    .is_some_and(|p| should_retry(p, retries, end.exit_code));
            if !retry {
                break end;
            }
            let delay = step
                .retry_policy
                .as_ref()
                .map_or(Duration::ZERO, |p| retry_delay(p, retries as u32));
            run.log.line(&format!(
                "step `{}` attempt {attempts} failed ({}); retrying in {}s",
                step.name,
                end.error.as_deref().unwrap_or("failed"),
                delay.as_secs_f64()
            ));
            retries += 1;
            if !pause(delay, &job.stop).await {
                break end;
            }
        };
        runs += 1;
        let Some(policy) = &step.repeat_policy else {
            break end;
        };
        if matches!(end.status, StepStatus::Aborted) || job.stop.is_cancelled() {
            break end;
        }
        let condition_met = match &policy.condition {
            None => None,
            Some(condition) => {
                let check_cx = CheckCx {
                    shell: &shell,
                    env: &env,
                    working_dir: &work_dir,
                    stop: &job.stop,
                    clean_up: run.clean_up(),
                    limit: run.max_output,
                };
                match check(condition, &check_cx).await {
                    Ok(met) => Some(met),
                    Err(e) => {
                        break 'repeat AttemptEnd {
                            status: StepStatus::Failed,
                            error: Some(format!("repeat condition: {e}")),
                            ..end
                        }
                    }
                }
            }
        };
        let succeeded = end.status == StepStatus::Succeeded;
        if !should_repeat(policy, runs, condition_met, end.exit_code, succeeded) {
            break end;
        }
        let delay = repeat_delay(policy, (runs - 1) as u32);
        run.log.line(&format!(
            "step `{}` run {runs} ended {}; repeating in {}s",
            step.name,
            end.status,
            delay.as_secs_f64()
        ));
        if !pause(delay, &job.stop).await {
            break end;
        }
    };

    let mut result = StepResult {
        status: last.status,
        exit_code: last.exit_code,
        error: last.error,
        outputs: last.outputs,
        output_value: None,
        collected: last.collected,
        continued: false,
        by_preconditions: false,
        attempts,
        sub_runs,
    };
    if step.output.is_some() && (step.call.is_some() || step.foreach.is_some()) {
        result.output_value = last.output;
    } else if step.output.is_some() {
        let mut text = String::from_utf8_lossy(&last.stdout.bytes).into_owned();
        if text.ends_with('\n') {
            text.pop();
            if text.ends_with('\r') {
                text.pop();
            }
        }
        result.output_value = Some(text);
    }
    if result.status == StepStatus::Failed {
        let mut output = String::from_utf8_lossy(&last.stdout.bytes).into_owned();
        output.push('\n');
        output.push_str(&String::from_utf8_lossy(&last.stderr.bytes));
        if continues_after_failure(&step.continue_on, result.exit_code, &output) {
            if step.continue_on.mark_success {
                result.status = StepStatus::Succeeded;
                run.log.line(&format!(
                    "step `{}` failed ({}); `continue_on.mark_success` counts it as succeeded",
                    step.name,
                    result.error.as_deref().unwrap_or("failed")
                ));
                result.error = None;
            } else {
                result.continued = true;
            }
        }
    }
    result
}

/// The result of a step that was stopped before its action started.
fn stopped(run: &RunCx, job: &StepJob) -> StepResult {
    StepResult {
        status: StepStatus::Aborted,
        error: Some(stop_message(run, job)),
        ..StepResult::default()
    }
}

fn stop_message(run: &RunCx, job: &StepJob) -> String {
    let reason = if job.handler {
        // A handler is only stopped by shutdown.
        StopReason::Shutdown
    } else {
        run.control.reason().unwrap_or(StopReason::Stopped)
    };
    reason.message()
}

/// Waits `delay` unless `stop` comes first; returns whether the wait ran out.
async fn pause(delay: Duration, stop: &CancellationToken) -> bool {
    if delay.is_zero() {
        return !stop.is_cancelled();
    }
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = stop.cancelled() => false,
    }
}

/// One run of the action: a fresh output file, the processes in order until one fails (or the
/// sub-DAG call), then the outputs of a success.
async fn attempt(cx: &AttemptCx<'_>, action: &Action<'_>) -> AttemptEnd {
    let (run, job, step) = (cx.run, cx.job, &cx.job.step);
    if let Err(e) = std::fs::File::create(&job.output_file) {
        return AttemptEnd {
            status: StepStatus::Failed,
            error: Some(format!(
                "failed to create `{}`: {e}",
                job.output_file.display()
            )),
            ..AttemptEnd::default()
        };
    }
    let invocations = match action {
        Action::Call(_) | Action::Foreach(_) => {
            // The step's timeout stops its children as a stop of the step would.
            let call_stop = job.stop.child_token();
            let caller = Caller {
                run,
                job,
                work_dir: cx.work_dir,
                env: cx.env,
                stop: &call_stop,
            };
            let calling = async {
                match action {
                    Action::Call(call) => run_call(&caller, call).await,
                    Action::Foreach(foreach) => run_foreach(&caller, foreach).await,
                    Action::Processes(_) => CallEnd::default(),
                }
            };
            tokio::pin!(calling);
            let limit = async {
                match step.timeout_sec {
                    Some(secs) => tokio::time::sleep(Duration::from_secs(secs)).await,
                    None => std::future::pending().await,
                }
            };
            let (end, timed_out) = tokio::select! {
                end = &mut calling => (end, false),
                () = limit => {
                    call_stop.cancel();
                    (calling.await, true)
                }
            };
            let mut attempt = AttemptEnd {
                status: end.status,
                error: end.error,
                sub_runs: end.sub_runs,
                output: end.output,
                collected: end.collected,
                ..AttemptEnd::default()
            };
            if attempt.status == StepStatus::Succeeded
                || attempt.status == StepStatus::PartiallySucceeded
            {
                // A call publishes the declared outputs its one child left.
                for decl in &step.outputs {
                    match end.outputs.get(&decl.name) {
                        Some(value) => {
                            attempt.outputs.insert(decl.name.clone(), value.clone());
                        }
                        None => {
                            attempt.status = StepStatus::Failed;
                            attempt.error = Some(format!(
                                "outputs: the sub-DAG run published no output `{}`",
                                decl.name
                            ));
                            attempt.outputs.clear();
                            break;
                        }
                    }
                }
            }
            if timed_out && !job.stop.is_cancelled() {
                attempt.status = StepStatus::Failed;
                attempt.exit_code = Some(TIMEOUT_EXIT_CODE);
                attempt.error = Some(format!(
                    "step timed out after {}s",
                    step.timeout_sec.unwrap_or(0)
                ));
            }
            return attempt;
        }
        Action::Processes(list) => list,
    };
    let capture_out = if step.output.is_some() || !step.continue_on.output.is_empty() {
        run.max_output
    } else {
        0
    };
    let capture_err = if step.continue_on.output.is_empty() {
        0
    } else {
        run.max_output
    };
    let sink = |log: &PathBuf, copy: Option<&PathBuf>, capture| Sink {
        log: log.clone(),
        copy: copy.cloned(),
        capture,
        secrets: run.secrets.clone(),
    };
    let deadline = step
        .timeout_sec
        .map(|secs| Instant::now() + Duration::from_secs(secs));
    let mut end = AttemptEnd {
        status: StepStatus::Succeeded,
        exit_code: Some(0),
        ..AttemptEnd::default()
    };
    for inv in invocations {
        let spec = ProcessSpec {
            program: inv.program.clone(),
            args: inv.args.clone(),
            working_dir: cx.work_dir.to_path_buf(),
            env: cx.env.to_vec(),
            stdout: sink(&job.stdout, cx.stdout_copy, capture_out),
            stderr: sink(&job.stderr, cx.stderr_copy, capture_err),
            timeout: deadline.map(|d| d.saturating_duration_since(Instant::now())),
            clean_up: run.clean_up(),
        };
        let outcome = run_process(spec, &job.stop, |_| {}).await;
        append(&mut end.stdout, outcome.stdout, capture_out);
        append(&mut end.stderr, outcome.stderr, capture_err);
        match outcome.end {
            ProcessEnd::Exited(status) => {
                end.exit_code = exit_code(&status);
                if !status.success() {
                    end.status = StepStatus::Failed;
                    end.error = Some(match status.code() {
                        Some(code) => format!("exit status {code}"),
                        None => format!("killed by signal {}", end.exit_code.unwrap_or(0) - 128),
                    });
                }
            }
            ProcessEnd::TimedOut => {
                end.status = StepStatus::Failed;
                end.exit_code = Some(TIMEOUT_EXIT_CODE);
                end.error = Some(format!(
                    "step timed out after {}s",
                    step.timeout_sec.unwrap_or(0)
                ));
            }
            ProcessEnd::Stopped(status) => {
                end.status = StepStatus::Aborted;
                end.exit_code = exit_code(&status);
                end.error = Some(stop_message(run, job));
            }
            ProcessEnd::SpawnFailed(message) => {
                end.status = StepStatus::Failed;
                end.exit_code = None;
                end.error = Some(message);
            }
        }
        if end.status != StepStatus::Succeeded {
            return end;
        }
    }
    if let (Some(var), true) = (&step.output, end.stdout.truncated) {
        end.status = StepStatus::Failed;
        end.error = Some(format!(
            "stdout is longer than max_output_size ({} bytes), so `output: {var}` cannot hold it",
            run.max_output
        ));
        return end;
    }
    if !step.outputs.is_empty() {
        let parsed = std::fs::read(&job.output_file)
            .map_err(|e| format!("failed to read `{}`: {e}", job.output_file.display()))
            .and_then(|bytes| parse_output_file(&bytes, &step.outputs, run.max_output as u64));
        match parsed {
            Ok(outputs) => end.outputs = outputs,
            Err(e) => {
                end.status = StepStatus::Failed;
                end.error = Some(format!("outputs: {e}"));
            }
        }
    }
    end
}

/// Adds what one process of an attempt captured to what the attempt captured.
fn append(total: &mut Captured, part: Captured, limit: usize) {
    if limit == 0 {
        return;
    }
    let room = limit.saturating_sub(total.bytes.len());
    total.truncated |= part.truncated || part.bytes.len() > room;
    total
        .bytes
        .extend_from_slice(&part.bytes[..part.bytes.len().min(room)]);
}

/// Linux refuses to `exec` with any one `NAME=value` string longer than `MAX_ARG_STRLEN`
/// (32 pages: 128 KiB, counting the NUL). A GitHub payload can be larger, so such a value is
/// written to `<step>.<NAME>` next to the step's logs instead: `NAME` is set empty and
/// `NAME_FILE` holds the path. Everything smaller travels in the environment as usual.
fn spill_long_values(
    dir: &Path,
    stem: &str,
    mut env: Vec<(String, String)>,
) -> Result<Vec<(String, String)>, String> {
    const MAX_ARG_STRLEN: usize = 32 * 4096;
    let mut files = Vec::new();
    for (name, value) in &mut env {
        // `NAME=value` plus its terminating NUL.
        if name.len() + 1 + value.len() < MAX_ARG_STRLEN {
            continue;
        }
        let path = dir.join(format!("{stem}.{name}"));
        std::fs::write(&path, value.as_bytes())
            .map_err(|e| format!("failed to write `{}`: {e}", path.display()))?;
        tracing::info!(%name, bytes = value.len(), file = %path.display(),
            "value too long for one environment variable; passed as a file");
        *value = String::new();
        files.push((format!("{name}_FILE"), path.display().to_string()));
    }
    env.append(&mut files);
    Ok(env)
}
