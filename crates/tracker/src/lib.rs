//! Durable store of the dispatch jobs this scheduler owns (SPEC §7).
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
//! entries (changes, however they were batched) it is compacted: the live map is written to `journal.tmp`, fsynced, renamed over
//! `journal`, and the directory fsynced. Compaction costs O(live) but happens only after at least
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
//! per change. Unix only (modes, `fsync` of
//! directories).

#![cfg(unix)]

mod crc32;
mod journal;

#[doc(hidden)]
pub mod bench_support;

use std::collections::HashMap;
use std::fs::{self, DirBuilder, File, OpenOptions, TryLockError};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use journal::{Entry, EntryRef, HEADER_LEN, MAGIC, MAX_ENTRY, MAX_PAYLOAD};

const JOURNAL_FILE: &str = "journal";
const TEMP_FILE: &str = "journal.tmp";
const LOCK_FILE: &str = "LOCK";
const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;
/// Longest single wait in [`acquire`]; the waits double from 1 ms, about 0.5 s in all.
const LOCK_RETRY_MAX_WAIT: std::time::Duration = std::time::Duration::from_millis(256);

/// Where a tracked dispatch job stands with the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Pulled and enqueued locally; the hub has not yet been told it was accepted.
    PendingAccept,
    /// The hub acknowledged the accept; the job now waits for its run to finish.
    Accepted,
}

/// One dispatch job this scheduler owns, keyed by `job_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackedJob {
    /// Hub-assigned job id (opaque; may contain any characters).
    pub job_id: String,
    /// Name of the DAG the job runs.
    pub dag_name: String,
    /// Run id of the local DAG run.
    pub dag_run_id: String,
    /// Where the job stands with the hub.
    pub phase: Phase,
    /// `owner/name` of the GitHub repository that triggered the job.
    pub repository: String,
    /// Pull request number, or 0 when none.
    pub pr_number: i64,
    /// Issue number, or 0 when none.
    pub issue_number: i64,
    /// Last change, milliseconds since the Unix epoch.
    pub updated_at_ms: u64,
}

/// Errors of the tracker.
#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    /// Another [`Tracker`] (in this or another process) holds the directory's lock.
    #[error("tracker directory `{}` is already in use by another process or tracker", dir.display())]
    InUse {
        /// The tracker directory.
        dir: PathBuf,
    },
    /// A file-system call failed.
    #[error("failed to {action} `{}`", path.display())]
    Io {
        /// What was being done, e.g. "fsync".
        action: &'static str,
        /// File or directory involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The journal does not start with the tracker's magic bytes.
    #[error("`{}` is not a tracker journal of a known version (bad header)", path.display())]
    BadHeader {
        /// The journal file.
        path: PathBuf,
    },
    /// A record in the middle of the journal is damaged while later records are intact.
    #[error(
        "corrupt record at byte {offset} of tracker journal `{}` ({reason}); intact records follow \
         at byte {next_good}, refusing to drop them",
        path.display()
    )]
    Corrupt {
        /// The journal file.
        path: PathBuf,
        /// Byte offset of the bad record.
        offset: u64,
        /// What is wrong with it.
        reason: String,
        /// Offset of the next intact record.
        next_good: u64,
    },
    /// A record's checksum is right but its JSON is not a tracker entry.
    #[error("failed to decode record at byte {offset} of tracker journal `{}`", path.display())]
    Decode {
        /// The journal file.
        path: PathBuf,
        /// Byte offset of the record.
        offset: u64,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A job could not be encoded as JSON.
    #[error("failed to encode tracked job `{job_id}`")]
    Encode {
        /// The job's id.
        job_id: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A job's encoding exceeds the per-record limit.
    #[error("tracked job `{job_id}` encodes to {len} bytes, over the limit of {max}")]
    TooLarge {
        /// The job's id.
        job_id: String,
        /// Encoded size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An earlier write or fsync failed; the tracker must be reopened.
    #[error("tracker journal `{}` failed an earlier write; reopen the tracker", path.display())]
    Poisoned {
        /// The journal file.
        path: PathBuf,
    },
}

pub(crate) fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> TrackerError + 'a {
    move |source| TrackerError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

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
    journal_path: PathBuf,
    config: TrackerConfig,
    inner: Mutex<Inner>,
    /// Notified whenever a batch's outcome is known or the journal is released (`busy` cleared).
    batch_done: Condvar,
    /// Held for the tracker's lifetime; dropping the file releases the advisory lock.
    _lock: File,
}

#[derive(Debug)]
struct Inner {
    /// The durable state: a change enters this map only once its record is fsynced.
    jobs: HashMap<String, TrackedJob>,
    /// The journal, written at `len` with positioned writes. Shared so a batch's leader can write
    /// and fsync it with the mutex released.
    file: Arc<File>,
    len: u64,
    /// Entries in the journal file (live or superseded), counting each change of a batch.
    records: usize,
    /// After a failed compaction, do not retry before the journal holds this many records, so a
    /// persistent failure (disk full) does not turn every change into an O(n) attempt.
    retry_compaction_at: usize,
    poisoned: bool,
    /// Changes waiting for the next batch write, in arrival (= journal) order.
    gathering: Batch,
    /// Changes of the batch being written, applied to `jobs` once it is durable.
    in_flight: Vec<Change>,
    /// Someone owns the journal file outside the mutex: a leader writing a batch, or a test hold.
    /// Compaction runs under the mutex with `busy` clear, so it never overlaps a batch write.
    busy: bool,
    /// Number the gathering batch will carry; batches are numbered from 1 in write order.
    next_batch: u64,
    /// Every batch up to this number has its outcome known (they finish in order).
    finished: u64,
    /// The batch whose write or fsync failed (the tracker is poisoned from then on) and why.
    failed: Option<(u64, io::Error)>,
    /// fdatasync calls made for batches, for tests and benchmarks.
    syncs: u64,
    /// Test hook: the next batch fails as if its write had failed, without touching the file.
    fail_next_batch: bool,
}

/// Changes waiting to be written together, and their encoded entries.
#[derive(Debug, Default)]
struct Batch {
    /// `[` followed by the entries' JSON separated by commas (no closing bracket yet); empty when
    /// the batch is.
    payload: Vec<u8>,
    changes: Vec<Change>,
}

impl Batch {
    /// Whether an entry of `len` bytes still fits in one record with this batch.
    fn fits(&self, len: usize) -> bool {
        // `payload` already holds the opening bracket; a comma and the closing one would follow.
        self.changes.is_empty() || self.payload.len() + len + 2 <= MAX_PAYLOAD
    }

    fn push(&mut self, entry: &[u8], change: Change) {
        self.payload
            .push(if self.changes.is_empty() { b'[' } else { b',' });
        self.payload.extend_from_slice(entry);
        self.changes.push(change);
    }

    /// The journal record: a lone change as a plain entry (as before batching existed), several as
    /// a JSON array.
    fn into_record(mut self) -> (Vec<u8>, Vec<Change>) {
        let payload = if self.changes.len() == 1 {
            &self.payload[1..]
        } else {
            self.payload.push(b']');
            &self.payload[..]
        };
        let mut record = Vec::with_capacity(HEADER_LEN + payload.len());
        journal::frame(payload, &mut record);
        (record, self.changes)
    }
}

#[derive(Debug)]
enum Change {
    Upsert(TrackedJob),
    Delete(String),
}

impl Change {
    fn job_id(&self) -> &str {
        match self {
            Change::Upsert(job) => &job.job_id,
            Change::Delete(job_id) => job_id,
        }
    }
}

impl Inner {
    /// Whether `job_id` is tracked once every change accepted so far is applied, and whether that
    /// answer depends on a change not yet durable.
    fn latest(&self, job_id: &str) -> (bool, bool) {
        let newest = self
            .gathering
            .changes
            .iter()
            .rev()
            .chain(self.in_flight.iter().rev())
            .find(|c| c.job_id() == job_id);
        match newest {
            Some(change) => (matches!(change, Change::Upsert(_)), true),
            None => (self.jobs.contains_key(job_id), false),
        }
    }
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
        let created = !dir.exists();
        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(io_err("create directory", dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
            .map_err(io_err("set permissions of", dir))?;
        if created {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }

        let lock_path = dir.join(LOCK_FILE);
        let lock = open_private(&lock_path, false)?;
        acquire(&lock, dir, &lock_path)?;

        let temp_path = dir.join(TEMP_FILE);
        match fs::remove_file(&temp_path) {
            Ok(()) => {
                tracing::warn!(path = %temp_path.display(), "removed stray tracker temp file left by an interrupted compaction");
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(TrackerError::Io {
                    action: "remove",
                    path: temp_path,
                    source,
                })
            }
        }

        let journal_path = dir.join(JOURNAL_FILE);
        if !journal_path.exists() {
            // Created through temp + rename so that a journal file, once visible, always has its magic.
            let file = write_snapshot(dir, std::iter::empty())?;
            drop(file);
        }
        let (jobs, records, len) = load(&journal_path)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&journal_path)
            .map_err(io_err("open", &journal_path))?;
        fs::set_permissions(&journal_path, fs::Permissions::from_mode(FILE_MODE))
            .map_err(io_err("set permissions of", &journal_path))?;
        let on_disk = file
            .metadata()
            .map_err(io_err("stat", &journal_path))?
            .len();
        if on_disk > len {
            // Cut the torn tail now, before anything is appended after it; otherwise the garbage
            // would sit between intact records and read as corruption on the next open.
            file.set_len(len)
                .map_err(io_err("truncate torn tail of", &journal_path))?;
            file.sync_all().map_err(io_err("fsync", &journal_path))?;
        }

        Ok(Tracker {
            dir: dir.to_path_buf(),
            journal_path,
            config,
            inner: Mutex::new(Inner {
                jobs,
                file: Arc::new(file),
                len,
                records,
                retry_compaction_at: 0,
                poisoned: false,
                gathering: Batch::default(),
                in_flight: Vec::new(),
                busy: false,
                next_batch: 1,
                finished: 0,
                failed: None,
                syncs: 0,
                fail_next_batch: false,
            }),
            batch_done: Condvar::new(),
            _lock: lock,
        })
    }

    /// Inserts or replaces `job` (keyed by `job.job_id`); durable when this returns `Ok`.
    ///
    /// Blocks until the change is fsynced; concurrent changes share one write and one fsync (see
    /// the crate docs on group commit).
    pub fn upsert(&self, job: TrackedJob) -> Result<(), TrackerError> {
        let entry = encode_entry(&EntryRef::Upsert { job: &job })?;
        self.commit(self.lock(), &entry, Change::Upsert(job))
    }

    /// Removes the job with `job_id`; returns whether it was tracked. Durable when this returns `Ok`.
    /// Deleting an unknown id writes nothing.
    ///
    /// "Tracked" counts changes other threads have made but are still waiting to be fsynced: those
    /// are ordered before this delete in the journal.
    pub fn delete(&self, job_id: &str) -> Result<bool, TrackerError> {
        let mut inner = self.lock();
        let mut encoded = None;
        loop {
            let (tracked, pending) = inner.latest(job_id);
            if !tracked && !pending {
                return Ok(false);
            }
            let entry = match encoded.take() {
                Some(entry) => entry,
                None => encode_entry(&EntryRef::Delete { job_id })?,
            };
            // The answer may change while waiting for room in a batch (see `commit`), so it is
            // taken again after the wait.
            if !inner.poisoned && !inner.gathering.fits(entry.len()) {
                encoded = Some(entry);
                inner = self.wait(inner);
                continue;
            }
            // When a pending change already removes the job, a redundant delete is still written
            // so that this call returns only once that removal is durable (it precedes this one).
            self.commit(inner, &entry, Change::Delete(job_id.to_owned()))?;
            return Ok(tracked);
        }
    }

    /// The job with `job_id`, if tracked.
    pub fn get(&self, job_id: &str) -> Result<Option<TrackedJob>, TrackerError> {
        Ok(self.lock().jobs.get(job_id).cloned())
    }

    /// All tracked jobs, sorted by job id.
    pub fn list(&self) -> Result<Vec<TrackedJob>, TrackerError> {
        let mut jobs: Vec<TrackedJob> = self.lock().jobs.values().cloned().collect();
        jobs.sort_unstable_by(|a, b| a.job_id.cmp(&b.job_id));
        Ok(jobs)
    }

    /// Number of tracked jobs.
    pub fn len(&self) -> usize {
        self.lock().jobs.len()
    }

    /// Whether no job is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The directory this tracker owns.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Entries currently in the journal file (live and superseded, each change of a batch
    /// counted); for tests and benchmarks.
    #[doc(hidden)]
    pub fn journal_records(&self) -> usize {
        self.lock().records
    }

    /// fdatasync calls made for batches of changes so far; for tests and benchmarks.
    #[doc(hidden)]
    pub fn journal_syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// Changes waiting for the next batch write; for tests.
    #[doc(hidden)]
    pub fn waiting_changes(&self) -> usize {
        self.lock().gathering.changes.len()
    }

    /// Keeps any batch from being written until the returned hold is dropped, as if a long fsync
    /// were in progress, so that a test can line up concurrent changes into one batch.
    #[doc(hidden)]
    pub fn hold_writes(&self) -> WriteHold<'_> {
        let mut inner = self.wait_idle(self.lock());
        inner.busy = true;
        WriteHold { tracker: self }
    }

    /// Makes the next batch fail as if its write had failed, without touching the file; for tests.
    #[doc(hidden)]
    pub fn fail_next_batch(&self) {
        self.lock().fail_next_batch = true;
    }

    /// Compacts the journal now, whatever its size; for tests and benchmarks.
    #[doc(hidden)]
    pub fn compact_now(&self) -> Result<(), TrackerError> {
        let mut inner = self.wait_idle(self.lock());
        if inner.poisoned {
            return Err(TrackerError::Poisoned {
                path: self.journal_path.clone(),
            });
        }
        self.compact(&mut inner)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every mutation updates the map only after its IO succeeded, so a panic while holding the
        // lock (there is none on any input path) cannot leave the map ahead of the disk.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, inner: MutexGuard<'a, Inner>) -> MutexGuard<'a, Inner> {
        self.batch_done
            .wait(inner)
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until no batch is being written.
    fn wait_idle<'a>(&self, mut inner: MutexGuard<'a, Inner>) -> MutexGuard<'a, Inner> {
        while inner.busy {
            inner = self.wait(inner);
        }
        inner
    }

    /// Group commit: adds `entry` (the encoding of `change`) to the gathering batch and returns once
    /// that batch is durable and applied to the map, or failed.
    ///
    /// Whoever finds the journal idle while its batch is unwritten becomes the batch's leader and
    /// writes it (see [`Tracker::write_batch`]); the others sleep on `batch_done`. Changes arriving
    /// while a batch is being written gather into the next one, whose first caller to wake leads it.
    /// A batch is one record, so a change that would push it past [`MAX_PAYLOAD`] waits for the
    /// following one (only jobs far larger than real ones get there).
    fn commit<'a>(
        &'a self,
        mut inner: MutexGuard<'a, Inner>,
        entry: &[u8],
        change: Change,
    ) -> Result<(), TrackerError> {
        loop {
            if inner.poisoned {
                return Err(self.poisoned_error());
            }
            if inner.gathering.fits(entry.len()) {
                break;
            }
            // The gathering batch is not empty, so one of its callers is bound to write it and
            // notify; `delete` runs this wait itself, as its answer may change meanwhile.
            inner = self.wait(inner);
        }
        inner.gathering.push(entry, change);
        let batch = inner.next_batch;
        loop {
            if inner.finished >= batch {
                return match &inner.failed {
                    Some((failed, source)) if *failed == batch => Err(TrackerError::Io {
                        action: "append to",
                        path: self.journal_path.clone(),
                        source: copy_io_error(source),
                    }),
                    _ => Ok(()),
                };
            }
            if inner.poisoned {
                // An earlier batch failed; this one will never be written.
                return Err(self.poisoned_error());
            }
            inner = if inner.busy {
                self.wait(inner)
            } else {
                self.write_batch(inner)
            };
        }
    }

    /// Writes the gathering batch with one positioned write and one fdatasync, the mutex released
    /// meanwhile so that other callers can gather the next batch and readers are not blocked; then
    /// applies it to the map (or poisons the tracker) and wakes every waiter.
    fn write_batch<'a>(&'a self, mut inner: MutexGuard<'a, Inner>) -> MutexGuard<'a, Inner> {
        let id = inner.next_batch;
        inner.next_batch += 1;
        let (record, changes) = std::mem::take(&mut inner.gathering).into_record();
        inner.in_flight = changes;
        inner.busy = true;
        let (file, at) = (Arc::clone(&inner.file), inner.len);
        let inject_failure = std::mem::take(&mut inner.fail_next_batch);
        drop(inner);

        // Nothing between `busy = true` and `busy = false` can panic, so waiters cannot be
        // stranded. fdatasync suffices for an append: it also flushes the size change needed to
        // read the data.
        let result = if inject_failure {
            Err(io::Error::other("injected failure"))
        } else {
            file.write_all_at(&record, at)
                .and_then(|()| file.sync_data())
        };

        let mut inner = self.lock();
        inner.busy = false;
        inner.syncs += 1;
        inner.finished = id;
        let changes = std::mem::take(&mut inner.in_flight);
        match result {
            Ok(()) => {
                inner.len += record.len() as u64;
                inner.records += changes.len();
                for change in changes {
                    match change {
                        Change::Upsert(job) => {
                            inner.jobs.insert(job.job_id.clone(), job);
                        }
                        Change::Delete(job_id) => {
                            inner.jobs.remove(&job_id);
                        }
                    }
                }
                self.maybe_compact(&mut inner);
            }
            Err(source) => {
                inner.poisoned = true;
                inner.failed = Some((id, source));
            }
        }
        self.batch_done.notify_all();
        inner
    }

    fn poisoned_error(&self) -> TrackerError {
        TrackerError::Poisoned {
            path: self.journal_path.clone(),
        }
    }

    fn maybe_compact(&self, inner: &mut Inner) {
        let threshold = self
            .config
            .compact_min_records
            .max(inner.jobs.len().saturating_mul(2))
            .max(inner.retry_compaction_at);
        if inner.records <= threshold {
            return;
        }
        // The change that triggered compaction is already durable, so a failed compaction is
        // logged and does not fail that change.
        if let Err(error) = self.compact(inner) {
            tracing::warn!(%error, "tracker compaction failed; the journal keeps growing until a retry succeeds");
            inner.retry_compaction_at =
                inner.records + self.config.compact_min_records.max(inner.jobs.len());
        }
    }

    fn compact(&self, inner: &mut Inner) -> Result<(), TrackerError> {
        let (file, len) = match write_snapshot_unrenamed(&self.dir, inner.jobs.values()) {
            Ok(x) => x,
            Err(e) => {
                let _ = fs::remove_file(self.dir.join(TEMP_FILE));
                return Err(e);
            }
        };
        let temp_path = self.dir.join(TEMP_FILE);
        if let Err(source) = fs::rename(&temp_path, &self.journal_path) {
            let _ = fs::remove_file(&temp_path);
            return Err(TrackerError::Io {
                action: "rename compacted journal onto",
                path: self.journal_path.clone(),
                source,
            });
        }
        // From here on the new file is the journal: appends must go to it even if the directory
        // fsync below fails, or they would land in the unlinked old file.
        inner.file = Arc::new(file);
        inner.len = len;
        inner.records = inner.jobs.len();
        inner.retry_compaction_at = 0;
        if let Err(e) = sync_dir(&self.dir) {
            // The rename may not be durable; later appends could be lost with it after a power cut.
            inner.poisoned = true;
            return Err(e);
        }
        Ok(())
    }
}

/// Returned by [`Tracker::hold_writes`]; dropping it lets batches be written again.
#[doc(hidden)]
#[derive(Debug)]
pub struct WriteHold<'a> {
    tracker: &'a Tracker,
}

impl Drop for WriteHold<'_> {
    fn drop(&mut self) {
        self.tracker.lock().busy = false;
        self.tracker.batch_done.notify_all();
    }
}

/// The same OS error for every caller of a failed batch (`io::Error` is not `Clone`).
fn copy_io_error(error: &io::Error) -> io::Error {
    match error.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(error.kind(), error.to_string()),
    }
}

/// Frames one journal entry as a record.
fn encode(entry: &EntryRef<'_>) -> Result<Vec<u8>, TrackerError> {
    let payload = encode_entry(entry)?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    journal::frame(&payload, &mut out);
    Ok(out)
}

/// Encodes one journal entry (the payload of a record of its own, or an element of a batch).
fn encode_entry(entry: &EntryRef<'_>) -> Result<Vec<u8>, TrackerError> {
    let job_id = match entry {
        EntryRef::Upsert { job } => &job.job_id,
        EntryRef::Delete { job_id } => *job_id,
    };
    let payload = serde_json::to_vec(entry).map_err(|source| TrackerError::Encode {
        job_id: job_id.to_owned(),
        source,
    })?;
    if payload.len() > MAX_ENTRY {
        return Err(TrackerError::TooLarge {
            job_id: job_id.to_owned(),
            len: payload.len(),
            max: MAX_ENTRY,
        });
    }
    Ok(payload)
}

/// Opens (creating with mode 0600) a file for reading and writing; `truncate` empties it.
fn open_private(path: &Path, truncate: bool) -> Result<File, TrackerError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(truncate)
        .mode(FILE_MODE)
        .open(path)
        .map_err(io_err("open", path))?;
    // The mode above applies only to a newly created file (and is masked by the umask).
    file.set_permissions(fs::Permissions::from_mode(FILE_MODE))
        .map_err(io_err("set permissions of", path))?;
    Ok(file)
}

/// Takes the exclusive advisory lock on `lock`, retrying briefly before reporting
/// [`TrackerError::InUse`].
///
/// The retries are for a lock whose owner has just let go: `flock` belongs to the open file
/// description, and a process forked by any thread of this program (e.g. a step being spawned) holds
/// a copy of every descriptor until its `exec` closes it, so a tracker dropped and reopened in the
/// same process can find its own old lock still held for a moment. A lock held by a live tracker
/// stays held, and the open fails after about half a second.
fn acquire(lock: &File, dir: &Path, lock_path: &Path) -> Result<(), TrackerError> {
    let mut wait = std::time::Duration::from_millis(1);
    loop {
        match lock.try_lock() {
            Ok(()) => return Ok(()),
            Err(TryLockError::WouldBlock) if wait <= LOCK_RETRY_MAX_WAIT => {
                std::thread::sleep(wait);
                wait *= 2;
            }
            Err(TryLockError::WouldBlock) => {
                return Err(TrackerError::InUse {
                    dir: dir.to_path_buf(),
                })
            }
            Err(TryLockError::Error(source)) => {
                return Err(TrackerError::Io {
                    action: "lock",
                    path: lock_path.to_path_buf(),
                    source,
                })
            }
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), TrackerError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

/// Writes `jobs` as a fresh journal to the temp file and fsyncs it, without renaming it.
/// Returns the open file and its length.
fn write_snapshot_unrenamed<'a>(
    dir: &Path,
    jobs: impl Iterator<Item = &'a TrackedJob>,
) -> Result<(File, u64), TrackerError> {
    let temp_path = dir.join(TEMP_FILE);
    let file = open_private(&temp_path, true)?;
    let mut out = BufWriter::with_capacity(1 << 16, &file);
    let mut len = MAGIC.len() as u64;
    out.write_all(MAGIC).map_err(io_err("write", &temp_path))?;
    for job in jobs {
        let record = encode(&EntryRef::Upsert { job })?;
        len += record.len() as u64;
        out.write_all(&record)
            .map_err(io_err("write", &temp_path))?;
    }
    out.flush().map_err(io_err("write", &temp_path))?;
    drop(out);
    file.sync_all().map_err(io_err("fsync", &temp_path))?;
    Ok((file, len))
}

/// Writes `jobs` as the journal of `dir` via temp file, fsync, rename and directory fsync.
fn write_snapshot<'a>(
    dir: &Path,
    jobs: impl Iterator<Item = &'a TrackedJob>,
) -> Result<File, TrackerError> {
    let (file, _) = write_snapshot_unrenamed(dir, jobs)?;
    let journal_path = dir.join(JOURNAL_FILE);
    fs::rename(dir.join(TEMP_FILE), &journal_path)
        .map_err(io_err("rename temp file onto", &journal_path))?;
    sync_dir(dir)?;
    Ok(file)
}

/// Replays the journal: the live map, the number of intact records and where they end.
fn load(path: &Path) -> Result<(HashMap<String, TrackedJob>, usize, u64), TrackerError> {
    let bytes = fs::read(path).map_err(io_err("read", path))?;
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(TrackerError::BadHeader {
            path: path.to_path_buf(),
        });
    }
    let scan =
        journal::scan(&bytes[MAGIC.len()..], MAGIC.len()).map_err(|mid| TrackerError::Corrupt {
            path: path.to_path_buf(),
            offset: mid.offset as u64,
            reason: mid.defect.to_string(),
            next_good: mid.next_good as u64,
        })?;
    if let Some(defect) = scan.torn_tail {
        tracing::warn!(
            path = %path.display(),
            offset = scan.valid_end,
            dropped_bytes = bytes.len() - scan.valid_end,
            %defect,
            "tracker journal ends in a torn record (interrupted write); ignoring it"
        );
    }
    let mut jobs = HashMap::new();
    let mut entries = 0;
    for range in &scan.payloads {
        let payload = &bytes[range.clone()];
        let decode_error = |source| TrackerError::Decode {
            path: path.to_path_buf(),
            offset: (range.start - HEADER_LEN) as u64,
            source,
        };
        let batch: Vec<Entry> = if payload.first() == Some(&b'[') {
            serde_json::from_slice(payload).map_err(decode_error)?
        } else {
            vec![serde_json::from_slice(payload).map_err(decode_error)?]
        };
        entries += batch.len();
        for entry in batch {
            match entry {
                Entry::Upsert { job } => {
                    jobs.insert(job.job_id.clone(), job);
                }
                Entry::Delete { job_id } => {
                    jobs.remove(&job_id);
                }
            }
        }
    }
    Ok((jobs, entries, scan.valid_end as u64))
}
