//! The merge of a DAG's param defaults with a run's runtime params (`docs/dag-format.md`; the
//! runtime-param string itself: `docs/protocol.md`).

use dispatch_webhook_params::Param;

use crate::{Dag, DagError, ParamDefault, ParamError};

/// Merges `runtime` into the defaults of `dag` and returns a copy of `dag` with
/// [`Dag::resolved_params`] filled in (see [`merge_params`]).
pub fn resolve_params(dag: &Dag, runtime: &[Param]) -> Result<Dag, DagError> {
    let resolved = merge_params(&dag.params, runtime).map_err(|e| DagError {
        path: dag.location.clone(),
        line: None,
        message: e.to_string(),
    })?;
    let mut out = dag.clone();
    out.resolved_params = resolved;
    Ok(out)
}

/// The merged params as `(name, value)` pairs, defaults first in file order.
///
/// - A named runtime param overrides the default of the same name; an unknown name is appended.
///   Every name is accepted, so `WEBHOOK_*` and `GITHUB_*` always pass (Dagu refused `GITHUB_*`
///   on DAGs that declared named params).
/// - A positional runtime param at index `i` of the runtime list replaces the value of the
///   `i`-th default (which keeps its name), or is appended when there is none.
/// - A positional entry is named by its 1-based position in the result (`"1"`, `"2"`, …).
///
/// Fails with [`ParamError::NulByte`] (naming the param, never its value) when a value holds a
/// NUL byte, which no environment variable can carry.
pub fn merge_params(
    defaults: &[ParamDefault],
    runtime: &[Param],
) -> Result<Vec<(String, String)>, ParamError> {
    let mut merged: Vec<(Option<String>, String)> = defaults
        .iter()
        .map(|d| (d.name.clone(), d.value.clone()))
        .collect();
    for (i, p) in runtime.iter().enumerate() {
        match &p.name {
            Some(name) => match merged.iter_mut().find(|(n, _)| n.as_ref() == Some(name)) {
                Some(slot) => slot.1 = p.value.clone(),
                None => merged.push((Some(name.clone()), p.value.clone())),
            },
            None => match merged.get_mut(i) {
                Some(slot) => slot.1 = p.value.clone(),
                None => merged.push((None, p.value.clone())),
            },
        }
    }
    merged
        .into_iter()
        .enumerate()
        .map(|(i, (name, value))| {
            let name = name.unwrap_or_else(|| (i + 1).to_string());
            if value.contains('\0') {
                return Err(ParamError::NulByte { name });
            }
            Ok((name, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(name: Option<&str>, value: &str) -> ParamDefault {
        ParamDefault {
            name: name.map(str::to_owned),
            value: value.to_owned(),
        }
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn merge_table() {
        let defaults = [d(Some("A"), "1"), d(Some("B"), "x")];
        type Row = (&'static str, Vec<Param>, Vec<(String, String)>);
        let table: Vec<Row> = vec![
            ("no runtime", vec![], pairs(&[("A", "1"), ("B", "x")])),
            (
                "override by name keeps order",
                vec![Param::named("B", "y")],
                pairs(&[("A", "1"), ("B", "y")]),
            ),
            (
                "unknown appended, github and webhook accepted",
                vec![
                    Param::named("WEBHOOK_PAYLOAD", "{}"),
                    Param::named("GITHUB_REF", "refs/heads/main"),
                    Param::named("A", "2"),
                ],
                pairs(&[
                    ("A", "2"),
                    ("B", "x"),
                    ("WEBHOOK_PAYLOAD", "{}"),
                    ("GITHUB_REF", "refs/heads/main"),
                ]),
            ),
            (
                "positional replaces by position and keeps the name",
                vec![
                    Param::positional("p0"),
                    Param::positional("p1"),
                    Param::positional("p2"),
                ],
                pairs(&[("A", "p0"), ("B", "p1"), ("3", "p2")]),
            ),
            (
                "last repeated name wins",
                vec![Param::named("A", "a"), Param::named("A", "b")],
                pairs(&[("A", "b"), ("B", "x")]),
            ),
        ];
        for (what, runtime, want) in table {
            assert_eq!(merge_params(&defaults, &runtime).unwrap(), want, "{what}");
        }
    }

    #[test]
    fn positional_defaults_are_numbered() {
        let defaults = [d(None, "a"), d(Some("N"), "b"), d(None, "c")];
        let got = merge_params(&defaults, &[Param::positional("z")]).unwrap();
        assert_eq!(got, pairs(&[("1", "z"), ("N", "b"), ("3", "c")]));
    }

    #[test]
    fn nul_is_refused_without_echoing_the_value() {
        let e = merge_params(&[], &[Param::named("SECRETISH", "a\0b")]).unwrap_err();
        assert_eq!(
            e,
            ParamError::NulByte {
                name: "SECRETISH".to_owned()
            }
        );
        assert_eq!(e.to_string(), "param `SECRETISH`: value holds a NUL byte");
    }
}
