//! The GitHub dispatch worker (SPEC §6): pulls dispatch jobs from the cloud, turns each into a
//! durable, tracked DAG run, accepts it, and finishes it with the run's final status.
//!
//! Main types: [`Worker`] (built from [`WorkerConfig`] and [`WorkerDeps`], driven by
//! [`Worker::run`] until its cancellation token fires), [`WorkerStats`] (counters for metrics),
//! and [`github_extras`] (the `GITHUB_*` runtime params of a job, SPEC §4).
//!
//! How a job goes, durable first so that a crash at any instant loses nothing: the pull loop
//! validates it (bad run id or DAG name, unknown DAG → finished `rejected` with a reason), handles
//! `cancel` commands by stopping the tracked runs of the same repository and PR/issue, records
//! the job in the tracker as `pending_accept`, enqueues its run (idempotent: the run id is the
//! job id), accepts it and records `accepted`. The report loop, every report interval and at once
//! when the executor reports a final status, accepts what is still pending and finishes what is
//! final (then forgets it). Failed calls are retried per job with exponential backoff and full
//! jitter, honouring `Retry-After`.
//!
//! Decisions where the SPEC leaves room: job headers that are not a JSON object are replaced by
//! `{}` and the job runs (the event is in the payload and the `GITHUB_*` extras); a payload that
//! is not a JSON object runs as is with the job-field extras; a `cancel` job's DAG name is not
//! checked (it names runs by repository and number); a `pending_accept` entry whose run was never
//! enqueued is dropped rather than accepted, because the event lives only in the job and the hub
//! hands an unaccepted job out again when its claim lapses.
//!
//! Not for: parsing flags, reading the environment, installing signal handlers (the scheduler
//! binary does that and hands over a cancellation token), or running processes (the executor).

mod backoff;
mod config;
mod error;
mod extras;
mod pull;
mod report;
mod stats;
mod summary;
mod worker;

pub use config::{WorkerConfig, WorkerDeps, MAX_LONG_POLL};
pub use dispatch_protocol::RESULT_STATUS_WORDS;
pub use error::WorkerError;
pub use extras::github_extras;
pub use stats::{LatencyHistogram, WorkerStats, LATENCY_BUCKETS_SECONDS};
pub use worker::Worker;
