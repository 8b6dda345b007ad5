//! One run, start to final status: preparation, DAG preconditions, step ordering and
//! environments, step records, handlers, DAG timeout.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dispatch_dag::{
    final_status, handlers_for, Attempt, Binding, Dag, RunRecord, RunStatus, Step, StepRecord,
    StepStatus, Stores,
};
use dispatch_util::now_ms;
use tokio::task::JoinSet;

use crate::conditions::{all_met, CheckCx};
use crate::context::{binding_values, builtin_vars, RunFacts, StepFacts, StepView};
use crate::env::{build_env, EnvLayers};
use crate::invocation::Shell;
use crate::mask::Secrets;
use crate::prepare::prepare;
use crate::run_cx::{
    Lineage, RunControl, RunCx, RunFuture, RunLog, StopReason, DEFAULT_MAX_OUTPUT,
};
use crate::step::{run_step, StepResult};
use crate::step_job::StepJob;

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

/// What a step that has ended left for the steps after it (beyond its record).
#[derive(Debug, Clone, Default)]
struct StepState {
    outputs: BTreeMap<String, String>,
    output_value: Option<String>,
    /// What a `parallel` or `foreach` step collected (a JSON array).
    collected: Option<String>,
    /// A failure covered by `continue_on`.
    continued: bool,
    /// Skipped by its own preconditions.
    by_preconditions: bool,
}

/// Who started a top-level run: a webhook run's `GITHUB_ACTOR` (the sender's login), the
/// local user of a run by hand.
fn actor(trigger: &str, params: &[(String, String)]) -> Option<String> {
    match trigger {
        "webhook" => params
            .iter()
            .rev()
            .find(|(n, _)| n == "GITHUB_ACTOR")
            .map(|(_, v)| v.clone()),
        "manual" => ["USER", "LOGNAME"]
            .iter()
            .find_map(|v| std::env::var(v).ok()),
        _ => None,
    }
    .filter(|a| !a.is_empty())
}

/// Steps whose records are final.
fn has_ended(status: StepStatus) -> bool {
    !matches!(status, StepStatus::NotStarted | StepStatus::Running)
}

/// Indices each step waits for: its `depends`, which the loader made complete (chain order,
/// explicit `depends`, producers of the references it reads).
fn dependencies(dag: &Dag) -> Vec<Vec<usize>> {
    let index: HashMap<&str, usize> = dag
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    dag.steps
        .iter()
        .map(|step| {
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
/// record (also when its last write failed). Boxed: a sub-DAG call runs a child run through
/// it.
pub(crate) fn execute_run(
    stores: Stores,
    attempt: Attempt,
    ctl: Arc<RunControl>,
    lineage: Lineage,
) -> RunFuture {
    Box::pin(execute(stores, attempt, ctl, lineage))
}

async fn execute(
    stores: Stores,
    attempt: Attempt,
    ctl: Arc<RunControl>,
    mut lineage: Lineage,
) -> RunRecord {
    let Attempt {
        mut dag,
        mut record,
    } = attempt;
    if lineage.depth == 0 {
        lineage.local_dags = Arc::new(std::mem::take(&mut dag.local_dags));
    }
    let dir = run_dir(&stores, &record);
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
    let run_work_dir = dir.join("work");
    if let Err(e) = std::fs::create_dir_all(&run_work_dir) {
        record.error = Some(format!(
            "failed to create run directory `{}`: {e}",
            run_work_dir.display()
        ));
        return finish_run(&stores, record, RunStatus::Failed).await;
    }
    let log = RunLog::open(&record.log_file);
    log.line(&format!(
        "run `{}` of `{}` started",
        record.run_id, dag.name
    ));
    let mut facts = RunFacts {
        dag_name: dag.name.clone(),
        run_id: record.run_id.clone(),
        attempt_id: record.attempt_id.clone(),
        log_file: record.log_file.clone(),
        started_at: record.started_at.unwrap_or_default(),
        trigger: record.trigger.clone(),
        root: lineage.root.clone(),
        params: dag.resolved_params.clone(),
        run_work_dir,
        actor: lineage
            .actor
            .clone()
            .or_else(|| actor(&record.trigger, &dag.resolved_params)),
    };
    let max_output = dag.max_output_size.map_or(DEFAULT_MAX_OUTPUT, |n| {
        usize::try_from(n).unwrap_or(usize::MAX)
    });

    // Durable first: preparation and DAG preconditions may start processes.
    let runs_processes_first =
        dag.param_specs.iter().any(|s| s.eval.is_some()) || !dag.preconditions.is_empty();
    if runs_processes_first && !write_status(&stores, &record) {
        record.error = Some("failed to record the run as running".to_owned());
        return finish_run(&stores, record, RunStatus::Failed).await;
    }
    let prepared = match prepare(&dag, &facts, &record.params, &ctl.stop, max_output).await {
        Ok(prepared) => prepared,
        Err(e) => {
            // A stop that cut an `eval` short is the stop, not a failure; either way no
            // handler runs for a run that never started.
            let (status, error) = match ctl.reason() {
                Some(reason) => (RunStatus::Aborted, reason.message()),
                None => (RunStatus::Failed, e),
            };
            log.line(&format!("run could not start: {error}"));
            skip_all(&mut record, "the run could not start");
            record.error = Some(error);
            return finish_run(&stores, record, status).await;
        }
    };
    for warning in &prepared.warnings {
        log.line(warning);
    }
    facts.params = prepared.params.clone();
    dag.resolved_params = prepared.params;
    let secrets = Secrets::new(
        prepared
            .secrets
            .iter()
            .map(|(_, v)| v.clone())
            .chain(lineage.secrets.iter().cloned()),
    );
    let cx = Arc::new(RunCx {
        stores: stores.clone(),
        dag,
        facts,
        dir,
        work_dir: prepared.work_dir,
        dotenv: prepared.dotenv,
        secret_vars: prepared.secrets,
        secrets,
        control: ctl.clone(),
        log,
        max_output,
        lineage,
        run_child: execute_run,
    });
    let mut state = vec![StepState::default(); cx.dag.steps.len()];

    let mut decided = None;
    if !cx.dag.preconditions.is_empty() {
        let env = step_env(&cx, None, &record, &state, None);
        let shell = Shell::select(None, cx.dag.shell.as_deref());
        let check_cx = CheckCx {
            shell: &shell,
            env: &env,
            working_dir: &cx.work_dir,
            stop: &ctl.stop,
            clean_up: cx.clean_up(),
            limit: cx.max_output,
        };
        match all_met(&cx.dag.preconditions, &check_cx).await {
            Ok(true) => {}
            Ok(false) => {
                // Dagu: a DAG whose preconditions are not met is aborted before any step.
                cx.log.line("DAG preconditions not met");
                record.error = Some("DAG preconditions not met".to_owned());
                skip_all(&mut record, "DAG preconditions not met");
                decided = Some(RunStatus::Aborted);
            }
            Err(_) if ctl.stop.is_cancelled() => {}
            Err(e) => {
                cx.log.line(&format!("DAG preconditions: {e}"));
                record.error = Some(format!("DAG preconditions: {e}"));
                skip_all(&mut record, "DAG preconditions could not be checked");
                decided = Some(RunStatus::Failed);
            }
        }
    }
    if decided.is_none() {
        if let Some(secs) = cx.dag.delay_sec {
            cx.log.line(&format!(
                "waiting {secs}s (delay_sec) before the first step"
            ));
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(secs)) => {}
                () = ctl.stop.cancelled() => {}
            }
        }
        if !run_steps(&cx, &mut record, &stems, &mut state).await {
            record.error = Some("failed to record the run as running".to_owned());
            for rec in &mut record.steps {
                *rec = StepRecord {
                    name: std::mem::take(&mut rec.name),
                    stdout: std::mem::take(&mut rec.stdout),
                    stderr: std::mem::take(&mut rec.stderr),
                    ..StepRecord::default()
                };
            }
            return finish_run(&stores, record, RunStatus::Failed).await;
        }
    }

    let reason = ctl.reason();
    let status = decided.unwrap_or_else(|| {
        let outcomes: Vec<(StepStatus, bool)> = record
            .steps
            .iter()
            .zip(&state)
            .map(|(rec, st)| (rec.status, st.continued))
            .collect();
        final_status(reason.is_some(), &outcomes)
    });
    if record.error.is_none() {
        record.error = reason.map(StopReason::message);
    }
    cx.log.line(&format!("steps done: {status}"));

    for kind in handlers_for(status) {
        let Some(handler) = kind.step(&cx.dag.handler_on) else {
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
        let rec = StepRecord {
            name: step.name.clone(),
            status: StepStatus::Running,
            started_at: Some(now_ms()),
            stdout: cx.dir.join(format!("{stem}.out")),
            stderr: cx.dir.join(format!("{stem}.err")),
            ..StepRecord::default()
        };
        record.steps.push(rec.clone());
        write_status(&stores, &record);
        cx.log.line(&format!("handler `{stem}` started"));
        let job = StepJob {
            env: step_env(
                &cx,
                Some((&step, &rec, stem)),
                &record,
                &state,
                Some(status),
            ),
            output_file: cx.dir.join(format!("{stem}.outputs")),
            step,
            stem: stem.to_owned(),
            stop: ctl.hard_stop.clone(),
            handler: true,
            stdout: rec.stdout.clone(),
            stderr: rec.stderr.clone(),
        };
        let result = run_step(cx.clone(), job).await;
        if let Some(last) = record.steps.last_mut() {
            apply(last, &result, &cx.secrets);
            cx.log.line(&format!("handler `{stem}` {}", last.status));
        }
    }
    cx.log.line(&format!("run finished: {status}"));
    finish_run(&stores, record, status).await
}

/// Marks every step not yet ended skipped with `why`.
fn skip_all(record: &mut RunRecord, why: &str) {
    for rec in record.steps.iter_mut().filter(|r| !has_ended(r.status)) {
        rec.status = StepStatus::Skipped;
        rec.error = Some(why.to_owned());
    }
}

/// Copies a step's result into its record; what the record keeps of outputs is masked.
fn apply(rec: &mut StepRecord, result: &StepResult, secrets: &Secrets) {
    rec.status = result.status;
    rec.exit_code = result.exit_code;
    rec.error = result.error.as_deref().map(|e| secrets.mask_str(e));
    rec.finished_at = Some(now_ms());
    rec.attempts = result.attempts;
    rec.sub_runs = result.sub_runs.clone();
    rec.outputs = result
        .outputs
        .iter()
        .map(|(k, v)| (k.clone(), secrets.mask_str(v)))
        .collect();
    rec.output = result.output_value.as_deref().map(|v| secrets.mask_str(v));
}

/// The environment of a step (`Some((step, its record, its file stem))`) or, with `None`, of
/// the run itself (DAG-level preconditions): dotenv, params, bindings, secrets, DAG `env`,
/// the `output:` variables of the steps that have ended, step `env`, built-ins.
fn step_env(
    cx: &RunCx,
    step: Option<(&Step, &StepRecord, &str)>,
    record: &RunRecord,
    state: &[StepState],
    run_status: Option<RunStatus>,
) -> Vec<(String, String)> {
    let output_file = step.map(|(_, _, stem)| cx.dir.join(format!("{stem}.outputs")));
    let facts = match step {
        Some((step, rec, _)) => StepFacts {
            name: &step.name,
            id: step.id.as_deref(),
            stdout: &rec.stdout,
            stderr: &rec.stderr,
            output_file: output_file.as_deref().unwrap_or(Path::new("")),
            run_status,
        },
        None => StepFacts::none(),
    };
    let views: Vec<StepView<'_>> = cx
        .dag
        .steps
        .iter()
        .zip(&record.steps)
        .zip(state)
        .filter(|((_, rec), _)| has_ended(rec.status))
        .map(|((s, rec), st)| StepView {
            name: &s.name,
            output_var: s.output.as_deref().filter(|_| st.output_value.is_some()),
            output_value: st.output_value.as_deref(),
            outputs: &st.outputs,
            stdout: &rec.stdout,
            stderr: &rec.stderr,
            exit_code: rec.exit_code,
            collected: st.collected.as_deref(),
        })
        .collect();
    let bindings: Vec<&Binding> = cx
        .dag
        .bindings
        .iter()
        .chain(step.iter().flat_map(|(s, _, _)| s.bindings.iter()))
        .collect();
    let bound = binding_values(&bindings, &cx.facts, &facts, &views);
    let outputs: Vec<(String, String)> = views
        .iter()
        .filter_map(|v| Some((v.output_var?.to_owned(), v.output_value?.to_owned())))
        .collect();
    let builtins = builtin_vars(&cx.facts, &facts);
    let no_env = Vec::new();
    let literal: [&[(String, String)]; 4] = [&cx.dotenv, &cx.facts.params, &bound, &cx.secret_vars];
    build_env(
        &EnvLayers {
            literal: &literal,
            dag_env: &cx.dag.env,
            outputs: &outputs,
            step_env: step.map_or(&no_env, |(s, _, _)| &s.env),
            builtins: &builtins,
        },
        &|name| std::env::var(name).ok(),
    )
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

/// Runs the DAG's steps in dependency order, independent steps in parallel (at most
/// `max_active_steps` at once), until every step has ended or been skipped. Returns `false`
/// (and starts nothing) when the run could not be recorded as running.
///
/// Durable first, at one status write per transition: the records of the steps about to start
/// (and of the one that just ended) are written before their processes start. The write after
/// the last step ends is left to the final status write, which follows at once.
async fn run_steps(
    cx: &Arc<RunCx>,
    record: &mut RunRecord,
    stems: &[String],
    state: &mut [StepState],
) -> bool {
    let dag = &cx.dag;
    let ctl = &cx.control;
    let deps = dependencies(dag);
    let limit = dag
        .max_active_steps
        .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let mut tasks: JoinSet<StepResult> = JoinSet::new();
    let mut task_step: HashMap<tokio::task::Id, usize> = HashMap::new();
    let dag_timeout = async {
        match dag.timeout_sec {
            Some(secs) => tokio::time::sleep(Duration::from_secs(secs)).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(dag_timeout);
    let mut timed_out = false;
    let mut to_start = schedule(dag, record, &deps, state, ctl, 0, limit, &cx.log);
    if !write_status(&cx.stores, record) {
        return false;
    }
    loop {
        for i in to_start.drain(..) {
            let step = &dag.steps[i];
            let rec = &record.steps[i];
            let job = StepJob {
                env: step_env(cx, Some((step, rec, &stems[i])), record, state, None),
                step: step.clone(),
                stem: stems[i].clone(),
                stop: ctl.stop.clone(),
                handler: false,
                stdout: rec.stdout.clone(),
                stderr: rec.stderr.clone(),
                output_file: cx.dir.join(format!("{}.outputs", stems[i])),
            };
            let handle = tasks.spawn(run_step(cx.clone(), job));
            task_step.insert(handle.id(), i);
        }
        if tasks.is_empty() {
            return true;
        }
        tokio::select! {
            Some(joined) = tasks.join_next_with_id() => {
                let (id, result) = match joined {
                    Ok((id, result)) => (id, result),
                    Err(e) => (e.id(), StepResult {
                        status: StepStatus::Failed,
                        error: Some(format!("step task failed: {e}")),
                        ..StepResult::default()
                    }),
                };
                let Some(i) = task_step.remove(&id) else { continue };
                let rec = &mut record.steps[i];
                apply(rec, &result, &cx.secrets);
                state[i] = StepState {
                    outputs: result.outputs,
                    output_value: result.output_value,
                    collected: result.collected,
                    continued: result.continued,
                    by_preconditions: result.by_preconditions,
                };
                cx.log.line(&format!("step `{}` {}{}", rec.name, rec.status,
                    rec.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()));
                if rec.status == StepStatus::Failed && record.error.is_none() {
                    record.error = Some(format!(
                        "step `{}`: {}",
                        dag.steps[i].name,
                        record.steps[i].error.as_deref().unwrap_or("failed")
                    ));
                }
                to_start = schedule(dag, record, &deps, state, ctl, tasks.len(), limit, &cx.log);
                if !(tasks.is_empty() && to_start.is_empty()) {
                    write_status(&cx.stores, record);
                }
            }
            () = &mut dag_timeout, if !timed_out => {
                timed_out = true;
                ctl.cancel(StopReason::DagTimeout(dag.timeout_sec.unwrap_or(0)));
                cx.log.line("run timed out");
            }
        }
    }
}

/// Marks steps whose dependencies are done as running (returning their indices, to be started
/// after the next status write), as many as `limit` allows with `in_flight` steps running, and
/// every step that can no longer run as skipped.
///
/// A dependency is done when it succeeded, failed with `continue_on` covering the failure, or
/// was skipped by its own preconditions with `continue_on.skipped`; anything else ending it
/// skips the dependent step (and, in turn, the steps after it).
#[allow(clippy::too_many_arguments)]
fn schedule(
    dag: &Dag,
    record: &mut RunRecord,
    deps: &[Vec<usize>],
    state: &[StepState],
    ctl: &RunControl,
    in_flight: usize,
    limit: usize,
    log: &RunLog,
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
                    StepStatus::Succeeded | StepStatus::PartiallySucceeded => {}
                    StepStatus::Failed if state[d].continued => {}
                    StepStatus::Skipped
                        if state[d].by_preconditions && dag.steps[d].continue_on.skipped => {}
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
            } else if waiting || in_flight + to_start.len() >= limit {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_are_used_as_given() {
        let step = |name: &str, deps: &[&str]| Step {
            depends: deps.iter().map(|d| d.to_string()).collect(),
            ..Step::named(name)
        };
        // A chain step with `depends: []` waits for nothing: the loader already filled in the
        // chain order where it applies.
        let dag = Dag {
            steps: vec![step("a", &[]), step("b", &[]), step("c", &["a", "nope"])],
            ..Dag::default()
        };
        assert_eq!(dependencies(&dag), vec![vec![], vec![], vec![0]]);
    }

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
