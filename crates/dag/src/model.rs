//! The DAG model: what a YAML file says once loaded and validated (format: `docs/dag-format.md`).
//!
//! Everything added for Dagu's format is `#[serde(default)]`, so that DAG snapshots stored in
//! run records before those fields existed still load.
//!
//! Text fields that Dagu value-resolves (`run`, `env` values, `working_dir`, conditions, paths,
//! sub-DAG params) hold the text as the loader left it: `${consts.NAME}` is already substituted,
//! and every other Dagu reference (`${params.NAME}`, `${steps.ID.outputs.NAME}`, `${ID.stdout}`,
//! `${run.id}`, ...) has been rewritten into a plain variable reference `${VAR}` whose value the
//! executor sets from a [`Binding`]. Param and payload values therefore reach a shell only
//! through the environment, never as command text.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How steps are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DagType {
    /// A step without `depends` waits for the previous step (the loader fills in `depends`); a
    /// step with `depends` keeps what it says.
    #[default]
    Chain,
    /// Steps declare `depends` explicitly.
    Graph,
}

/// One param default: `name` is `None` for a positional value.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ParamDefault {
    /// Param name, or `None` for a positional value.
    pub name: Option<String>,
    /// Default value (as written; Dagu never resolves references in defaults).
    pub value: String,
}

/// The declaration fields of a rich param entry (`- name: X` with `default`, `type`, `eval`,
/// ...). Types drive validation of runtime values; values stay strings in the environment.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ParamSpec {
    /// The param's name (its default is in [`Dag::params`]).
    pub name: String,
    /// `description`.
    #[serde(default)]
    pub description: String,
    /// `type`: `string` (default), `integer`, `number` or `boolean`.
    #[serde(default)]
    pub kind: ParamType,
    /// `required: true`: a run without a value for it must not start.
    #[serde(default)]
    pub required: bool,
    /// `enum`: the accepted values, as text.
    #[serde(default)]
    pub choices: Vec<String>,
    /// `eval`: dynamic evaluation (command substitution) used when the caller gave no value;
    /// references in it are rewritten like in `run`. Falls back to `value` when it fails and a
    /// `default` was given.
    #[serde(default)]
    pub eval: Option<String>,
    /// `true` when `default` was written (an `eval` failure then falls back to it).
    #[serde(default)]
    pub has_default: bool,
    /// `minimum` / `maximum` (numbers, kept as written).
    #[serde(default)]
    pub minimum: Option<String>,
    /// See `minimum`.
    #[serde(default)]
    pub maximum: Option<String>,
    /// `min_length` / `max_length` (strings).
    #[serde(default)]
    pub min_length: Option<u64>,
    /// See `min_length`.
    #[serde(default)]
    pub max_length: Option<u64>,
    /// `pattern`: a regular expression the value must match.
    #[serde(default)]
    pub pattern: Option<String>,
    /// Bindings for the references in `eval`.
    #[serde(default)]
    pub bindings: Vec<Binding>,
}

/// `type` of a rich param.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamType {
    /// Any text.
    #[default]
    String,
    /// A whole number.
    Integer,
    /// Any number.
    Number,
    /// `true` or `false`.
    Boolean,
}

/// What an `expected` value matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expected {
    /// Exact, case-sensitive text.
    Literal(String),
    /// `re:<pattern>`: a regular expression, not anchored, matched against each line.
    Regex(String),
}

/// One entry of `preconditions` (DAG or step level); all entries must pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Precondition {
    /// What to check.
    pub check: ConditionCheck,
    /// `negate: true` inverts met / not met (never an evaluation error).
    #[serde(default)]
    pub negate: bool,
}

/// How a precondition (or a repeat condition) is checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConditionCheck {
    /// `condition` without `expected` (or the legacy `command`): run the text through the
    /// step's shell (the DAG's for DAG-level conditions); met when it exits 0.
    Command(String),
    /// `condition` with `expected`: expand `$VAR` / `${VAR}` in the text from the environment
    /// (no command substitution), then compare each line with `expected`.
    Match {
        /// The condition text.
        condition: String,
        /// What a line must match.
        expected: Expected,
    },
    /// `eval` with `expected`: run the command substitutions of the text (like
    /// `printf '%s' "<text>"` in the shell), then compare each line of the result.
    Eval {
        /// The text to evaluate.
        eval: String,
        /// What a line must match.
        expected: Expected,
    },
}

/// `continue_on` of a step: when the run goes on after this step failed or was skipped.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ContinueOn {
    /// A failure of this step does not fail the run (it ends `partially_succeeded`).
    pub failure: bool,
    /// A step skipped by its preconditions lets its dependents run.
    #[serde(default)]
    pub skipped: bool,
    /// Continue when the step failed with one of these exit codes.
    #[serde(default)]
    pub exit_code: Vec<i32>,
    /// Continue when a line of the step's output matches one of these (`re:` = regex).
    #[serde(default)]
    pub output: Vec<Expected>,
    /// A failure that matched a continue condition counts as success.
    #[serde(default)]
    pub mark_success: bool,
}

/// An exponential backoff multiplier (> 1.0, finite; `backoff: true` is 2.0).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Backoff(pub f64);

// The loader only builds finite multipliers, for which `==` is an equivalence.
impl Eq for Backoff {}

/// `retry_policy` of a step: retry a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Retries after the first failure (3 = at most 4 attempts).
    pub limit: u64,
    /// Base delay between attempts, in seconds.
    pub interval_sec: u64,
    /// Delay = `interval_sec * backoff^n` for the n-th retry (n from 0).
    pub backoff: Option<Backoff>,
    /// Cap on the computed delay.
    pub max_interval_sec: Option<u64>,
    /// Retry only on these exit codes; empty = any failure.
    pub exit_code: Vec<i32>,
}

/// Whether a repeat condition keeps or ends the repetition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RepeatMode {
    /// Run again while the condition holds (with no condition: until `limit`, or until the
    /// step fails).
    While,
    /// Run again until the condition holds.
    Until,
}

/// `repeat_policy` of a step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepeatPolicy {
    /// `repeat: while | until` (`true` = `while`; when omitted: `until` if `expected` is
    /// given, else `while`).
    pub mode: RepeatMode,
    /// `condition` (+ `expected`): checked after each run like a precondition.
    pub condition: Option<ConditionCheck>,
    /// `exit_code`: the condition holds when the run exited with one of these.
    pub exit_code: Vec<i32>,
    /// Seconds between runs.
    pub interval_sec: u64,
    /// Most runs in total; `None` = no limit.
    pub limit: Option<u64>,
    /// Exponential growth of the interval.
    pub backoff: Option<Backoff>,
    /// Cap on the interval.
    pub max_interval_sec: Option<u64>,
}

/// Type of a declared step output (`outputs:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputType {
    /// Text.
    #[default]
    String,
    /// Must parse as JSON.
    Json,
}

/// One declared output (`outputs: [{name, type}]`), published by writing `name=value` (or
/// `name<<DELIM` ... `DELIM`) records to the file named by `DAGU_OUTPUT_FILE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputDecl {
    /// Output name.
    pub name: String,
    /// Output type.
    #[serde(default)]
    pub kind: OutputType,
}

/// Where the value of a [`Binding`] comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefSource {
    /// `${params.NAME}`: the resolved param `NAME`.
    Param(String),
    /// `${steps.ID.outputs.NAME}` or `${ID.outputs.NAME}`: a declared output of step `ID`
    /// (step named by its `id`; the producing step's runtime name is in `step_name`).
    StepOutput {
        /// The producer's `id`.
        step_id: String,
        /// The producer's runtime name.
        step_name: String,
        /// The output name.
        output: String,
    },
    /// `${ID.stdout}`, `${ID.stderr}`: path of a step's captured stream file;
    /// `${ID.exit_code}`: its exit code.
    StepField {
        /// The producer's `id`.
        step_id: String,
        /// The producer's runtime name.
        step_name: String,
        /// `stdout`, `stderr` or `exit_code`.
        field: String,
    },
    /// `${VAR.a.b}` where `VAR` is a step's `output:` variable: the JSON value at `a.b` of the
    /// captured text (a string as is, anything else as compact JSON).
    OutputPath {
        /// The `output:` variable.
        var: String,
        /// JSON path segments.
        path: Vec<String>,
    },
    /// A built-in run context value, e.g. `run.id`, `step.name`, `paths.log_file`.
    Context(String),
    /// `${ID.outputs}` of a `parallel` or `foreach` step: the JSON array of the outputs its
    /// successful children left (`path` empty), or `${ID.outputs[N].NAME}`: one value of it
    /// (`path` = `["N", "NAME"]`).
    StepCollected {
        /// The producer's `id`.
        step_id: String,
        /// The producer's runtime name.
        step_name: String,
        /// JSON path into the array.
        path: Vec<String>,
    },
    /// `${foreach.<as>.field}` in a `foreach` body: a field of the item, which the body run
    /// holds as the JSON text of the param named here.
    ParamPath {
        /// The param holding JSON.
        param: String,
        /// JSON path segments.
        path: Vec<String>,
    },
}

/// An environment variable the executor sets (before `env` is expanded) from a reference the
/// loader rewrote into `${var}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// The variable name used in the rewritten text.
    pub var: String,
    /// Its value.
    pub source: RefSource,
}

/// A sub-DAG call: `call: NAME` (+ `params`), or `action: dag.run` with `with: {dag, params}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubDagCall {
    /// The DAG to run: a name (a `---` document of this file first, then the DAG store) or a
    /// path relative to the calling DAG's file. May hold `${VAR}` / `${ITEM}` references.
    pub dag: String,
    /// Params handed to the child, in the runtime-param shape; values may hold `${VAR}`
    /// references and, under `parallel`, `${ITEM}` / `${ITEM.field}`. Empty under `parallel`
    /// means: the item itself is the child's params.
    pub params: Vec<ParamDefault>,
    /// `parallel`: one child run per item.
    pub parallel: Option<Parallel>,
}

/// `parallel` of a sub-DAG call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parallel {
    /// The items.
    pub items: ParallelItems,
    /// At most this many children at once (1..=1000, default 10).
    pub max_concurrent: u32,
}

/// Items of a `parallel` call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParallelItems {
    /// A YAML list: strings, numbers or flat maps.
    List(Vec<serde_json::Value>),
    /// A string resolved at run time (`${VAR}`): a JSON array, a JSON object, or tokens split
    /// on whitespace, commas, semicolons, pipes and newlines.
    Expr(String),
}

/// `foreach` of a step: its inline body runs once per item, each time as a child run of the
/// body (a DAG of its own), at most `max_concurrent` at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Foreach {
    /// The items: a YAML list, or a string that must resolve to a JSON array at run time.
    pub items: ParallelItems,
    /// `as`: the item's name in `${foreach.<as>}` (default `item`).
    pub as_name: String,
    /// `key`: the item key, resolved per item (`${foreach.<as>.field}` in it is the item's);
    /// `None` = the item's index.
    pub key: Option<String>,
    /// At most this many bodies at once (1..=1000, default 10).
    pub max_concurrent: u32,
    /// The body: a graph of the `foreach.steps`, with the calling DAG's env, dotenv, secrets,
    /// shell and params. Item references in it read the params [`FOREACH_ITEM`],
    /// [`FOREACH_INDEX`] and [`FOREACH_KEY`].
    pub body: Box<Dag>,
    /// `collect`: output name → text resolved after a body succeeded, from the item and the
    /// body's step outputs (`${steps.ID.outputs.NAME}`, `${foreach.<as>.field}`, ...).
    pub collect: Vec<(String, String)>,
}

/// The param of a `foreach` body run holding the item (its text, or compact JSON).
pub const FOREACH_ITEM: &str = "DAGU_FOREACH_ITEM";
/// The param of a `foreach` body run holding the item's zero-based index.
pub const FOREACH_INDEX: &str = "DAGU_FOREACH_INDEX";
/// The param of a `foreach` body run holding the item's key.
pub const FOREACH_KEY: &str = "DAGU_FOREACH_KEY";

/// Default `max_concurrent` of `parallel`.
pub const DEFAULT_MAX_CONCURRENT: u32 = 10;

/// One step: a command run by a shell, as its own process group, or a sub-DAG call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Unique runtime step name within the DAG (`name`, else `id`, else `step<N>`).
    pub name: String,
    /// `id`: stable alias for references (`${steps.ID.outputs.NAME}`) and `depends`.
    #[serde(default)]
    pub id: Option<String>,
    /// `description`.
    #[serde(default)]
    pub description: String,
    /// One command, run as `<shell> -c <command>`: a one-line `run`, or `command` (a YAML list
    /// is joined with single spaces).
    pub command: Option<String>,
    /// `run` as a list: each entry is one command, run in order; the first failure ends the
    /// step.
    #[serde(default)]
    pub commands: Vec<String>,
    /// Script body (a multi-line `run`, or `script`); run by the shell from a file when set.
    /// With `command` too, `command` is the interpreter and the script file its argument.
    pub script: Option<String>,
    /// Shell with its arguments (`shell`, `shell_args`, `with.shell`); `None` = the DAG's
    /// `shell`, else `sh` (with `-e`).
    pub shell: Option<String>,
    /// Working directory: absolute, or (when it holds `$` or starts with `~`) as written, to be
    /// expanded and then taken relative to the DAG's working directory. `None` = the DAG's.
    pub working_dir: Option<PathBuf>,
    /// Runtime names of the steps this one waits for: explicit `depends` (names or ids), the
    /// previous step in a chain DAG, and the producers of step references it uses.
    pub depends: Vec<String>,
    /// The part of `depends` inferred from step references (for display; already in
    /// `depends`).
    #[serde(default)]
    pub inferred_depends: Vec<String>,
    /// Step environment, in file order; highest precedence. Values may hold `${VAR}`.
    pub env: Vec<(String, String)>,
    /// Step timeout in seconds; exceeded → the step fails with exit code 124.
    pub timeout_sec: Option<u64>,
    /// `continue_on`.
    pub continue_on: ContinueOn,
    /// `preconditions`: all must pass, else the step is skipped.
    #[serde(default)]
    pub preconditions: Vec<Precondition>,
    /// `retry_policy`.
    #[serde(default)]
    pub retry_policy: Option<RetryPolicy>,
    /// `repeat_policy`.
    #[serde(default)]
    pub repeat_policy: Option<RepeatPolicy>,
    /// `output: VAR`: the step's stdout (trimmed of the final newline) becomes variable `VAR`
    /// for the steps after it, also when the step fails.
    #[serde(default)]
    pub output: Option<String>,
    /// `outputs`: declared outputs published through `DAGU_OUTPUT_FILE`.
    #[serde(default)]
    pub outputs: Vec<OutputDecl>,
    /// `stdout`: also write the step's stdout to this file (may hold `${VAR}`; relative to the
    /// step's working directory).
    #[serde(default)]
    pub stdout: Option<String>,
    /// `stderr`: as `stdout`, for stderr.
    #[serde(default)]
    pub stderr: Option<String>,
    /// A sub-DAG call instead of a command.
    #[serde(default)]
    pub call: Option<SubDagCall>,
    /// `foreach`: an inline body run per item instead of a command.
    #[serde(default)]
    pub foreach: Option<Foreach>,
    /// Variables to set from the references the loader rewrote, for every text field of the
    /// step (command, script, env, conditions, paths, call params).
    #[serde(default)]
    pub bindings: Vec<Binding>,
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

/// Where a secret comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretProvider {
    /// `env`: the scheduler's environment variable named by `key`.
    Env,
    /// `file`: the contents of the file named by `key` (relative to the DAG's working
    /// directory), without a final newline.
    File,
}

/// One `secrets` entry: an environment variable set from a provider at run time, whose value
/// is masked in logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRef {
    /// The variable that receives the value.
    pub name: String,
    /// The provider.
    pub provider: SecretProvider,
    /// The provider's key (variable name or file path).
    pub key: String,
}

/// A loaded, validated DAG.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dag {
    /// `name`, or the file stem (a `---` document: its required `name`).
    pub name: String,
    /// Free text.
    pub description: String,
    /// Chain or graph.
    pub dag_type: DagType,
    /// Param defaults, in file order.
    pub params: Vec<ParamDefault>,
    /// Declarations of the params written in the rich form, in file order.
    #[serde(default)]
    pub param_specs: Vec<ParamSpec>,
    /// DAG environment, in file order. Values may hold `${VAR}`.
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
    /// `working_dir`: the default working directory of steps, absolute (relative text is taken
    /// from the DAG file's directory, or the base given to the loader), or as written when it
    /// holds `$` or starts with `~`. `None` = the DAG file's directory (or the base).
    #[serde(default)]
    pub working_dir: Option<PathBuf>,
    /// `consts`, resolved in order (already substituted into every text field).
    #[serde(default)]
    pub consts: Vec<(String, String)>,
    /// `dotenv`: files loaded in order into the run environment (later files win), relative to
    /// the working directory, then to the DAG file's directory. May hold `${VAR}`.
    #[serde(default)]
    pub dotenv: Vec<String>,
    /// `secrets`.
    #[serde(default)]
    pub secrets: Vec<SecretRef>,
    /// `hist_retention_days`: keep finished runs this many days; `None` = the scheduler's
    /// default.
    #[serde(default)]
    pub hist_retention_days: Option<u64>,
    /// DAG-level `preconditions`: all must pass, else the run ends `aborted` without running
    /// a step.
    #[serde(default)]
    pub preconditions: Vec<Precondition>,
    /// `shell`: default shell of steps without their own.
    #[serde(default)]
    pub shell: Option<String>,
    /// `delay_sec`: wait before the first step.
    #[serde(default)]
    pub delay_sec: Option<u64>,
    /// `max_active_steps`: at most this many steps at once.
    #[serde(default)]
    pub max_active_steps: Option<u64>,
    /// `max_output_size`: largest captured output (`output:`, `DAGU_OUTPUT_FILE`) in bytes.
    #[serde(default)]
    pub max_output_size: Option<u64>,
    /// `group`, `tags` / `labels`: metadata for listings.
    #[serde(default)]
    pub labels: Vec<String>,
    /// `group`.
    #[serde(default)]
    pub group: Option<String>,
    /// Variables to set from the references rewritten in DAG-level fields (`env`,
    /// `working_dir`, `dotenv`, `preconditions`).
    #[serde(default)]
    pub bindings: Vec<Binding>,
    /// DAGs defined after `---` in the same file, callable by name from `call`.
    #[serde(default)]
    pub local_dags: Vec<Dag>,
}

impl Step {
    /// A step named `name` with nothing else set (no command yet).
    pub fn named(name: impl Into<String>) -> Step {
        Step {
            name: name.into(),
            id: None,
            description: String::new(),
            command: None,
            commands: Vec::new(),
            script: None,
            shell: None,
            working_dir: None,
            depends: Vec::new(),
            inferred_depends: Vec::new(),
            env: Vec::new(),
            timeout_sec: None,
            continue_on: ContinueOn::default(),
            preconditions: Vec::new(),
            retry_policy: None,
            repeat_policy: None,
            output: None,
            outputs: Vec::new(),
            stdout: None,
            stderr: None,
            call: None,
            foreach: None,
            bindings: Vec::new(),
        }
    }
}

impl Default for Step {
    fn default() -> Step {
        Step::named("")
    }
}

impl Default for Dag {
    fn default() -> Dag {
        Dag {
            name: String::new(),
            description: String::new(),
            dag_type: DagType::Chain,
            params: Vec::new(),
            param_specs: Vec::new(),
            env: Vec::new(),
            steps: Vec::new(),
            timeout_sec: None,
            max_clean_up_time_sec: crate::DEFAULT_MAX_CLEAN_UP_TIME_SEC,
            queue: String::new(),
            handler_on: HandlerOn::default(),
            location: PathBuf::new(),
            resolved_params: Vec::new(),
            working_dir: None,
            consts: Vec::new(),
            dotenv: Vec::new(),
            secrets: Vec::new(),
            hist_retention_days: None,
            preconditions: Vec::new(),
            shell: None,
            delay_sec: None,
            max_active_steps: None,
            max_output_size: None,
            labels: Vec::new(),
            group: None,
            bindings: Vec::new(),
            local_dags: Vec::new(),
        }
    }
}
