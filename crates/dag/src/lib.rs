//! DAGs and their runs: the YAML model and loader (format: `docs/dag-format.md`), the merge of default and runtime
//! params, the run-status model, the store traits and their file-backed implementations (DAGs,
//! runs with attempts, the queue).
//!
//! Main types: [`Dag`], [`Step`], [`RunStatus`], [`RunRecord`], [`Attempt`], the traits
//! [`DagStore`], [`RunStore`], [`QueueStore`], and [`Stores`] which bundles one of each.
//!
//! Not for: HTTP, GitHub, or running processes (that is `dispatch-executor`).
//!
//! # DAG files
//!
//! [`load_dag_file`] reads Dagu's DAG format as `docs/dag-format.md` describes it and returns the
//! first error; [`validate_dag_file`] (and [`load_dag_file_with`] / [`parse_dag_with`]) return
//! every error of a file. Every [`DagError`] names the file, the line and the key. Dagu keys we do
//! not support are refused with the reason, never ignored. Dagu's value references
//! (`${params.X}`, `${steps.ID.outputs.X}`, `${run.id}`, ...) are rewritten into `${VAR}` plus a
//! [`Binding`] for the executor, so that no param or output value is ever command text;
//! `${consts.X}` is substituted. Where the format leaves a choice open:
//! - A step without `name` is called by its `id`, else `step<N>` (its 1-based position); a
//!   handler without `name` is called `on_success`, `on_failure`, `on_abort` or `on_exit`.
//! - A DAG without steps is an error.
//! - `timeout_sec: 0` means no timeout.
//! - A relative `working_dir` is taken relative to the DAG file's directory (or
//!   [`LoadOptions::base_dir`]) at the top level, and to the DAG's working directory in a step.
//! - `null` (or an empty value) for an optional key is the same as leaving the key out; as an
//!   env or param value it is the empty string.
//! - Scalars keep their text as written: `A: 1.50` gives the value `1.50`.
//! - `depends` in a handler is an error; handlers run after the steps.
//! - In a chain DAG, [`Step::depends`] is complete (the loader fills in the chain order and the
//!   dependencies inferred from step references): the executor uses it as is.
//!
//! # File layout
//!
//! [`Stores::open_files`] with a [`FileStoreConfig`] `{ dags_dir, data_dir, log_dir }`:
//!
//! ```text
//! <dags_dir>/<name>.yaml | <name>.yml                 DAG files (FileDagStore)
//! <data_dir>/runs/<dag>/<run_id>.jsonl                 a run: its attempts (DAG snapshot taken
//!                                                      at enqueue + status), then status lines
//! <data_dir>/queue/<queue>/<prio>_<unix_nanos>_<pid>.json  one queued item (FileQueueStore)
//! <log_dir>/<dag>/<run_id>/                                run log and step output (executor)
//! ```
//!
//! # Durability
//!
//! The run record is the durable truth; the queue is a durable-enough index that recovery
//! rebuilds from it (the executor re-enqueues every `queued` run missing from its queue and
//! drops items whose run is not `queued`).
//!
//! - Runs ([`FileRunStore`]): an operation that returned Ok survives a power cut, and a crash at
//!   any instant leaves the old or the new status. A status write appends one line and
//!   `fdatasync`s it (1 sync); creating a run adds a directory fsync for the new file's name
//!   (2 syncs); each directory is made durable once per process. A line without its newline (a
//!   torn append) is ignored by readers and cut off by the next writer. Attempt ids made by the
//!   store sort by creation time; the latest attempt is the last one created.
//! - Queues ([`FileQueueStore`]): no fsync at all. Items appear by an atomic no-replace rename
//!   of a complete temp file and are claimed by unlink, so among live processes nothing is lost
//!   or served twice; after a power cut an item may be missing, back, or empty, which recovery
//!   repairs as described above.
//! - Files other than run files are written to a hidden temp file (names starting with `.` are
//!   ignored by all listings) and renamed or linked into place, so readers never see a torn file.
//!
//! DAG names, queue names, run ids and attempt ids are checked ([`validate_dag_name`],
//! [`validate_run_id`]) before any path is built from them.

mod error;
mod loader;
mod model;
mod names;
mod params;
mod refs;
mod status;
mod store;
mod yaml;

pub use error::*;
pub use loader::{
    load_dag_file, load_dag_file_with, parse_dag, parse_dag_with, validate_dag_file, LoadOptions,
    DEFAULT_MAX_CLEAN_UP_TIME_SEC,
};
pub use model::*;
pub use names::{validate_dag_name, validate_run_id, MAX_DAG_NAME_LEN, MAX_RUN_ID_LEN};
pub use params::{merge_params, resolve_params};
pub use status::*;
pub use store::*;
