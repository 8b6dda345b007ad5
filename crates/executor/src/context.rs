//! The values a step's environment is made of besides its `env`: the built-in run context
//! (`DAG_NAME`, `DAG_RUN_ID`, ...) and the values of the [`Binding`]s the loader made of
//! Dagu's references (`docs/dag-format.md`, "References and the environment").
//!
//! Pure logic: no IO, tested without a runtime.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dispatch_dag::{Binding, RefSource, RunStatus};

use crate::env::params_json;
use crate::outputs::json_path;

/// What is known about the run for its whole life.
#[derive(Debug, Clone)]
pub(crate) struct RunFacts {
    pub(crate) dag_name: String,
    pub(crate) run_id: String,
    pub(crate) attempt_id: String,
    pub(crate) log_file: PathBuf,
    /// Unix milliseconds.
    pub(crate) started_at: u64,
    /// `webhook`, `manual`, `subdag`, ...
    pub(crate) trigger: String,
    /// DAG name and run id of the top-level run, for a sub-DAG run.
    pub(crate) root: Option<(String, String)>,
    /// The resolved params.
    pub(crate) params: Vec<(String, String)>,
    /// The run's own empty directory (`<attempt log dir>/work`), for scratch files; removed
    /// with the run's logs.
    pub(crate) run_work_dir: PathBuf,
    /// Who started the run, when known: the GitHub login of a webhook run's sender, the local
    /// user of a run by hand; a sub-DAG run has its parent's.
    pub(crate) actor: Option<String>,
}

/// What is known about the step (or handler) the environment is for.
#[derive(Debug, Clone)]
pub(crate) struct StepFacts<'a> {
    pub(crate) name: &'a str,
    pub(crate) id: Option<&'a str>,
    pub(crate) stdout: &'a Path,
    pub(crate) stderr: &'a Path,
    pub(crate) output_file: &'a Path,
    /// The run's status, for handlers only.
    pub(crate) run_status: Option<RunStatus>,
}

impl StepFacts<'_> {
    /// No step: the run itself (DAG-level conditions, param `eval`s).
    pub(crate) fn none() -> StepFacts<'static> {
        StepFacts {
            name: "",
            id: None,
            stdout: Path::new(""),
            stderr: Path::new(""),
            output_file: Path::new(""),
            run_status: None,
        }
    }

    fn is_step(&self) -> bool {
        !self.name.is_empty()
    }
}

/// What an earlier step left for the ones after it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepView<'a> {
    pub(crate) name: &'a str,
    /// Its `output:` variable, when it has one and it has ended.
    pub(crate) output_var: Option<&'a str>,
    pub(crate) output_value: Option<&'a str>,
    pub(crate) outputs: &'a BTreeMap<String, String>,
    pub(crate) stdout: &'a Path,
    pub(crate) stderr: &'a Path,
    pub(crate) exit_code: Option<i32>,
    /// What a `parallel` or `foreach` step collected from its children (a JSON array).
    pub(crate) collected: Option<&'a str>,
}

/// The built-in variables of a step, which nothing may override: `DAG_NAME`, `DAG_RUN_ID`,
/// `DAG_RUN_LOG_FILE`, `DAG_RUN_WORK_DIR`, `DAG_RUN_STEP_NAME`, `DAG_RUN_STEP_STDOUT_FILE`,
/// `DAG_RUN_STEP_STDERR_FILE`, `DAGU_OUTPUT_FILE`, `DAG_PARAMS_JSON` (and Dagu's alias
/// `DAGU_PARAMS_JSON`), and `DAG_RUN_STATUS` in handlers. Without a step
/// ([`StepFacts::none`]) only the run's.
pub(crate) fn builtin_vars(run: &RunFacts, step: &StepFacts<'_>) -> Vec<(String, String)> {
    let params = params_json(&run.params);
    let mut vars = vec![
        ("DAG_NAME".to_owned(), run.dag_name.clone()),
        ("DAG_RUN_ID".to_owned(), run.run_id.clone()),
        ("DAG_RUN_LOG_FILE".to_owned(), path_text(&run.log_file)),
        ("DAG_RUN_WORK_DIR".to_owned(), path_text(&run.run_work_dir)),
        ("DAG_PARAMS_JSON".to_owned(), params.clone()),
        ("DAGU_PARAMS_JSON".to_owned(), params),
    ];
    if step.is_step() {
        vars.extend([
            ("DAG_RUN_STEP_NAME".to_owned(), step.name.to_owned()),
            (
                "DAG_RUN_STEP_STDOUT_FILE".to_owned(),
                path_text(step.stdout),
            ),
            (
                "DAG_RUN_STEP_STDERR_FILE".to_owned(),
                path_text(step.stderr),
            ),
            ("DAGU_OUTPUT_FILE".to_owned(), path_text(step.output_file)),
        ]);
    }
    if let Some(status) = step.run_status {
        vars.push(("DAG_RUN_STATUS".to_owned(), status.as_str().to_owned()));
    }
    vars
}

fn path_text(path: &Path) -> String {
    path.display().to_string()
}

/// A built-in context field (`run.id`, `step.name`, `paths.log_file`, ...); `None` when it is not
/// available here (e.g. `run.status` outside handlers, `run.root_id` outside sub-DAG runs).
pub(crate) fn context_value(field: &str, run: &RunFacts, step: &StepFacts<'_>) -> Option<String> {
    Some(match field {
        "dag.name" => run.dag_name.clone(),
        "run.id" => run.run_id.clone(),
        "run.status" => step.run_status?.as_str().to_owned(),
        "run.started_at" => rfc3339_utc(run.started_at),
        "run.root_name" => run.root.as_ref()?.0.clone(),
        "run.root_id" => run.root.as_ref()?.1.clone(),
        "attempt.id" => run.attempt_id.clone(),
        "step.id" => step.id?.to_owned(),
        "trigger.type" => run.trigger.clone(),
        "trigger.actor" => run.actor.clone()?,
        "paths.log_file" => path_text(&run.log_file),
        "paths.work_dir" => path_text(&run.run_work_dir),
        _ if !step.is_step() => return None,
        "step.name" => step.name.to_owned(),
        "paths.step_stdout_file" => path_text(step.stdout),
        "paths.step_stderr_file" => path_text(step.stderr),
        "paths.step_output_file" => path_text(step.output_file),
        // The loader refuses the fields that never have a value here (schedules, artifacts,
        // docs directories, profiles, push-back).
        _ => return None,
    })
}

/// The value of each binding that has one, as `(variable, value)`. A reference to something
/// that does not exist (an output of a step that did not run) has none: the variable is not
/// set, so the shell expands it to the empty string.
pub(crate) fn binding_values(
    bindings: &[&Binding],
    run: &RunFacts,
    step: &StepFacts<'_>,
    steps: &[StepView<'_>],
) -> Vec<(String, String)> {
    let by_name = |name: &str| steps.iter().find(|s| s.name == name);
    bindings
        .iter()
        .filter_map(|b| {
            let value = match &b.source {
                RefSource::Param(name) => run
                    .params
                    .iter()
                    .rev()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.clone()),
                RefSource::StepOutput {
                    step_name, output, ..
                } => by_name(step_name).and_then(|s| s.outputs.get(output).cloned()),
                RefSource::StepField {
                    step_name, field, ..
                } => by_name(step_name).and_then(|s| match field.as_str() {
                    "stdout" => Some(path_text(s.stdout)),
                    "stderr" => Some(path_text(s.stderr)),
                    "exit_code" => s.exit_code.map(|c| c.to_string()),
                    _ => None,
                }),
                RefSource::OutputPath { var, path } => steps
                    .iter()
                    .rev()
                    .find(|s| s.output_var == Some(var.as_str()))
                    .and_then(|s| s.output_value)
                    .and_then(|json| json_path(json, path)),
                RefSource::Context(field) => context_value(field, run, step),
                RefSource::StepCollected {
                    step_name, path, ..
                } => by_name(step_name)
                    .and_then(|s| s.collected)
                    .and_then(|json| json_path(json, path)),
                RefSource::ParamPath { param, path } => run
                    .params
                    .iter()
                    .rev()
                    .find(|(n, _)| n == param)
                    .and_then(|(_, json)| json_path(json, path)),
            }?;
            Some((b.var.clone(), value))
        })
        .collect()
}

/// Unix milliseconds as an RFC 3339 UTC timestamp with seconds (`2026-07-01T12:00:00Z`).
pub(crate) fn rfc3339_utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar, by counting
/// 400-year eras of 146,097 days from 0000-03-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> RunFacts {
        RunFacts {
            dag_name: "d".into(),
            run_id: "r1".into(),
            attempt_id: "a1".into(),
            log_file: "/logs/run.log".into(),
            started_at: 0,
            trigger: "webhook".into(),
            root: None,
            params: vec![
                ("A".into(), "1".into()),
                ("A".into(), "2".into()),
                ("ITEM".into(), r#"{"url":"u1"}"#.into()),
            ],
            run_work_dir: "/logs/work".into(),
            actor: Some("octocat".into()),
        }
    }

    fn step<'a>() -> StepFacts<'a> {
        StepFacts {
            name: "me",
            id: Some("me_id"),
            stdout: Path::new("/logs/me.out"),
            stderr: Path::new("/logs/me.err"),
            output_file: Path::new("/logs/me.outputs"),
            run_status: None,
        }
    }

    fn bind(var: &str, source: RefSource) -> Binding {
        Binding {
            var: var.into(),
            source,
        }
    }

    #[test]
    fn bindings_resolve_from_params_steps_and_context() {
        let outputs = BTreeMap::from([("image".to_owned(), "api:v1".to_owned())]);
        let empty = BTreeMap::new();
        let steps = [
            StepView {
                name: "Build",
                output_var: None,
                output_value: None,
                outputs: &outputs,
                stdout: Path::new("/logs/Build.out"),
                stderr: Path::new("/logs/Build.err"),
                exit_code: Some(0),
                collected: Some(r#"[{"url":"a"},{"url":"b"}]"#),
            },
            StepView {
                name: "json",
                output_var: Some("RESULT"),
                output_value: Some(r#"{"data":{"id":7}}"#),
                outputs: &empty,
                stdout: Path::new("/logs/json.out"),
                stderr: Path::new("/logs/json.err"),
                exit_code: Some(3),
                collected: None,
            },
        ];
        let out = |step_name: &str, output: &str| RefSource::StepOutput {
            step_id: "x".into(),
            step_name: step_name.into(),
            output: output.into(),
        };
        let field = |step_name: &str, field: &str| RefSource::StepField {
            step_id: "x".into(),
            step_name: step_name.into(),
            field: field.into(),
        };
        let bindings = [
            bind("P", RefSource::Param("A".into())),
            bind("MISSING_P", RefSource::Param("B".into())),
            bind("IMG", out("Build", "image")),
            bind("NO_OUT", out("Build", "other")),
            bind("NO_STEP", out("Nope", "image")),
            bind("OUT", field("Build", "stdout")),
            bind("CODE", field("json", "exit_code")),
            bind(
                "ID",
                RefSource::OutputPath {
                    var: "RESULT".into(),
                    path: vec!["data".into(), "id".into()],
                },
            ),
            bind("DAG_RUN_ID", RefSource::Context("run.id".into())),
            bind("STATUS", RefSource::Context("run.status".into())),
            bind("SID", RefSource::Context("step.id".into())),
            bind(
                "ALL",
                RefSource::StepCollected {
                    step_id: "x".into(),
                    step_name: "Build".into(),
                    path: vec![],
                },
            ),
            bind(
                "SECOND",
                RefSource::StepCollected {
                    step_id: "x".into(),
                    step_name: "Build".into(),
                    path: vec!["1".into(), "url".into()],
                },
            ),
            bind(
                "NONE",
                RefSource::StepCollected {
                    step_id: "x".into(),
                    step_name: "json".into(),
                    path: vec![],
                },
            ),
            bind(
                "URL",
                RefSource::ParamPath {
                    param: "ITEM".into(),
                    path: vec!["url".into()],
                },
            ),
            bind("WORK", RefSource::Context("paths.work_dir".into())),
            bind("WHO", RefSource::Context("trigger.actor".into())),
        ];
        let refs: Vec<&Binding> = bindings.iter().collect();
        let got = binding_values(&refs, &run(), &step(), &steps);
        let want = crate::env::vars(&[
            ("P", "2"),
            ("IMG", "api:v1"),
            ("OUT", "/logs/Build.out"),
            ("CODE", "3"),
            ("ID", "7"),
            ("DAG_RUN_ID", "r1"),
            ("SID", "me_id"),
            ("ALL", r#"[{"url":"a"},{"url":"b"}]"#),
            ("SECOND", "b"),
            ("URL", "u1"),
            ("WORK", "/logs/work"),
            ("WHO", "octocat"),
        ]);
        assert_eq!(got, want);
    }

    #[test]
    fn builtins_and_status_in_handlers() {
        let names = |v: Vec<(String, String)>| v.into_iter().map(|(n, _)| n).collect::<Vec<_>>();
        let vars = names(builtin_vars(&run(), &step()));
        assert!(vars.contains(&"DAGU_OUTPUT_FILE".to_owned()));
        assert!(!vars.contains(&"DAG_RUN_STATUS".to_owned()));
        let mut handler = step();
        handler.run_status = Some(RunStatus::Failed);
        let vars = builtin_vars(&run(), &handler);
        assert!(vars.contains(&("DAG_RUN_STATUS".to_owned(), "failed".to_owned())));
        assert_eq!(
            context_value("run.status", &run(), &handler).as_deref(),
            Some("failed")
        );
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_782_907_199_999), "2026-07-01T11:59:59Z");
        assert_eq!(rfc3339_utc(4_107_542_400_000), "2100-03-01T00:00:00Z");
    }
}
