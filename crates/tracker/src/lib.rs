//! Durable store of the dispatch jobs this scheduler owns (its place in the system:
//! `docs/architecture.md`).
//!
//! [`Tracker`] is a map from job id to [`TrackedJob`] kept in one directory, with four operations:
//! [`Tracker::upsert`], [`Tracker::delete`], [`Tracker::get`] and [`Tracker::list`] (sorted by job id).
//! Every change that returns `Ok` has been written and fsynced, so it survives a power cut. Reads are
//! served from an in-memory map that mirrors the disk: a change shows in [`Tracker::get`] and
//! [`Tracker::list`] only once it is durable, never before.
//!
//! # Storage and why
//!
//! The directory holds three files: `journal` (the data), `LOCK` (an advisory lock so one process at a
//! time owns the directory) and, only while compacting, `journal.tmp`. The journal is append-only:
//! each change is one framed record (length, CRC-32, JSON payload) written at the end of the file and
//! made durable with one `fdatasync` (or shares a record with concurrent changes, see group commit).
//! The cost of a change is therefore one small write and at most one fsync whatever the number of
//! tracked jobs, which is the point: the Dagu design this replaces
//! rewrote one JSON file holding every job on each change, O(n) bytes per call.
//!
//! One file per job was the alternative. It also costs O(1) per change but needs a file create or
//! unlink plus a directory fsync per change (two fsyncs, more metadata traffic), leaves the directory
//! with one inode per job, and still needs a story for a half-written file. The journal needs one
//! fsync per change and keeps crash handling in one place.
//!
//! # Group commit
//!
//! An fsync costs milliseconds on real disks, so one fsync per change would cap a tracker shared by
//! many threads at a few hundred changes per second. Concurrent changes are therefore committed
//! together: each caller appends its entry to a pending batch under the mutex; if no batch is being
//! written, that caller becomes the batch's leader, takes the batch, releases the mutex, writes the
//! whole batch as one record (a JSON array of the entries; a lone entry is written plain) with one
//! positioned write and one `fdatasync`, then re-takes the mutex, applies the
//! batch to the map in order and wakes every caller of the batch with the outcome. Callers arriving
//! while a batch is being written form the next batch, led by whichever of them wakes first. A lone
//! caller pays exactly what it paid before (one write, one fsync); under load the cost of one fsync
//! is shared by everyone who arrived during the previous one. Each caller still returns only after
//! its own change is durable, and batches reach the file in the order their changes were accepted,
//! so the journal replays to the same state as the calls' order. A batch is one record rather than
//! several so that a torn batch write stays a torn *last record*: with several records, a power cut
//! could keep a later page of the batch and lose an earlier one, which open would have to refuse as
//! corruption in the middle.
//!
//! The journal grows with every change, so when it holds more than `max(1024, 2 × live jobs)`
//! entries (changes, however they were batched) it is compacted: the live map is written to
//! `journal.tmp`, fsynced, renamed over `journal`, and the directory fsynced. Compaction costs O(live) but happens only after at least
//! `max(1024, live)` changes since the last one, so each change pays O(1) amortised.
//!
//! # Crashes
//!
//! - A torn append (power cut mid-write, of a lone change or a whole batch) can damage only the
//!   last record. On open, a bad record with
//!   no intact record anywhere after it is taken as a torn tail: it is logged, cut off the file
//!   (`set_len` + fsync) before anything new is appended, and everything before it is kept.
//! - A bad record *followed* by intact records is damage in the middle of the file; [`Tracker::open`]
//!   fails with [`TrackerError::Corrupt`] naming the file and offset instead of silently dropping data.
//! - A crash during compaction leaves either the old or the new `journal` (rename is atomic), both
//!   holding the same state, plus perhaps a stray `journal.tmp`, which open deletes.
//! - If a write or fsync fails at run time, every caller of that batch gets the error and the
//!   tracker refuses further changes ([`TrackerError::Poisoned`], also returned to callers already
//!   waiting for the next batch): after a failed fsync the kernel's view of the file is unknown, and
//!   reopening re-reads the truth from disk. An operation that returned `Err` may or may not have
//!   been recorded.
//!
//! # Locking
//!
//! `LOCK` is held with `flock` for the tracker's lifetime, so a second tracker on the same directory,
//! in this process or another, gets [`TrackerError::InUse`]. Such locks belong to the open file
//! description, which a child process forked by any thread shares until its `exec`; so right after a
//! tracker is dropped, reopening can briefly see the lock still held. [`Tracker::open`] therefore
//! retries for about half a second before reporting `InUse`.
//!
//! # Not for
//!
//! The tracker knows nothing about HTTP, DAGs or GitHub; it stores whatever [`TrackedJob`] values
//! it is given. It is synchronous (changes block on fsync); async callers should use
//! `spawn_blocking` (which also lets concurrent changes share a batch) or accept a few milliseconds
//! per change. Unix only (modes, `fsync` of directories).

#![cfg(unix)]

// Imports run one way, from the bottom up: `crc32`, `job`, `error` (leaves) ← `journal` (record
// format) ← `file` (directory, lock, replay, snapshots) ← `commit` (group commit, compaction) ←
// this file (the public face) ← `hooks`, `bench_support` (test-only).
#[cfg(feature = "test-hooks")]
pub mod bench_support;
mod commit;
mod crc32;
mod error;
mod file;
#[cfg(feature = "test-hooks")]
mod hooks;
mod job;
mod journal;

use std::fs::File;
use std::path::{Path, PathBuf};

pub use error::TrackerError;
pub use job::{Phase, TrackedJob};

#[cfg(feature = "test-hooks")]
pub use commit::WriteHold;

/// Tuning knobs; [`Tracker::open`] uses the defaults.
#[derive(Debug, Clone)]
pub struct TrackerConfig {
    /// Compaction runs when the journal holds more than `max(compact_min_records, 2 × live jobs)`
    /// records. Default 1024.
    pub compact_min_records: usize,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            compact_min_records: 1024,
        }
    }
}

/// Durable map of tracked jobs in one directory. See the crate docs for the storage design.
#[derive(Debug)]
pub struct Tracker {
    dir: PathBuf,
    journal: commit::GroupCommit,
    /// Held for the tracker's lifetime; dropping the file releases the advisory lock.
    _lock: File,
}

impl Tracker {
    /// Opens (creating if needed) the tracker in `dir` with default settings.
    ///
    /// Fails with [`TrackerError::InUse`] when another tracker holds the directory (after retrying
    /// for about half a second, see the crate docs on locking).
    pub fn open(dir: &Path) -> Result<Tracker, TrackerError> {
        Self::open_with_config(dir, TrackerConfig::default())
    }

    /// Opens (creating if needed) the tracker in `dir`.
    pub fn open_with_config(dir: &Path, config: TrackerConfig) -> Result<Tracker, TrackerError> {
        let (lock, opened) = file::open_dir(dir)?;
        Ok(Tracker {
            dir: dir.to_path_buf(),
            journal: commit::GroupCommit::new(dir, opened, config.compact_min_records),
            _lock: lock,
        })
    }

    /// Inserts or replaces `job` (keyed by `job.job_id`); durable when this returns `Ok`.
    ///
    /// Blocks until the change is fsynced; concurrent changes share one write and one fsync (see
    /// the crate docs on group commit).
    pub fn upsert(&self, job: TrackedJob) -> Result<(), TrackerError> {
        self.journal.upsert(job)
    }

    /// Inserts or replaces every job of `jobs` (in order); all durable when this returns `Ok`.
    ///
    /// The changes join one batch (one write, one fsync), as concurrent [`Tracker::upsert`]s do;
    /// on `Err` any of them may or may not have been recorded.
    pub fn upsert_all(&self, jobs: Vec<TrackedJob>) -> Result<(), TrackerError> {
        self.journal.upsert_all(jobs)
    }

    /// Removes the job with `job_id`; returns whether it was tracked. Durable when this returns `Ok`.
    /// Deleting an unknown id writes nothing.
    ///
    /// "Tracked" counts changes other threads have made but are still waiting to be fsynced: those
    /// are ordered before this delete in the journal.
    pub fn delete(&self, job_id: &str) -> Result<bool, TrackerError> {
        self.journal.delete(job_id)
    }

    /// The job with `job_id`, if tracked.
    pub fn get(&self, job_id: &str) -> Result<Option<TrackedJob>, TrackerError> {
        Ok(self.journal.get(job_id))
    }

    /// All tracked jobs, sorted by job id.
    pub fn list(&self) -> Result<Vec<TrackedJob>, TrackerError> {
        let mut jobs = self.journal.jobs();
        jobs.sort_unstable_by(|a, b| a.job_id.cmp(&b.job_id));
        Ok(jobs)
    }

    /// Number of tracked jobs.
    pub fn len(&self) -> usize {
        self.journal.len()
    }

    /// Whether no job is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The directory this tracker owns.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
