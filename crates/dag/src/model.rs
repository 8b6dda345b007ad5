//! The DAG model: what a YAML file says once loaded and validated.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How steps are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DagType {
    /// Each step depends on the previous one; `depends` is an error.
    #[default]
    Chain,
    /// Steps declare `depends` explicitly.
    Graph,
}

/// One param default: `name` is `None` for a positional value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamDefault {
    /// Param name, or `None` for a positional value.
    pub name: Option<String>,
    /// Default value.
    pub value: String,
}

/// `continue_on` of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ContinueOn {
    /// A failure of this step does not fail the run (it ends `partially_succeeded`).
    pub failure: bool,
}

/// One step: a command run by a shell, as its own process group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Unique step name within the DAG.
    pub name: String,
    /// Command text run as `<shell> -c <command>`; a YAML list is joined with single spaces.
    pub command: Option<String>,
    /// Script body; run by the shell from a file when set.
    pub script: Option<String>,
    /// Shell; `None` = `sh` (with `-e`).
    pub shell: Option<String>,
    /// Working directory; `None` = the DAG file's directory.
    pub working_dir: Option<PathBuf>,
    /// Names of steps this one waits for (in a chain DAG: the previous step, filled in by the
    /// loader).
    pub depends: Vec<String>,
    /// Step environment, in file order; highest precedence.
    pub env: Vec<(String, String)>,
    /// Step timeout in seconds; exceeded → the step fails with exit code 124.
    pub timeout_sec: Option<u64>,
    /// `continue_on`.
    pub continue_on: ContinueOn,
}

/// Lifecycle handlers, each a step.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HandlerOn {
    /// Runs when the run succeeded or partially succeeded.
    pub success: Option<Step>,
    /// Runs when the run failed.
    pub failure: Option<Step>,
    /// Runs when the run was aborted.
    pub abort: Option<Step>,
    /// Runs always, last.
    pub exit: Option<Step>,
}

/// A loaded, validated DAG.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dag {
    /// `name`, or the file stem.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Chain or graph.
    pub dag_type: DagType,
    /// Param defaults, in file order.
    pub params: Vec<ParamDefault>,
    /// DAG environment, in file order.
    pub env: Vec<(String, String)>,
    /// Steps, in file order; dependencies are validated (known, acyclic).
    pub steps: Vec<Step>,
    /// Whole-run timeout; exceeded → the run is aborted.
    pub timeout_sec: Option<u64>,
    /// Time between SIGTERM and SIGKILL on stop (default 5).
    pub max_clean_up_time_sec: u64,
    /// Queue (proc group) name; default the DAG name.
    pub queue: String,
    /// Handlers.
    pub handler_on: HandlerOn,
    /// The YAML file this DAG was loaded from.
    pub location: PathBuf,
    /// Resolved params (name, value) after the merge with runtime params; empty until resolved.
    #[serde(default)]
    pub resolved_params: Vec<(String, String)>,
}
