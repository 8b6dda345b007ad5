//! Finish summaries: what the hub shows on GitHub (commit status description, PR comment).

use dispatch_dag::{RunRecord, StepStatus};

/// Summaries are cut here (on a char boundary): the hub trims further for commit statuses, and a
/// runaway error text must not make a huge request.
pub(crate) const MAX_SUMMARY_CHARS: usize = 2_000;

/// ``Run `<dag>` finished with `<status>`.`` plus the first error and the failed steps.
pub(crate) fn run_summary(record: &RunRecord) -> String {
    let mut out = format!(
        "Run `{}` finished with `{}`.",
        record.dag_name,
        record.status.as_str()
    );
    let failed: Vec<_> = record
        .steps
        .iter()
        .filter(|s| s.status == StepStatus::Failed)
        .collect();
    let first_error = record
        .error
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .or_else(|| {
            failed
                .iter()
                .filter_map(|s| s.error.as_deref().map(str::trim))
                .find(|e| !e.is_empty())
        });
    if let Some(error) = first_error {
        out.push_str(" First error: ");
        out.push_str(error.trim_end_matches('.'));
        out.push('.');
    }
    if !failed.is_empty() {
        out.push_str(" Failed steps: ");
        let names: Vec<String> = failed
            .iter()
            .map(|s| match s.exit_code {
                Some(code) => format!("`{}` (exit {code})", s.name),
                None => format!("`{}`", s.name),
            })
            .collect();
        out.push_str(&names.join(", "));
        out.push('.');
    }
    truncate(out)
}

/// Cuts `text` to [`MAX_SUMMARY_CHARS`], marking the cut.
pub(crate) fn truncate(text: String) -> String {
    if text.chars().count() <= MAX_SUMMARY_CHARS {
        return text;
    }
    let mut cut: String = text.chars().take(MAX_SUMMARY_CHARS - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use dispatch_dag::{RunStatus, StepRecord};
    use std::path::PathBuf;

    fn record(status: RunStatus, error: Option<&str>, steps: Vec<StepRecord>) -> RunRecord {
        RunRecord {
            dag_name: "build".into(),
            run_id: "job-1".into(),
            attempt_id: "a1".into(),
            status,
            trigger: "webhook".into(),
            params: String::new(),
            queued_at: None,
            started_at: None,
            finished_at: None,
            log_file: PathBuf::from("/tmp/x.log"),
            error: error.map(str::to_owned),
            steps,
            pid: None,
        }
    }

    fn step(name: &str, status: StepStatus, exit: Option<i32>, error: Option<&str>) -> StepRecord {
        StepRecord {
            name: name.into(),
            status,
            exit_code: exit,
            error: error.map(str::to_owned),
            ..StepRecord::default()
        }
    }

    #[test]
    fn table() {
        let cases = [
            (
                record(
                    RunStatus::Succeeded,
                    None,
                    vec![step("a", StepStatus::Succeeded, Some(0), None)],
                ),
                "Run `build` finished with `succeeded`.",
            ),
            (
                record(
                    RunStatus::Failed,
                    Some("exit status 3"),
                    vec![
                        step("ok", StepStatus::Succeeded, Some(0), None),
                        step("compile", StepStatus::Failed, Some(3), Some("exit status 3")),
                        step("test", StepStatus::Skipped, None, None),
                    ],
                ),
                "Run `build` finished with `failed`. First error: exit status 3. Failed steps: `compile` (exit 3).",
            ),
            (
                // No run-level error: the first failed step's error is used.
                record(
                    RunStatus::PartiallySucceeded,
                    None,
                    vec![
                        step("lint", StepStatus::Failed, None, Some("failed to start: no such file.")),
                        step("fmt", StepStatus::Failed, Some(1), Some("exit status 1")),
                    ],
                ),
                "Run `build` finished with `partially_succeeded`. First error: failed to start: no such file. Failed steps: `lint`, `fmt` (exit 1).",
            ),
            (
                record(RunStatus::Aborted, Some("  "), vec![step("s", StepStatus::Aborted, None, None)]),
                "Run `build` finished with `aborted`.",
            ),
            (
                record(RunStatus::Failed, Some("process terminated unexpectedly"), vec![]),
                "Run `build` finished with `failed`. First error: process terminated unexpectedly.",
            ),
        ];
        for (rec, want) in cases {
            assert_eq!(run_summary(&rec), want);
        }
    }

    #[test]
    fn long_errors_are_cut_on_a_char_boundary() {
        let long = "é".repeat(5_000);
        let s = run_summary(&record(RunStatus::Failed, Some(&long), vec![]));
        assert_eq!(s.chars().count(), MAX_SUMMARY_CHARS);
        assert!(s.ends_with('…'));
        assert!(s.starts_with("Run `build` finished with `failed`. First error: é"));
    }
}
