//! Preconditions and repeat conditions (`docs/dag-format.md`, "Preconditions"), and the
//! dynamic evaluation of `eval` texts.
//!
//! A command check runs through the shell and is met when it exits 0; a compared `condition`
//! expands `$VAR` / `${VAR}` from the environment without running anything; an `eval` runs the
//! text's command substitutions through the shell. Values reach the shell only through the
//! environment: the texts are the DAG author's, with references rewritten into variables.

use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use dispatch_dag::{ConditionCheck, Precondition};
use tokio_util::sync::CancellationToken;

use crate::env::{expand, lookup};
use crate::invocation::Shell;
use crate::policy::matches;
use crate::process::run_captured;

/// Where and how conditions are checked.
pub(crate) struct CheckCx<'a> {
    pub(crate) shell: &'a Shell,
    /// The full environment of the gated step (or of the run, for DAG-level conditions),
    /// applied on top of the inherited one.
    pub(crate) env: &'a [(String, String)],
    pub(crate) working_dir: &'a Path,
    pub(crate) stop: &'a CancellationToken,
    pub(crate) clean_up: Duration,
    /// Largest output of an `eval` kept.
    pub(crate) limit: usize,
}

impl CheckCx<'_> {
    /// Runs `text` through the shell, with the environment and working directory of what is
    /// checked; returns how it exited and up to `limit` bytes of its stdout.
    async fn run(&self, text: &str, limit: usize) -> Result<(ExitStatus, Vec<u8>), String> {
        let inv = self.shell.command(text);
        run_captured(
            &inv.program,
            &inv.args,
            self.working_dir,
            self.env,
            self.stop,
            self.clean_up,
            limit,
        )
        .await
    }
}

/// Whether every precondition passes (all are checked, in order); an evaluation error (a bad
/// regular expression, a failed `eval`, a stop) is an `Err`.
pub(crate) async fn all_met(
    preconditions: &[Precondition],
    cx: &CheckCx<'_>,
) -> Result<bool, String> {
    let mut all = true;
    for (i, p) in preconditions.iter().enumerate() {
        let met = check(&p.check, cx)
            .await
            .map_err(|e| format!("precondition {}: {e}", i + 1))?;
        all &= met != p.negate;
    }
    Ok(all)
}

/// Whether one condition is met.
pub(crate) async fn check(condition: &ConditionCheck, cx: &CheckCx<'_>) -> Result<bool, String> {
    match condition {
        ConditionCheck::Command(text) => {
            match cx.run(text, 0).await {
                Ok((status, _)) => Ok(status.success()),
                Err(_) if cx.stop.is_cancelled() => Err("stopped".to_owned()),
                // A command that cannot start is a condition not met, not an error.
                Err(_) => Ok(false),
            }
        }
        ConditionCheck::Match {
            condition,
            expected,
        } => {
            let text = expand(condition, &|var| {
                lookup(cx.env, var).or_else(|| std::env::var(var).ok())
            });
            matches(expected, &text)
        }
        ConditionCheck::Eval { eval, expected } => {
            let text = evaluate(eval, cx).await?;
            matches(expected, &text)
        }
    }
}

/// Runs the command substitutions and variable expansions of `text` as the shell does inside
/// double quotes (an unquoted here-document does exactly that, and leaves `"` alone), and
/// returns the result without its final newline.
pub(crate) async fn evaluate(text: &str, cx: &CheckCx<'_>) -> Result<String, String> {
    let mut delimiter = "DISPATCH_EVAL_END".to_owned();
    while text.lines().any(|l| l == delimiter) {
        delimiter.push('_');
    }
    let script = format!("cat <<{delimiter}\n{text}\n{delimiter}\n");
    let (status, out) = cx.run(&script, cx.limit).await?;
    if !status.success() {
        return Err(format!("`eval` exited with {status}"));
    }
    let mut out = String::from_utf8_lossy(&out).into_owned();
    if out.ends_with('\n') {
        out.pop();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dispatch_dag::Expected;

    fn cx<'a>(
        shell: &'a Shell,
        env: &'a [(String, String)],
        dir: &'a Path,
        stop: &'a CancellationToken,
    ) -> CheckCx<'a> {
        CheckCx {
            shell,
            env,
            working_dir: dir,
            stop,
            clean_up: Duration::from_secs(1),
            limit: 1024,
        }
    }

    #[tokio::test]
    async fn the_three_kinds_of_check() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ready.flag"), "").unwrap();
        let shell = Shell::select(None, None);
        let env = vec![
            ("ENVIRONMENT".to_owned(), "production".to_owned()),
            ("EVIL".to_owned(), "$(touch pwned)".to_owned()),
        ];
        let stop = CancellationToken::new();
        let cx = cx(&shell, &env, dir.path(), &stop);
        let cmd = |t: &str| ConditionCheck::Command(t.into());
        let matching = |c: &str, e: Expected| ConditionCheck::Match {
            condition: c.into(),
            expected: e,
        };
        let lit = |s: &str| Expected::Literal(s.into());
        let cases = [
            (cmd("test -f ready.flag"), true),
            (cmd("test -f missing.flag"), false),
            (cmd("test \"$ENVIRONMENT\" = production"), true),
            (matching("${ENVIRONMENT}", lit("production")), true),
            (
                matching(
                    "$ENVIRONMENT",
                    Expected::Regex("^(staging|production)$".into()),
                ),
                true,
            ),
            (matching("staging", lit("production")), false),
            // Compared text is never run: neither the condition nor a value in it.
            (matching("$(echo production)", lit("production")), false),
            (matching("$EVIL", lit("$(touch pwned)")), true),
            (
                ConditionCheck::Eval {
                    eval: "$(echo prod)uction".into(),
                    expected: lit("production"),
                },
                true,
            ),
            (
                ConditionCheck::Eval {
                    eval: "\"$EVIL\" `echo x`".into(),
                    expected: lit("\"$(touch pwned)\" x"),
                },
                true,
            ),
        ];
        for (check_, want) in cases {
            assert_eq!(check(&check_, &cx).await, Ok(want), "{check_:?}");
        }
        assert!(!dir.path().join("pwned").exists(), "a value was run");
        let e = check(&matching("x", Expected::Regex("(".into())), &cx)
            .await
            .unwrap_err();
        assert!(e.contains("invalid regular expression"), "{e}");
    }

    #[tokio::test]
    async fn negate_and_all_met() {
        let dir = tempfile::tempdir().unwrap();
        let shell = Shell::select(None, None);
        let stop = CancellationToken::new();
        let cx = cx(&shell, &[], dir.path(), &stop);
        let p = |t: &str, negate| Precondition {
            check: ConditionCheck::Command(t.into()),
            negate,
        };
        assert_eq!(
            all_met(&[p("true", false), p("false", true)], &cx).await,
            Ok(true)
        );
        assert_eq!(
            all_met(&[p("true", false), p("true", true)], &cx).await,
            Ok(false)
        );
        assert_eq!(all_met(&[], &cx).await, Ok(true));
        // A shell that cannot start: not met, and negated, met.
        let missing = Shell::select(Some("/nonexistent/sh"), None);
        let cx2 = CheckCx {
            shell: &missing,
            ..cx
        };
        assert_eq!(all_met(&[p("true", false)], &cx2).await, Ok(false));
        assert_eq!(all_met(&[p("true", true)], &cx2).await, Ok(true));
    }

    #[tokio::test]
    async fn evaluate_runs_substitutions_and_keeps_quotes() {
        let dir = tempfile::tempdir().unwrap();
        let shell = Shell::select(None, None);
        let stop = CancellationToken::new();
        let env = vec![("A".to_owned(), "a b".to_owned())];
        let cx = cx(&shell, &env, dir.path(), &stop);
        assert_eq!(
            evaluate("say \"$A\" $(printf '%s' x)\nDISPATCH_EVAL_END\n", &cx).await,
            Ok("say \"a b\" x\nDISPATCH_EVAL_END\n".to_owned())
        );
        let e = evaluate(
            "$(exit 3)",
            &CheckCx {
                shell: &Shell::select(Some("false"), None),
                ..cx
            },
        )
        .await
        .unwrap_err();
        assert!(e.contains("exited"), "{e}");
    }
}
