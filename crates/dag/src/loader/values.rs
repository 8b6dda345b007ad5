//! `params`, `env`, `consts` and `secrets`.

use std::collections::HashSet;

use super::{join, key_text, Cx, Entry};
use crate::refs::{self, is_identifier, Refs, Rewriter, Scope};
use crate::yaml::{Kind, Node};
use crate::{DagError, ParamDefault, ParamSpec, ParamType, SecretProvider, SecretRef};

/// Fields of a rich param entry.
const PARAM_FIELDS: &[&str] = &[
    "name",
    "default",
    "eval",
    "description",
    "type",
    "required",
    "enum",
    "minimum",
    "maximum",
    "min_length",
    "max_length",
    "pattern",
];

/// Params as read: the defaults, and the rich declarations with the line of each `eval` (for
/// rewriting once the params are known).
#[derive(Default)]
pub(super) struct Params {
    pub(super) defaults: Vec<ParamDefault>,
    pub(super) specs: Vec<ParamSpec>,
    pub(super) eval_lines: Vec<usize>,
}

impl Cx<'_> {
    fn check_param_name(&self, key: &str, name: &str, line: usize) -> Result<(), DagError> {
        if is_identifier(name) {
            Ok(())
        } else {
            Err(self.err(
                Some(line),
                format!(
                    "key `{key}`: invalid param name `{name}` (expected [A-Za-z_][A-Za-z0-9_]*)"
                ),
            ))
        }
    }

    /// `params`: a runtime-param string; a map `NAME: value`; or a list of `NAME=value` strings,
    /// positional values, one-key maps `NAME: value` and rich declarations (`name` with
    /// `default`, `type`, `description`, `required`, `enum`, `eval`, ...).
    pub(super) fn params(&self, e: &Entry<'_>) -> Params {
        let mut out = Params::default();
        match &e.value.kind {
            _ if e.value.is_null() => {}
            Kind::Scalar { value, .. } => {
                match dispatch_webhook_params::parse_runtime_params(value) {
                    Ok(parsed) => {
                        out.defaults = parsed
                            .into_iter()
                            .map(|p| ParamDefault {
                                name: p.name,
                                value: p.value,
                            })
                            .collect()
                    }
                    Err(err) => self.report(Some(e.line), format!("key `params`: {err}")),
                }
            }
            Kind::Map(pairs) => {
                let keys: Vec<&str> = pairs.iter().map(|(k, _)| key_text(k)).collect();
                if keys.contains(&"schema")
                    || (keys.contains(&"type") && keys.contains(&"properties"))
                {
                    self.report(
                        Some(e.line),
                        "key `params`: not supported: params declared as a JSON Schema (use a list of `- name: ...` entries)",
                    );
                    return out;
                }
                for (k, v) in pairs {
                    let name = key_text(k).to_owned();
                    let key = format!("params.{name}");
                    if let Some(()) = self.ok(self.check_param_name("params", &name, k.line)) {
                        if let Some(value) = self.ok(self.value_text(&key, k.line, v)) {
                            out.defaults.push(ParamDefault {
                                name: Some(name),
                                value,
                            });
                        }
                    }
                }
            }
            Kind::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    let key = format!("params[{i}]");
                    match &item.kind {
                        Kind::Map(pairs) if pairs.iter().any(|(k, _)| key_text(k) == "name") => {
                            self.rich_param(&key, item, &mut out);
                        }
                        Kind::Map(pairs) if pairs.len() == 1 => {
                            let (k, v) = &pairs[0];
                            let name = key_text(k).to_owned();
                            if self.ok(self.check_param_name(&key, &name, k.line)).is_some() {
                                if let Some(value) = self.ok(self.value_text(&key, k.line, v)) {
                                    out.defaults.push(ParamDefault {
                                        name: Some(name),
                                        value,
                                    });
                                }
                            }
                        }
                        Kind::Map(_) => self.report(
                            Some(item.line),
                            format!("key `{key}`: a param map with several keys needs `name` (`- name: X` with `default`, `type`, ...)"),
                        ),
                        Kind::Scalar { value, .. } if !item.is_null() => {
                            match value.split_once('=') {
                                Some((name, v)) => {
                                    if self.ok(self.check_param_name(&key, name, item.line)).is_some() {
                                        out.defaults.push(ParamDefault {
                                            name: Some(name.to_owned()),
                                            value: v.to_owned(),
                                        });
                                    }
                                }
                                None => out.defaults.push(ParamDefault {
                                    name: None,
                                    value: value.clone(),
                                }),
                            }
                        }
                        _ => self.push(self.type_err(
                            item.line,
                            &key,
                            "a one-key map `NAME: value`, a string `NAME=value` or a map with `name`",
                            item,
                        )),
                    }
                }
            }
        }
        let mut seen = HashSet::new();
        for d in &out.defaults {
            if let Some(name) = &d.name {
                if !seen.insert(name.clone()) {
                    self.report(
                        Some(e.line),
                        format!("key `params`: param `{name}` is declared twice"),
                    );
                }
            }
        }
        out
    }

    fn rich_param(&self, key: &str, item: &Node, out: &mut Params) {
        let keys = super::KeySet {
            known: PARAM_FIELDS,
            refused: &[],
        };
        let Some(entries) = self.entries(item, key, item.line, &keys) else {
            return;
        };
        let mut spec = ParamSpec::default();
        let mut default = String::new();
        let mut eval_line = None;
        for f in &entries {
            let k = join(key, f.key);
            match f.key {
                "name" => match self.ok(self.string(&k, f)).flatten() {
                    Some(name) => {
                        if self.ok(self.check_param_name(&k, &name, f.line)).is_some() {
                            spec.name = name;
                        }
                    }
                    None => self.report(Some(f.line), format!("key `{k}`: must not be empty")),
                },
                "default" => {
                    if let Some(v) = self.ok(self.value_text(&k, f.line, f.value)) {
                        default = v;
                        spec.has_default = true;
                    }
                }
                "eval" => {
                    spec.eval = self.ok(self.string(&k, f)).flatten();
                    eval_line = Some(f.line);
                }
                "description" => {
                    spec.description = self.ok(self.string(&k, f)).flatten().unwrap_or_default()
                }
                "type" => {
                    spec.kind = match self.ok(self.string(&k, f)).flatten().as_deref() {
                        None | Some("string") => ParamType::String,
                        Some("integer") => ParamType::Integer,
                        Some("number") => ParamType::Number,
                        Some("boolean") => ParamType::Boolean,
                        Some(other) => {
                            self.report(
                                Some(f.line),
                                format!("key `{k}`: expected `string`, `integer`, `number` or `boolean`, found `{other}`"),
                            );
                            ParamType::String
                        }
                    }
                }
                "required" => spec.required = self.ok(self.boolean(&k, f)).unwrap_or(false),
                "enum" => spec.choices = self.ok(self.strings(&k, f)).unwrap_or_default(),
                "minimum" => spec.minimum = self.ok(self.number_text(&k, f)).flatten(),
                "maximum" => spec.maximum = self.ok(self.number_text(&k, f)).flatten(),
                "min_length" => spec.min_length = self.ok(self.uint(&k, f)).flatten(),
                "max_length" => spec.max_length = self.ok(self.uint(&k, f)).flatten(),
                "pattern" => spec.pattern = self.ok(self.string(&k, f)).flatten(),
                _ => {}
            }
        }
        if spec.name.is_empty() {
            return;
        }
        if !spec.choices.is_empty() && spec.has_default && !spec.choices.contains(&default) {
            self.report(
                Some(item.line),
                format!("key `{key}.default`: `{default}` is not one of `enum`"),
            );
        }
        out.defaults.push(ParamDefault {
            name: Some(spec.name.clone()),
            value: default,
        });
        out.eval_lines.push(eval_line.unwrap_or(item.line));
        out.specs.push(spec);
    }

    fn number_text(&self, key: &str, e: &Entry<'_>) -> Result<Option<String>, DagError> {
        match &e.value.kind {
            _ if e.value.is_null() => Ok(None),
            Kind::Scalar { value, plain: true }
                if value.parse::<f64>().is_ok_and(f64::is_finite) =>
            {
                Ok(Some(value.clone()))
            }
            _ => Err(self.type_err(e.line, key, "a number", e.value)),
        }
    }

    /// `env`: a map, or a list of one-key maps / `KEY=VALUE` strings. Values are rewritten
    /// (references become bound variables).
    pub(super) fn env(
        &self,
        key: &str,
        line: usize,
        node: &Node,
        rw: &mut Rewriter<'_, '_>,
    ) -> Vec<(String, String)> {
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
        let mut raw: Vec<(String, String, usize)> = Vec::new();
        for entry in named_entries(key, node) {
            match entry {
                NamedEntry::Pair {
                    name,
                    value,
                    key: value_key,
                    line,
                } => {
                    if self.ok(check(name, line)).is_none() {
                        continue;
                    }
                    if let Some(value) = self.ok(self.value_text(&value_key, line, value)) {
                        raw.push((name.to_owned(), value, line));
                    }
                }
                NamedEntry::Text {
                    text,
                    key: item_key,
                    line,
                } => {
                    let Some((name, v)) = text.split_once('=') else {
                        self.report(
                            Some(line),
                            format!("key `{item_key}`: expected `KEY=VALUE`, found `{text}`"),
                        );
                        continue;
                    };
                    if self.ok(check(name, line)).is_some() {
                        raw.push((name.to_owned(), v.to_owned(), line));
                    }
                }
                NamedEntry::Other {
                    item,
                    key: item_key,
                } => self.push(self.type_err(
                    item.line,
                    &item_key,
                    "a one-key map `KEY: value` or a string `KEY=VALUE`",
                    item,
                )),
                NamedEntry::Whole { .. } => {
                    self.push(self.type_err(line, key, "a map or a list", node))
                }
            }
        }
        let mut out = Vec::with_capacity(raw.len());
        for (name, value, line) in raw {
            if value.contains('\0') {
                self.report(Some(line), format!("key `{key}`: a value holds a NUL byte"));
                continue;
            }
            match rw.rewrite(&value) {
                Ok(v) => out.push((name, v)),
                Err(msg) => self.report(Some(line), format!("key `{key}.{name}`: {msg}")),
            }
        }
        out
    }

    /// `consts`: a list of one-key maps, resolved in order; a value may use earlier consts.
    pub(super) fn consts(&self, e: &Entry<'_>) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let items = match &e.value.kind {
            _ if e.value.is_null() => return out,
            Kind::Seq(items) => items,
            _ => {
                self.push(self.type_err(
                    e.line,
                    "consts",
                    "a list of one-key maps (`- NAME: value`)",
                    e.value,
                ));
                return out;
            }
        };
        let empty_set = HashSet::new();
        let empty_map = std::collections::HashMap::new();
        for (i, item) in items.iter().enumerate() {
            let key = format!("consts[{i}]");
            let Kind::Map(pairs) = &item.kind else {
                self.push(self.type_err(item.line, &key, "a one-key map `NAME: value`", item));
                continue;
            };
            if pairs.len() != 1 {
                self.push(self.type_err(item.line, &key, "a one-key map `NAME: value`", item));
                continue;
            }
            let (k, v) = &pairs[0];
            let name = key_text(k).to_owned();
            let valid = name.starts_with(|c: char| c.is_ascii_alphabetic()) && is_identifier(&name);
            if !valid {
                self.report(
                    Some(k.line),
                    format!(
                        "key `{key}`: invalid const name `{name}` (expected [A-Za-z][A-Za-z0-9_]*)"
                    ),
                );
                continue;
            }
            if out.iter().any(|(n, _)| *n == name) {
                self.report(
                    Some(k.line),
                    format!("key `{key}`: const `{name}` is declared twice"),
                );
                continue;
            }
            let value = match &v.kind {
                Kind::Scalar { value, plain } if !v.is_null() => {
                    if *plain
                        && matches!(
                            value.as_str(),
                            ".nan"
                                | ".NaN"
                                | ".NAN"
                                | ".inf"
                                | "-.inf"
                                | "+.inf"
                                | ".Inf"
                                | "-.Inf"
                                | ".INF"
                                | "-.INF"
                        )
                    {
                        self.report(
                            Some(k.line),
                            format!("key `{key}.{name}`: a const number must be finite"),
                        );
                        continue;
                    }
                    value.clone()
                }
                _ => {
                    self.push(self.type_err(
                        k.line,
                        &format!("{key}.{name}"),
                        "a string, number or boolean",
                        v,
                    ));
                    continue;
                }
            };
            let scope = Scope {
                consts: &out,
                params: &empty_set,
                steps: &empty_map,
                own_id: None,
                output_vars: &empty_set,
                consts_only: true,
                foreach: None,
            };
            match refs::rewrite(&value, &scope, &mut Refs::default()) {
                Ok(resolved) => out.push((name, resolved)),
                Err(msg) => self.report(Some(k.line), format!("key `{key}.{name}`: {msg}")),
            }
        }
        out
    }

    /// `secrets`: `- name: VAR` with `provider: env | file` and `key`.
    pub(super) fn secrets(&self, e: &Entry<'_>) -> Vec<SecretRef> {
        let mut out = Vec::new();
        let items = match &e.value.kind {
            _ if e.value.is_null() => return out,
            Kind::Seq(items) => items,
            _ => {
                self.push(self.type_err(e.line, "secrets", "a list of secret entries", e.value));
                return out;
            }
        };
        let keys = super::KeySet {
            known: &["name", "provider", "key"],
            refused: &[
                ("ref", "workspace secret registries belong to Dagu's server; use `provider: env` or `provider: file`"),
                ("options", "provider options are not supported by the `env` and `file` providers"),
            ],
        };
        for (i, item) in items.iter().enumerate() {
            let key = format!("secrets[{i}]");
            let Some(entries) = self.entries(item, &key, item.line.max(e.line), &keys) else {
                continue;
            };
            let mut name = None;
            let mut provider = None;
            let mut secret_key = None;
            for f in &entries {
                let k = join(&key, f.key);
                let value = self.ok(self.string(&k, f)).flatten();
                match f.key {
                    "name" => match value {
                        Some(v) if is_identifier(&v) && !v.starts_with("DAGU_") => name = Some(v),
                        Some(v) => self.report(
                            Some(f.line),
                            format!("key `{k}`: invalid variable name `{v}` (expected [A-Za-z_][A-Za-z0-9_]*, not starting with DAGU_)"),
                        ),
                        None => {}
                    },
                    "provider" => match value.as_deref() {
                        Some("env") => provider = Some(SecretProvider::Env),
                        Some("file") => provider = Some(SecretProvider::File),
                        Some(other) => self.report(
                            Some(f.line),
                            format!("key `{k}`: not supported: secret provider `{other}` (dispatch supports `env` and `file`)"),
                        ),
                        None => {}
                    },
                    _ => secret_key = value.filter(|v| !v.is_empty()),
                }
            }
            let present = |f: &str| entries.iter().any(|x| x.key == f);
            let missing: Vec<&str> = ["name", "provider", "key"]
                .into_iter()
                .filter(|f| !present(f))
                .collect();
            if !missing.is_empty() {
                self.report(
                    Some(item.line.max(e.line)),
                    format!("key `{key}`: needs `{}`", missing.join("`, `")),
                );
            }
            if let (Some(name), Some(provider), Some(key_value)) = (name, provider, secret_key) {
                if out.iter().any(|s: &SecretRef| s.name == name) {
                    self.report(
                        Some(item.line),
                        format!("key `{key}`: secret `{name}` is declared twice"),
                    );
                } else {
                    out.push(SecretRef {
                        name,
                        provider,
                        key: key_value,
                    });
                }
            }
        }
        out
    }
}

/// One entry of a value written as a map, or as a list of one-key maps and strings (`env`, the
/// params of a sub-DAG call), in file order. The callers differ in what a string means and in
/// their error texts, so they read the entries themselves.
pub(super) enum NamedEntry<'n> {
    /// `NAME: value`, from the map or from a one-key map in the list; `key` names the value in
    /// errors.
    Pair {
        name: &'n str,
        value: &'n Node,
        key: String,
        line: usize,
    },
    /// A string in the list, such as `NAME=value`; `key` names the item.
    Text {
        text: &'n str,
        key: String,
        line: usize,
    },
    /// Any other list item (a list, a map of more than one key, null); `key` names the item.
    Other { item: &'n Node, key: String },
    /// The value is one string rather than a map or a list.
    Whole { text: &'n str },
}

/// The entries of `node` (named `key` in errors); none for null.
pub(super) fn named_entries<'n>(key: &str, node: &'n Node) -> Vec<NamedEntry<'n>> {
    match &node.kind {
        _ if node.is_null() => Vec::new(),
        Kind::Scalar { value, .. } => vec![NamedEntry::Whole { text: value }],
        Kind::Map(pairs) => pairs
            .iter()
            .map(|(k, v)| NamedEntry::Pair {
                name: key_text(k),
                value: v,
                key: format!("{key}.{}", key_text(k)),
                line: k.line,
            })
            .collect(),
        Kind::Seq(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let item_key = format!("{key}[{i}]");
                match &item.kind {
                    Kind::Map(pairs) if pairs.len() == 1 => {
                        let (k, v) = &pairs[0];
                        NamedEntry::Pair {
                            name: key_text(k),
                            value: v,
                            key: item_key,
                            line: k.line,
                        }
                    }
                    Kind::Scalar { value, .. } if !item.is_null() => NamedEntry::Text {
                        text: value,
                        key: item_key,
                        line: item.line,
                    },
                    _ => NamedEntry::Other {
                        item,
                        key: item_key,
                    },
                }
            })
            .collect(),
    }
}
