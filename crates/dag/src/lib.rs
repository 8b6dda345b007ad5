//! DAGs and their runs: the YAML model and loader (SPEC §5), the merge of default and runtime
//! params, the run-status model, the store traits and their file-backed implementations (DAGs,
//! runs with attempts, the queue).
//!
//! Main types: [`Dag`], [`Step`], [`RunStatus`], [`RunRecord`], [`Attempt`], the traits
//! [`DagStore`], [`RunStore`], [`QueueStore`], and [`Stores`] which bundles one of each.
//!
//! Not for: HTTP, GitHub, or running processes (that is `dispatch-executor`).
//!
//! # File layout
//!
//! [`Stores::open_files`] with a [`FileStoreConfig`] `{ dags_dir, data_dir, log_dir }`:
//!
//! ```text
//! <dags_dir>/<name>.yaml | <name>.yml                 DAG files (FileDagStore)
//! <data_dir>/runs/<dag>/<run_id>/<attempt_id>/dag.json     DAG snapshot taken at enqueue
//! <data_dir>/runs/<dag>/<run_id>/<attempt_id>/status.json  latest RunRecord (FileRunStore)
//! <data_dir>/queue/<queue>/<prio>_<unix_nanos>_<pid>.json  one queued item (FileQueueStore)
//! <log_dir>/<dag>/<run_id>/                                run log and step output (executor)
//! ```
//!
//! Every file is written to a hidden temp file (names starting with `.` are ignored by all
//! listings), fsynced, renamed into place, and the directory fsynced: readers never see a torn
//! file and a crash keeps the old or the new content. An attempt directory is built hidden and
//! renamed into place whole. Attempt ids made by the store sort by creation time; the latest
//! attempt of a run is the greatest name.
//!
//! DAG names, queue names, run ids and attempt ids are checked ([`validate_dag_name`],
//! [`validate_run_id`]) before any path is built from them.

mod error;
mod loader;
mod model;
mod names;
mod status;
mod store;

pub use error::*;
pub use loader::load_dag_file;
pub use model::*;
pub use names::{validate_dag_name, validate_run_id, MAX_DAG_NAME_LEN, MAX_RUN_ID_LEN};
pub use status::*;
pub use store::*;
