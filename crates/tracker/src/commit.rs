//! Group commit: concurrent changes share one journal write and one fsync, and the in-memory map
//! follows the journal only once a change is durable. The crate docs tell the design; this module
//! is its one implementation, including when to compact.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::error::TrackerError;
use crate::file::{self, Opened};
use crate::job::TrackedJob;
use crate::journal::{self, EntryRef, HEADER_LEN, MAX_PAYLOAD};

/// The journal of one tracker directory and the live map it replays to, shared by every caller.
#[derive(Debug)]
pub(crate) struct GroupCommit {
    dir: PathBuf,
    journal_path: PathBuf,
    /// See `TrackerConfig::compact_min_records`.
    compact_min_records: usize,
    inner: Mutex<Inner>,
    /// Notified whenever a batch's outcome is known or the journal is released (`busy` cleared).
    batch_done: Condvar,
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
    #[cfg(feature = "test-hooks")]
    hooks: Hooks,
}

/// State only tests and benchmarks look at or set.
#[cfg(feature = "test-hooks")]
#[derive(Debug, Default)]
struct Hooks {
    /// fdatasync calls made for batches.
    syncs: u64,
    /// The next batch fails as if its write had failed, without touching the file.
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

impl GroupCommit {
    /// Takes over the journal of the directory `dir`, just opened.
    pub(crate) fn new(dir: &Path, opened: Opened, compact_min_records: usize) -> GroupCommit {
        let Opened {
            journal_path,
            file,
            jobs,
            records,
            len,
        } = opened;
        GroupCommit {
            dir: dir.to_path_buf(),
            journal_path,
            compact_min_records,
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
                #[cfg(feature = "test-hooks")]
                hooks: Hooks::default(),
            }),
            batch_done: Condvar::new(),
        }
    }

    /// See `Tracker::upsert`.
    pub(crate) fn upsert(&self, job: TrackedJob) -> Result<(), TrackerError> {
        let entry = journal::encode_entry(&EntryRef::Upsert { job: &job })?;
        self.commit(self.lock(), &entry, Change::Upsert(job))
    }

    /// See `Tracker::upsert_all`.
    pub(crate) fn upsert_all(&self, jobs: Vec<TrackedJob>) -> Result<(), TrackerError> {
        let changes = jobs
            .into_iter()
            .map(|job| {
                let entry = journal::encode_entry(&EntryRef::Upsert { job: &job })?;
                Ok((entry, Change::Upsert(job)))
            })
            .collect::<Result<Vec<_>, TrackerError>>()?;
        if changes.is_empty() {
            return Ok(());
        }
        self.commit_many(self.lock(), changes)
    }

    /// See `Tracker::delete`.
    pub(crate) fn delete(&self, job_id: &str) -> Result<bool, TrackerError> {
        let mut inner = self.lock();
        let mut encoded = None;
        loop {
            let (tracked, pending) = inner.latest(job_id);
            if !tracked && !pending {
                return Ok(false);
            }
            let entry = match encoded.take() {
                Some(entry) => entry,
                None => journal::encode_entry(&EntryRef::Delete { job_id })?,
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

    /// The durable job with `job_id`.
    pub(crate) fn get(&self, job_id: &str) -> Option<TrackedJob> {
        self.lock().jobs.get(job_id).cloned()
    }

    /// Every durable job, in no particular order.
    pub(crate) fn jobs(&self) -> Vec<TrackedJob> {
        self.lock().jobs.values().cloned().collect()
    }

    /// Number of durable jobs.
    pub(crate) fn len(&self) -> usize {
        self.lock().jobs.len()
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

    /// Adds `entry` (the encoding of `change`) to the gathering batch and returns once that batch
    /// is durable and applied to the map, or failed.
    ///
    /// Whoever finds the journal idle while its batch is unwritten becomes the batch's leader and
    /// writes it (see [`GroupCommit::write_batch`]); the others sleep on `batch_done`. Changes
    /// arriving while a batch is being written gather into the next one, whose first caller to
    /// wake leads it. A batch is one record, so a change that would push it past [`MAX_PAYLOAD`]
    /// waits for the following one (only jobs far larger than real ones get there).
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
        self.await_batch(inner, batch).map(drop)
    }

    /// [`GroupCommit::commit`] for several changes at once: they join the gathering batch
    /// together (several batches in order, in the rare case that they do not fit in one record),
    /// so a caller with many changes pays one write and one fsync, as many concurrent callers do.
    fn commit_many<'a>(
        &'a self,
        mut inner: MutexGuard<'a, Inner>,
        changes: Vec<(Vec<u8>, Change)>,
    ) -> Result<(), TrackerError> {
        let mut changes = changes.into_iter().peekable();
        while let Some((first, _)) = changes.peek() {
            let first_len = first.len();
            loop {
                if inner.poisoned {
                    return Err(self.poisoned_error());
                }
                if inner.gathering.fits(first_len) {
                    break;
                }
                inner = self.wait(inner);
            }
            while let Some((entry, change)) =
                changes.next_if(|(entry, _)| inner.gathering.fits(entry.len()))
            {
                inner.gathering.push(&entry, change);
            }
            let batch = inner.next_batch;
            inner = self.await_batch(inner, batch)?;
        }
        Ok(())
    }

    /// Returns once batch number `batch` (holding the caller's changes) is durable and applied,
    /// writing it when the journal is idle; its error if it failed.
    fn await_batch<'a>(
        &'a self,
        mut inner: MutexGuard<'a, Inner>,
        batch: u64,
    ) -> Result<MutexGuard<'a, Inner>, TrackerError> {
        loop {
            if inner.finished >= batch {
                return match &inner.failed {
                    Some((failed, source)) if *failed == batch => Err(TrackerError::Io {
                        action: "append to",
                        path: self.journal_path.clone(),
                        source: copy_io_error(source),
                    }),
                    _ => Ok(inner),
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
        #[cfg(feature = "test-hooks")]
        let inject_failure = std::mem::take(&mut inner.hooks.fail_next_batch);
        #[cfg(not(feature = "test-hooks"))]
        let inject_failure = false;
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
        #[cfg(feature = "test-hooks")]
        {
            inner.hooks.syncs += 1;
        }
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
                inner.records + self.compact_min_records.max(inner.jobs.len());
        }
    }

    fn compact(&self, inner: &mut Inner) -> Result<(), TrackerError> {
        let compacted = file::compact(&self.dir, inner.jobs.values())?;
        // From here on the new file is the journal: appends must go to it even if the directory
        // fsync failed, or they would land in the unlinked old file.
        inner.file = Arc::new(compacted.file);
        inner.len = compacted.len;
        inner.records = inner.jobs.len();
        inner.retry_compaction_at = 0;
        if let Err(e) = compacted.dir_synced {
            // The rename may not be durable; later appends could be lost with it after a power cut.
            inner.poisoned = true;
            return Err(e);
        }
        Ok(())
    }
}

/// Test and benchmark hooks, reached through `Tracker`'s methods of the same names.
#[cfg(feature = "test-hooks")]
impl GroupCommit {
    pub(crate) fn journal_records(&self) -> usize {
        self.lock().records
    }

    pub(crate) fn journal_syncs(&self) -> u64 {
        self.lock().hooks.syncs
    }

    pub(crate) fn waiting_changes(&self) -> usize {
        self.lock().gathering.changes.len()
    }

    pub(crate) fn hold_writes(&self) -> WriteHold<'_> {
        let mut inner = self.wait_idle(self.lock());
        inner.busy = true;
        WriteHold { writer: self }
    }

    pub(crate) fn fail_next_batch(&self) {
        self.lock().hooks.fail_next_batch = true;
    }

    pub(crate) fn compact_now(&self) -> Result<(), TrackerError> {
        let mut inner = self.wait_idle(self.lock());
        if inner.poisoned {
            return Err(self.poisoned_error());
        }
        self.compact(&mut inner)
    }

    /// Waits until no batch is being written.
    fn wait_idle<'a>(&self, mut inner: MutexGuard<'a, Inner>) -> MutexGuard<'a, Inner> {
        while inner.busy {
            inner = self.wait(inner);
        }
        inner
    }
}

/// Returned by `Tracker::hold_writes`; dropping it lets batches be written again.
#[cfg(feature = "test-hooks")]
#[derive(Debug)]
pub struct WriteHold<'a> {
    writer: &'a GroupCommit,
}

#[cfg(feature = "test-hooks")]
impl Drop for WriteHold<'_> {
    fn drop(&mut self) {
        self.writer.lock().busy = false;
        self.writer.batch_done.notify_all();
    }
}

/// The same OS error for every caller of a failed batch (`io::Error` is not `Clone`).
fn copy_io_error(error: &io::Error) -> io::Error {
    match error.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(error.kind(), error.to_string()),
    }
}
