//! DAGs and their runs: the YAML model and loader (SPEC §5), the merge of default and runtime
//! params, the run-status model, the store traits and their file-backed implementations (DAGs,
//! runs with attempts, the queue).
//!
//! Main types: [`Dag`], [`Step`], [`RunStatus`], [`RunRecord`], [`Attempt`], the traits
//! [`DagStore`], [`RunStore`], [`QueueStore`], and [`Stores`] which bundles one of each.
//!
//! Not for: HTTP, GitHub, or running processes (that is `dispatch-executor`).

mod error;
mod model;
mod status;
mod store;

pub use error::*;
pub use model::*;
pub use status::*;
pub use store::*;
