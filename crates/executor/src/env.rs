//! The environment of a step process (`docs/dag-format.md`): params, DAG `env`, step `env`,
//! `DAG_*`.
//!
//! Pure logic: no IO, tested without a runtime.

use std::path::Path;

use dispatch_dag::{Dag, Step};

/// What a step needs to know about its run to build its environment.
pub(crate) struct EnvContext<'a> {
    pub dag: &'a Dag,
    pub step: &'a Step,
    pub run_id: &'a str,
    pub log_file: &'a Path,
}

/// Builds the variables a step process gets on top of the inherited scheduler environment, in
/// the order they must be applied (a later entry overrides an earlier one with the same name):
/// params, DAG `env`, step `env`, then the `DAG_*` variables, which the executor owns and nothing
/// may spoof.
///
/// `${VAR}` / `$VAR` in DAG and step `env` values expand to variables defined earlier (params,
/// earlier env entries) or, failing that, to `inherited(VAR)`; unknown names expand to the empty
/// string, as in a shell. Param values are never expanded, and nothing here ever becomes command
/// text: params reach commands only as environment variables.
pub(crate) fn build_env(
    ctx: &EnvContext<'_>,
    inherited: &dyn Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let set = |out: &mut Vec<(String, String)>, name: &str, value: String| {
        if is_valid_env_name(name) {
            out.push((name.to_owned(), value));
        } else {
            tracing::warn!(name, "skipping environment variable with an invalid name");
        }
    };

    for (name, value) in &ctx.dag.resolved_params {
        set(&mut out, name, value.clone());
    }
    for (name, value) in ctx.dag.env.iter().chain(ctx.step.env.iter()) {
        let lookup = |var: &str| {
            out.iter()
                .rev()
                .find(|(n, _)| n == var)
                .map(|(_, v)| v.clone())
                .or_else(|| inherited(var))
        };
        let expanded = expand(value, &lookup);
        set(&mut out, name, expanded);
    }
    let params_json = params_json(&ctx.dag.resolved_params);
    set(&mut out, "DAG_NAME", ctx.dag.name.clone());
    set(&mut out, "DAG_RUN_ID", ctx.run_id.to_owned());
    set(
        &mut out,
        "DAG_RUN_LOG_FILE",
        ctx.log_file.display().to_string(),
    );
    set(&mut out, "DAG_RUN_STEP_NAME", ctx.step.name.clone());
    set(&mut out, "DAG_PARAMS_JSON", params_json);
    out
}

/// `DAG_PARAMS_JSON`: the resolved params as one JSON object (a later duplicate name wins, as
/// it does in the environment).
pub(crate) fn params_json(params: &[(String, String)]) -> String {
    let mut map = serde_json::Map::new();
    for (name, value) in params {
        map.insert(name.clone(), serde_json::Value::String(value.clone()));
    }
    serde_json::Value::Object(map).to_string()
}

/// `execve` accepts any name without `=` or NUL; an empty name cannot be set at all.
fn is_valid_env_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('=') && !name.contains('\0')
}

/// Expands `$NAME` and `${NAME}` (NAME = `[A-Za-z_][A-Za-z0-9_]*`); `$$` is a literal `$`; any
/// other `$` is kept as is (including an unterminated `${`).
pub(crate) fn expand(value: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let bytes = value.as_bytes();
    let mut out = String::with_capacity(value.len());
    let mut i = 0;
    let mut literal_start = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        out.push_str(&value[literal_start..i]);
        let rest = &value[i + 1..];
        if rest.starts_with('$') {
            out.push('$');
            i += 2;
        } else if let Some(inner) = rest.strip_prefix('{') {
            match inner.find('}') {
                Some(end) if is_var_name(&inner[..end]) => {
                    out.push_str(&lookup(&inner[..end]).unwrap_or_default());
                    i += 1 + 1 + end + 1;
                }
                _ => {
                    out.push('$');
                    i += 1;
                }
            }
        } else {
            let len = var_name_len(rest);
            if len == 0 {
                out.push('$');
                i += 1;
            } else {
                out.push_str(&lookup(&rest[..len]).unwrap_or_default());
                i += 1 + len;
            }
        }
        literal_start = i;
    }
    out.push_str(&value[literal_start..]);
    out
}

fn var_name_len(s: &str) -> usize {
    let b = s.as_bytes();
    if b.is_empty() || !(b[0].is_ascii_alphabetic() || b[0] == b'_') {
        return 0;
    }
    b.iter()
        .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
        .count()
}

fn is_var_name(s: &str) -> bool {
    !s.is_empty() && var_name_len(s) == s.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "A" => Some("1".into()),
            "HOME" => Some("/srv/x".into()),
            "EVIL" => Some("$(touch /tmp/x) $A".into()),
            _ => None,
        }
    }

    #[test]
    fn expand_table() {
        let cases = [
            ("plain", "plain"),
            ("$A", "1"),
            ("${A}", "1"),
            ("x${A}y", "x1y"),
            ("$A$A", "11"),
            ("$Ab", ""),
            ("${HOME}/bin:$A", "/srv/x/bin:1"),
            ("$$A", "$A"),
            ("$", "$"),
            ("a$", "a$"),
            ("$1", "$1"),
            ("${", "${"),
            ("${A", "${A"),
            ("${1}", "${1}"),
            ("${}", "${}"),
            ("$UNKNOWN-x", "-x"),
            ("é$A€", "é1€"),
            // A value that came from a param is inserted verbatim: never re-expanded.
            ("$EVIL", "$(touch /tmp/x) $A"),
        ];
        for (input, want) in cases {
            assert_eq!(expand(input, &lookup), want, "input {input:?}");
        }
    }

    #[test]
    fn params_json_is_an_object_of_strings() {
        let json = params_json(&[
            ("A".into(), "1".into()),
            ("B".into(), "x \"y\"".into()),
            ("A".into(), "2".into()),
        ]);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v, serde_json::json!({"A": "2", "B": "x \"y\""}));
    }
}
