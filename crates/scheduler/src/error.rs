//! The binary's error type and the one place that maps errors to exit codes.

use std::process::ExitCode;

use crate::config::ConfigError;

/// Everything that can end the scheduler with an error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AppError {
    /// A setting is wrong: exit 2.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A component failed to start or failed while running: exit 1.
    #[error("failed to {action}")]
    Component {
        /// What was being done, e.g. "open the tracker at `/x`".
        action: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The demo ran but at least one job did not end as expected: exit 1.
    #[error("demo: {0}")]
    Demo(String),
    /// `scheduler run`: the DAG did not load or the run did not succeed: exit 1.
    #[error(transparent)]
    Run(#[from] crate::run_error::RunError),
    /// `scheduler validate` found invalid DAG files (their errors are printed already): exit 1.
    #[error("{invalid} of {total} DAG files are invalid")]
    Invalid {
        /// Files with at least one error.
        invalid: usize,
        /// Files checked.
        total: usize,
    },
}

impl AppError {
    /// Wraps any error with what was being attempted.
    pub(crate) fn component(
        action: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        AppError::Component {
            action: action.into(),
            source: source.into(),
        }
    }
}

/// 0 clean stop (or a run by hand that succeeded), 2 bad configuration, 1 anything else (see
/// the README). Prints the whole cause chain to stderr; no error in the chain carries a secret
/// (they are `Secret`s or never formatted).
pub(crate) fn exit_code(result: Result<(), AppError>) -> ExitCode {
    let err = match result {
        Ok(()) => return ExitCode::SUCCESS,
        Err(err) => err,
    };
    if let AppError::Config(ConfigError::Cli(clap_err)) = &err {
        // clap formats its own messages (help and version go to stdout).
        let _ = clap_err.print();
    } else {
        eprintln!("{}", chain(&err));
    }
    ExitCode::from(code(&err))
}

fn code(err: &AppError) -> u8 {
    match err {
        AppError::Config(ConfigError::Cli(clap_err)) => match clap_err.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
            _ => 2,
        },
        AppError::Config(_) => 2,
        AppError::Component { .. }
        | AppError::Demo(_)
        | AppError::Run(_)
        | AppError::Invalid { .. } => 1,
    }
}

/// `error: <error>: <cause>: <cause>...` on one line.
fn chain(err: &AppError) -> String {
    let mut text = format!("error: {err}");
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn parse(args: &[&str]) -> AppError {
        match crate::cli::Cli::try_parse_from(args) {
            Ok(_) => panic!("{args:?} parsed"),
            Err(err) => AppError::Config(ConfigError::Cli(err)),
        }
    }

    #[test]
    fn codes() {
        assert_eq!(code(&parse(&["scheduler", "--help"])), 0);
        assert_eq!(code(&parse(&["scheduler", "--version"])), 0);
        assert_eq!(code(&parse(&["scheduler"])), 2);
        assert_eq!(code(&parse(&["scheduler", "start", "--nope"])), 2);
        let invalid = ConfigError::Invalid {
            setting: "poll-interval",
            reason: "`x` is not a number".into(),
        };
        assert_eq!(code(&AppError::Config(invalid)), 2);
        let io = std::io::Error::other("disk on fire");
        assert_eq!(code(&AppError::component("open the tracker", io)), 1);
        assert_eq!(code(&AppError::Demo("lint: expected failed".into())), 1);
        let unsuccessful = crate::run_error::RunError::Unsuccessful {
            dag: "build".into(),
            run_id: "r1".into(),
            status: dispatch_dag::RunStatus::Aborted,
            error: Some("run stopped".into()),
        };
        assert_eq!(code(&AppError::Run(unsuccessful)), 1);
        assert_eq!(
            code(&AppError::Invalid {
                invalid: 1,
                total: 2
            }),
            1
        );
    }

    #[test]
    fn chain_names_every_cause() {
        let io = std::io::Error::other("permission denied");
        let err = AppError::component("open the tracker at `/d/tracker`", io);
        assert_eq!(
            chain(&err),
            "error: failed to open the tracker at `/d/tracker`: permission denied"
        );
    }
}
