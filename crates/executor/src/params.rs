//! The checks of rich param declarations (`type`, `enum`, `required`, `pattern`, bounds) on a
//! run's values, and which params the caller gave (`eval` only runs for the others).
//!
//! Pure logic: no IO, tested without a runtime.

use dispatch_dag::{ParamDefault, ParamSpec, ParamType};
use dispatch_webhook_params::Param;

/// Whether the runtime params set the param declared at `position` of `defaults` under `name`
/// (by name, or positionally at that position), following the merge rules of
/// `dispatch_dag::merge_params`.
pub(crate) fn given_by_caller(defaults: &[ParamDefault], runtime: &[Param], name: &str) -> bool {
    let position = defaults
        .iter()
        .position(|d| d.name.as_deref() == Some(name));
    runtime.iter().enumerate().any(|(i, p)| match &p.name {
        Some(n) => n == name,
        None => Some(i) == position,
    })
}

/// Checks `value` (`None`: the run has no value for the param) against its declaration. The
/// error names the param and the rule, never the value.
pub(crate) fn check_param(spec: &ParamSpec, value: Option<&str>) -> Result<(), String> {
    let name = &spec.name;
    let Some(value) = value else {
        return if spec.required {
            Err(format!("param `{name}` is required but has no value"))
        } else {
            Ok(())
        };
    };
    if spec.required && value.is_empty() {
        return Err(format!("param `{name}` is required but is empty"));
    }
    let number = match spec.kind {
        ParamType::String => None,
        ParamType::Integer => Some(
            value
                .trim()
                .parse::<i64>()
                .map(|n| n as f64)
                .map_err(|_| format!("param `{name}` must be an integer"))?,
        ),
        ParamType::Number => Some(
            value
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|n| n.is_finite())
                .ok_or_else(|| format!("param `{name}` must be a number"))?,
        ),
        ParamType::Boolean => {
            if !matches!(value.trim(), "true" | "false") {
                return Err(format!("param `{name}` must be `true` or `false`"));
            }
            None
        }
    };
    if !spec.choices.is_empty() && !spec.choices.iter().any(|c| c == value) {
        return Err(format!(
            "param `{name}` must be one of {}",
            spec.choices
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if let Some(n) = number {
        let bound = |b: &Option<String>| b.as_deref().and_then(|t| t.parse::<f64>().ok());
        if let Some(min) = bound(&spec.minimum).filter(|min| n < *min) {
            return Err(format!("param `{name}` must be at least {min}"));
        }
        if let Some(max) = bound(&spec.maximum).filter(|max| n > *max) {
            return Err(format!("param `{name}` must be at most {max}"));
        }
    }
    let chars = value.chars().count() as u64;
    if let Some(min) = spec.min_length.filter(|min| chars < *min) {
        return Err(format!(
            "param `{name}` must be at least {min} characters long"
        ));
    }
    if let Some(max) = spec.max_length.filter(|max| chars > *max) {
        return Err(format!(
            "param `{name}` must be at most {max} characters long"
        ));
    }
    if let Some(pattern) = &spec.pattern {
        let re = regex::Regex::new(pattern)
            .map_err(|e| format!("param `{name}`: invalid `pattern` `{pattern}`: {e}"))?;
        if !re.is_match(value) {
            return Err(format!("param `{name}` must match the pattern `{pattern}`"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: ParamType) -> ParamSpec {
        ParamSpec {
            name: "p".into(),
            kind,
            ..ParamSpec::default()
        }
    }

    #[test]
    fn checks_table() {
        let mut required = spec(ParamType::String);
        required.required = true;
        let mut choice = spec(ParamType::String);
        choice.choices = vec!["staging".into(), "production".into()];
        let mut bounded = spec(ParamType::Integer);
        bounded.minimum = Some("1".into());
        bounded.maximum = Some("10".into());
        let mut length = spec(ParamType::String);
        length.min_length = Some(2);
        length.max_length = Some(3);
        let mut pattern = spec(ParamType::String);
        pattern.pattern = Some("^v[0-9]+$".into());
        let (string, integer, number, boolean) = (
            spec(ParamType::String),
            spec(ParamType::Integer),
            spec(ParamType::Number),
            spec(ParamType::Boolean),
        );
        let cases: Vec<(&ParamSpec, Option<&str>, Result<(), &str>)> = vec![
            (&required, None, Err("required but has no value")),
            (&required, Some(""), Err("required but is empty")),
            (&required, Some("x"), Ok(())),
            (&string, None, Ok(())),
            (&integer, Some("42"), Ok(())),
            (&integer, Some("4.2"), Err("must be an integer")),
            (&number, Some("4.2"), Ok(())),
            (&number, Some("inf"), Err("must be a number")),
            (&boolean, Some("true"), Ok(())),
            (&boolean, Some("yes"), Err("`true` or `false`")),
            (&choice, Some("production"), Ok(())),
            (&choice, Some("dev"), Err("one of `staging`, `production`")),
            (&bounded, Some("0"), Err("at least 1")),
            (&bounded, Some("11"), Err("at most 10")),
            (&bounded, Some("10"), Ok(())),
            (&length, Some("a"), Err("at least 2 characters")),
            (&length, Some("abcd"), Err("at most 3 characters")),
            (&length, Some("\u{e9}\u{e9}"), Ok(())),
            (&pattern, Some("v12"), Ok(())),
            (
                &pattern,
                Some("12"),
                Err("must match the pattern `^v[0-9]+$`"),
            ),
        ];
        for (spec, value, want) in cases {
            let got = check_param(spec, value);
            match want {
                Ok(()) => assert_eq!(got, Ok(()), "{value:?}"),
                Err(text) => {
                    let e = got.unwrap_err();
                    assert!(
                        e.contains(text) && e.contains("param `p`"),
                        "{value:?}: {e}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_value_is_given_by_name_or_by_position() {
        let defaults = [
            ParamDefault {
                name: Some("A".into()),
                value: "1".into(),
            },
            ParamDefault {
                name: Some("B".into()),
                value: String::new(),
            },
        ];
        assert!(given_by_caller(&defaults, &[Param::named("B", "x")], "B"));
        assert!(!given_by_caller(&defaults, &[Param::named("A", "x")], "B"));
        let positional = [Param::positional("a"), Param::positional("b")];
        assert!(given_by_caller(&defaults, &positional, "B"));
        assert!(!given_by_caller(&defaults, &positional[..1], "B"));
        assert!(!given_by_caller(&defaults, &[], "A"));
    }
}
