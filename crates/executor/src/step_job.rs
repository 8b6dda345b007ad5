//! What the run hands to one step: the step, its files and environment, and its stop token.

use std::path::PathBuf;

use dispatch_dag::Step;
use tokio_util::sync::CancellationToken;

/// A step to run, with what the run knew when it started it.
pub(crate) struct StepJob {
    /// The step (a handler carries its record name, `on_exit` etc.).
    pub(crate) step: Step,
    /// File stem of its files next to the run log.
    pub(crate) stem: String,
    /// Its environment, applied on top of the inherited one.
    pub(crate) env: Vec<(String, String)>,
    /// The run's stop (the hard stop for a handler).
    pub(crate) stop: CancellationToken,
    pub(crate) handler: bool,
    pub(crate) stdout: PathBuf,
    pub(crate) stderr: PathBuf,
    pub(crate) output_file: PathBuf,
}
