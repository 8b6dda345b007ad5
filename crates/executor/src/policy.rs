//! Step policies as decisions: `expected` matching, `continue_on`, the delays of
//! `retry_policy` and `repeat_policy`, and whether to repeat (`docs/dag-format.md`, "Step
//! policies").
//!
//! Pure logic: no IO, tested without a runtime.

use std::time::Duration;

use dispatch_dag::{Backoff, ContinueOn, Expected, RepeatMode, RepeatPolicy, RetryPolicy};

/// Whether a line of `text` matches `expected`: a literal equals a whole line (case-sensitive);
/// `re:` is a regular expression searched in each line (not anchored). An invalid regular
/// expression is an error naming it.
pub(crate) fn matches(expected: &Expected, text: &str) -> Result<bool, String> {
    match expected {
        Expected::Literal(want) => Ok(lines(text).any(|l| l == want)),
        Expected::Regex(pattern) => {
            let re = regex::Regex::new(pattern)
                .map_err(|e| format!("invalid regular expression `{pattern}`: {e}"))?;
            Ok(lines(text).any(|l| re.is_match(l)))
        }
    }
}

/// The lines of `text`; an empty text is one empty line (so that `expected: ""`-like patterns
/// can match a value that resolved to nothing).
fn lines(text: &str) -> impl Iterator<Item = &str> {
    let text = text.strip_suffix('\n').unwrap_or(text);
    text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l))
}

/// Whether a failed attempt is covered by `continue_on` (the run goes on after it): `failure`,
/// one of the `exit_code`s, or a line of the output matching one of `output`.
pub(crate) fn continues_after_failure(
    continue_on: &ContinueOn,
    exit_code: Option<i32>,
    output: &str,
) -> bool {
    if continue_on.failure {
        return true;
    }
    if exit_code.is_some_and(|c| continue_on.exit_code.contains(&c)) {
        return true;
    }
    continue_on
        .output
        .iter()
        .any(|e| matches(e, output).unwrap_or(false))
}

/// The delay before retry number `n` (0 for the first retry): `interval * backoff^n`, capped.
pub(crate) fn retry_delay(policy: &RetryPolicy, n: u32) -> Duration {
    grown(
        policy.interval_sec,
        policy.backoff,
        policy.max_interval_sec,
        n,
    )
}

/// The delay before repetition number `n` (0 for the first repeat).
pub(crate) fn repeat_delay(policy: &RepeatPolicy, n: u32) -> Duration {
    grown(
        policy.interval_sec,
        policy.backoff,
        policy.max_interval_sec,
        n,
    )
}

fn grown(interval_sec: u64, backoff: Option<Backoff>, cap: Option<u64>, n: u32) -> Duration {
    let mut secs = interval_sec as f64;
    if let Some(Backoff(factor)) = backoff {
        secs *= factor.powi(n.min(64) as i32);
    }
    if let Some(cap) = cap {
        secs = secs.min(cap as f64);
    }
    // A day is far beyond any sensible interval; it also keeps the conversion finite.
    Duration::from_secs_f64(secs.clamp(0.0, 86_400.0))
}

/// Whether a failed attempt may be retried: attempts left and, when `exit_code` lists codes,
/// one of them.
pub(crate) fn should_retry(
    policy: &RetryPolicy,
    retries_done: u64,
    exit_code: Option<i32>,
) -> bool {
    retries_done < policy.limit
        && (policy.exit_code.is_empty() || exit_code.is_some_and(|c| policy.exit_code.contains(&c)))
}

/// Whether to run the step again after run number `runs` (1-based) ended.
///
/// `condition_met` is the result of the policy's `condition` (`None` when it has none);
/// `exit_code` and `succeeded` describe the run. The policy's condition holds when its
/// `condition` is met and (when listed) the exit code is one of `exit_code`. `while` repeats
/// while it holds, `until` until it holds; without any condition `while` repeats every run. A
/// failed run ends the repetition unless the policy's exit codes make failures part of it.
pub(crate) fn should_repeat(
    policy: &RepeatPolicy,
    runs: u64,
    condition_met: Option<bool>,
    exit_code: Option<i32>,
    succeeded: bool,
) -> bool {
    if policy.limit.is_some_and(|limit| runs >= limit) {
        return false;
    }
    if !succeeded && policy.exit_code.is_empty() {
        return false;
    }
    let code_holds =
        policy.exit_code.is_empty() || exit_code.is_some_and(|c| policy.exit_code.contains(&c));
    let condition = condition_met.unwrap_or(true);
    let unconditional = policy.condition.is_none() && policy.exit_code.is_empty();
    match policy.mode {
        RepeatMode::While => condition && code_holds,
        // `until` with nothing to wait for runs to the limit.
        RepeatMode::Until if unconditional => true,
        RepeatMode::Until => !(condition && code_holds),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dispatch_dag::ConditionCheck;

    #[test]
    fn expected_table() {
        let lit = |s: &str| Expected::Literal(s.into());
        let re = |s: &str| Expected::Regex(s.into());
        let cases = [
            (lit("production"), "production", true),
            (lit("production"), "staging\nproduction\n", true),
            (lit("prod"), "production", false),
            (lit("Production"), "production", false),
            (re("^(staging|production)$"), "staging", true),
            (re("^(staging|production)$"), "dev", false),
            (re("WARN"), "ok\nsome WARNING here\r\n", true),
            (re("(?i)warn"), "Warn", true),
            (re("^$"), "", true),
        ];
        for (expected, text, want) in cases {
            assert_eq!(matches(&expected, text), Ok(want), "{expected:?} {text:?}");
        }
        let e = matches(&re("("), "x").unwrap_err();
        assert!(e.contains("invalid regular expression `(`"), "{e}");
    }

    #[test]
    fn continue_on_table() {
        let base = ContinueOn::default();
        assert!(!continues_after_failure(&base, Some(1), ""));
        let failure = ContinueOn {
            failure: true,
            ..ContinueOn::default()
        };
        assert!(continues_after_failure(&failure, Some(1), ""));
        let codes = ContinueOn {
            exit_code: vec![3, 4],
            ..ContinueOn::default()
        };
        assert!(continues_after_failure(&codes, Some(3), ""));
        assert!(!continues_after_failure(&codes, Some(5), ""));
        assert!(!continues_after_failure(&codes, None, ""));
        let output = ContinueOn {
            output: vec![
                Expected::Regex("^WARN".into()),
                Expected::Literal("done".into()),
            ],
            ..ContinueOn::default()
        };
        assert!(continues_after_failure(&output, Some(1), "x\nWARN: disk\n"));
        assert!(continues_after_failure(&output, Some(1), "done\n"));
        assert!(!continues_after_failure(&output, Some(1), "not done\n"));
    }

    fn retry(interval: u64, backoff: Option<f64>, cap: Option<u64>) -> RetryPolicy {
        RetryPolicy {
            limit: 3,
            interval_sec: interval,
            backoff: backoff.map(Backoff),
            max_interval_sec: cap,
            exit_code: vec![],
        }
    }

    #[test]
    fn retry_delays_grow_and_are_capped() {
        let secs = |p: &RetryPolicy| {
            (0..5)
                .map(|n| retry_delay(p, n).as_secs())
                .collect::<Vec<_>>()
        };
        assert_eq!(secs(&retry(5, None, None)), [5, 5, 5, 5, 5]);
        assert_eq!(secs(&retry(1, Some(2.0), None)), [1, 2, 4, 8, 16]);
        assert_eq!(secs(&retry(1, Some(2.0), Some(5))), [1, 2, 4, 5, 5]);
        assert_eq!(secs(&retry(0, Some(2.0), None)), [0, 0, 0, 0, 0]);
        assert_eq!(
            retry_delay(&retry(2, Some(1.5), None), 1),
            Duration::from_secs(3)
        );
        assert_eq!(
            retry_delay(&retry(u64::MAX, Some(10.0), None), 60),
            Duration::from_secs(86_400)
        );
    }

    #[test]
    fn retry_decisions() {
        let mut p = retry(0, None, None);
        assert!(should_retry(&p, 0, Some(1)));
        assert!(should_retry(&p, 2, None));
        assert!(!should_retry(&p, 3, Some(1)));
        p.exit_code = vec![75];
        assert!(should_retry(&p, 0, Some(75)));
        assert!(!should_retry(&p, 0, Some(1)));
        assert!(!should_retry(&p, 0, None));
    }

    fn repeat(
        mode: RepeatMode,
        condition: bool,
        codes: &[i32],
        limit: Option<u64>,
    ) -> RepeatPolicy {
        RepeatPolicy {
            mode,
            condition: condition.then(|| ConditionCheck::Command("true".into())),
            exit_code: codes.to_vec(),
            interval_sec: 0,
            limit,
            backoff: None,
            max_interval_sec: None,
        }
    }

    #[test]
    fn repeat_decisions() {
        use RepeatMode::*;
        // (policy, runs so far, condition met, exit code, succeeded) → repeat?
        let while_limit_3 = repeat(While, false, &[], Some(3));
        let while_unlimited = repeat(While, false, &[], None);
        let while_condition = repeat(While, true, &[], None);
        let until_condition = repeat(Until, true, &[], None);
        let while_codes_1 = repeat(While, false, &[1], None);
        let until_codes_0 = repeat(Until, false, &[0], None);
        let until_limit_2 = repeat(Until, false, &[], Some(2));
        let cases = [
            (&while_limit_3, 1, None, Some(0), true, true),
            (&while_limit_3, 3, None, Some(0), true, false),
            (&while_unlimited, 1, None, Some(1), false, false),
            (&while_condition, 1, Some(true), Some(0), true, true),
            (&while_condition, 1, Some(false), Some(0), true, false),
            (&until_condition, 1, Some(false), Some(0), true, true),
            (&until_condition, 1, Some(true), Some(0), true, false),
            (&while_codes_1, 1, None, Some(1), false, true),
            (&while_codes_1, 2, None, Some(0), true, false),
            (&until_codes_0, 1, None, Some(2), false, true),
            (&until_codes_0, 2, None, Some(0), true, false),
            (&until_limit_2, 1, None, Some(0), true, true),
            (&until_limit_2, 2, None, Some(0), true, false),
            (&until_condition, 1, Some(false), Some(1), false, false),
        ];
        for (i, (policy, runs, met, code, ok, want)) in cases.into_iter().enumerate() {
            assert_eq!(should_repeat(policy, runs, met, code, ok), want, "case {i}");
        }
    }
}
