//! One step (or handler): its keys, what it runs, and the references in its text.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::values::{named_entries, NamedEntry};
use super::{join, key_text, Cx, Entry, KeySet};
use crate::refs::{is_identifier, Refs, Rewriter, Scope};
use crate::yaml::{Kind, Node};
use crate::{
    OutputDecl, OutputType, Parallel, ParallelItems, ParamDefault, Step, SubDagCall,
    DEFAULT_MAX_CONCURRENT,
};

/// Longest step name, in bytes.
const MAX_STEP_NAME_LEN: usize = 255;
/// Longest step id, in bytes.
const MAX_STEP_ID_LEN: usize = 40;
/// Step ids Dagu reserves (compared case-insensitively).
const RESERVED_IDS: &[&str] = &[
    "env", "params", "args", "stdout", "stderr", "output", "outputs",
];

const EXECUTORS: &str = "dispatch runs shell commands and sub-DAGs only (no docker, ssh, http, mail, jq or other executors)";

pub(super) const STEP_KEYS: KeySet<'static> = KeySet {
    known: &[
        "name",
        "id",
        "description",
        "run",
        "command",
        "script",
        "shell",
        "shell_args",
        "working_dir",
        "depends",
        "env",
        "output",
        "outputs",
        "stdout",
        "stderr",
        "continue_on",
        "retry_policy",
        "repeat_policy",
        "preconditions",
        "timeout_sec",
        "call",
        "params",
        "parallel",
        "foreach",
        "action",
        "with",
    ],
    refused: &[
        ("executor", EXECUTORS),
        ("type", EXECUTORS),
        ("config", EXECUTORS),
        (
            "exec",
            "direct exec without a shell is not supported; use `run`",
        ),
        (
            "container",
            "containers are not supported; run `docker` from `run` if you need one",
        ),
        ("llm", "LLM steps are not supported"),
        ("agent", "agent steps are not supported"),
        ("messages", "LLM steps are not supported"),
        ("tools", "LLM tools are not supported"),
        ("approval", "human approval gates are not supported"),
        ("value", "router steps are not supported"),
        ("routes", "router steps are not supported"),
        ("mail_on_error", "mail is not supported"),
        (
            "signal_on_stop",
            "steps are always stopped with SIGTERM, then SIGKILL",
        ),
        (
            "worker_selector",
            "there are no Dagu workers; a DAG runs on the scheduler that claimed it",
        ),
        (
            "log_output",
            "stdout and stderr are always logged separately",
        ),
        (
            "output_schema",
            "JSON Schema validation of output is not supported",
        ),
        ("shell_packages", "nix-shell packages are not supported"),
        ("pass_env", "sub-DAGs get their params only"),
    ],
};

/// What a step may refer to, and where its paths are relative to.
pub(super) struct StepCx<'a> {
    pub(super) consts: &'a [(String, String)],
    pub(super) params: &'a HashSet<String>,
    /// Step id → runtime name; empty for handlers (no step lookups there).
    pub(super) steps: &'a HashMap<String, String>,
    pub(super) output_vars: &'a HashSet<String>,
    /// Base of relative step `working_dir`s: the DAG's working directory when it is known at
    /// load time.
    pub(super) dir_base: Option<&'a Path>,
    /// `defaults` entries, applied to keys the step does not set.
    pub(super) defaults: &'a [Entry<'a>],
    /// In a `foreach` body: the item's name and the top-level steps (id → name).
    pub(super) foreach: Option<(&'a str, &'a HashMap<String, String>)>,
}

/// A step as parsed, with what the graph checks need.
pub(super) struct ParsedStep {
    pub(super) step: Step,
    pub(super) line: usize,
    pub(super) name_line: Option<usize>,
    pub(super) id_line: Option<usize>,
    /// Explicit `depends` (names or ids as written) and its line; `Some((_, []))` for an
    /// explicit empty list.
    pub(super) depends: Option<(usize, Vec<String>)>,
    /// Ids of steps whose outputs the step's text refers to.
    pub(super) producers: Vec<String>,
}

/// `dir` relative to `base`, unless it must be expanded at run time first (`$VAR`, `~`).
pub(super) fn resolve_dir(dir: &str, base: Option<&Path>) -> PathBuf {
    if dir.contains('$') || dir.starts_with('~') {
        return PathBuf::from(dir);
    }
    match base {
        Some(base) => base.join(dir),
        None => PathBuf::from(dir),
    }
}

/// A plain scalar as JSON (number, boolean) or text.
pub(super) fn scalar_json(value: &str, plain: bool) -> serde_json::Value {
    if plain {
        if let Ok(n) = value.parse::<i64>() {
            return n.into();
        }
        if let Some(n) = value
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
        {
            return serde_json::Value::Number(n);
        }
        match value {
            "true" | "True" | "TRUE" => return true.into(),
            "false" | "False" | "FALSE" => return false.into(),
            _ => {}
        }
    }
    value.into()
}

impl Cx<'_> {
    /// Parses one step. `default_name` names a step with neither `name` nor `id`. Always
    /// returns a step (possibly incomplete) so that later checks can still name it; errors are
    /// reported.
    pub(super) fn step(
        &self,
        node: &Node,
        key: &str,
        parent_line: usize,
        default_name: &str,
        sx: &StepCx<'_>,
    ) -> ParsedStep {
        let line = node.line.max(parent_line);
        let mut parsed = ParsedStep {
            step: Step::named(default_name),
            line,
            name_line: None,
            id_line: None,
            depends: None,
            producers: Vec::new(),
        };
        // Shorthand: `- echo hello` is a step that runs that command.
        if let Kind::Scalar { value, .. } = &node.kind {
            if !node.is_null() {
                let own = self.scope(sx, None);
                let mut refs = Refs::default();
                self.run_text(
                    key,
                    line,
                    value,
                    &mut Rewriter {
                        scope: &own,
                        refs: &mut refs,
                    },
                    &mut parsed.step,
                );
                self.finish_refs(&mut parsed, refs);
                return parsed;
            }
        }
        let before = self.error_count();
        let Some(entries) = self.entries(node, key, line, &STEP_KEYS) else {
            return parsed;
        };
        let key_errors = self.error_count() > before;
        let get = |k: &str| entries.iter().find(|e| e.key == k);

        // Identity first: references in the other keys need the step's own id.
        if let Some(e) = get("id") {
            parsed.id_line = Some(e.line);
            let k = join(key, "id");
            if let Some(id) = self.trimmed(&k, e) {
                if !(id.starts_with(|c: char| c.is_ascii_alphabetic()) && is_identifier(&id)) {
                    self.report(
                        Some(e.line),
                        format!(
                            "key `{k}`: invalid step id `{id}` (expected [A-Za-z][A-Za-z0-9_]*)"
                        ),
                    );
                } else if id.len() > MAX_STEP_ID_LEN {
                    self.report(
                        Some(e.line),
                        format!("key `{k}`: step id `{id}` is longer than {MAX_STEP_ID_LEN} bytes"),
                    );
                } else if RESERVED_IDS.contains(&id.to_ascii_lowercase().as_str()) {
                    self.report(
                        Some(e.line),
                        format!("key `{k}`: `{id}` is reserved and cannot be a step id"),
                    );
                } else {
                    parsed.step.name = id.clone();
                    parsed.step.id = Some(id);
                }
            }
        }
        if let Some(e) = get("name") {
            parsed.name_line = Some(e.line);
            let k = join(key, "name");
            if let Some(name) = self.trimmed(&k, e) {
                if name.contains(['/', '\\', '\0']) {
                    self.report(Some(e.line), format!("key `{k}`: step name `{name}` must not be blank or hold `/`, `\\` or NUL"));
                } else if name.len() > MAX_STEP_NAME_LEN {
                    self.report(
                        Some(e.line),
                        format!("key `{k}`: step name is longer than {MAX_STEP_NAME_LEN} bytes"),
                    );
                } else if !name.is_empty() {
                    parsed.step.name = name;
                }
            }
        }
        let own_id = parsed.step.id.clone();
        let scope = self.scope(sx, own_id.as_deref());
        let mut refs = Refs::default();
        let mut rw = Rewriter {
            scope: &scope,
            refs: &mut refs,
        };

        // Keys the step leaves out come from `defaults`; `env` and `preconditions` add up.
        let from_defaults = |k: &str| sx.defaults.iter().find(|d| d.key == k);
        for d in sx.defaults {
            if matches!(d.key, "env" | "preconditions") {
                self.add_key(&join("defaults", d.key), d, &mut rw, &mut parsed.step);
            }
        }
        for name in [
            "continue_on",
            "retry_policy",
            "repeat_policy",
            "timeout_sec",
        ] {
            if get(name).is_none() {
                if let Some(d) = from_defaults(name) {
                    self.policy_key(&join("defaults", name), d, &mut rw, &mut parsed.step);
                }
            }
        }

        let mut shell_args: Vec<String> = Vec::new();
        let mut call_dag: Option<String> = None;
        let mut call_params: Vec<ParamDefault> = Vec::new();
        let mut parallel: Option<Parallel> = None;
        let mut has_run = false;
        for e in &entries {
            let k = join(key, e.key);
            match e.key {
                "id" | "name" => {}
                "description" => {
                    parsed.step.description = self.ok(self.string(&k, e)).flatten().unwrap_or_default()
                }
                "run" => {
                    has_run = true;
                    self.run_key(&k, e, &mut rw, &mut parsed.step);
                }
                "command" => {
                    let text = match &e.value.kind {
                        Kind::Seq(parts) => parts
                            .iter()
                            .map(|p| match &p.kind {
                                Kind::Scalar { value, .. } => Ok(value.as_str()),
                                _ => Err(self.type_err(p.line, &k, "a list of strings", p)),
                            })
                            .collect::<Result<Vec<_>, _>>()
                            .map(|w| Some(w.join(" "))),
                        _ => self.string(&k, e),
                    };
                    parsed.step.command = self
                        .ok(text)
                        .flatten()
                        .filter(|c| !c.trim().is_empty())
                        .and_then(|c| self.rewrite_field(&k, e.line, &c, &mut rw));
                }
                "script" => {
                    parsed.step.script = self
                        .ok(self.string(&k, e))
                        .flatten()
                        .filter(|s| !s.trim().is_empty())
                        .and_then(|s| self.rewrite_field(&k, e.line, &s, &mut rw));
                }
                "shell" => parsed.step.shell = self.shell(&k, e),
                "shell_args" => shell_args = self.shell_args(&k, e),
                "working_dir" => {
                    parsed.step.working_dir = self
                        .ok(self.string(&k, e))
                        .flatten()
                        .and_then(|d| self.rewrite_field(&k, e.line, &d, &mut rw))
                        .map(|d| resolve_dir(&d, sx.dir_base));
                }
                "depends" => {
                    let list = match &e.value.kind {
                        _ if e.value.is_null() => None,
                        Kind::Scalar { value, .. } => Some(vec![value.clone()]),
                        Kind::Seq(items) => items
                            .iter()
                            .map(|d| match &d.kind {
                                Kind::Scalar { value, .. } if !d.is_null() => Ok(value.clone()),
                                _ => Err(self.type_err(d.line.max(e.line), &k, "a list of step names", d)),
                            })
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(|err| self.push(err))
                            .ok(),
                        Kind::Map(_) => {
                            self.push(self.type_err(e.line, &k, "a step name or a list of step names", e.value));
                            None
                        }
                    };
                    parsed.depends = list.map(|l| (e.line, l));
                }
                "env" | "preconditions" => self.add_key(&k, e, &mut rw, &mut parsed.step),
                "continue_on" | "retry_policy" | "repeat_policy" | "timeout_sec" => {
                    self.policy_key(&k, e, &mut rw, &mut parsed.step)
                }
                "output" => match &e.value.kind {
                    Kind::Map(_) => self.report(
                        Some(e.line),
                        format!("key `{k}`: not supported: structured `output` maps; use `outputs` with `DAGU_OUTPUT_FILE`, or `output: VAR`"),
                    ),
                    _ => {
                        parsed.step.output = self.ok(self.string(&k, e)).flatten().and_then(|v| {
                            let v = v.trim_start_matches('$').to_owned();
                            if is_identifier(&v) {
                                Some(v)
                            } else {
                                self.report(Some(e.line), format!("key `{k}`: invalid variable name `{v}`"));
                                None
                            }
                        })
                    }
                },
                "outputs" => parsed.step.outputs = self.outputs(&k, e),
                "stdout" | "stderr" => {
                    let path = match &e.value.kind {
                        Kind::Map(_) => {
                            self.report(
                                Some(e.line),
                                format!("key `{k}`: not supported: `{}` as a map (artifacts, stdout outputs); give a file path", e.key),
                            );
                            None
                        }
                        _ => self
                            .ok(self.string(&k, e))
                            .flatten()
                            .filter(|p| !p.trim().is_empty())
                            .and_then(|p| self.rewrite_field(&k, e.line, &p, &mut rw)),
                    };
                    if e.key == "stdout" {
                        parsed.step.stdout = path;
                    } else {
                        parsed.step.stderr = path;
                    }
                }
                "call" => {
                    call_dag = self
                        .ok(self.string(&k, e))
                        .flatten()
                        .filter(|d| !d.trim().is_empty())
                        .and_then(|d| self.rewrite_field(&k, e.line, &d, &mut rw));
                    if call_dag.is_none() {
                        self.report(Some(e.line), format!("key `{k}`: must name a DAG"));
                    }
                }
                "params" => call_params = self.call_params(&k, e, &mut rw),
                "parallel" => parallel = self.parallel(&k, e, &mut rw),
                "foreach" => parsed.step.foreach = self.foreach(&k, e, &mut rw, sx),
                "action" => match self.ok(self.string(&k, e)).flatten().as_deref() {
                    Some("dag.run") => {}
                    Some("dag.enqueue") => self.report(
                        Some(e.line),
                        format!("key `{k}`: not supported: action `dag.enqueue` (use `dag.run`)"),
                    ),
                    Some(other) => self.report(
                        Some(e.line),
                        format!("key `{k}`: not supported: action `{other}` ({EXECUTORS})"),
                    ),
                    None => self.report(Some(e.line), format!("key `{k}`: must name an action")),
                },
                "with" => {}
                _ => {}
            }
        }

        // `with`: the sub-DAG of `action: dag.run`, or the shell of a `run` step.
        let is_action = get("action").is_some();
        let is_dag_run = get("action")
            .and_then(|e| match &e.value.kind {
                Kind::Scalar { value, .. } => Some(value.as_str() == "dag.run"),
                _ => None,
            })
            .unwrap_or(false);
        // The `with` of a refused action is not read: the action's error says it all.
        if let Some(e) = get("with").filter(|_| is_dag_run || !is_action) {
            let k = join(key, "with");
            let allowed: &[&str] = if is_dag_run {
                &["dag", "params"]
            } else {
                &["shell", "shell_args"]
            };
            let keys = KeySet {
                known: allowed,
                refused: &[
                    ("queue", "queues of sub-DAGs are not supported"),
                    ("shell_packages", "nix-shell packages are not supported"),
                ],
            };
            for w in self.entries(e.value, &k, e.line, &keys).unwrap_or_default() {
                let wk = join(&k, w.key);
                match w.key {
                    "dag" => {
                        call_dag = self
                            .ok(self.string(&wk, &w))
                            .flatten()
                            .filter(|d| !d.trim().is_empty())
                            .and_then(|d| self.rewrite_field(&wk, w.line, &d, &mut rw))
                    }
                    "params" => call_params = self.call_params(&wk, &w, &mut rw),
                    "shell" => parsed.step.shell = self.shell(&wk, &w),
                    _ => shell_args = self.shell_args(&wk, &w),
                }
            }
            if is_dag_run && call_dag.is_none() {
                self.report(
                    Some(e.line),
                    format!("key `{k}.dag`: `action: dag.run` needs the DAG to run"),
                );
            }
        } else if is_dag_run && !key_errors {
            self.report(
                Some(line),
                format!("key `{key}.with`: `action: dag.run` needs `with: {{dag: NAME}}`"),
            );
        }
        if !shell_args.is_empty() {
            match &mut parsed.step.shell {
                Some(shell) => {
                    shell.push(' ');
                    shell.push_str(&shell_args.join(" "));
                }
                None => self.report(Some(line), format!("key `{key}.shell_args`: needs `shell`")),
            }
        }
        if parsed.step.shell.as_deref().map(str::trim) == Some("direct") {
            self.report(
                Some(line),
                format!("key `{key}.shell`: not supported: `direct` (a step runs through a shell)"),
            );
        }

        let step = &mut parsed.step;
        let runs = step.command.is_some() || step.script.is_some() || !step.commands.is_empty();
        if get("foreach").is_some() {
            let others: Vec<&str> = ["run", "command", "script", "call", "parallel", "action"]
                .into_iter()
                .filter(|o| get(o).is_some())
                .collect();
            if !others.is_empty() {
                self.report(
                    Some(line),
                    format!(
                        "key `{key}.foreach`: a `foreach` step cannot also have `{}`",
                        others.join("`, `")
                    ),
                );
            }
            if !step.outputs.is_empty() {
                self.report(Some(line), format!("key `{key}.outputs`: a `foreach` step publishes its collected outputs as `${{ID.outputs}}`; declare none"));
            }
            self.finish_refs(&mut parsed, refs);
            return parsed;
        }
        if parallel.is_some() && !step.outputs.is_empty() {
            self.report(Some(line), format!("key `{key}.outputs`: a `parallel` step publishes its children's outputs as `${{ID.outputs}}`; declare none"));
        }
        match call_dag {
            Some(dag) => {
                if runs || has_run {
                    self.report(
                        Some(line),
                        format!("key `{key}`: step `{}` calls a sub-DAG and cannot also have `run`, `command` or `script`", step.name),
                    );
                }
                step.call = Some(SubDagCall {
                    dag,
                    params: call_params,
                    parallel,
                });
            }
            None => {
                if get("params").is_some() && !key_errors {
                    self.report(
                        Some(line),
                        format!("key `{key}.params`: step params belong to a sub-DAG call (`call: NAME` or `action: dag.run`)"),
                    );
                }
                if get("parallel").is_some() && !key_errors {
                    self.report(
                        Some(line),
                        format!("key `{key}.parallel`: `parallel` needs a sub-DAG call (`call: NAME` or `action: dag.run`)"),
                    );
                }
                if has_run && (get("command").is_some() || get("script").is_some()) {
                    self.report(
                        Some(line),
                        format!(
                            "key `{key}`: `run` replaces `command` and `script`; write one of them"
                        ),
                    );
                }
                if !runs && !has_run && !key_errors && !is_action {
                    self.report(
                        Some(line),
                        format!("key `{key}`: step `{}` needs `run` (or `command`, `script`, or a sub-DAG `call`)", step.name),
                    );
                }
            }
        }
        if !step.outputs.is_empty() && step.id.is_none() && parsed.id_line.is_none() {
            self.report(
                Some(line),
                format!("key `{key}.outputs`: a step with `outputs` needs an `id`"),
            );
        }
        self.finish_refs(&mut parsed, refs);
        parsed
    }

    fn scope<'s>(&self, sx: &'s StepCx<'_>, own_id: Option<&'s str>) -> Scope<'s> {
        Scope {
            consts: sx.consts,
            params: sx.params,
            steps: sx.steps,
            own_id,
            output_vars: sx.output_vars,
            consts_only: false,
            foreach: sx.foreach,
        }
    }

    fn finish_refs(&self, parsed: &mut ParsedStep, refs: Refs) {
        parsed.step.bindings = refs.bindings;
        parsed.producers = refs.producers;
    }

    /// `env` or `preconditions` (of the step or of `defaults`), added to what the step has.
    fn add_key(&self, k: &str, e: &Entry<'_>, rw: &mut Rewriter<'_, '_>, step: &mut Step) {
        if e.key == "env" {
            let env = self.env(k, e.line, e.value, rw);
            step.env.extend(env);
        } else {
            let p = self.preconditions(k, e, rw);
            step.preconditions.extend(p);
        }
    }

    fn policy_key(&self, k: &str, e: &Entry<'_>, rw: &mut Rewriter<'_, '_>, step: &mut Step) {
        match e.key {
            "continue_on" => step.continue_on = self.continue_on(k, e),
            "retry_policy" => step.retry_policy = self.retry_policy(k, e),
            "repeat_policy" => step.repeat_policy = self.repeat_policy(k, e, rw),
            _ => step.timeout_sec = self.ok(self.uint(k, e)).flatten().filter(|&t| t > 0),
        }
    }

    /// One `run` text: a line is a command, more lines a script.
    fn run_text(
        &self,
        key: &str,
        line: usize,
        text: &str,
        rw: &mut Rewriter<'_, '_>,
        step: &mut Step,
    ) {
        if text.trim().is_empty() {
            self.report(Some(line), format!("key `{key}`: must not be empty"));
            return;
        }
        let Some(text) = self.rewrite_field(key, line, text, rw) else {
            return;
        };
        if text.contains('\n') {
            step.script = Some(text);
        } else {
            step.command = Some(text);
        }
    }

    /// `run`: a string (command or script), or a list of one-line commands.
    fn run_key(&self, k: &str, e: &Entry<'_>, rw: &mut Rewriter<'_, '_>, step: &mut Step) {
        match &e.value.kind {
            Kind::Scalar { value, .. } if !e.value.is_null() => {
                self.run_text(k, e.line, value, rw, step)
            }
            Kind::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    let ik = format!("{k}[{i}]");
                    let il = item.line.max(e.line);
                    let text = match &item.kind {
                        Kind::Scalar { value, .. } if !item.is_null() => value.clone(),
                        Kind::Map(pairs) if pairs.len() == 1 => match &pairs[0].1.kind {
                            Kind::Scalar { value, .. } => {
                                format!("{}: {value}", key_text(&pairs[0].0))
                            }
                            _ => {
                                self.push(self.type_err(il, &ik, "a command", item));
                                continue;
                            }
                        },
                        _ if item.is_null() => continue,
                        _ => {
                            self.push(self.type_err(il, &ik, "a command", item));
                            continue;
                        }
                    };
                    if text.trim().is_empty() {
                        continue;
                    }
                    if text.contains('\n') {
                        self.report(
                            Some(il),
                            format!("key `{ik}`: a command of a `run` list must be one line"),
                        );
                        continue;
                    }
                    if let Some(t) = self.rewrite_field(&ik, il, &text, rw) {
                        step.commands.push(t);
                    }
                }
                if step.commands.is_empty() {
                    self.report(
                        Some(e.line),
                        format!("key `{k}`: needs at least one command"),
                    );
                }
            }
            _ => self.push(self.type_err(
                e.line,
                k,
                "a command, a script or a list of commands",
                e.value,
            )),
        }
    }

    /// `shell`: `bash -o pipefail` or `[bash, -o, pipefail]`, kept as one whitespace-separated
    /// string.
    fn shell(&self, k: &str, e: &Entry<'_>) -> Option<String> {
        let words = match &e.value.kind {
            Kind::Seq(_) => self.shell_args(k, e),
            _ => {
                return self
                    .ok(self.string(k, e))
                    .flatten()
                    .filter(|s| !s.trim().is_empty())
            }
        };
        (!words.is_empty()).then(|| words.join(" "))
    }

    fn shell_args(&self, k: &str, e: &Entry<'_>) -> Vec<String> {
        let words = self.ok(self.strings(k, e)).unwrap_or_default();
        if words
            .iter()
            .any(|w| w.trim().is_empty() || w.contains(char::is_whitespace))
        {
            self.report(
                Some(e.line),
                format!("key `{k}`: a shell argument must be one word (no spaces)"),
            );
            return Vec::new();
        }
        words
    }

    /// `outputs`: `- name: NAME` with an optional `type: string | json`.
    fn outputs(&self, k: &str, e: &Entry<'_>) -> Vec<OutputDecl> {
        let items = match &e.value.kind {
            Kind::Seq(items) if !items.is_empty() => items,
            _ => {
                self.push(self.type_err(e.line, k, "a non-empty list of `- name: NAME`", e.value));
                return Vec::new();
            }
        };
        let keys = KeySet {
            known: &["name", "type"],
            refused: &[],
        };
        let mut out: Vec<OutputDecl> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let ik = format!("{k}[{i}]");
            let Some(fields) = self.entries(item, &ik, item.line.max(e.line), &keys) else {
                continue;
            };
            let mut decl = OutputDecl {
                name: String::new(),
                kind: OutputType::String,
            };
            for f in &fields {
                let fk = join(&ik, f.key);
                let value = self.ok(self.string(&fk, f)).flatten().unwrap_or_default();
                match f.key {
                    "name" => {
                        if value.starts_with(|c: char| c.is_ascii_alphabetic())
                            && is_identifier(&value)
                        {
                            decl.name = value;
                        } else {
                            self.report(Some(f.line), format!("key `{fk}`: invalid output name `{value}` (expected [A-Za-z][A-Za-z0-9_]*)"));
                        }
                    }
                    _ => match value.as_str() {
                        "string" => decl.kind = OutputType::String,
                        "json" => decl.kind = OutputType::Json,
                        other => self.report(
                            Some(f.line),
                            format!("key `{fk}`: expected `string` or `json`, found `{other}`"),
                        ),
                    },
                }
            }
            if !fields.iter().any(|f| f.key == "name") {
                self.report(
                    Some(item.line.max(e.line)),
                    format!("key `{ik}`: needs `name`"),
                );
                continue;
            }
            if decl.name.is_empty() {
                continue;
            }
            if out.iter().any(|d| d.name == decl.name) {
                self.report(
                    Some(item.line.max(e.line)),
                    format!("key `{ik}.name`: output `{}` is declared twice", decl.name),
                );
                continue;
            }
            out.push(decl);
        }
        out
    }

    /// Params of a sub-DAG call: a runtime-param string, a map, or a list of `NAME=value`
    /// strings and one-key maps. Values are rewritten like other text.
    fn call_params(&self, k: &str, e: &Entry<'_>, rw: &mut Rewriter<'_, '_>) -> Vec<ParamDefault> {
        let mut raw: Vec<(Option<String>, String, usize)> = Vec::new();
        for entry in named_entries(k, e.value) {
            match entry {
                NamedEntry::Whole { text } => {
                    match dispatch_webhook_params::parse_runtime_params(text) {
                        Ok(parsed) => {
                            raw.extend(parsed.into_iter().map(|p| (p.name, p.value, e.line)))
                        }
                        Err(err) => self.report(Some(e.line), format!("key `{k}`: {err}")),
                    }
                }
                NamedEntry::Pair {
                    name,
                    value,
                    key,
                    line,
                } => {
                    if let Some(v) = self.ok(self.value_text(&key, line, value)) {
                        raw.push((Some(name.to_owned()), v, line));
                    }
                }
                NamedEntry::Text { text, line, .. } => match text.split_once('=') {
                    Some((n, v)) => raw.push((Some(n.to_owned()), v.to_owned(), line)),
                    None => raw.push((None, text.to_owned(), line)),
                },
                NamedEntry::Other { item, key } => self.push(self.type_err(
                    item.line.max(e.line),
                    &key,
                    "`NAME=value` or a one-key map",
                    item,
                )),
            }
        }
        raw.into_iter()
            .filter_map(|(name, value, line)| {
                if let Some(n) = &name {
                    if !is_identifier(n) {
                        self.report(Some(line), format!("key `{k}`: invalid param name `{n}`"));
                        return None;
                    }
                }
                let value = self.rewrite_field(k, line, &value, rw)?;
                Some(ParamDefault { name, value })
            })
            .collect()
    }

    /// `parallel`: a string, a list of items, or `{items, max_concurrent}`.
    fn parallel(&self, k: &str, e: &Entry<'_>, rw: &mut Rewriter<'_, '_>) -> Option<Parallel> {
        let mut max_concurrent = DEFAULT_MAX_CONCURRENT;
        let items_node = match &e.value.kind {
            Kind::Map(_) => {
                let keys = KeySet {
                    known: &["items", "max_concurrent"],
                    refused: &[],
                };
                let fields = self.entries(e.value, k, e.line, &keys)?;
                max_concurrent =
                    self.max_concurrent(k, fields.iter().find(|f| f.key == "max_concurrent"));
                match fields.iter().find(|f| f.key == "items") {
                    Some(f) => (f.value, f.line, join(k, "items")),
                    None => {
                        self.report(Some(e.line), format!("key `{k}`: needs `items`"));
                        return None;
                    }
                }
            }
            _ => (e.value, e.line, k.to_owned()),
        };
        let (node, line, ik) = items_node;
        let items = match &node.kind {
            Kind::Scalar { value, .. } if !node.is_null() && !value.trim().is_empty() => {
                ParallelItems::Expr(self.rewrite_field(&ik, line, value, rw)?)
            }
            Kind::Seq(list) if !list.is_empty() => {
                let mut out = Vec::with_capacity(list.len());
                for (i, item) in list.iter().enumerate() {
                    let il = item.line.max(line);
                    match &item.kind {
                        Kind::Scalar { value, plain } if !item.is_null() => {
                            out.push(scalar_json(value, *plain))
                        }
                        Kind::Map(pairs) => {
                            let mut obj = serde_json::Map::new();
                            for (pk, pv) in pairs {
                                match &pv.kind {
                                    Kind::Scalar { value, plain } => {
                                        obj.insert(
                                            key_text(pk).to_owned(),
                                            scalar_json(value, *plain),
                                        );
                                    }
                                    _ => self.push(self.type_err(
                                        pk.line,
                                        &format!("{ik}[{i}].{}", key_text(pk)),
                                        "a string, number or boolean",
                                        pv,
                                    )),
                                }
                            }
                            out.push(serde_json::Value::Object(obj));
                        }
                        _ => self.push(self.type_err(
                            il,
                            &format!("{ik}[{i}]"),
                            "a string, a number or a flat map",
                            item,
                        )),
                    }
                }
                if out.len() > 1000 {
                    self.report(Some(line), format!("key `{ik}`: more than 1000 items"));
                }
                ParallelItems::List(out)
            }
            _ => {
                self.push(self.type_err(
                    line,
                    &ik,
                    "a non-empty list of items or a `${VAR}` string",
                    node,
                ));
                return None;
            }
        };
        Some(Parallel {
            items,
            max_concurrent,
        })
    }
}
