//! The DAG YAML loader (format: `docs/dag-format.md`): file → validated [`Dag`], with errors
//! that name the file, the line and the key. The loader keeps going after an error, so that
//! [`validate_dag_file`] can list every error of a file at once.
//!
//! One file per job: `dag` reads the top level and the `---` documents, `step` one step,
//! `values` params / env / consts / secrets, `policy` conditions and step policies, `graph`
//! the dependency rules. This file holds the public face and the reading helpers they share.
//!
//! The choices the format leaves open are listed in the crate docs.

mod dag;
mod foreach;
mod graph;
mod policy;
mod step;
mod steps;
mod values;

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use crate::refs::Rewriter;
use crate::yaml::{Kind, Node};
use crate::{Dag, DagError, DagErrors};

/// Default of `max_clean_up_time_sec`.
pub const DEFAULT_MAX_CLEAN_UP_TIME_SEC: u64 = 5;

/// How to load a DAG file.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Base for relative paths (`working_dir` and the default working directory) instead of the
    /// DAG file's directory, e.g. the current directory for a DAG run by hand.
    pub base_dir: Option<PathBuf>,
}

/// Loads and validates the DAG file at `path`; the first error if it is invalid. The DAG's name
/// is its `name` key or the file stem.
pub fn load_dag_file(path: &Path) -> Result<Dag, DagError> {
    load_dag_file_with(path, &LoadOptions::default()).map_err(first)
}

/// Parses and validates DAG YAML `text` as if read from `path` (used for messages, the name
/// fallback and [`Dag::location`]); the first error if it is invalid.
pub fn parse_dag(path: &Path, text: &str) -> Result<Dag, DagError> {
    parse_dag_with(path, text, &LoadOptions::default()).map_err(first)
}

/// [`load_dag_file`] with options, returning every error of the file.
pub fn load_dag_file_with(path: &Path, options: &LoadOptions) -> Result<Dag, DagErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        DagErrors(vec![DagError {
            path: path.to_path_buf(),
            line: None,
            message: format!("failed to read file: {e}"),
        }])
    })?;
    parse_dag_with(path, &text, options)
}

/// [`parse_dag`] with options, returning every error of the text.
pub fn parse_dag_with(path: &Path, text: &str, options: &LoadOptions) -> Result<Dag, DagErrors> {
    let cx = Cx {
        path,
        errors: RefCell::new(Vec::new()),
    };
    let dag = dag::load(&cx, text, options);
    // `defaults` are read once per step: report each of their errors once.
    let mut errors = cx.errors.into_inner();
    let mut seen = std::collections::HashSet::new();
    errors.retain(|e| seen.insert((e.line, e.message.clone())));
    match dag {
        Some(dag) if errors.is_empty() => Ok(dag),
        _ if errors.is_empty() => Err(DagErrors(vec![DagError {
            path: path.to_path_buf(),
            line: None,
            message: "invalid DAG".to_owned(),
        }])),
        _ => Err(DagErrors(errors)),
    }
}

/// Every error of the DAG file at `path`, in the order found; empty when it is valid. Nothing
/// is run.
pub fn validate_dag_file(path: &Path) -> Vec<DagError> {
    match load_dag_file_with(path, &LoadOptions::default()) {
        Ok(_) => Vec::new(),
        Err(DagErrors(errors)) => errors,
    }
}

fn first(errors: DagErrors) -> DagError {
    let path = errors.0.first().map(|e| e.path.clone()).unwrap_or_default();
    errors.into_first().unwrap_or(DagError {
        path,
        line: None,
        message: "invalid DAG".to_owned(),
    })
}

/// The loading context: the file and the errors found so far.
pub(crate) struct Cx<'a> {
    path: &'a Path,
    errors: RefCell<Vec<DagError>>,
}

/// A key of a map, with the line of the key and the value.
pub(crate) struct Entry<'n> {
    pub(crate) key: &'n str,
    pub(crate) line: usize,
    pub(crate) value: &'n Node,
}

/// `parent.key`, or `key` at the top.
pub(crate) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// `snake_case` of a camelCase key (Dagu's older spelling), for a hint.
fn snake_case(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Keys of a map and what the loader does with them.
pub(crate) struct KeySet<'k> {
    /// Read.
    pub(crate) known: &'k [&'k str],
    /// Dagu keys refused, each with the reason.
    pub(crate) refused: &'k [(&'k str, &'k str)],
}

impl<'a> Cx<'a> {
    pub(crate) fn err(&self, line: Option<usize>, message: impl Into<String>) -> DagError {
        DagError {
            path: self.path.to_path_buf(),
            line,
            message: message.into(),
        }
    }

    /// Records an error and goes on.
    pub(crate) fn report(&self, line: Option<usize>, message: impl Into<String>) {
        let e = self.err(line, message);
        self.push(e);
    }

    pub(crate) fn push(&self, e: DagError) {
        self.errors.borrow_mut().push(e);
    }

    /// The value, or `None` after recording the error.
    pub(crate) fn ok<T>(&self, r: Result<T, DagError>) -> Option<T> {
        r.map_err(|e| self.push(e)).ok()
    }

    /// Number of errors so far (to tell whether a part added any).
    pub(crate) fn error_count(&self) -> usize {
        self.errors.borrow().len()
    }

    pub(crate) fn type_err(
        &self,
        line: usize,
        key: &str,
        expected: &str,
        found: &Node,
    ) -> DagError {
        self.err(
            Some(line),
            format!(
                "key `{key}`: expected {expected}, found {}",
                found.describe()
            ),
        )
    }

    /// `text` of the field `key` at `line` with its references rewritten (`refs`); `None`,
    /// with the error reported, when a reference can never resolve.
    pub(crate) fn rewrite_field(
        &self,
        key: &str,
        line: usize,
        text: &str,
        rw: &mut Rewriter<'_, '_>,
    ) -> Option<String> {
        match rw.rewrite(text) {
            Ok(t) => Some(t),
            Err(msg) => {
                self.report(Some(line), format!("key `{key}`: {msg}"));
                None
            }
        }
    }

    /// `max_concurrent` of `parallel` or `foreach` (the entry under `key`, if any): 1 to 1000,
    /// default [`crate::DEFAULT_MAX_CONCURRENT`].
    pub(crate) fn max_concurrent(&self, key: &str, e: Option<&Entry<'_>>) -> u32 {
        let Some(e) = e else {
            return crate::DEFAULT_MAX_CONCURRENT;
        };
        let k = join(key, "max_concurrent");
        match self.ok(self.uint(&k, e)).flatten() {
            Some(n @ 1..=1000) => n as u32,
            Some(n) => {
                self.report(
                    Some(e.line),
                    format!("key `{k}`: expected 1 to 1000, found `{n}`"),
                );
                crate::DEFAULT_MAX_CONCURRENT
            }
            None => crate::DEFAULT_MAX_CONCURRENT,
        }
    }

    /// The entries of a map at `key` (empty for the top level). Unknown, refused and repeated
    /// keys are reported and left out; `None` (reported) when `node` is not a map.
    pub(crate) fn entries<'n>(
        &self,
        node: &'n Node,
        key: &str,
        line: usize,
        keys: &KeySet<'_>,
    ) -> Option<Vec<Entry<'n>>> {
        let Kind::Map(pairs) = &node.kind else {
            self.push(if key.is_empty() {
                self.err(
                    Some(node.line),
                    format!("expected a map of DAG keys, found {}", node.describe()),
                )
            } else {
                self.type_err(line, key, "a map", node)
            });
            return None;
        };
        let place = if key.is_empty() {
            String::new()
        } else {
            format!(" in `{key}`")
        };
        let mut out: Vec<Entry<'n>> = Vec::with_capacity(pairs.len());
        for (k, v) in pairs {
            let name = match &k.kind {
                Kind::Scalar { value, .. } => value.as_str(),
                _ => {
                    self.report(
                        Some(k.line),
                        format!("expected a key name{place}, found {}", k.describe()),
                    );
                    continue;
                }
            };
            if let Some((_, reason)) = keys.refused.iter().find(|(r, _)| *r == name) {
                self.report(
                    Some(k.line),
                    format!("key `{}`: not supported: {reason}", join(key, name)),
                );
                continue;
            }
            if !keys.known.contains(&name) {
                let snake = snake_case(name);
                let hint = if snake != name && keys.known.contains(&snake.as_str()) {
                    format!(" (Dagu's older spelling of `{snake}`: write `{snake}`)")
                } else {
                    format!(" (expected one of: {})", keys.known.join(", "))
                };
                self.report(Some(k.line), format!("unknown key `{name}`{place}{hint}"));
                continue;
            }
            if out.iter().any(|e| e.key == name) {
                self.report(Some(k.line), format!("duplicate key `{name}`{place}"));
                continue;
            }
            out.push(Entry {
                key: name,
                line: k.line,
                value: v,
            });
        }
        Some(out)
    }

    pub(crate) fn string(&self, key: &str, e: &Entry<'_>) -> Result<Option<String>, DagError> {
        match &e.value.kind {
            _ if e.value.is_null() => Ok(None),
            Kind::Scalar { value, .. } => Ok(Some(value.clone())),
            _ => Err(self.type_err(e.line, key, "a string", e.value)),
        }
    }

    /// A non-negative integer; a quoted number is accepted when `quoted_ok` (Dagu accepts
    /// numeric strings for retry counts and intervals).
    /// A string value without surrounding whitespace (errors reported).
    pub(crate) fn trimmed(&self, key: &str, e: &Entry<'_>) -> Option<String> {
        self.ok(self.string(key, e))
            .flatten()
            .map(|s| s.trim().to_owned())
    }

    pub(crate) fn uint_at(
        &self,
        key: &str,
        line: usize,
        node: &Node,
        quoted_ok: bool,
    ) -> Result<Option<u64>, DagError> {
        match &node.kind {
            _ if node.is_null() => Ok(None),
            Kind::Scalar { value, plain } if *plain || quoted_ok => {
                value.trim().parse::<u64>().map(Some).map_err(|_| {
                    self.err(
                        Some(line),
                        format!("key `{key}`: expected a non-negative integer, found `{value}`"),
                    )
                })
            }
            _ => Err(self.type_err(line, key, "a non-negative integer", node)),
        }
    }

    pub(crate) fn uint(&self, key: &str, e: &Entry<'_>) -> Result<Option<u64>, DagError> {
        self.uint_at(key, e.line, e.value, false)
    }

    pub(crate) fn boolean(&self, key: &str, e: &Entry<'_>) -> Result<bool, DagError> {
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
    pub(crate) fn value_text(
        &self,
        key: &str,
        line: usize,
        node: &Node,
    ) -> Result<String, DagError> {
        match &node.kind {
            _ if node.is_null() => Ok(String::new()),
            Kind::Scalar { value, .. } => Ok(value.clone()),
            _ => Err(self.type_err(line, key, "a scalar value", node)),
        }
    }

    /// A list of exit codes: one integer, a numeric string, or a list of integers.
    pub(crate) fn exit_codes(&self, key: &str, e: &Entry<'_>) -> Result<Vec<i32>, DagError> {
        let one = |node: &Node| -> Result<i32, DagError> {
            match &node.kind {
                Kind::Scalar { value, .. } if !node.is_null() => {
                    value.trim().parse::<i32>().map_err(|_| {
                        self.err(
                            Some(node.line.max(e.line)),
                            format!("key `{key}`: expected an exit code, found `{value}`"),
                        )
                    })
                }
                _ => Err(self.type_err(node.line.max(e.line), key, "an exit code", node)),
            }
        };
        match &e.value.kind {
            _ if e.value.is_null() => Ok(Vec::new()),
            Kind::Seq(items) => items.iter().map(one).collect(),
            _ => one(e.value).map(|c| vec![c]),
        }
    }

    /// A string or a list of strings (each a scalar).
    pub(crate) fn strings(&self, key: &str, e: &Entry<'_>) -> Result<Vec<String>, DagError> {
        match &e.value.kind {
            _ if e.value.is_null() => Ok(Vec::new()),
            Kind::Scalar { value, .. } => Ok(vec![value.clone()]),
            Kind::Seq(items) => items
                .iter()
                .map(|item| match &item.kind {
                    Kind::Scalar { value, .. } if !item.is_null() => Ok(value.clone()),
                    _ => Err(self.type_err(item.line.max(e.line), key, "a list of strings", item)),
                })
                .collect(),
            Kind::Map(_) => {
                Err(self.type_err(e.line, key, "a string or a list of strings", e.value))
            }
        }
    }
}

/// The text of a scalar key node.
pub(crate) fn key_text(node: &Node) -> &str {
    match &node.kind {
        Kind::Scalar { value, .. } => value,
        _ => "?",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        // Arbitrary text and YAML-ish fragments give a DAG or an error, never a panic.
        #[test]
        fn never_panics(text in "\\PC{0,200}|([a-z_]{1,8}: *(\\[|\\]|\\{|\\}|-|&a|\\*a|[a-z0-9 =${}.]{0,6})\n {0,4}){0,12}") {
            let _ = parse_dag(Path::new("p.yaml"), &text);
        }
    }

    #[test]
    fn camel_case_keys_get_a_hint() {
        assert_eq!(snake_case("continueOn"), "continue_on");
        assert_eq!(snake_case("handlerOn"), "handler_on");
        assert_eq!(snake_case("plain"), "plain");
    }
}
