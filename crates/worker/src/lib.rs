//! The GitHub dispatch worker: pulls dispatch jobs from the cloud, turns each into a durable,
//! tracked DAG run, accepts it, and finishes it with the run's final status. Its place among the
//! crates is in `docs/architecture.md`; the calls it makes are in `docs/protocol.md`.
//!
//! Main types: [`Worker`] (built from [`WorkerConfig`] and [`WorkerDeps`], driven by
//! [`Worker::run`] until its cancellation token fires), [`WorkerStats`] (counters for metrics),
//! and [`github_extras`] (the `GITHUB_*` runtime params of a job, see `docs/protocol.md`).
//!
//! How a job goes, durable first so that a crash at any instant loses nothing: the pull loop
//! validates it (bad run id or DAG name, unknown DAG → finished `rejected` with a reason), handles
//! `cancel` commands by stopping the tracked runs of the same repository and PR/issue, records
//! the job in the tracker as `pending_accept`, enqueues its run (idempotent: the run id is the
//! job id), accepts it and records `accepted`. The report loop, every report interval and at once
//! when the executor reports a final status, accepts what is still pending and finishes what is
//! final (then forgets it). Failed calls are retried per job with exponential backoff and full
//! jitter, honouring `Retry-After`. With a cloud that advertises the `pull-batch` extension, a
//! burst is pulled and taken in by batches (`docs/protocol.md`): the same steps, each done for the
//! whole batch at once (one tracker write, the runs created together, one accept call). With a
//! cloud that advertises the `progress` extension, the progress uploader sends each accepted
//! job's run start, step states and step logs (masked, capped, resumed from the hub's offsets
//! after a restart or an outage) while it runs, and its finish waits until they are sent.
//!
//! Decisions the wire contract leaves open: job headers that are not a JSON object are replaced
//! by `{}` and the job runs (the event is in the payload and the `GITHUB_*` extras); a payload
//! that is not a JSON object runs as is with the job-field extras; a `cancel` job's DAG name is
//! not checked (it names runs by repository and number); a `pending_accept` entry whose run was
//! never enqueued is dropped rather than accepted, because the event lives only in the job and
//! the hub hands an unaccepted job out again when its claim lapses.
//!
//! Not for: parsing flags, reading the environment, installing signal handlers (the scheduler
//! binary does that and hands over a cancellation token), or running processes (the executor).
//!
//! # Code map
//!
//! One job per file, top first. **Imports run downwards**: a file uses only the files below it
//! (never one above, never a sibling that uses it back), so the files read as layers and no two
//! of them import each other, directly or through a loop.
//!
//! | file | its one job |
//! | --- | --- |
//! | `worker.rs` | [`Worker`]: owns the shared state; `run` drives both loops, then shuts down |
//! | `progress.rs` | the `progress` extension's uploader: run start, step states, step logs |
//! | `report.rs` | the report loop: accept what is pending, finish what is final (after the logs) |
//! | `pull.rs` | the pull loop and the burst pullers, sharing one `pull_once` (and `pull_batch_once`) |
//! | `batch.rs` | the jobs of one batched pull, taken in together (shared writes and calls) |
//! | `intake.rs` | what happens to a pulled job: checks, cancel, tracking, enqueue, accept |
//! | `calls.rs` | the cloud calls about one job: accept, finish, untracked finish |
//! | `local.rs` | this server's side of a job: tracker records, run lookup, stopping a run |
//! | `logtext.rs` | a step log file as the masked text the hub gets, the same on every read |
//! | `shared.rs` | the state both loops share (busy marks, retries, report targets), `lock` |
//! | `backoff.rs` | exponential backoff with full jitter, honouring `Retry-After` |
//! | `summary.rs` | the finish summary of a run, and the cap on summary length |
//! | `extras.rs` | [`github_extras`]: the `GITHUB_*` runtime params of a job |
//! | `stats.rs` | [`WorkerStats`]: the counters the scheduler renders as metrics |
//! | `config.rs` | [`WorkerConfig`], [`WorkerDeps`]: timing and what the worker is built from |
//! | `error.rs` | [`WorkerError`]: what failed, for the logs |

mod backoff;
mod batch;
mod calls;
mod config;
mod error;
mod extras;
mod intake;
mod local;
mod logtext;
mod progress;
mod pull;
mod report;
mod shared;
mod stats;
mod summary;
mod worker;

pub use config::{WorkerConfig, WorkerDeps, MAX_LONG_POLL};
pub use dispatch_protocol::RESULT_STATUS_WORDS;
pub use error::WorkerError;
pub use extras::github_extras;
pub use stats::{LatencyHistogram, WorkerStats, LATENCY_BUCKETS_SECONDS};
pub use worker::Worker;
