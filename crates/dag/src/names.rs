//! Checks of DAG names, queue names and run ids. They run before any filesystem access, because
//! these values arrive from the network and end up as path components.

use crate::StoreError;

/// Longest accepted DAG or queue name, in bytes.
pub const MAX_DAG_NAME_LEN: usize = 128;

/// Longest accepted run id, in bytes.
pub const MAX_RUN_ID_LEN: usize = 64;

/// Accepts `[A-Za-z0-9._-]{1,128}` except `.`-only names and names holding `..`.
pub fn validate_dag_name(name: &str) -> Result<(), StoreError> {
    check("DAG name", name, &NAME)
}

/// Same rules as [`validate_dag_name`]; a queue is a directory name too.
pub(crate) fn validate_queue_name(name: &str) -> Result<(), StoreError> {
    check("queue name", name, &NAME)
}

/// Accepts `[A-Za-z0-9_-]{1,64}`.
pub fn validate_run_id(run_id: &str) -> Result<(), StoreError> {
    check("run id", run_id, &ID)
}

/// Attempt ids follow the run-id rules.
pub(crate) fn validate_attempt_id(id: &str) -> Result<(), StoreError> {
    check("attempt id", id, &ID)
}

/// What one kind of name may hold.
struct Rules {
    max_len: usize,
    too_long: &'static str,
    /// Bytes allowed besides ASCII letters and digits.
    extra: &'static [u8],
    allowed: &'static str,
    /// Names that may hold `.` are checked for separators, `..` and `.` first, with their own
    /// reasons.
    dots: bool,
}

const NAME: Rules = Rules {
    max_len: MAX_DAG_NAME_LEN,
    too_long: "longer than 128 bytes",
    extra: b"._-",
    allowed: "may only hold A-Z, a-z, 0-9, `.`, `_` and `-`",
    dots: true,
};

const ID: Rules = Rules {
    max_len: MAX_RUN_ID_LEN,
    too_long: "longer than 64 bytes",
    extra: b"_-",
    allowed: "may only hold A-Z, a-z, 0-9, `_` and `-`",
    dots: false,
};

fn check(kind: &'static str, value: &str, rules: &Rules) -> Result<(), StoreError> {
    let reason = if value.is_empty() {
        Some("must not be empty")
    } else if value.len() > rules.max_len {
        Some(rules.too_long)
    } else if rules.dots && (value.contains('/') || value.contains('\\')) {
        Some("must not hold a path separator")
    } else if rules.dots && value.contains("..") {
        Some("must not hold `..`")
    } else if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || rules.extra.contains(&b))
    {
        Some(rules.allowed)
    } else if rules.dots && value == "." {
        Some("must not be `.`")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(StoreError::InvalidName {
            kind,
            value: value.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dag_names_and_run_ids() {
        let (max_name, long_name) = ("a".repeat(128), "a".repeat(129));
        let (max_id, long_id) = ("a".repeat(64), "a".repeat(65));
        // Each check, the kind its errors name, the values it accepts and those it refuses.
        type Check = fn(&str) -> Result<(), StoreError>;
        let table: [(Check, &str, Vec<&str>, Vec<&str>); 2] = [
            (
                validate_dag_name,
                "DAG name",
                vec!["build", "build.v2_x-1", &max_name],
                vec![
                    "",
                    &long_name,
                    "../etc",
                    "a..b",
                    "..",
                    ".",
                    "/etc/passwd",
                    "a/b",
                    "a\\b",
                    "a b",
                    "dé",
                    "a\0",
                ],
            ),
            (
                validate_run_id,
                "run id",
                vec!["abc-123_X", &max_id],
                vec!["", &long_id, "a.b", "../x", "a/b", "a%2F"],
            ),
        ];
        for (check, kind, good, bad) in table {
            for value in good {
                assert!(check(value).is_ok(), "{value:?}: {:?}", check(value));
            }
            for value in bad {
                let e = check(value).expect_err(value);
                assert!(e.to_string().starts_with(&format!("invalid {kind}")), "{e}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn accepted_names_are_one_plain_path_component(name in "\\PC{0,20}|[A-Za-z0-9._/-]{0,12}") {
            if validate_dag_name(&name).is_ok() {
                let comps: Vec<_> = std::path::Path::new(&name).components().collect();
                proptest::prop_assert_eq!(comps.len(), 1);
                proptest::prop_assert!(matches!(comps[0], std::path::Component::Normal(_)));
            }
            if validate_run_id(&name).is_ok() {
                proptest::prop_assert!(validate_dag_name(&name).is_ok());
            }
        }
    }
}
