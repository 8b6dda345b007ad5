//! Sub-DAG calls (`docs/dag-format.md`, "Sub-DAGs and parallel"): `call` runs another DAG as
//! a child run and waits for it; with `parallel`, one child per item, at most `max_concurrent`
//! at once. The step's status comes from its children's.
//!
//! A child is found among the `---` documents of the top-level DAG's file, then in the DAG
//! store, then as a path relative to the calling DAG's file. It runs at once (not through the
//! queue, which its parent holds), recorded in the run store as its own run with the trigger
//! `subdag`; without its own `working_dir` it runs in the calling step's working directory.
//! Its params are data: `${ITEM}`, `${ITEM.field}` and `${VAR}` in the call's params are
//! replaced by values, and the values reach the child's commands only through its environment.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use dispatch_dag::{
    load_dag_file, new_attempt_id, resolve_params, validate_dag_name, Attempt, Dag, ParallelItems,
    RunRecord, RunStatus, StepStatus, SubDagCall,
};
use dispatch_util::now_ms;
use dispatch_webhook_params::{parse_runtime_params, quote, Param};
use serde_json::Value;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::env::{expand, lookup};
use crate::outputs::json_text;
use crate::run_cx::{Lineage, RunControl, RunCx};
use crate::step_job::StepJob;

/// Sub-DAG calls nested deeper than this fail (a DAG that calls itself).
const MAX_DEPTH: u32 = 16;

/// Most items of one `parallel` call or `foreach`.
pub(crate) const MAX_ITEMS: usize = 1000;

/// How a call (or a `foreach`) ended.
#[derive(Debug, Default)]
pub(crate) struct CallEnd {
    pub(crate) status: StepStatus,
    pub(crate) error: Option<String>,
    /// `<dag>/<run_id>` of every child started.
    pub(crate) sub_runs: Vec<String>,
    /// The value of the step's `output:` variable: one child's result, or the aggregate of a
    /// `parallel` or `foreach` step (JSON).
    pub(crate) output: Option<String>,
    /// The step's declared `outputs`, taken from its one child's outputs.
    pub(crate) outputs: BTreeMap<String, String>,
    /// What a `parallel` or `foreach` step publishes as `${ID.outputs}` (a JSON array).
    pub(crate) collected: Option<String>,
}

impl CallEnd {
    pub(crate) fn failed(error: String) -> CallEnd {
        CallEnd {
            status: StepStatus::Failed,
            error: Some(error),
            ..CallEnd::default()
        }
    }
}

/// One child run to start: the DAG to run and its runtime params.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Child {
    dag: String,
    params: Vec<Param>,
}

/// A started child's run, prepared: what starts it.
pub(crate) type Start = (Attempt, Arc<RunControl>, Lineage);

/// How one child ended: its final record (or why it could not start, or `None` when it was
/// never started because the step was stopped), and the `output:` variables of its DAG's steps
/// (step name → variable).
#[derive(Debug, Default)]
pub(crate) struct ChildEnd {
    pub(crate) record: Option<Result<RunRecord, String>>,
    pub(crate) vars: Vec<(String, String)>,
}

impl ChildEnd {
    /// It ended `succeeded` or `partially_succeeded`.
    pub(crate) fn ended_well(&self) -> bool {
        matches!(&self.record, Some(Ok(r)) if ended_well(r.status))
    }

    /// The `output:` variables its steps left, name → value.
    pub(crate) fn output_vars(&self) -> BTreeMap<String, String> {
        let Some(Ok(record)) = &self.record else {
            return BTreeMap::new();
        };
        record
            .steps
            .iter()
            .filter_map(|s| {
                let (_, var) = self.vars.iter().find(|(name, _)| *name == s.name)?;
                Some((var.clone(), s.output.clone()?))
            })
            .collect()
    }

    /// Its `output:` variables merged with its steps' declared outputs.
    pub(crate) fn all_outputs(&self) -> BTreeMap<String, String> {
        let mut all = self.output_vars();
        if let Some(Ok(record)) = &self.record {
            for step in &record.steps {
                all.extend(step.outputs.clone());
            }
        }
        all
    }
}

fn ended_well(status: RunStatus) -> bool {
    matches!(status, RunStatus::Succeeded | RunStatus::PartiallySucceeded)
}

/// The step that starts child runs (a call, a `foreach`), as its children see it.
pub(crate) struct Caller<'a> {
    pub(crate) run: &'a Arc<RunCx>,
    pub(crate) job: &'a StepJob,
    /// The step's working directory: a child without its own runs there.
    pub(crate) work_dir: &'a Path,
    /// The step's environment (for `${VAR}` in the call's params and items).
    pub(crate) env: &'a [(String, String)],
    /// Stops the children: the step's stop, or its timeout.
    pub(crate) stop: &'a CancellationToken,
}

/// Runs the step's sub-DAG `call`.
pub(crate) async fn run_call(caller: &Caller<'_>, call: &SubDagCall) -> CallEnd {
    let Caller { run, env, stop, .. } = *caller;
    if let Err(e) = check_depth(run, &call.dag) {
        return CallEnd::failed(e);
    }
    let children = match children(call, env) {
        Ok(children) => children,
        Err(e) => return CallEnd::failed(e),
    };
    let max_concurrent = call
        .parallel
        .as_ref()
        .map_or(1, |p| p.max_concurrent.max(1) as usize);
    let what = |i: usize| format!("sub-DAG `{}`", children[i].dag);
    let count = (children.len(), max_concurrent);
    let (ends, sub_runs) = run_children(caller, count, &what, |i| {
        let (dag, local) = find_dag(run, &children[i].dag)?;
        start_run(caller, dag, local, &children[i].params)
    })
    .await;
    let mut end = step_end(&ends, stop, &what);
    end.sub_runs = sub_runs;
    if call.parallel.is_some() {
        end.output = Some(parallel_aggregate(&children, &ends).to_string());
        end.collected = collected(
            ends.iter()
                .filter(|c| c.ended_well())
                .map(|c| c.all_outputs()),
        );
    } else if let Some(child) = ends.first() {
        let outputs = child.all_outputs();
        if let Some(Ok(record)) = &child.record {
            end.output = Some(
                serde_json::json!({
                    "name": record.dag_name,
                    "dag_run_id": record.run_id,
                    "params": record.params,
                    "status": record.status.as_str(),
                    "outputs": outputs,
                })
                .to_string(),
            );
        }
        end.outputs = outputs;
    }
    end
}

/// Fails a call nested too deep (a DAG that calls itself).
pub(crate) fn check_depth(run: &RunCx, what: &str) -> Result<(), String> {
    if run.lineage.depth >= MAX_DEPTH {
        return Err(format!(
            "sub-DAG calls are nested more than {MAX_DEPTH} deep (does `{what}` call itself?)"
        ));
    }
    Ok(())
}

/// Starts `count` children, at most `max_concurrent` at once, each prepared by `start(i)`,
/// and waits for all of them (a failed child does not stop the others); a stop starts no more.
/// `what(i)` names child `i` in the step's log. Returns how each ended and the
/// `<dag>/<run_id>` of those started.
pub(crate) async fn run_children(
    caller: &Caller<'_>,
    (count, max_concurrent): (usize, usize),
    what: &(dyn Fn(usize) -> String + Sync),
    start: impl Fn(usize) -> Result<Start, String> + Sync,
) -> (Vec<ChildEnd>, Vec<String>) {
    let Caller { run, job, stop, .. } = *caller;
    let mut out = StepOutput(job.stdout.clone());
    let mut set: JoinSet<(usize, RunRecord)> = JoinSet::new();
    let mut ends: Vec<ChildEnd> = (0..count).map(|_| ChildEnd::default()).collect();
    let mut sub_runs = Vec::new();
    let mut next = 0;
    loop {
        while set.len() < max_concurrent && next < count && !stop.is_cancelled() {
            let i = next;
            next += 1;
            match start(i) {
                Ok((attempt, ctl, lineage)) => {
                    let id = format!("{}/{}", attempt.record.dag_name, attempt.record.run_id);
                    out.line(&format!("sub-DAG run `{id}` started"));
                    sub_runs.push(id);
                    ends[i].vars = attempt
                        .dag
                        .steps
                        .iter()
                        .filter_map(|s| Some((s.name.clone(), s.output.clone()?)))
                        .collect();
                    let future = (run.run_child)(run.stores.clone(), attempt, ctl, lineage);
                    set.spawn(async move { (i, future.await) });
                }
                Err(e) => {
                    out.line(&format!("{} could not start: {e}", what(i)));
                    ends[i].record = Some(Err(e));
                }
            }
        }
        let Some(joined) = set.join_next().await else {
            break;
        };
        match joined {
            Ok((i, record)) => {
                out.line(&format!(
                    "sub-DAG run `{}/{}` ended `{}`",
                    record.dag_name, record.run_id, record.status
                ));
                ends[i].record = Some(Ok(record));
            }
            Err(e) => tracing::error!(error = %e, "sub-DAG task failed"),
        }
    }
    (ends, sub_runs)
}

/// The step's status from its children's: `succeeded` when all ended `succeeded`,
/// `partially_succeeded` when all ended well and one only partially, else `failed` with the
/// first child's problem (`aborted` when the step was stopped). `what(i)` names child `i`.
pub(crate) fn step_end(
    ends: &[ChildEnd],
    stop: &CancellationToken,
    what: &(dyn Fn(usize) -> String + Sync),
) -> CallEnd {
    let mut first_error = None;
    let mut aborted = false;
    let mut partial = false;
    for (i, end) in ends.iter().enumerate() {
        let problem = match &end.record {
            None => {
                aborted = true;
                Some(format!("{} was not started", what(i)))
            }
            Some(Err(e)) => Some(format!("{}: {e}", what(i))),
            Some(Ok(r)) if ended_well(r.status) => {
                partial |= r.status == RunStatus::PartiallySucceeded;
                None
            }
            Some(Ok(r)) => {
                aborted |= r.status == RunStatus::Aborted;
                Some(format!(
                    "sub-DAG run `{}/{}` ended `{}`{}",
                    r.dag_name,
                    r.run_id,
                    r.status,
                    r.error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ))
            }
        };
        if first_error.is_none() {
            first_error = problem;
        }
    }
    let status = match (&first_error, aborted && stop.is_cancelled()) {
        (None, _) if partial => StepStatus::PartiallySucceeded,
        (None, _) => StepStatus::Succeeded,
        (Some(_), true) => StepStatus::Aborted,
        (Some(_), false) => StepStatus::Failed,
    };
    CallEnd {
        status,
        error: first_error,
        ..CallEnd::default()
    }
}

/// The `output:` of a `parallel` call: counts, one result per child (in item order) and the
/// `output:` variables of the children that ended well.
fn parallel_aggregate(children: &[Child], ends: &[ChildEnd]) -> Value {
    let succeeded = ends.iter().filter(|c| c.ended_well()).count();
    let results: Vec<Value> = children
        .iter()
        .zip(ends)
        .map(|(child, end)| {
            let mut result = serde_json::Map::new();
            result.insert("name".into(), child.dag.clone().into());
            result.insert("params".into(), params_text(&child.params).into());
            match &end.record {
                Some(Ok(r)) => {
                    result.insert("dag_run_id".into(), r.run_id.clone().into());
                    result.insert("status".into(), r.status.as_str().into());
                    if let Some(e) = &r.error {
                        result.insert("error".into(), e.clone().into());
                    }
                }
                Some(Err(e)) => {
                    result.insert("status".into(), "failed".into());
                    result.insert("error".into(), e.clone().into());
                }
                None => {
                    result.insert("status".into(), RunStatus::NotStarted.as_str().into());
                }
            }
            if end.ended_well() {
                result.insert("outputs".into(), json_map(end.output_vars()));
            }
            Value::Object(result)
        })
        .collect();
    serde_json::json!({
        "summary": {
            "total": ends.len(),
            "succeeded": succeeded,
            "failed": ends.len() - succeeded,
        },
        "results": results,
        "outputs": ends
            .iter()
            .filter(|c| c.ended_well())
            .map(|c| json_map(c.output_vars()))
            .collect::<Vec<_>>(),
    })
}

/// The array a `parallel` or `foreach` step publishes as `${ID.outputs}`: one map per child
/// that ended well; nothing when none did.
pub(crate) fn collected(maps: impl Iterator<Item = BTreeMap<String, String>>) -> Option<String> {
    let list: Vec<Value> = maps.map(json_map).collect();
    (!list.is_empty()).then(|| Value::Array(list).to_string())
}

pub(crate) fn json_map(map: BTreeMap<String, String>) -> Value {
    Value::Object(map.into_iter().map(|(k, v)| (k, v.into())).collect())
}

/// The children of a call: one per item (duplicates coalesced), or one without `parallel`.
fn children(call: &SubDagCall, env: &[(String, String)]) -> Result<Vec<Child>, String> {
    let var = |name: &str| lookup(env, name).or_else(|| std::env::var(name).ok());
    let items: Vec<Option<Value>> = match &call.parallel {
        None => vec![None],
        Some(parallel) => {
            let items = match &parallel.items {
                ParallelItems::List(items) => items.clone(),
                ParallelItems::Expr(text) => parse_items(&expand(text, &var)),
            };
            if items.is_empty() {
                return Err("`parallel` has no items".to_owned());
            }
            if items.len() > MAX_ITEMS {
                return Err(format!(
                    "`parallel` has {} items, more than {MAX_ITEMS}",
                    items.len()
                ));
            }
            items.into_iter().map(Some).collect()
        }
    };
    let mut children: Vec<Child> = Vec::new();
    for item in items {
        let with_item = |name: &str| -> Option<String> {
            match (&item, name.strip_prefix("ITEM")) {
                (Some(item), Some("")) => Some(json_text(item)),
                (Some(Value::Object(map)), Some(field)) if field.starts_with('.') => {
                    map.get(&field[1..]).map(json_text)
                }
                (Some(_), Some(field)) if field.starts_with('.') => None,
                _ => var(name),
            }
        };
        let dag = expand(&call.dag, &with_item);
        if dag.trim().is_empty() {
            return Err(format!("`{}` names no DAG", call.dag));
        }
        let params = match (&item, call.params.is_empty()) {
            (Some(item), true) => item_params(item),
            _ => call
                .params
                .iter()
                .map(|p| Param {
                    name: p.name.clone(),
                    value: expand(&p.value, &with_item),
                })
                .collect(),
        };
        let child = Child { dag, params };
        if !children.contains(&child) {
            children.push(child);
        }
    }
    Ok(children)
}

/// An item as the child's params when the call gives none: a map's fields by name, a string
/// as a runtime-param string, anything else as one positional value.
fn item_params(item: &Value) -> Vec<Param> {
    match item {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| Param::named(k.clone(), json_text(v)))
            .collect(),
        Value::String(s) => {
            parse_runtime_params(s).unwrap_or_else(|_| vec![Param::positional(s.clone())])
        }
        other => vec![Param::positional(json_text(other))],
    }
}

/// Items of a `parallel` string resolved at run time: a JSON array (its entries), a JSON
/// object (one item), else words separated by whitespace, `,`, `;` or `|` (double quotes keep
/// a word together).
pub(crate) fn parse_items(text: &str) -> Vec<Value> {
    let text = text.trim();
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(items)) => return items,
        Ok(object @ Value::Object(_)) => return vec![object],
        _ => {}
    }
    let mut items = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '"' => quoted = !quoted,
            c if !quoted && (c.is_whitespace() || matches!(c, ',' | ';' | '|')) => {
                if !word.is_empty() {
                    items.push(Value::String(std::mem::take(&mut word)));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        items.push(Value::String(word));
    }
    items
}

/// Records a child run of `dag` with `params` and returns what starts it; `local` says
/// whether `dag` is a `---` document of the top-level file (or a `foreach` body), whose
/// siblings it may call by name.
pub(crate) fn start_run(
    caller: &Caller<'_>,
    dag: Dag,
    local: bool,
    params: &[Param],
) -> Result<Start, String> {
    let Caller {
        run,
        work_dir,
        stop,
        ..
    } = *caller;
    let mut snapshot = resolve_params(&dag, params).map_err(|e| e.to_string())?;
    if snapshot.working_dir.is_none() {
        snapshot.working_dir = Some(work_dir.to_path_buf());
    }
    let run_id = format!("sub-{}", new_attempt_id());
    let attempt_id = new_attempt_id();
    let now = now_ms();
    // Recorded `running` (not `queued`): the child never waits in a queue, and a crash leaves
    // it to recovery as a run that was in progress.
    let record = RunRecord {
        dag_name: snapshot.name.clone(),
        run_id: run_id.clone(),
        log_file: run
            .stores
            .log_dir
            .join(&snapshot.name)
            .join(&run_id)
            .join(&attempt_id)
            .join("run.log"),
        attempt_id,
        status: RunStatus::Running,
        trigger: "subdag".to_owned(),
        // Written with every status: a secret of the parent passed as a param is masked.
        params: run.secrets.mask_str(&params_text(params)),
        queued_at: Some(now),
        started_at: Some(now),
        finished_at: None,
        error: None,
        steps: Vec::new(),
        pid: Some(std::process::id()),
    };
    // A param may carry a secret of the parent: the stored snapshot has it masked (a child run
    // is never started again from its record), the child runs with the real value.
    let mut stored = snapshot.clone();
    for (_, value) in &mut stored.resolved_params {
        *value = run.secrets.mask_str(value);
    }
    run.stores
        .runs
        .create_attempt(&stored, &record)
        .map_err(|e| format!("failed to record the run: {e}"))?;
    let lineage = Lineage {
        root: Some(
            run.lineage
                .root
                .clone()
                .unwrap_or_else(|| (run.facts.dag_name.clone(), run.facts.run_id.clone())),
        ),
        depth: run.lineage.depth + 1,
        local_dags: if local {
            run.lineage.local_dags.clone()
        } else {
            Arc::new(dag.local_dags.clone())
        },
        secrets: run
            .lineage
            .secrets
            .iter()
            .cloned()
            .chain(run.secret_vars.iter().map(|(_, v)| v.clone()))
            .collect(),
        actor: run.facts.actor.clone(),
    };
    let ctl = Arc::new(RunControl::child_of(&run.control, stop));
    Ok((
        Attempt {
            dag: snapshot,
            record,
        },
        ctl,
        lineage,
    ))
}

/// The DAG named `name`, and whether it is a `---` document of the top-level file.
pub(crate) fn find_dag(run: &RunCx, name: &str) -> Result<(Dag, bool), String> {
    if let Some(dag) = run.lineage.local_dags.iter().find(|d| d.name == name) {
        return Ok((dag.clone(), true));
    }
    if validate_dag_name(name).is_ok() {
        match run.stores.dags.load(name) {
            Ok(dag) => return Ok((dag, false)),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(format!("failed to load DAG `{name}`: {e}")),
        }
    }
    let base = run.dag.location.parent().unwrap_or(Path::new("."));
    let path = base.join(name);
    if path.is_file() {
        return load_dag_file(&path)
            .map(|dag| (dag, false))
            .map_err(|e| e.to_string());
    }
    Err(format!(
        "DAG `{name}` not found (not a `---` document of this file, not in the DAGs directory, no file `{}`)",
        path.display()
    ))
}

/// Params as a runtime-param string (for the run record).
pub(crate) fn params_text(params: &[Param]) -> String {
    params
        .iter()
        .map(|p| match &p.name {
            Some(name) => format!("{name}={}", quote(&p.value)),
            None => quote(&p.value),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Lines about the children in the calling step's stdout log (best effort).
struct StepOutput(std::path::PathBuf);

impl StepOutput {
    fn line(&mut self, text: &str) {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.0);
        if let Ok(mut file) = file {
            let _ = writeln!(file, "{text}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dispatch_dag::{Parallel, ParamDefault};
    use serde_json::json;

    #[test]
    fn item_strings() {
        let words = |t: &str| -> Vec<String> { parse_items(t).iter().map(json_text).collect() };
        assert_eq!(
            words("a b,c;d|e\nf\tg"),
            ["a", "b", "c", "d", "e", "f", "g"]
        );
        assert_eq!(words(" \"two words\", x "), ["two words", "x"]);
        assert_eq!(
            words("[\"a\", 1, {\"k\": \"v\"}]"),
            ["a", "1", "{\"k\":\"v\"}"]
        );
        assert_eq!(words("{\"k\": 1}"), ["{\"k\":1}"]);
        assert!(words("  ").is_empty());
    }

    fn call(params: &[(&str, &str)], items: Option<ParallelItems>) -> SubDagCall {
        SubDagCall {
            dag: "child-${ITEM.kind}".into(),
            params: params
                .iter()
                .map(|(n, v)| ParamDefault {
                    name: Some((*n).into()),
                    value: (*v).into(),
                })
                .collect(),
            parallel: items.map(|items| Parallel {
                items,
                max_concurrent: 2,
            }),
        }
    }

    #[test]
    fn children_per_item_with_item_references_and_coalescing() {
        let env = vec![("ENVIRONMENT".to_owned(), "prod".to_owned())];
        let items = ParallelItems::List(vec![
            json!({"kind": "a", "region": "eu"}),
            json!({"kind": "b", "region": "$(touch x)"}),
            json!({"kind": "a", "region": "eu"}),
        ]);
        let got = children(
            &call(
                &[
                    ("REGION", "${ITEM.region}"),
                    ("ENV", "${ENVIRONMENT}-${ITEM.missing}"),
                ],
                Some(items),
            ),
            &env,
        )
        .unwrap();
        assert_eq!(got.len(), 2, "identical children are one");
        assert_eq!(got[0].dag, "child-a");
        assert_eq!(
            got[0].params,
            [
                Param::named("REGION", "eu"),
                Param::named("ENV", "prod-${ITEM.missing}")
            ]
        );
        assert_eq!(got[1].params[0], Param::named("REGION", "$(touch x)"));
    }

    #[test]
    fn an_item_is_the_params_when_the_call_gives_none() {
        let env = vec![("LIST".to_owned(), "x K=v".to_owned())];
        let mut c = call(&[], Some(ParallelItems::Expr("${LIST}".into())));
        c.dag = "child".into();
        let got = children(&c, &env).unwrap();
        assert_eq!(got[0].params, [Param::positional("x")]);
        assert_eq!(got[1].params, [Param::named("K", "v")]);
        let got = children(
            &call(
                &[],
                Some(ParallelItems::List(vec![json!({"kind": "m", "n": 1})])),
            ),
            &[],
        )
        .unwrap();
        assert_eq!(
            got[0].params,
            [Param::named("kind", "m"), Param::named("n", "1")]
        );
        let e = children(
            &call(&[], Some(ParallelItems::Expr("${NOTHING}".into()))),
            &[],
        )
        .unwrap_err();
        assert!(e.contains("no items"), "{e}");
    }

    #[test]
    fn without_parallel_one_child() {
        let mut c = call(&[("A", "${ITEM}-$B")], None);
        c.dag = "plain".into();
        let env = vec![("B".to_owned(), "b".to_owned())];
        let got = children(&c, &env).unwrap();
        assert_eq!(
            got,
            [Child {
                dag: "plain".into(),
                params: vec![Param::named("A", "-b")]
            }]
        );
        assert_eq!(
            params_text(&[Param::named("A", "x y"), Param::positional("p")]),
            "A=\"x y\" \"p\""
        );
    }
}
