//! The environment of a step process (`docs/dag-format.md`, "Environment of a step"): the
//! layers it is made of, and `$VAR` expansion.
//!
//! Pure logic: no IO, tested without a runtime.

/// The variables a step gets on top of the inherited scheduler environment, in layers.
pub(crate) struct EnvLayers<'a> {
    /// Set as they are, in order: the dotenv files, the resolved params, the values of the
    /// bindings (the references the loader rewrote), the secrets.
    pub(crate) literal: &'a [&'a [(String, String)]],
    /// The DAG's `env`, expanded.
    pub(crate) dag_env: &'a [(String, String)],
    /// The `output:` variables of the steps that have ended.
    pub(crate) outputs: &'a [(String, String)],
    /// The step's `env`, expanded.
    pub(crate) step_env: &'a [(String, String)],
    /// The executor's own variables (`DAG_*`), which nothing may override.
    pub(crate) builtins: &'a [(String, String)],
}

/// Builds the variables of a step in the order they must be applied (a later entry overrides
/// an earlier one with the same name).
///
/// `${VAR}` / `$VAR` in DAG and step `env` values expand to the executor's own variables, then
/// to variables defined earlier (params, bindings, earlier env entries), then to
/// `inherited(VAR)`; unknown names expand to the empty string, as in a shell. Nothing else is
/// expanded (a param value holding `$X` stays as it is), and nothing here ever becomes command
/// text: values reach commands only as environment variables.
pub(crate) fn build_env(
    layers: &EnvLayers<'_>,
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
    let expand_into = |out: &mut Vec<(String, String)>, env: &[(String, String)]| {
        for (name, value) in env {
            let expanded = expand(value, &|var| {
                lookup(layers.builtins, var)
                    .or_else(|| lookup(out, var))
                    .or_else(|| inherited(var))
            });
            set(out, name, expanded);
        }
    };
    for layer in layers.literal {
        for (name, value) in layer.iter() {
            set(&mut out, name, value.clone());
        }
    }
    expand_into(&mut out, layers.dag_env);
    for (name, value) in layers.outputs {
        set(&mut out, name, value.clone());
    }
    expand_into(&mut out, layers.step_env);
    for (name, value) in layers.builtins {
        set(&mut out, name, value.clone());
    }
    out
}

/// The latest value of `name` in `vars`.
pub(crate) fn lookup(vars: &[(String, String)], name: &str) -> Option<String> {
    vars.iter()
        .rev()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
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

/// Expands `$NAME` and `${NAME}` (NAME = `[A-Za-z_][A-Za-z0-9_]*`) to `lookup(NAME)`, the
/// empty string when it has none; `$$` is a literal `$`. `${NAME.a.b}` (dotted segments of
/// letters, digits and `_`) expands to `lookup("NAME.a.b")` and is kept as written when that has
/// none (that is how `${ITEM.field}` reaches its item). Any other `$` is kept as is (including
/// an unterminated `${` and shell forms like `${X:-y}`). Values are inserted as they are, never
/// expanded again.
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
            let whole = inner.find('}').map(|end| &inner[..end]);
            match whole {
                Some(name) if is_var_name(name) => {
                    out.push_str(&lookup(name).unwrap_or_default());
                    i += 1 + 1 + name.len() + 1;
                }
                Some(path) if is_dotted_name(path) => {
                    match lookup(path) {
                        Some(v) => out.push_str(&v),
                        None => out.push_str(&value[i..i + 3 + path.len()]),
                    }
                    i += 1 + 1 + path.len() + 1;
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

/// `NAME.seg.seg`: a variable name, then one or more `.`-separated segments of letters, digits
/// and `_`.
fn is_dotted_name(s: &str) -> bool {
    let mut parts = s.split('.');
    parts.next().is_some_and(is_var_name)
        && s.contains('.')
        && parts.all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
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

/// `(name, value)` pairs as owned variables, for tests.
#[cfg(test)]
pub(crate) fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "A" => Some("1".into()),
            "HOME" => Some("/srv/x".into()),
            "EVIL" => Some("$(touch /tmp/x) $A".into()),
            "ITEM" => Some("it".into()),
            "ITEM.region" => Some("eu".into()),
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
            ("${ITEM}-${ITEM.region}", "it-eu"),
            ("${ITEM.other}", "${ITEM.other}"),
            ("${A.}", "${A.}"),
            ("${A.b-c}", "${A.b-c}"),
            ("${X:-y}", "${X:-y}"),
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

    #[test]
    fn layers_apply_in_order_and_env_expands_from_earlier_ones() {
        let v = vars;
        let params = v(&[("P", "param"), ("SHARED", "param")]);
        let bindings = v(&[("DAGU_REF_params_P", "param")]);
        let dag_env = v(&[
            ("SHARED", "dag"),
            ("FROM_REF", "${DAGU_REF_params_P}-$SHARED"),
            ("RUN", "$DAG_RUN_ID"),
            ("HOME_COPY", "${HOME}"),
        ]);
        let outputs = v(&[("RESULT", "out $P")]);
        let step_env = v(&[("USES_OUTPUT", "${RESULT}"), ("SHARED", "step")]);
        let builtins = v(&[("DAG_RUN_ID", "r1")]);
        let spoof = v(&[("DAG_RUN_ID", "spoofed")]);
        let literal: [&[(String, String)]; 3] = [&params, &bindings, &spoof];
        let env = build_env(
            &EnvLayers {
                literal: &literal,
                dag_env: &dag_env,
                outputs: &outputs,
                step_env: &step_env,
                builtins: &builtins,
            },
            &|name| (name == "HOME").then(|| "/srv/x-home".to_owned()),
        );
        let get = |name: &str| super::lookup(&env, name).unwrap();
        assert_eq!(get("SHARED"), "step");
        assert_eq!(get("FROM_REF"), "param-dag");
        assert_eq!(get("RUN"), "r1", "builtins win in expansion too");
        assert_eq!(get("DAG_RUN_ID"), "r1");
        assert_eq!(get("HOME_COPY"), "/srv/x-home");
        assert_eq!(
            get("USES_OUTPUT"),
            "out $P",
            "values are never expanded again"
        );
    }
}
