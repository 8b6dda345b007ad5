//! Dagu's value references in DAG text, rewritten at load time so that no param, payload or
//! step-output value is ever spliced into text a shell parses (`docs/dag-format.md`,
//! "References and the environment", "The difference from Dagu").
//!
//! - `${consts.NAME}` is replaced by the const's value: consts are written by the DAG's author,
//!   in the same file, so they are as trusted as the command text itself.
//! - `${env.NAME}` becomes `${NAME}`: the step environment already holds it.
//! - Every other supported reference (`${params.NAME}`, `${steps.ID.outputs.NAME}`,
//!   `${ID.outputs.NAME}`, `${ID.stdout}`, `${ID.stderr}`, `${ID.exit_code}`, `${VAR.path}` of an
//!   `output:` variable, and the run context such as `${run.id}`) becomes `${VAR}` plus a
//!   [`Binding`] that tells the executor where the value of `VAR` comes from.
//! - Anything else in `${...}` is left alone: `${HOME}`, `${ITEM}`, shell syntax.
//!
//! A backslash run before `$` works as Dagu documents it: when a supported reference follows
//! an odd run, one backslash is removed and the reference is kept as text.

use std::collections::{HashMap, HashSet};

use crate::{Binding, RefSource};

/// What the text being rewritten may refer to.
pub(crate) struct Scope<'a> {
    /// Consts resolved so far, in order.
    pub(crate) consts: &'a [(String, String)],
    /// Names of declared (named) params.
    pub(crate) params: &'a HashSet<String>,
    /// Step id → runtime name, for step references; empty where steps cannot be referenced
    /// (DAG-level fields, handlers).
    pub(crate) steps: &'a HashMap<String, String>,
    /// The id of the step that owns the field (its own outputs cannot be read).
    pub(crate) own_id: Option<&'a str>,
    /// Variables named by the steps' `output:` keys.
    pub(crate) output_vars: &'a HashSet<String>,
    /// Only `${consts.*}` may appear (the values of `consts` themselves).
    pub(crate) consts_only: bool,
    /// Inside a `foreach` body: the item's name (`as`), for `${foreach.<as>}`,
    /// `${foreach.index}` and `${foreach.key}`, and the top-level steps (id → name), whose
    /// outputs a body cannot read.
    pub(crate) foreach: Option<(&'a str, &'a HashMap<String, String>)>,
}

/// What the rewrites of one owner (a step, or the DAG level) need from the executor.
#[derive(Debug, Default)]
pub(crate) struct Refs {
    /// Variables to set.
    pub(crate) bindings: Vec<Binding>,
    /// Ids of the steps whose outputs or fields were referenced (inferred dependencies).
    pub(crate) producers: Vec<String>,
}

/// The references of one owner's text fields (a step's, or the DAG level's): what they may
/// refer to, and what the rewrites so far have bound. Every loader function that rewrites a
/// field takes one.
pub(crate) struct Rewriter<'s, 'r> {
    pub(crate) scope: &'s Scope<'s>,
    pub(crate) refs: &'r mut Refs,
}

impl Rewriter<'_, '_> {
    /// [`rewrite`] in this owner's scope.
    pub(crate) fn rewrite(&mut self, text: &str) -> Result<String, String> {
        rewrite(text, self.scope, self.refs)
    }
}

/// A supported reference, classified.
enum Reference<'t> {
    Const(&'t str),
    Env(&'t str),
    Bound(String, RefSource),
}

/// Built-in run context fields and the environment variable each is projected to (Dagu's
/// built-in run context); `None` = no projection, a `DAGU_REF_*` variable is used.
const CONTEXT_FIELDS: &[(&str, Option<&str>)] = &[
    ("dag.name", Some("DAG_NAME")),
    ("run.id", Some("DAG_RUN_ID")),
    ("run.status", Some("DAG_RUN_STATUS")),
    ("run.started_at", None),
    ("run.root_name", None),
    ("run.root_id", None),
    ("attempt.id", None),
    ("step.id", None),
    ("step.name", Some("DAG_RUN_STEP_NAME")),
    ("trigger.type", None),
    ("trigger.actor", None),
    ("paths.log_file", Some("DAG_RUN_LOG_FILE")),
    ("paths.work_dir", Some("DAG_RUN_WORK_DIR")),
    ("paths.step_stdout_file", Some("DAG_RUN_STEP_STDOUT_FILE")),
    ("paths.step_stderr_file", Some("DAG_RUN_STEP_STDERR_FILE")),
    ("paths.step_output_file", Some("DAGU_OUTPUT_FILE")),
];

/// Run context fields of Dagu that never have a value here, refused at load time with the
/// reason (Dagu would keep the reference's text, which a shell then rejects).
const REFUSED_CONTEXT: &[(&str, &str)] = &[
    (
        "run.scheduled_at",
        "dispatch starts runs from GitHub events and by hand, never on a schedule",
    ),
    (
        "paths.artifacts_dir",
        "artifact storage is not supported (`artifacts` is refused)",
    ),
    (
        "paths.docs_dir",
        "per-DAG docs directories are not supported",
    ),
    ("profile.name", "runtime profiles are not supported"),
    ("profile.resolved_at", "runtime profiles are not supported"),
    (
        "pushback.iteration",
        "approvals and push-back are not supported",
    ),
    (
        "pushback.previous_stdout_file",
        "approvals and push-back are not supported",
    ),
];

/// Step fields readable as `${ID.<field>}`.
const STEP_FIELDS: &[&str] = &["stdout", "stderr", "exit_code"];

pub(crate) fn is_identifier(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// Rewrites the references in `text` (see the module docs), recording bindings and producers
/// in `refs`. Fails on a reference that can never resolve: an unknown const, an undeclared
/// param, or (in `consts`) anything but an earlier const.
pub(crate) fn rewrite(text: &str, scope: &Scope<'_>, refs: &mut Refs) -> Result<String, String> {
    if !text.contains("${") {
        return Ok(text.to_owned());
    }
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while let Some(off) = text[i..].find("${") {
        let start = i + off;
        let Some(close) = text[start + 2..].find('}').map(|c| start + 2 + c) else {
            break;
        };
        let inner = &text[start + 2..close];
        let Some(reference) = classify(inner, scope)? else {
            // Not ours: keep the `${` and look inside, where a reference may be nested
            // (`${X:-${params.Y}}`).
            out.push_str(&text[i..start + 2]);
            i = start + 2;
            continue;
        };
        let backslashes = bytes[..start]
            .iter()
            .rev()
            .take_while(|&&b| b == b'\\')
            .count();
        if backslashes % 2 == 1 {
            out.push_str(&text[i..start - 1]);
            out.push_str(&text[start..=close]);
            i = close + 1;
            continue;
        }
        out.push_str(&text[i..start]);
        match reference {
            Reference::Const(value) => out.push_str(value),
            Reference::Env(name) => {
                out.push_str("${");
                out.push_str(name);
                out.push('}');
            }
            Reference::Bound(var, source) => {
                if let RefSource::StepOutput { step_id, .. }
                | RefSource::StepField { step_id, .. }
                | RefSource::StepCollected { step_id, .. } = &source
                {
                    if !refs.producers.contains(step_id) {
                        refs.producers.push(step_id.clone());
                    }
                }
                let var = bind(refs, var, source);
                out.push_str("${");
                out.push_str(&var);
                out.push('}');
            }
        }
        i = close + 1;
    }
    out.push_str(&text[i..]);
    Ok(out)
}

/// Records a binding and returns the variable it uses: `var` itself, or `var_2`, `var_3`, ...
/// when two different sources would otherwise share a name (names made of ids that hold `_`).
fn bind(refs: &mut Refs, var: String, source: RefSource) -> String {
    let mut n = 1;
    loop {
        let candidate = if n == 1 {
            var.clone()
        } else {
            format!("{var}_{n}")
        };
        match refs.bindings.iter().find(|b| b.var == candidate) {
            Some(b) if b.source == source => return candidate,
            Some(_) => n += 1,
            None => {
                refs.bindings.push(Binding {
                    var: candidate.clone(),
                    source,
                });
                return candidate;
            }
        }
    }
}

fn ref_var(segments: &[&str]) -> String {
    format!("DAGU_REF_{}", segments.join("_"))
}

fn classify<'t>(inner: &'t str, scope: &Scope<'t>) -> Result<Option<Reference<'t>>, String> {
    if !scope.consts_only {
        if let Some(collected) = collected_ref(inner, scope) {
            return Ok(Some(collected));
        }
    }
    let segments: Vec<&str> = inner.split('.').collect();
    if segments.len() < 2 || !segments.iter().all(|s| is_identifier(s)) {
        return Ok(None);
    }
    if let (Some((item, outer)), false) = (scope.foreach, scope.consts_only) {
        let producer = match segments.as_slice() {
            ["steps", id, ..] => Some(*id),
            [id, "outputs" | "stdout" | "stderr" | "exit_code", ..] => Some(*id),
            _ => None,
        };
        if let Some(id) = producer.filter(|id| outer.contains_key(*id)) {
            return Err(format!("`${{{inner}}}`: a `foreach` body step cannot read top-level step `{id}` (not supported yet); pass the value through `foreach.items`"));
        }
        match segments.as_slice() {
            ["foreach", "index"] => return Ok(Some(Reference::Env(crate::FOREACH_INDEX))),
            ["foreach", "key"] => return Ok(Some(Reference::Env(crate::FOREACH_KEY))),
            ["foreach", name] if *name == item => {
                return Ok(Some(Reference::Env(crate::FOREACH_ITEM)))
            }
            ["foreach", name, path @ ..] if *name == item => {
                return Ok(Some(Reference::Bound(
                    ref_var(&segments),
                    RefSource::ParamPath {
                        param: crate::FOREACH_ITEM.to_owned(),
                        path: path.iter().map(|s| (*s).to_owned()).collect(),
                    },
                )))
            }
            _ => {}
        }
    }
    let only_consts = |what: &str| -> Result<Option<Reference<'t>>, String> {
        if scope.consts_only {
            Err(format!(
                "`${{{inner}}}`: a const may only refer to earlier consts, not to {what}"
            ))
        } else {
            Ok(None)
        }
    };
    match segments.as_slice() {
        ["consts", name] => match scope.consts.iter().find(|(n, _)| n == name) {
            Some((_, value)) => Ok(Some(Reference::Const(value.as_str()))),
            None => Err(format!(
                "`${{{inner}}}`: unknown const `{name}` (consts are declared under `consts`, before their use)"
            )),
        },
        ["params", name] => {
            if scope.consts_only {
                return only_consts("params");
            }
            if scope.params.contains(*name) {
                Ok(Some(Reference::Bound(
                    ref_var(&segments),
                    RefSource::Param((*name).to_owned()),
                )))
            } else {
                Err(format!(
                    "`${{{inner}}}`: param `{name}` is not declared by name under `params`"
                ))
            }
        }
        ["env", name] => {
            if scope.consts_only {
                return only_consts("env");
            }
            Ok(Some(Reference::Env(name)))
        }
        ["steps", id, "outputs", output] => {
            if scope.consts_only {
                return only_consts("steps");
            }
            Ok(step_ref(scope, id, "outputs", Some(output), &segments))
        }
        _ if scope.consts_only => Ok(None),
        [id, "outputs", output] if scope.steps.contains_key(*id) => {
            Ok(step_ref(scope, id, "outputs", Some(output), &segments))
        }
        [id, field] if scope.steps.contains_key(*id) && STEP_FIELDS.contains(field) => {
            Ok(step_ref(scope, id, field, None, &segments))
        }
        _ => {
            let path = match segments.as_slice() {
                ["context", rest @ ..] => rest.join("."),
                _ => inner.to_owned(),
            };
            if let Some((_, why)) = REFUSED_CONTEXT.iter().find(|(f, _)| *f == path) {
                return Err(format!("`${{{inner}}}`: not supported: {why}"));
            }
            if let Some((field, projection)) = CONTEXT_FIELDS.iter().find(|(f, _)| *f == path) {
                let var = projection
                    .map(str::to_owned)
                    .unwrap_or_else(|| ref_var(&path.split('.').collect::<Vec<_>>()));
                return Ok(Some(Reference::Bound(
                    var,
                    RefSource::Context((*field).to_owned()),
                )));
            }
            if scope.output_vars.contains(segments[0]) {
                return Ok(Some(Reference::Bound(
                    ref_var(&segments),
                    RefSource::OutputPath {
                        var: segments[0].to_owned(),
                        path: segments[1..].iter().map(|s| (*s).to_owned()).collect(),
                    },
                )));
            }
            Ok(None)
        }
    }
}

/// `${ID.outputs}` / `${steps.ID.outputs}` (the collected outputs of a `parallel` or
/// `foreach` step) and `${ID.outputs[N].NAME}` (one of their values), for a known step other
/// than the owner.
fn collected_ref<'t>(inner: &str, scope: &Scope<'t>) -> Option<Reference<'t>> {
    if !inner.contains(".outputs") {
        return None;
    }
    let rest = inner.strip_prefix("steps.").unwrap_or(inner);
    let (id, after) = rest.split_once(".outputs")?;
    let name = scope.steps.get(id)?;
    if scope.own_id == Some(id) {
        return None;
    }
    let mut path = Vec::new();
    let mut tail = after;
    if let Some(indexed) = tail.strip_prefix('[') {
        let (n, more) = indexed.split_once(']')?;
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        path.push(n.to_owned());
        tail = more;
    } else if !tail.is_empty() {
        // `${ID.outputs.NAME}`: a declared output, not the collected array.
        return None;
    }
    for field in tail.split('.').skip(1) {
        if !is_identifier(field) {
            return None;
        }
        path.push(field.to_owned());
    }
    if !tail.is_empty() && !tail.starts_with('.') {
        return None;
    }
    let mut var_segments = vec![id, "outputs"];
    var_segments.extend(path.iter().map(String::as_str));
    Some(Reference::Bound(
        ref_var(&var_segments),
        RefSource::StepCollected {
            step_id: id.to_owned(),
            step_name: name.clone(),
            path,
        },
    ))
}

/// A reference to step `id`; `None` (kept as text, as Dagu keeps an unresolvable reference)
/// when the step is unknown here or is the owner itself.
fn step_ref<'t>(
    scope: &Scope<'t>,
    id: &str,
    field: &str,
    output: Option<&str>,
    segments: &[&str],
) -> Option<Reference<'t>> {
    let name = scope.steps.get(id)?;
    if scope.own_id == Some(id) {
        return None;
    }
    let source = match output {
        Some(output) => RefSource::StepOutput {
            step_id: id.to_owned(),
            step_name: name.clone(),
            output: output.to_owned(),
        },
        None => RefSource::StepField {
            step_id: id.to_owned(),
            step_name: name.clone(),
            field: field.to_owned(),
        },
    };
    // `${steps.build.outputs.x}` and `${build.outputs.x}` share one variable.
    let short: Vec<&str> = match segments {
        ["steps", rest @ ..] => rest.to_vec(),
        _ => segments.to_vec(),
    };
    Some(Reference::Bound(ref_var(&short), source))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        consts: Vec<(String, String)>,
        params: HashSet<String>,
        steps: HashMap<String, String>,
        outputs: HashSet<String>,
    }

    fn fixture() -> Fixture {
        Fixture {
            consts: vec![("svc".into(), "api".into())],
            params: ["region".to_owned()].into(),
            steps: [
                ("build".to_owned(), "Build image".to_owned()),
                ("me".to_owned(), "me".to_owned()),
            ]
            .into(),
            outputs: ["RESULT".to_owned()].into(),
        }
    }

    fn run(text: &str) -> Result<(String, Refs), String> {
        let f = fixture();
        let scope = Scope {
            consts: &f.consts,
            params: &f.params,
            steps: &f.steps,
            own_id: Some("me"),
            output_vars: &f.outputs,
            consts_only: false,
            foreach: None,
        };
        let mut refs = Refs::default();
        rewrite(text, &scope, &mut refs).map(|t| (t, refs))
    }

    #[test]
    fn rewrite_table() {
        let cases = [
            ("echo hi", "echo hi"),
            ("deploy ${consts.svc}", "deploy api"),
            ("echo ${params.region}", "echo ${DAGU_REF_params_region}"),
            (
                "echo \"$HOME ${HOME} $(date)\"",
                "echo \"$HOME ${HOME} $(date)\"",
            ),
            ("echo ${env.PATH}", "echo ${PATH}"),
            (
                "echo ${steps.build.outputs.image} ${build.outputs.image}",
                "echo ${DAGU_REF_build_outputs_image} ${DAGU_REF_build_outputs_image}",
            ),
            ("cat ${build.stdout}", "cat ${DAGU_REF_build_stdout}"),
            ("echo ${RESULT.items.0}", "echo ${RESULT.items.0}"),
            ("echo ${RESULT.data.id}", "echo ${DAGU_REF_RESULT_data_id}"),
            (
                "echo ${run.id} ${context.dag.name}",
                "echo ${DAG_RUN_ID} ${DAG_NAME}",
            ),
            ("echo ${attempt.id}", "echo ${DAGU_REF_attempt_id}"),
            // Unsupported or unknown: kept as written.
            (
                "echo ${ITEM.id} ${unknown.outputs.x}",
                "echo ${ITEM.id} ${unknown.outputs.x}",
            ),
            (
                "echo ${steps.nope.outputs.x}",
                "echo ${steps.nope.outputs.x}",
            ),
            ("echo ${me.outputs.x}", "echo ${me.outputs.x}"),
            ("echo $params.region", "echo $params.region"),
            // Escapes: odd run removes one backslash and keeps the text; even run resolves.
            ("echo \\${params.region}", "echo ${params.region}"),
            ("echo \\\\${consts.svc}", "echo \\\\api"),
            ("echo \\${HOME}", "echo \\${HOME}"),
            // Nested in shell syntax.
            (
                "echo ${X:-${params.region}}",
                "echo ${X:-${DAGU_REF_params_region}}",
            ),
            (
                "unterminated ${params.region",
                "unterminated ${params.region",
            ),
            // Collected outputs of a parallel / foreach step.
            (
                "echo ${build.outputs} ${steps.build.outputs[1].url}",
                "echo ${DAGU_REF_build_outputs} ${DAGU_REF_build_outputs_1_url}",
            ),
            ("echo ${build.outputs[x]}", "echo ${build.outputs[x]}"),
            ("echo ${me.outputs[0].x}", "echo ${me.outputs[0].x}"),
            // Outside a foreach body, `foreach.*` is not ours.
            ("echo ${foreach.item}", "echo ${foreach.item}"),
        ];
        for (input, want) in cases {
            let (got, _) = run(input).unwrap();
            assert_eq!(got, want, "input {input:?}");
        }
    }

    #[test]
    fn bindings_and_producers() {
        let (_, refs) = run(
            "${params.region} ${build.outputs.image} ${build.stdout} ${run.id} ${params.region}",
        )
        .unwrap();
        let vars: Vec<_> = refs.bindings.iter().map(|b| b.var.as_str()).collect();
        assert_eq!(
            vars,
            [
                "DAGU_REF_params_region",
                "DAGU_REF_build_outputs_image",
                "DAGU_REF_build_stdout",
                "DAG_RUN_ID"
            ]
        );
        assert_eq!(
            refs.bindings[1].source,
            RefSource::StepOutput {
                step_id: "build".into(),
                step_name: "Build image".into(),
                output: "image".into()
            }
        );
        assert_eq!(refs.producers, ["build"]);
    }

    #[test]
    fn errors_name_the_reference() {
        let cases = [
            ("echo ${consts.missing}", "unknown const `missing`"),
            ("echo ${params.other}", "param `other` is not declared"),
            ("echo ${run.scheduled_at}", "never on a schedule"),
            ("echo ${context.paths.artifacts_dir}", "artifact storage"),
            ("echo ${paths.docs_dir}", "docs directories"),
            ("echo ${profile.name}", "runtime profiles"),
            ("echo ${pushback.iteration}", "push-back"),
        ];
        for (text, want) in cases {
            let e = run(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn collected_outputs_and_foreach_items() {
        let (_, refs) = run("${steps.build.outputs[0].url}").unwrap();
        assert_eq!(
            refs.bindings[0].source,
            RefSource::StepCollected {
                step_id: "build".into(),
                step_name: "Build image".into(),
                path: vec!["0".into(), "url".into()],
            }
        );
        assert_eq!(refs.producers, ["build"]);

        let f = fixture();
        let outer = HashMap::from([("top".to_owned(), "Top".to_owned())]);
        let scope = Scope {
            consts: &f.consts,
            params: &f.params,
            steps: &f.steps,
            own_id: None,
            output_vars: &f.outputs,
            consts_only: false,
            foreach: Some(("episode", &outer)),
        };
        let mut refs = Refs::default();
        let got = rewrite(
            "${foreach.episode} ${foreach.index} ${foreach.key} ${foreach.episode.url} ${foreach.item}",
            &scope,
            &mut refs,
        )
        .unwrap();
        assert_eq!(
            got,
            "${DAGU_FOREACH_ITEM} ${DAGU_FOREACH_INDEX} ${DAGU_FOREACH_KEY} \
             ${DAGU_REF_foreach_episode_url} ${foreach.item}"
        );
        assert_eq!(
            refs.bindings[0].source,
            RefSource::ParamPath {
                param: "DAGU_FOREACH_ITEM".into(),
                path: vec!["url".into()],
            }
        );
        for text in ["${steps.top.outputs.x}", "${top.stdout}"] {
            let e = rewrite(text, &scope, &mut refs).unwrap_err();
            assert!(e.contains("top-level step `top`"), "{e}");
        }
    }

    #[test]
    fn same_variable_name_for_different_sources_gets_a_suffix() {
        let mut refs = Refs::default();
        let a = bind(&mut refs, "V".into(), RefSource::Param("a".into()));
        let b = bind(&mut refs, "V".into(), RefSource::Param("b".into()));
        let again = bind(&mut refs, "V".into(), RefSource::Param("b".into()));
        assert_eq!(
            (a.as_str(), b.as_str(), again.as_str()),
            ("V", "V_2", "V_2")
        );
    }
}
