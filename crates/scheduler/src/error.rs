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

/// 0 clean stop, 2 bad configuration, 1 anything else (SPEC §9). Prints the whole cause chain;
/// no error in the chain carries a secret (they are `Secret`s or never formatted).
pub(crate) fn exit_code(result: Result<(), AppError>) -> ExitCode {
    let err = match result {
        Ok(()) => return ExitCode::SUCCESS,
        Err(err) => err,
    };
    if let AppError::Config(ConfigError::Cli(clap_err)) = &err {
        // clap formats usage errors itself (and prints help/version to stdout, which are not errors).
        let _ = clap_err.print();
        return match clap_err.kind() {
            clap::error::ErrorKind::DisplayHelp
            | clap::error::ErrorKind::DisplayVersion
            | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => ExitCode::SUCCESS,
            _ => ExitCode::from(2),
        };
    }
    let mut text = format!("error: {err}");
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    tracing::error!("{text}");
    eprintln!("{text}");
    match err {
        AppError::Config(_) => ExitCode::from(2),
        AppError::Component { .. } | AppError::Demo(_) => ExitCode::from(1),
    }
}
