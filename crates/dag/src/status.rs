//! Run and step status words, and the final-status rules (`docs/dag-format.md`).

use serde::{Deserialize, Serialize};

/// Status of a run. Text and number are the contract (`docs/dag-format.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// 0
    NotStarted,
    /// 1
    Running,
    /// 2
    Failed,
    /// 3
    Aborted,
    /// 4
    Succeeded,
    /// 5
    Queued,
    /// 6
    PartiallySucceeded,
    /// 7
    Waiting,
    /// 8
    Rejected,
}

/// Status of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Not run (yet).
    #[default]
    NotStarted,
    /// Running now.
    Running,
    /// Exited non-zero, timed out or failed to start.
    Failed,
    /// Stopped by a cancel or a DAG timeout.
    Aborted,
    /// Exited 0.
    Succeeded,
    /// Not run because a dependency failed or the run was stopped.
    Skipped,
    /// A sub-DAG call or `foreach` whose children all ended well, at least one of them only
    /// partially: the step counts as done, and the run ends `partially_succeeded` at best.
    PartiallySucceeded,
}

/// A status word or number that is not one of the [`RunStatus`] values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown run status `{0}`")]
pub struct UnknownStatus(pub String);

impl RunStatus {
    /// Every status, in number order.
    pub const ALL: [RunStatus; 9] = [
        RunStatus::NotStarted,
        RunStatus::Running,
        RunStatus::Failed,
        RunStatus::Aborted,
        RunStatus::Succeeded,
        RunStatus::Queued,
        RunStatus::PartiallySucceeded,
        RunStatus::Waiting,
        RunStatus::Rejected,
    ];

    /// The exact status word, e.g. `partially_succeeded`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::NotStarted => "not_started",
            RunStatus::Running => "running",
            RunStatus::Failed => "failed",
            RunStatus::Aborted => "aborted",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Queued => "queued",
            RunStatus::PartiallySucceeded => "partially_succeeded",
            RunStatus::Waiting => "waiting",
            RunStatus::Rejected => "rejected",
        }
    }

    /// Parses an exact status word; the error names the word.
    pub fn parse(word: &str) -> Result<RunStatus, UnknownStatus> {
        RunStatus::ALL
            .into_iter()
            .find(|s| s.as_str() == word)
            .ok_or_else(|| UnknownStatus(word.to_owned()))
    }

    /// The status number: `not_started` 0 … `rejected` 8.
    pub fn as_i32(self) -> i32 {
        match self {
            RunStatus::NotStarted => 0,
            RunStatus::Running => 1,
            RunStatus::Failed => 2,
            RunStatus::Aborted => 3,
            RunStatus::Succeeded => 4,
            RunStatus::Queued => 5,
            RunStatus::PartiallySucceeded => 6,
            RunStatus::Waiting => 7,
            RunStatus::Rejected => 8,
        }
    }

    /// The status with number `n`, if any.
    pub fn from_i32(n: i32) -> Option<RunStatus> {
        RunStatus::ALL.into_iter().find(|s| s.as_i32() == n)
    }

    /// Running, queued or waiting: the run is not over.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            RunStatus::Running | RunStatus::Queued | RunStatus::Waiting
        )
    }

    /// Failed, aborted, succeeded, partially succeeded or rejected: the run is over.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunStatus::Failed
                | RunStatus::Aborted
                | RunStatus::Succeeded
                | RunStatus::PartiallySucceeded
                | RunStatus::Rejected
        )
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RunStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunStatus::parse(s)
    }
}

impl StepStatus {
    /// Every step status, in declaration order (for checks that must cover each word, such as
    /// the progress protocol's list of step status words).
    pub const ALL: [StepStatus; 7] = [
        StepStatus::NotStarted,
        StepStatus::Running,
        StepStatus::Failed,
        StepStatus::Aborted,
        StepStatus::Succeeded,
        StepStatus::Skipped,
        StepStatus::PartiallySucceeded,
    ];

    /// The exact status word, e.g. `not_started`.
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::NotStarted => "not_started",
            StepStatus::Running => "running",
            StepStatus::Failed => "failed",
            StepStatus::Aborted => "aborted",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Skipped => "skipped",
            StepStatus::PartiallySucceeded => "partially_succeeded",
        }
    }
}

impl std::fmt::Display for StepStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which lifecycle handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandlerKind {
    /// `handler_on.success`.
    Success,
    /// `handler_on.failure`.
    Failure,
    /// `handler_on.abort`.
    Abort,
    /// `handler_on.exit`.
    Exit,
}

impl HandlerKind {
    /// The step name a handler is recorded under: `on_success`, `on_failure`, `on_abort`, `on_exit`.
    pub fn step_name(self) -> &'static str {
        match self {
            HandlerKind::Success => "on_success",
            HandlerKind::Failure => "on_failure",
            HandlerKind::Abort => "on_abort",
            HandlerKind::Exit => "on_exit",
        }
    }

    /// The handler step of `handlers`, if the DAG declares it.
    pub fn step(self, handlers: &crate::HandlerOn) -> Option<&crate::Step> {
        match self {
            HandlerKind::Success => handlers.success.as_ref(),
            HandlerKind::Failure => handlers.failure.as_ref(),
            HandlerKind::Abort => handlers.abort.as_ref(),
            HandlerKind::Exit => handlers.exit.as_ref(),
        }
    }
}

/// The final status of a run from its steps. `steps` holds each step's status and its
/// `continue_on.failure`. A cancel (stop or DAG timeout) wins; then any failed step not covered by
/// `continue_on` fails the run; covered failures make it partially succeeded.
pub fn final_status(cancelled: bool, steps: &[(StepStatus, bool)]) -> RunStatus {
    if cancelled {
        return RunStatus::Aborted;
    }
    let mut covered_failure = false;
    for &(status, continue_on_failure) in steps {
        covered_failure |= status == StepStatus::PartiallySucceeded;
        if status == StepStatus::Failed {
            if !continue_on_failure {
                return RunStatus::Failed;
            }
            covered_failure = true;
        }
    }
    if covered_failure {
        RunStatus::PartiallySucceeded
    } else {
        RunStatus::Succeeded
    }
}

/// The handlers to run, in order, for a run that ended with `status`: success (also for a partial
/// success), failure or abort, then always exit.
pub fn handlers_for(status: RunStatus) -> Vec<HandlerKind> {
    let first = match status {
        RunStatus::Succeeded | RunStatus::PartiallySucceeded => Some(HandlerKind::Success),
        RunStatus::Failed => Some(HandlerKind::Failure),
        RunStatus::Aborted => Some(HandlerKind::Abort),
        _ => None,
    };
    first.into_iter().chain([HandlerKind::Exit]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_numbers_are_the_contract() {
        let table = [
            ("not_started", 0, false, false),
            ("running", 1, true, false),
            ("failed", 2, false, true),
            ("aborted", 3, false, true),
            ("succeeded", 4, false, true),
            ("queued", 5, true, false),
            ("partially_succeeded", 6, false, true),
            ("waiting", 7, true, false),
            ("rejected", 8, false, true),
        ];
        for (word, n, active, fin) in table {
            let s: RunStatus = word.parse().unwrap();
            assert_eq!(s.as_str(), word);
            assert_eq!(s.to_string(), word);
            assert_eq!(s.as_i32(), n);
            assert_eq!(RunStatus::from_i32(n), Some(s));
            assert_eq!(s.is_active(), active, "{word}");
            assert_eq!(s.is_final(), fin, "{word}");
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{word}\""));
        }
        assert_eq!(RunStatus::from_i32(9), None);
        assert_eq!(RunStatus::from_i32(-1), None);
        let e = "Succeeded".parse::<RunStatus>().unwrap_err();
        assert_eq!(e.to_string(), "unknown run status `Succeeded`");
    }

    #[test]
    fn step_words_match_serde() {
        for s in StepStatus::ALL {
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
    }

    #[test]
    fn final_status_table() {
        use RunStatus as R;
        // Step statuses: S succeeded, F failed, K skipped, P partially succeeded.
        use StepStatus::{Failed as F, PartiallySucceeded as P, Skipped as K, Succeeded as S};
        type Row<'a> = (bool, &'a [(StepStatus, bool)], RunStatus);
        let table: &[Row] = &[
            (false, &[], R::Succeeded),
            (false, &[(S, false), (S, false)], R::Succeeded),
            (false, &[(S, false), (F, false)], R::Failed),
            (false, &[(F, true), (S, false)], R::PartiallySucceeded),
            (false, &[(F, true), (F, false)], R::Failed),
            (false, &[(F, false), (K, false)], R::Failed),
            (false, &[(F, true), (F, true)], R::PartiallySucceeded),
            (false, &[(S, true), (K, false)], R::Succeeded),
            (false, &[(P, false), (S, false)], R::PartiallySucceeded),
            (false, &[(P, false), (F, false)], R::Failed),
            (true, &[(S, false)], R::Aborted),
            (true, &[(F, false)], R::Aborted),
            (true, &[], R::Aborted),
        ];
        for (cancelled, steps, want) in table {
            assert_eq!(
                final_status(*cancelled, steps),
                *want,
                "{cancelled} {steps:?}"
            );
        }
    }

    #[test]
    fn handlers_table() {
        use HandlerKind::*;
        let table = [
            (RunStatus::Succeeded, vec![Success, Exit]),
            (RunStatus::PartiallySucceeded, vec![Success, Exit]),
            (RunStatus::Failed, vec![Failure, Exit]),
            (RunStatus::Aborted, vec![Abort, Exit]),
            (RunStatus::Rejected, vec![Exit]),
        ];
        for (status, want) in table {
            assert_eq!(handlers_for(status), want, "{status}");
        }
        assert_eq!(Success.step_name(), "on_success");
        assert_eq!(Exit.step_name(), "on_exit");
    }
}
