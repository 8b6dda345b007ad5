//! The top level of a DAG file and its `---` documents.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::step::{resolve_dir, StepCx};
use super::steps::ListCx;
use super::{join, key_text, Cx, Entry, KeySet, LoadOptions, DEFAULT_MAX_CLEAN_UP_TIME_SEC};
use crate::refs::{Refs, Rewriter, Scope};
use crate::yaml::{self, Kind, Node};
use crate::{Dag, DagType, HandlerOn};

const NOT_A_CLOCK: &str =
    "dispatch starts DAGs from GitHub events and `scheduler run`, not on a schedule";
const NO_MAIL: &str = "mail is not supported";

const DAG_KEYS: KeySet<'static> = KeySet {
    known: &[
        "name",
        "description",
        "type",
        "params",
        "env",
        "steps",
        "timeout_sec",
        "max_clean_up_time_sec",
        "queue",
        "handler_on",
        "working_dir",
        "consts",
        "dotenv",
        "secrets",
        "hist_retention_days",
        "preconditions",
        "shell",
        "delay_sec",
        "max_active_steps",
        "max_output_size",
        "defaults",
        "group",
        "tags",
        "labels",
    ],
    refused: &[
        ("schedule", NOT_A_CLOCK),
        ("skip_if_successful", NOT_A_CLOCK),
        ("catchup_window", NOT_A_CLOCK),
        ("overlap_policy", NOT_A_CLOCK),
        ("restart_wait_sec", NOT_A_CLOCK),
        (
            "max_active_runs",
            "concurrency of runs is set by the DAG's `queue`",
        ),
        (
            "retry_policy",
            "DAG-level retries need Dagu's scheduler; use a step `retry_policy`",
        ),
        (
            "hist_retention_runs",
            "history is kept by age; use `hist_retention_days`",
        ),
        ("mail_on", NO_MAIL),
        ("smtp", NO_MAIL),
        ("error_mail", NO_MAIL),
        ("info_mail", NO_MAIL),
        ("log_dir", "logs live in the scheduler's log directory"),
        (
            "log_output",
            "stdout and stderr are always logged separately",
        ),
        ("artifacts", "artifact storage is not supported"),
        ("otel", "OpenTelemetry tracing is not supported"),
        ("run_config", "Dagu's web UI settings do not apply"),
        ("webhook", "webhooks come from GitHub through the hub"),
        (
            "worker_selector",
            "there are no Dagu workers; a DAG runs on the scheduler that claimed it",
        ),
        (
            "container",
            "containers are not supported; run `docker` from `run` if you need one",
        ),
        ("registry_auths", "containers are not supported"),
        ("ssh", "ssh steps are not supported; run `ssh` from `run`"),
        ("s3", "s3 steps are not supported"),
        ("redis", "redis steps are not supported"),
        ("kubernetes", "kubernetes steps are not supported"),
        ("llm", "LLM steps are not supported"),
        ("harness", "coding-agent steps are not supported"),
        ("harnesses", "coding-agent steps are not supported"),
        (
            "tools",
            "tool installation is not supported; install tools on the scheduler's machine",
        ),
        ("step_types", "custom step types are not supported"),
        ("actions", "custom actions are not supported"),
    ],
};

const HANDLER_KEYS: KeySet<'static> = KeySet {
    known: &["success", "failure", "abort", "exit"],
    refused: &[
        (
            "init",
            "the `init` handler is not supported yet; make it the first step",
        ),
        ("wait", "approval waits are not supported"),
        ("cancel", "use `abort`"),
    ],
};

const DEFAULTS_KEYS: KeySet<'static> = KeySet {
    known: &[
        "retry_policy",
        "continue_on",
        "repeat_policy",
        "timeout_sec",
        "env",
        "preconditions",
    ],
    refused: &[
        ("mail_on_error", NO_MAIL),
        (
            "signal_on_stop",
            "steps are always stopped with SIGTERM, then SIGKILL",
        ),
        ("agent", "agent steps are not supported"),
    ],
};

/// Loads every document of `text`: the first is the DAG, the others its local sub-DAGs.
pub(super) fn load(cx: &Cx<'_>, text: &str, options: &LoadOptions) -> Option<Dag> {
    let docs = match yaml::parse_documents(text) {
        Ok(docs) => docs,
        Err(e) => {
            cx.report(e.line, e.message);
            return None;
        }
    };
    let mut docs = docs.into_iter();
    let Some(Some(root)) = docs
        .next()
        .filter(|d| d.as_ref().is_some_and(|n| !n.is_null()))
    else {
        cx.report(None, "empty file: key `steps` is required");
        return None;
    };
    let location = std::path::absolute(cx.path).unwrap_or_else(|_| cx.path.to_path_buf());
    let mut dag = cx.document(&root, None, &location, options);
    for (n, doc) in docs.enumerate() {
        let Some(node) = doc.filter(|n| !n.is_null()) else {
            cx.report(None, "empty YAML document after `---`");
            continue;
        };
        let Some(local) = cx.document(&node, Some(n + 1), &location, options) else {
            continue;
        };
        if local.name == dag.as_ref().map(|d| d.name.as_str()).unwrap_or_default()
            || dag
                .as_ref()
                .is_some_and(|d| d.local_dags.iter().any(|l| l.name == local.name))
        {
            cx.report(
                Some(node.line),
                format!(
                    "key `name`: DAG `{}` is defined twice in this file",
                    local.name
                ),
            );
            continue;
        }
        if let Some(d) = &mut dag {
            d.local_dags.push(local);
        }
    }
    dag
}

impl Cx<'_> {
    /// One document; `local` is `Some(n)` for the n-th document after `---`, which needs a
    /// `name`.
    fn document(
        &self,
        root: &Node,
        local: Option<usize>,
        location: &Path,
        options: &LoadOptions,
    ) -> Option<Dag> {
        let entries = self.entries(root, "", root.line, &DAG_KEYS)?;
        let get = |k: &str| entries.iter().find(|e| e.key == k);
        let mut dag = Dag {
            location: location.to_path_buf(),
            ..Dag::default()
        };

        // Consts and params first: the other keys may refer to them.
        if let Some(e) = get("consts") {
            dag.consts = self.consts(e);
        }
        let mut param_eval_lines = Vec::new();
        if let Some(e) = get("params") {
            let params = self.params(e);
            dag.params = params.defaults;
            dag.param_specs = params.specs;
            param_eval_lines = params.eval_lines;
        }
        let declared: HashSet<String> = dag.params.iter().filter_map(|p| p.name.clone()).collect();
        let no_steps = HashMap::new();
        let no_vars = HashSet::new();
        let dag_scope = Scope {
            consts: &dag.consts,
            params: &declared,
            steps: &no_steps,
            own_id: None,
            output_vars: &no_vars,
            consts_only: false,
            foreach: None,
        };
        let mut dag_refs = Refs::default();
        let mut dag_rw = Rewriter {
            scope: &dag_scope,
            refs: &mut dag_refs,
        };
        for (spec, line) in dag.param_specs.iter_mut().zip(param_eval_lines) {
            if let Some(eval) = &spec.eval {
                let mut refs = Refs::default();
                let k = format!("params.{}.eval", spec.name);
                spec.eval = self.rewrite_field(
                    &k,
                    line,
                    eval,
                    &mut Rewriter {
                        scope: &dag_scope,
                        refs: &mut refs,
                    },
                );
                spec.bindings = refs.bindings;
            }
        }

        let mut name_line = None;
        let mut queue = None;
        for e in &entries {
            let k = e.key;
            match k {
                "name" => {
                    dag.name = self.ok(self.string(k, e)).flatten().unwrap_or_default();
                    name_line = Some(e.line);
                }
                "description" => {
                    dag.description = self.ok(self.string(k, e)).flatten().unwrap_or_default()
                }
                "type" => {
                    dag.dag_type = match self.ok(self.string(k, e)).flatten().as_deref() {
                        None | Some("chain") => DagType::Chain,
                        Some("graph") => DagType::Graph,
                        Some(other @ ("agent" | "controller")) => {
                            self.report(
                                Some(e.line),
                                format!("key `type`: not supported: `{other}` DAGs"),
                            );
                            DagType::Chain
                        }
                        Some(other) => {
                            self.report(
                                Some(e.line),
                                format!("key `type`: expected `chain` or `graph`, found `{other}`"),
                            );
                            DagType::Chain
                        }
                    }
                }
                "env" => dag.env = self.env("env", e.line, e.value, &mut dag_rw),
                "timeout_sec" => {
                    dag.timeout_sec = self.ok(self.uint(k, e)).flatten().filter(|&t| t > 0)
                }
                "max_clean_up_time_sec" => {
                    dag.max_clean_up_time_sec = self
                        .ok(self.uint(k, e))
                        .flatten()
                        .unwrap_or(DEFAULT_MAX_CLEAN_UP_TIME_SEC)
                }
                "queue" => queue = Some((self.ok(self.string(k, e)).flatten(), e.line)),
                "dotenv" => {
                    dag.dotenv = self
                        .ok(self.strings(k, e))
                        .unwrap_or_default()
                        .iter()
                        .filter_map(|p| self.rewrite_field(k, e.line, p, &mut dag_rw))
                        .collect()
                }
                "secrets" => dag.secrets = self.secrets(e),
                "hist_retention_days" => {
                    dag.hist_retention_days = self.ok(self.uint(k, e)).flatten()
                }
                "preconditions" => dag.preconditions = self.preconditions(k, e, &mut dag_rw),
                "shell" => {
                    let words = match &e.value.kind {
                        Kind::Seq(_) => self.ok(self.strings(k, e)).unwrap_or_default(),
                        _ => self.ok(self.string(k, e)).flatten().into_iter().collect(),
                    };
                    dag.shell = Some(words.join(" ")).filter(|s| !s.trim().is_empty());
                    if dag.shell.as_deref().map(str::trim) == Some("direct") {
                        self.report(
                            Some(e.line),
                            "key `shell`: not supported: `direct` (steps run through a shell)",
                        );
                    }
                }
                "delay_sec" => {
                    dag.delay_sec = self.ok(self.uint(k, e)).flatten().filter(|&t| t > 0)
                }
                "max_active_steps" => {
                    dag.max_active_steps = self.ok(self.uint(k, e)).flatten().filter(|&t| t > 0)
                }
                "max_output_size" => {
                    dag.max_output_size = self.ok(self.uint(k, e)).flatten().filter(|&t| t > 0)
                }
                "group" => dag.group = self.ok(self.string(k, e)).flatten(),
                "tags" | "labels" => dag.labels.extend(self.labels(k, e)),
                _ => {}
            }
        }

        // Name: `name`, else the file stem; a local document must have one.
        let name = match (dag.name.is_empty(), local) {
            (false, _) => dag.name.clone(),
            (true, None) => self
                .path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            (true, Some(n)) => {
                self.report(Some(root.line), format!("document {} after `---`: key `name` is required (it names the local sub-DAG)", n + 1));
                format!("local{n}")
            }
        };
        if let Err(e) = crate::validate_dag_name(&name) {
            let origin = if name_line.is_some() {
                "key `name`"
            } else {
                "file name"
            };
            self.report(name_line, format!("{origin}: {e}"));
        }
        dag.name = name;
        dag.queue = match queue {
            Some((Some(q), line)) => {
                if let Err(e) = crate::names::validate_queue_name(&q) {
                    self.report(Some(line), format!("key `queue`: {e}"));
                }
                q
            }
            _ => dag.name.clone(),
        };

        // Working directory: relative text is taken from the base (the DAG file's directory).
        let base = options
            .base_dir
            .clone()
            .or_else(|| location.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        dag.working_dir = match get("working_dir") {
            Some(e) => self
                .ok(self.string("working_dir", e))
                .flatten()
                .filter(|d| !d.trim().is_empty())
                .and_then(|d| self.rewrite_field("working_dir", e.line, &d, &mut dag_rw))
                .map(|d| resolve_dir(&d, Some(&base))),
            None => options.base_dir.clone(),
        };
        let dir_base: Option<PathBuf> = match &dag.working_dir {
            Some(d) if d.is_absolute() => Some(d.clone()),
            Some(_) => None,
            None => Some(base.clone()),
        };
        dag.bindings = dag_refs.bindings;

        let defaults: Vec<Entry<'_>> = match get("defaults") {
            Some(e) if !e.value.is_null() => self
                .entries(e.value, "defaults", e.line, &DEFAULTS_KEYS)
                .unwrap_or_default(),
            _ => Vec::new(),
        };

        let steps_entry = get("steps");
        let list = self.step_list(
            steps_entry,
            "steps",
            steps_entry.map(|e| e.line).unwrap_or(root.line),
            &ListCx {
                consts: &dag.consts,
                params: &declared,
                dir_base: dir_base.as_deref(),
                defaults: &defaults,
                dag_type: dag.dag_type,
                foreach: None,
            },
        );
        dag.steps = list.steps;

        if let Some(e) = get("handler_on") {
            let hx = StepCx {
                consts: &dag.consts,
                params: &declared,
                steps: &no_steps,
                output_vars: &list.output_vars,
                dir_base: dir_base.as_deref(),
                defaults: &defaults,
                foreach: None,
            };
            dag.handler_on = self.handlers(e, &hx);
        }
        Some(dag)
    }

    fn labels(&self, k: &str, e: &Entry<'_>) -> Vec<String> {
        match &e.value.kind {
            _ if e.value.is_null() => Vec::new(),
            Kind::Scalar { value, .. } => value
                .split([',', ' '])
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            Kind::Map(pairs) => pairs
                .iter()
                .map(|(pk, pv)| format!("{}={}", key_text(pk), key_text(pv)))
                .collect(),
            Kind::Seq(items) => items
                .iter()
                .map(|item| match &item.kind {
                    Kind::Map(pairs) => pairs
                        .iter()
                        .map(|(pk, pv)| format!("{}={}", key_text(pk), key_text(pv)))
                        .collect::<Vec<_>>()
                        .join(","),
                    _ => key_text(item).to_owned(),
                })
                .collect(),
        }
        .into_iter()
        .filter(|l| {
            if l.contains('\n') {
                self.report(Some(e.line), format!("key `{k}`: a label must be one line"));
                false
            } else {
                true
            }
        })
        .collect()
    }

    fn handlers(&self, e: &Entry<'_>, hx: &StepCx<'_>) -> HandlerOn {
        let mut out = HandlerOn::default();
        if e.value.is_null() {
            return out;
        }
        for h in self
            .entries(e.value, "handler_on", e.line, &HANDLER_KEYS)
            .unwrap_or_default()
        {
            if h.value.is_null() {
                continue;
            }
            let key = join("handler_on", h.key);
            let default_name = format!("on_{}", h.key);
            let parsed = self.step(h.value, &key, h.line, &default_name, hx);
            if let Some((line, _)) = parsed.depends {
                self.report(
                    Some(line),
                    format!("key `{key}.depends`: not allowed in a handler"),
                );
            }
            let mut step = parsed.step;
            step.depends.clear();
            let slot = match h.key {
                "success" => &mut out.success,
                "failure" => &mut out.failure,
                "abort" => &mut out.abort,
                _ => &mut out.exit,
            };
            *slot = Some(step);
        }
        out
    }
}
