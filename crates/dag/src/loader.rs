//! The DAG YAML loader (format: `docs/dag-format.md`): file → validated [`Dag`], with errors that name the file,
//! the line and the key.
//!
//! The choices the format leaves open are listed in the crate docs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::yaml::{self, Kind, Node};
use crate::{ContinueOn, Dag, DagError, DagType, HandlerOn, ParamDefault, Step};

const DAG_KEYS: &[&str] = &[
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
];
const STEP_KEYS: &[&str] = &[
    "name",
    "command",
    "script",
    "shell",
    "working_dir",
    "depends",
    "env",
    "timeout_sec",
    "continue_on",
];
const HANDLER_KEYS: &[&str] = &["success", "failure", "abort", "exit"];
const CONTINUE_ON_KEYS: &[&str] = &["failure"];

/// Default of `max_clean_up_time_sec`.
pub const DEFAULT_MAX_CLEAN_UP_TIME_SEC: u64 = 5;

/// Loads and validates the DAG file at `path`. The DAG's name is its `name` key or the file stem.
pub fn load_dag_file(path: &Path) -> Result<Dag, DagError> {
    let text = std::fs::read_to_string(path).map_err(|e| DagError {
        path: path.to_path_buf(),
        line: None,
        message: format!("failed to read file: {e}"),
    })?;
    parse_dag(path, &text)
}

/// Parses and validates DAG YAML `text` as if read from `path` (used for messages, the name
/// fallback and [`Dag::location`]).
pub fn parse_dag(path: &Path, text: &str) -> Result<Dag, DagError> {
    Loader { path }.dag(text)
}

struct Loader<'a> {
    path: &'a Path,
}

/// A key of a map, with the line of the key and the value.
struct Entry<'n> {
    key: &'n str,
    line: usize,
    value: &'n Node,
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

impl Loader<'_> {
    fn err(&self, line: Option<usize>, message: impl Into<String>) -> DagError {
        DagError {
            path: self.path.to_path_buf(),
            line,
            message: message.into(),
        }
    }

    fn type_err(&self, line: usize, key: &str, expected: &str, found: &Node) -> DagError {
        self.err(
            Some(line),
            format!(
                "key `{key}`: expected {expected}, found {}",
                found.describe()
            ),
        )
    }

    /// The entries of a map at `key` (empty for the top level), refusing unknown and repeated
    /// keys.
    fn entries<'n>(
        &self,
        node: &'n Node,
        key: &str,
        line: usize,
        allowed: &[&str],
    ) -> Result<Vec<Entry<'n>>, DagError> {
        let Kind::Map(pairs) = &node.kind else {
            return Err(if key.is_empty() {
                self.err(
                    Some(node.line),
                    format!("expected a map of DAG keys, found {}", node.describe()),
                )
            } else {
                self.type_err(line, key, "a map", node)
            });
        };
        let mut out: Vec<Entry<'n>> = Vec::with_capacity(pairs.len());
        for (k, v) in pairs {
            let name = match &k.kind {
                Kind::Scalar { value, .. } => value.as_str(),
                _ => {
                    return Err(self.err(
                        Some(k.line),
                        format!("expected a key name in `{key}`, found {}", k.describe()),
                    ))
                }
            };
            let place = if key.is_empty() {
                String::new()
            } else {
                format!(" in `{key}`")
            };
            if !allowed.contains(&name) {
                return Err(self.err(
                    Some(k.line),
                    format!(
                        "unknown key `{name}`{place} (expected one of: {})",
                        allowed.join(", ")
                    ),
                ));
            }
            if out.iter().any(|e| e.key == name) {
                return Err(self.err(Some(k.line), format!("duplicate key `{name}`{place}")));
            }
            out.push(Entry {
                key: name,
                line: k.line,
                value: v,
            });
        }
        Ok(out)
    }

    fn string(&self, key: &str, e: &Entry<'_>) -> Result<Option<String>, DagError> {
        match &e.value.kind {
            _ if e.value.is_null() => Ok(None),
            Kind::Scalar { value, .. } => Ok(Some(value.clone())),
            _ => Err(self.type_err(e.line, key, "a string", e.value)),
        }
    }

    fn uint(&self, key: &str, e: &Entry<'_>) -> Result<Option<u64>, DagError> {
        match &e.value.kind {
            _ if e.value.is_null() => Ok(None),
            Kind::Scalar { value, plain: true } => value.parse::<u64>().map(Some).map_err(|_| {
                self.err(
                    Some(e.line),
                    format!("key `{key}`: expected a non-negative integer, found `{value}`"),
                )
            }),
            _ => Err(self.type_err(e.line, key, "a non-negative integer", e.value)),
        }
    }

    fn boolean(&self, key: &str, e: &Entry<'_>) -> Result<bool, DagError> {
        match &e.value.kind {
            _ if e.value.is_null() => Ok(false),
            Kind::Scalar { value, plain: true } => match value.as_str() {
                "true" | "True" | "TRUE" => Ok(true),
                "false" | "False" | "FALSE" => Ok(false),
                other => Err(self.err(
                    Some(e.line),
                    format!("key `{key}`: expected true or false, found `{other}`"),
                )),
            },
            _ => Err(self.type_err(e.line, key, "true or false", e.value)),
        }
    }

    /// An env or param value: any scalar, kept as written; null is empty.
    fn value_text(&self, key: &str, line: usize, node: &Node) -> Result<String, DagError> {
        match &node.kind {
            _ if node.is_null() => Ok(String::new()),
            Kind::Scalar { value, .. } => Ok(value.clone()),
            _ => Err(self.type_err(line, key, "a scalar value", node)),
        }
    }

    fn dag(&self, text: &str) -> Result<Dag, DagError> {
        let root = yaml::parse(text)
            .map_err(|e| self.err(e.line, e.message))?
            .ok_or_else(|| self.err(None, "empty file: key `steps` is required"))?;
        let entries = self.entries(&root, "", root.line, DAG_KEYS)?;

        let mut name = None;
        let mut name_line = None;
        let mut description = String::new();
        let mut dag_type = DagType::Chain;
        let mut params = Vec::new();
        let mut env = Vec::new();
        let mut steps_entry = None;
        let mut timeout_sec = None;
        let mut max_clean_up_time_sec = DEFAULT_MAX_CLEAN_UP_TIME_SEC;
        let mut queue = None;
        let mut handler_entry = None;
        for e in &entries {
            match e.key {
                "name" => {
                    name = self.string("name", e)?;
                    name_line = Some(e.line);
                }
                "description" => description = self.string("description", e)?.unwrap_or_default(),
                "type" => {
                    dag_type = match self.string("type", e)?.as_deref() {
                        None | Some("chain") => DagType::Chain,
                        Some("graph") => DagType::Graph,
                        Some(other) => {
                            return Err(self.err(
                                Some(e.line),
                                format!("key `type`: expected `chain` or `graph`, found `{other}`"),
                            ))
                        }
                    }
                }
                "params" => params = self.params(e)?,
                "env" => env = self.env("env", e.line, e.value)?,
                "steps" => steps_entry = Some(e),
                "timeout_sec" => timeout_sec = self.uint("timeout_sec", e)?.filter(|&t| t > 0),
                "max_clean_up_time_sec" => {
                    max_clean_up_time_sec = self
                        .uint("max_clean_up_time_sec", e)?
                        .unwrap_or(DEFAULT_MAX_CLEAN_UP_TIME_SEC)
                }
                "queue" => queue = Some((self.string("queue", e)?, e.line)),
                "handler_on" => handler_entry = Some(e),
                _ => {}
            }
        }

        let name = match name {
            Some(n) => n,
            None => self
                .path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        crate::validate_dag_name(&name).map_err(|e| {
            let origin = if name_line.is_some() {
                "key `name`"
            } else {
                "file name"
            };
            self.err(name_line, format!("{origin}: {e}"))
        })?;
        let queue = match queue {
            Some((Some(q), line)) => {
                crate::names::validate_queue_name(&q)
                    .map_err(|e| self.err(Some(line), format!("key `queue`: {e}")))?;
                q
            }
            _ => name.clone(),
        };

        let location = std::path::absolute(self.path).unwrap_or_else(|_| self.path.to_path_buf());
        let base_dir = location.parent().map(Path::to_path_buf).unwrap_or_default();

        let steps = match steps_entry {
            Some(e) => self.steps(e, dag_type, &base_dir)?,
            None => Vec::new(),
        };
        if steps.is_empty() {
            let line = steps_entry.map(|e| e.line);
            return Err(self.err(line, "key `steps`: at least one step is required"));
        }
        let handler_on = match handler_entry {
            Some(e) => self.handlers(e, &base_dir)?,
            None => HandlerOn::default(),
        };

        Ok(Dag {
            name,
            description,
            dag_type,
            params,
            env,
            steps,
            timeout_sec,
            max_clean_up_time_sec,
            queue,
            handler_on,
            location,
            resolved_params: Vec::new(),
        })
    }

    /// `params`: a runtime-param string, a list of `NAME: value` maps / `NAME=value` strings /
    /// positional values, or a map.
    fn params(&self, e: &Entry<'_>) -> Result<Vec<ParamDefault>, DagError> {
        let check = |name: &str, line: usize| -> Result<(), DagError> {
            if is_param_name(name) {
                Ok(())
            } else {
                Err(self.err(
                    Some(line),
                    format!("key `params`: invalid param name `{name}` (expected [A-Za-z_][A-Za-z0-9_]*)"),
                ))
            }
        };
        match &e.value.kind {
            _ if e.value.is_null() => Ok(Vec::new()),
            Kind::Scalar { value, .. } => {
                let parsed = dispatch_webhook_params::parse_runtime_params(value)
                    .map_err(|err| self.err(Some(e.line), format!("key `params`: {err}")))?;
                Ok(parsed
                    .into_iter()
                    .map(|p| ParamDefault {
                        name: p.name,
                        value: p.value,
                    })
                    .collect())
            }
            Kind::Map(pairs) => {
                let mut out = Vec::with_capacity(pairs.len());
                for (k, v) in pairs {
                    let name = self.value_text("params", k.line, k)?;
                    check(&name, k.line)?;
                    out.push(ParamDefault {
                        name: Some(name),
                        value: self.value_text(&format!("params.{}", key_text(k)), k.line, v)?,
                    });
                }
                Ok(out)
            }
            Kind::Seq(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let key = format!("params[{i}]");
                    match &item.kind {
                        Kind::Map(pairs) if pairs.len() == 1 => {
                            let (k, v) = &pairs[0];
                            let name = self.value_text(&key, k.line, k)?;
                            check(&name, k.line)?;
                            out.push(ParamDefault {
                                name: Some(name),
                                value: self.value_text(&key, k.line, v)?,
                            });
                        }
                        Kind::Scalar { value, .. } if !item.is_null() => {
                            match value.split_once('=') {
                                Some((name, v)) => {
                                    check(name, item.line)?;
                                    out.push(ParamDefault {
                                        name: Some(name.to_owned()),
                                        value: v.to_owned(),
                                    });
                                }
                                None => out.push(ParamDefault {
                                    name: None,
                                    value: value.clone(),
                                }),
                            }
                        }
                        _ => {
                            return Err(self.type_err(
                                item.line,
                                &key,
                                "a one-key map `NAME: value` or a string `NAME=value`",
                                item,
                            ))
                        }
                    }
                }
                Ok(out)
            }
        }
    }

    /// `env`: a map, or a list of one-key maps / `KEY=VALUE` strings.
    fn env(&self, key: &str, line: usize, node: &Node) -> Result<Vec<(String, String)>, DagError> {
        let check = |name: &str, line: usize| -> Result<(), DagError> {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                Err(self.err(
                    Some(line),
                    format!("key `{key}`: invalid variable name `{name}`"),
                ))
            } else {
                Ok(())
            }
        };
        let mut out = Vec::new();
        match &node.kind {
            _ if node.is_null() => {}
            Kind::Map(pairs) => {
                for (k, v) in pairs {
                    let name = self.value_text(key, k.line, k)?;
                    check(&name, k.line)?;
                    let value = self.value_text(&format!("{key}.{name}"), k.line, v)?;
                    out.push((name, value));
                }
            }
            Kind::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    let item_key = format!("{key}[{i}]");
                    match &item.kind {
                        Kind::Map(pairs) if pairs.len() == 1 => {
                            let (k, v) = &pairs[0];
                            let name = self.value_text(&item_key, k.line, k)?;
                            check(&name, k.line)?;
                            out.push((name, self.value_text(&item_key, k.line, v)?));
                        }
                        Kind::Scalar { value, .. } if !item.is_null() => {
                            let Some((name, v)) = value.split_once('=') else {
                                return Err(self.err(
                                    Some(item.line),
                                    format!(
                                        "key `{item_key}`: expected `KEY=VALUE`, found `{value}`"
                                    ),
                                ));
                            };
                            check(name, item.line)?;
                            out.push((name.to_owned(), v.to_owned()));
                        }
                        _ => {
                            return Err(self.type_err(
                                item.line,
                                &item_key,
                                "a one-key map `KEY: value` or a string `KEY=VALUE`",
                                item,
                            ))
                        }
                    }
                }
            }
            Kind::Scalar { .. } => {
                return Err(self.type_err(line, key, "a map or a list", node));
            }
        }
        if out.iter().any(|(_, v)| v.contains('\0')) {
            return Err(self.err(Some(line), format!("key `{key}`: a value holds a NUL byte")));
        }
        Ok(out)
    }

    fn steps(
        &self,
        e: &Entry<'_>,
        dag_type: DagType,
        base_dir: &Path,
    ) -> Result<Vec<Step>, DagError> {
        let items = match &e.value.kind {
            _ if e.value.is_null() => return Ok(Vec::new()),
            Kind::Seq(items) => items,
            _ => return Err(self.type_err(e.line, "steps", "a list of steps", e.value)),
        };
        let mut steps: Vec<Step> = Vec::with_capacity(items.len());
        // Line of each step's `depends` key (or of the step), for dependency errors.
        let mut depends_lines = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let key = format!("steps[{i}]");
            let parsed = self.step(item, &key, e.line, &format!("step{}", i + 1), base_dir)?;
            if let Some(prev) = steps.iter().position(|s| s.name == parsed.step.name) {
                return Err(self.err(
                    Some(parsed.name_line.unwrap_or(item.line)),
                    format!(
                        "key `{key}.name`: duplicate step name `{}` (also `steps[{prev}]`)",
                        parsed.step.name
                    ),
                ));
            }
            let mut step = parsed.step;
            match (dag_type, parsed.depends_line) {
                (DagType::Chain, Some(line)) => {
                    return Err(self.err(
                        Some(line),
                        format!(
                            "key `{key}.depends`: not allowed in a chain DAG (set `type: graph`)"
                        ),
                    ))
                }
                (DagType::Chain, None) => {
                    step.depends = steps
                        .last()
                        .map(|p| vec![p.name.clone()])
                        .unwrap_or_default();
                }
                (DagType::Graph, _) => {}
            }
            depends_lines.push(parsed.depends_line.unwrap_or(item.line));
            steps.push(step);
        }

        let index: HashMap<&str, usize> = steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        for (i, step) in steps.iter().enumerate() {
            for dep in &step.depends {
                if !index.contains_key(dep.as_str()) {
                    return Err(self.err(
                        Some(depends_lines[i]),
                        format!(
                            "key `steps[{i}].depends`: step `{}` depends on unknown step `{dep}`",
                            step.name
                        ),
                    ));
                }
            }
        }
        if let Some(cycle) = find_cycle(&steps, &index) {
            let first = cycle[0];
            let names: Vec<&str> = cycle.iter().map(|&i| steps[i].name.as_str()).collect();
            return Err(self.err(
                Some(depends_lines[first]),
                format!(
                    "key `steps[{first}].depends`: dependency cycle: {} -> {} (each depends on the next)",
                    names.join(" -> "),
                    names[0]
                ),
            ));
        }
        Ok(steps)
    }

    fn step(
        &self,
        node: &Node,
        key: &str,
        parent_line: usize,
        default_name: &str,
        base_dir: &Path,
    ) -> Result<ParsedStep, DagError> {
        let entries = self.entries(node, key, node.line.max(parent_line), STEP_KEYS)?;
        let mut step = Step {
            name: default_name.to_owned(),
            command: None,
            script: None,
            shell: None,
            working_dir: None,
            depends: Vec::new(),
            env: Vec::new(),
            timeout_sec: None,
            continue_on: ContinueOn::default(),
        };
        let mut name_line = None;
        let mut depends_line = None;
        for e in &entries {
            let k = join(key, e.key);
            match e.key {
                "name" => {
                    if let Some(name) = self.string(&k, e)? {
                        if name.trim().is_empty() || name.contains(['/', '\\', '\0']) {
                            return Err(self.err(
                                Some(e.line),
                                format!("key `{k}`: step name `{name}` must not be blank or hold `/`, `\\` or NUL"),
                            ));
                        }
                        step.name = name;
                    }
                    name_line = Some(e.line);
                }
                "command" => {
                    step.command = match &e.value.kind {
                        Kind::Seq(parts) => {
                            let words = parts
                                .iter()
                                .map(|p| match &p.kind {
                                    Kind::Scalar { value, .. } => Ok(value.as_str()),
                                    _ => Err(self.type_err(p.line, &k, "a list of strings", p)),
                                })
                                .collect::<Result<Vec<_>, _>>()?;
                            Some(words.join(" "))
                        }
                        _ => self.string(&k, e)?,
                    }
                    .filter(|c| !c.trim().is_empty());
                }
                "script" => step.script = self.string(&k, e)?.filter(|s| !s.trim().is_empty()),
                "shell" => step.shell = self.string(&k, e)?.filter(|s| !s.trim().is_empty()),
                "working_dir" => {
                    step.working_dir = self.string(&k, e)?.map(|d| base_dir.join(PathBuf::from(d)));
                }
                "depends" => {
                    if !e.value.is_null() {
                        depends_line = Some(e.line);
                    }
                    step.depends = match &e.value.kind {
                        _ if e.value.is_null() => Vec::new(),
                        Kind::Scalar { value, .. } => vec![value.clone()],
                        Kind::Seq(items) => items
                            .iter()
                            .map(|d| match &d.kind {
                                Kind::Scalar { value, .. } if !d.is_null() => Ok(value.clone()),
                                _ => Err(self.type_err(d.line, &k, "a list of step names", d)),
                            })
                            .collect::<Result<_, _>>()?,
                        Kind::Map(_) => {
                            return Err(self.type_err(
                                e.line,
                                &k,
                                "a step name or a list of step names",
                                e.value,
                            ))
                        }
                    };
                }
                "env" => step.env = self.env(&k, e.line, e.value)?,
                "timeout_sec" => step.timeout_sec = self.uint(&k, e)?.filter(|&t| t > 0),
                "continue_on" if !e.value.is_null() => {
                    for c in self.entries(e.value, &k, e.line, CONTINUE_ON_KEYS)? {
                        step.continue_on.failure = self.boolean(&join(&k, c.key), &c)?;
                    }
                }
                _ => {}
            }
        }
        if step.command.is_none() && step.script.is_none() {
            return Err(self.err(
                Some(node.line),
                format!(
                    "key `{key}`: step `{}` needs `command` or `script`",
                    step.name
                ),
            ));
        }
        Ok(ParsedStep {
            step,
            name_line,
            depends_line,
        })
    }

    fn handlers(&self, e: &Entry<'_>, base_dir: &Path) -> Result<HandlerOn, DagError> {
        let mut out = HandlerOn::default();
        if e.value.is_null() {
            return Ok(out);
        }
        for h in self.entries(e.value, "handler_on", e.line, HANDLER_KEYS)? {
            if h.value.is_null() {
                continue;
            }
            let key = format!("handler_on.{}", h.key);
            let default_name = format!("on_{}", h.key);
            let parsed = self.step(h.value, &key, h.line, &default_name, base_dir)?;
            if let Some(line) = parsed.depends_line {
                return Err(self.err(
                    Some(line),
                    format!("key `{key}.depends`: not allowed in a handler"),
                ));
            }
            let slot = match h.key {
                "success" => &mut out.success,
                "failure" => &mut out.failure,
                "abort" => &mut out.abort,
                _ => &mut out.exit,
            };
            *slot = Some(parsed.step);
        }
        Ok(out)
    }
}

struct ParsedStep {
    step: Step,
    name_line: Option<usize>,
    depends_line: Option<usize>,
}

fn key_text(node: &Node) -> &str {
    match &node.kind {
        Kind::Scalar { value, .. } => value,
        _ => "?",
    }
}

fn is_param_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A dependency cycle as step indices, each depending on the next (the last on the first),
/// starting at the lowest index on it.
fn find_cycle(steps: &[Step], index: &HashMap<&str, usize>) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut marks = vec![Mark::New; steps.len()];
    for start in 0..steps.len() {
        if marks[start] != Mark::New {
            continue;
        }
        // Iterative DFS over `depends` edges; `path` is the chain of open steps.
        let mut path: Vec<(usize, usize)> = vec![(start, 0)];
        marks[start] = Mark::Open;
        while let Some(&mut (node, ref mut next)) = path.last_mut() {
            let deps = &steps[node].depends;
            if *next < deps.len() {
                let dep = index[deps[*next].as_str()];
                *next += 1;
                match marks[dep] {
                    Mark::New => {
                        marks[dep] = Mark::Open;
                        path.push((dep, 0));
                    }
                    Mark::Open => {
                        let from = path.iter().position(|&(n, _)| n == dep).unwrap_or(0);
                        let mut cycle: Vec<usize> = path[from..].iter().map(|&(n, _)| n).collect();
                        let min = cycle
                            .iter()
                            .enumerate()
                            .min_by_key(|&(_, &n)| n)
                            .map(|(i, _)| i)
                            .unwrap_or(0);
                        cycle.rotate_left(min);
                        return Some(cycle);
                    }
                    Mark::Done => {}
                }
            } else {
                marks[node] = Mark::Done;
                path.pop();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        // Arbitrary text and YAML-ish fragments give a DAG or an error, never a panic.
        #[test]
        fn never_panics(text in "\\PC{0,200}|([a-z_]{1,8}: *(\\[|\\]|\\{|\\}|-|&a|\\*a|[a-z0-9 =]{0,6})\n {0,4}){0,12}") {
            let _ = parse_dag(Path::new("p.yaml"), &text);
        }
    }
}
