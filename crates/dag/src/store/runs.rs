//! File-backed [`RunStore`]: one append-only file per run holding its attempts and statuses.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::contract::{Attempt, RunRecord, RunStore};
use super::fsutil::{
    create_dir_durable, forget_durable, fsync_dir, io_err, is_not_found, list_names,
    monotonic_nanos, write_temp,
};
use crate::names::validate_attempt_id;
use crate::{validate_dag_name, validate_run_id, Dag, StoreError};

/// Run files end in this; run ids cannot contain a dot, so the name maps back to the run id.
const RUN_EXT: &str = ".jsonl";

/// A run file larger than this is rewritten compacted (latest status of each attempt only) by
/// the status write that finds it so; below it, a status write is one append.
const COMPACT_AT: u64 = 256 * 1024;

/// Runs under `<root>/<dag>/<run_id>.jsonl`, one JSON document per line:
/// `{"attempt":{"dag":…,"record":…}}` starts an attempt (the DAG snapshot and its first status),
/// `{"status":…}` replaces the status of the attempt it names. The latest attempt is the last
/// attempt line; its status is the last status line naming it.
///
/// Durability at the fewest fsyncs: a status write is one append and one `fdatasync` (the size
/// change that makes the line readable is data-sync metadata; no name changes); creating a run
/// is one append, one `fdatasync` and one fsync of the DAG directory (its new name). Runs
/// created together ([`RunStore::create_attempts`]) are all written before any is synced and
/// share the fsync of their directory. The DAG directory itself is made durable once per
/// process.
///
/// Atomicity: a line counts only once its closing newline is there, so readers never see half a
/// status. What a crash in the middle of an append can leave at the end of the file (a line
/// without its newline, or one whose bytes did not reach the disk) is ignored by readers, and
/// writers, which hold an exclusive `flock` on the file, cut it off before appending; so every
/// earlier line must decode, and one that does not is [`StoreError::Corrupt`]. A run file
/// without a valid attempt line is a create that never returned and counts as no run.
///
/// Status writes to one attempt are meant to come from one writer at a time (the executor that
/// runs it, or recovery before any run starts); concurrent writers are serialized by the lock
/// and the last one wins.
#[derive(Clone)]
pub struct FileRunStore {
    root: PathBuf,
    known: KnownFiles,
    latest: LatestAttempts,
}

impl std::fmt::Debug for FileRunStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileRunStore")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// One line of a run file, as written.
#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum LineOut<'a> {
    Attempt { dag: &'a Dag, record: &'a RunRecord },
    Status(&'a RunRecord),
}

/// One line of a run file, as read.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum LineIn {
    Attempt { dag: Box<Dag>, record: RunRecord },
    Status(RunRecord),
}

/// The attempt id of a line, read without building the DAG (status writes check only ids).
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum LineId {
    Attempt { record: IdOnly },
    Status(IdOnly),
}

#[derive(Deserialize)]
struct IdOnly {
    attempt_id: String,
}

fn encode(line: &LineOut<'_>, path: &Path) -> Result<Vec<u8>, StoreError> {
    let mut bytes = serde_json::to_vec(line).map_err(|e| StoreError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("cannot encode: {e}"),
    })?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// How much of a run file counts: up to the last newline, less a last line that does not decode.
/// Both are what a crash during an append can leave (the line cut short, or its bytes not yet on
/// disk when the new size was), and that append never returned, so dropping it loses nothing.
fn valid_len(bytes: &[u8]) -> usize {
    let Some(last_newline) = bytes.iter().rposition(|b| *b == b'\n') else {
        return 0;
    };
    let start = bytes[..last_newline]
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    if serde_json::from_slice::<LineId>(&bytes[start..last_newline]).is_ok() {
        last_newline + 1
    } else {
        start
    }
}

/// The valid lines of a run file, numbered from 1. Every line before the last one must decode;
/// one that does not is [`StoreError::Corrupt`].
fn lines(bytes: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    bytes[..valid_len(bytes)]
        .split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.is_empty())
        .map(|(i, line)| (i + 1, line))
}

fn corrupt(path: &Path, line: usize, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("line {line}: {reason}"),
    }
}

/// Every attempt of a run file with its latest status, oldest first.
fn parse_attempts(bytes: &[u8], path: &Path) -> Result<Vec<Attempt>, StoreError> {
    let mut attempts: Vec<Attempt> = Vec::new();
    for (n, line) in lines(bytes) {
        match serde_json::from_slice::<LineIn>(line).map_err(|e| corrupt(path, n, e))? {
            LineIn::Attempt { dag, record } => attempts.push(Attempt { dag: *dag, record }),
            LineIn::Status(record) => {
                let attempt = attempts
                    .iter_mut()
                    .rev()
                    .find(|a| a.record.attempt_id == record.attempt_id)
                    .ok_or_else(|| {
                        corrupt(
                            path,
                            n,
                            format!("status of unknown attempt `{}`", record.attempt_id),
                        )
                    })?;
                attempt.record = record;
            }
        }
    }
    Ok(attempts)
}

/// The latest attempt of a run file with its latest status. Every line is checked to be a
/// well-formed line naming a known attempt, but only the two lines that make the answer are
/// decoded whole (a run file holds a status line per step transition).
fn parse_latest(bytes: &[u8], path: &Path) -> Result<Option<Attempt>, StoreError> {
    let mut ids = HashSet::new();
    let mut attempt_line = None;
    let mut status_line = None;
    for (n, line) in lines(bytes) {
        match serde_json::from_slice::<LineId>(line).map_err(|e| corrupt(path, n, e))? {
            LineId::Attempt { record } => {
                ids.insert(record.attempt_id.clone());
                attempt_line = Some((n, line, record.attempt_id));
                status_line = None;
            }
            LineId::Status(record) => {
                if !ids.contains(&record.attempt_id) {
                    return Err(corrupt(
                        path,
                        n,
                        format!("status of unknown attempt `{}`", record.attempt_id),
                    ));
                }
                if attempt_line.as_ref().map(|(_, _, id)| id) == Some(&record.attempt_id) {
                    status_line = Some((n, line));
                }
            }
        }
    }
    let Some((n, line, _)) = attempt_line else {
        return Ok(None);
    };
    let LineIn::Attempt { dag, mut record } =
        serde_json::from_slice::<LineIn>(line).map_err(|e| corrupt(path, n, e))?
    else {
        return Err(corrupt(path, n, "not an attempt line"));
    };
    if let Some((n, line)) = status_line {
        match serde_json::from_slice::<LineIn>(line).map_err(|e| corrupt(path, n, e))? {
            LineIn::Status(latest) => record = latest,
            LineIn::Attempt { .. } => return Err(corrupt(path, n, "not a status line")),
        }
    }
    Ok(Some(Attempt { dag: *dag, record }))
}

/// Attempt ids of the attempt lines of a run file.
fn attempt_ids(bytes: &[u8], path: &Path) -> Result<Vec<String>, StoreError> {
    let mut ids = Vec::new();
    for (n, line) in lines(bytes) {
        match serde_json::from_slice::<LineId>(line).map_err(|e| corrupt(path, n, e))? {
            LineId::Attempt { record } => ids.push(record.attempt_id),
            LineId::Status(_) => {}
        }
    }
    Ok(ids)
}

/// Identity of a run file: device, inode and birth time (an inode number alone is reused after
/// a removal, and a compaction replaces the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    born: SystemTime,
}

impl FileId {
    /// `None` where the filesystem keeps no birth time: such files are always read whole.
    fn of(meta: &fs::Metadata) -> Option<FileId> {
        Some(FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            born: meta.created().ok()?,
        })
    }
}

/// What this process last wrote to a run file, so that its next status write need not read
/// the file again (which would make the 40th status write of a run cost more than the first).
/// It applies only while the file is unchanged since: same identity, length and modification
/// time; a write by anyone else changes the time, and the file is then read whole.
#[derive(Debug, Clone)]
struct Known {
    id: FileId,
    len: u64,
    modified: SystemTime,
    /// Attempt ids of the attempt lines.
    ids: Vec<String>,
}

/// Run files this process writes, by path; bounded by clearing it when full.
type KnownFiles = Arc<Mutex<HashMap<PathBuf, Known>>>;
const MAX_KNOWN: usize = 4096;

/// What a run file looked like: identity, length and modification time. Any write changes the
/// length (the file only grows, and a compaction replaces it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    id: FileId,
    len: u64,
    modified: SystemTime,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Option<Stamp> {
        Some(Stamp {
            id: FileId::of(meta)?,
            len: meta.len(),
            modified: meta.modified().ok()?,
        })
    }
}

/// The latest attempt of the run files this process created, read or wrote last, each with the
/// stamp of the file it was read from, so that reading a run again after writing or reading it
/// (the executor takes a run it was just handed; the report loop and the uploader read a run
/// that just ended) costs a `stat` instead of reading and parsing the whole file, DAG snapshot
/// included. Bounded to [`MAX_LATEST`] runs, the oldest entries going first.
#[derive(Debug, Default)]
struct Latest {
    runs: HashMap<PathBuf, (Stamp, Arc<Attempt>, u64)>,
    /// Paths in the order they were put in, with the entry's number then.
    order: VecDeque<(PathBuf, u64)>,
    next: u64,
}
type LatestAttempts = Arc<Mutex<Latest>>;
const MAX_LATEST: usize = 128;

impl Latest {
    fn put(&mut self, path: PathBuf, stamp: Stamp, attempt: Arc<Attempt>) {
        let number = self.next;
        self.next += 1;
        self.order.push_back((path.clone(), number));
        self.runs.insert(path, (stamp, attempt, number));
        while self.runs.len() > MAX_LATEST {
            let Some((old, number)) = self.order.pop_front() else {
                break;
            };
            if self.runs.get(&old).is_some_and(|(_, _, n)| *n == number) {
                self.runs.remove(&old);
            }
        }
        // Entries put in again leave stale order entries behind; keep them bounded too.
        if self.order.len() > 4 * MAX_LATEST {
            let runs = &self.runs;
            self.order
                .retain(|(path, number)| runs.get(path).is_some_and(|(_, _, n)| n == number));
        }
    }

    /// The run's latest attempt if the file still has `stamp`.
    fn get(&self, path: &Path, stamp: Stamp) -> Option<Attempt> {
        let (cached, attempt, _) = self.runs.get(path)?;
        (*cached == stamp).then(|| Attempt::clone(attempt))
    }

    /// After a status write to the file at `path`, which had stamp `before` and now has `after`:
    /// the cached attempt takes the new status if it is that attempt's (a status of an older
    /// attempt leaves the latest as it is). An entry that no longer matched the file before the
    /// write (someone else wrote it) is dropped.
    fn written(
        &mut self,
        path: &Path,
        before: Option<Stamp>,
        after: Option<Stamp>,
        record: &RunRecord,
    ) {
        let current = self
            .runs
            .get(path)
            .is_some_and(|(cached, _, _)| Some(*cached) == before);
        let Some(stamp) = after.filter(|_| current) else {
            self.runs.remove(path);
            return;
        };
        if let Some((cached, attempt, _)) = self.runs.get_mut(path) {
            if attempt.record.attempt_id == record.attempt_id {
                let mut updated = Attempt::clone(attempt);
                updated.record = record.clone();
                *attempt = Arc::new(updated);
            }
            *cached = stamp;
        }
    }
}

fn lock_latest(latest: &LatestAttempts) -> MutexGuard<'_, Latest> {
    // A cache: every entry is checked against the file's stamp before use.
    latest
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A run file opened for appending, locked, and known to still be the file at its path.
struct Locked {
    file: Flock<File>,
    path: PathBuf,
    id: Option<FileId>,
    /// Length of the valid content (a torn tail has been cut off).
    len: u64,
    /// Attempt ids in the file.
    ids: Vec<String>,
    /// The file's stamp when it was locked, before any write of this writer.
    opened: Option<Stamp>,
}

impl Locked {
    /// Opens and locks the run file at `path`; `Ok(None)` when it does not exist (and `create`
    /// is false). Retries when a compaction replaced the file between the open and the lock.
    fn open(path: &Path, create: bool, known: &KnownFiles) -> Result<Option<Locked>, StoreError> {
        loop {
            let opened = OpenOptions::new()
                .read(true)
                .append(true)
                .create(create)
                .open(path);
            let file = match opened {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound && !create => return Ok(None),
                Err(e) => return Err(io_err("open", path)(e)),
            };
            let file = Flock::lock(file, FlockArg::LockExclusive)
                .map_err(|(_, errno)| io_err("lock", path)(io::Error::from(errno)))?;
            let held = file.metadata().map_err(io_err("stat", path))?;
            match fs::metadata(path) {
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {}
                // Replaced by a compaction (or removed and created again): lock the new file.
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound && !create => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("stat", path)(e)),
            }
            let id = FileId::of(&held);
            let modified = held.modified().ok();
            let seen = lock_known(known).get(path).cloned().filter(|k| {
                Some(k.id) == id && k.len == held.len() && Some(k.modified) == modified
            });
            let mut locked = Locked {
                file,
                path: path.to_path_buf(),
                id,
                len: 0,
                ids: Vec::new(),
                opened: Stamp::of(&held),
            };
            match seen {
                Some(k) => {
                    locked.len = k.len;
                    locked.ids = k.ids;
                }
                None => locked.scan()?,
            }
            return Ok(Some(locked));
        }
    }

    /// Reads the file, cuts off a torn tail, collects the attempt ids.
    fn scan(&mut self) -> Result<(), StoreError> {
        let path = &self.path;
        let mut bytes = Vec::new();
        self.file
            .seek(SeekFrom::Start(0))
            .and_then(|_| self.file.read_to_end(&mut bytes))
            .map_err(io_err("read", path))?;
        let valid = valid_len(&bytes);
        if valid < bytes.len() {
            tracing::warn!(path = %path.display(), bytes = bytes.len() - valid,
                "cutting off a torn write at the end of a run file");
            self.file
                .set_len(valid as u64)
                .map_err(io_err("truncate", path))?;
        }
        self.ids = attempt_ids(&bytes, path)?;
        self.len = valid as u64;
        Ok(())
    }

    /// Appends one encoded line and makes it durable. A failed write is cut off again so the
    /// file never keeps half a line.
    fn append(&mut self, line: &[u8], attempt_id: Option<&str>) -> Result<(), StoreError> {
        let unsynced = self.write(line)?;
        self.sync(unsynced, attempt_id)
    }

    /// The first half of [`Locked::append`]: writes the line, not yet durable; returns its
    /// length for [`Locked::sync`].
    fn write(&mut self, line: &[u8]) -> Result<u64, StoreError> {
        if let Err(e) = self.file.write_all(line) {
            let _ = self.file.set_len(self.len);
            return Err(io_err("write", &self.path)(e));
        }
        Ok(line.len() as u64)
    }

    /// The second half of [`Locked::append`]: makes the `written` bytes durable, or cuts them
    /// off again.
    fn sync(&mut self, written: u64, attempt_id: Option<&str>) -> Result<(), StoreError> {
        if let Err(e) = self.file.sync_data() {
            let _ = self.file.set_len(self.len);
            return Err(io_err("write", &self.path)(e));
        }
        self.len += written;
        self.ids.extend(attempt_id.map(str::to_owned));
        Ok(())
    }

    /// The file's stamp now (after a write of this writer).
    fn stamp(&self) -> Option<Stamp> {
        Stamp::of(&self.file.metadata().ok()?)
    }

    /// Records what this writer now knows of the file (or forgets it, after a failure).
    fn remember(&self, known: &KnownFiles, ok: bool) {
        let modified = self.file.metadata().and_then(|m| m.modified()).ok();
        let mut known = lock_known(known);
        match (self.id, modified) {
            (Some(id), Some(modified)) if ok => {
                if known.len() >= MAX_KNOWN && !known.contains_key(&self.path) {
                    known.clear();
                }
                known.insert(
                    self.path.clone(),
                    Known {
                        id,
                        len: self.len,
                        modified,
                        ids: self.ids.clone(),
                    },
                );
            }
            _ => {
                known.remove(&self.path);
            }
        }
    }

    /// Replaces the file by one holding each attempt with its latest status, `extra` applied
    /// (temp file, `fdatasync`, rename, fsync of the directory), while still holding the lock
    /// on the old file so that a concurrent writer re-opens the new one.
    fn compact(&mut self, dir: &Path, extra: &[u8]) -> Result<(), StoreError> {
        let mut bytes = Vec::new();
        self.file
            .seek(SeekFrom::Start(0))
            .and_then(|_| (&*self.file).take(self.len).read_to_end(&mut bytes))
            .map_err(io_err("read", &self.path))?;
        bytes.extend_from_slice(extra);
        let mut out = Vec::new();
        for a in parse_attempts(&bytes, &self.path)? {
            out.extend(encode(
                &LineOut::Attempt {
                    dag: &a.dag,
                    record: &a.record,
                },
                &self.path,
            )?);
        }
        let tmp = write_temp(dir, "run", &out, true)?;
        if let Err(e) = fs::rename(&tmp, &self.path) {
            let _ = fs::remove_file(&tmp);
            return Err(io_err("rename", &self.path)(e));
        }
        fsync_dir(dir)
    }
}

fn lock_known(known: &KnownFiles) -> MutexGuard<'_, HashMap<PathBuf, Known>> {
    // The map is only a cache: a panic mid-update cannot make it lie, since every entry is
    // checked against the file's identity and length before use.
    known
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl FileRunStore {
    /// A store rooted at `root` (created when missing).
    pub fn open(root: impl Into<PathBuf>) -> Result<FileRunStore, StoreError> {
        let root = root.into();
        create_dir_durable(&root)?;
        Ok(FileRunStore {
            root,
            known: KnownFiles::default(),
            latest: LatestAttempts::default(),
        })
    }

    /// Every attempt of the run, oldest first, each with its latest status; empty when there
    /// is no such run. (The trait gives only the latest; tests and tools may want them all.)
    pub fn attempts(&self, dag_name: &str, run_id: &str) -> Result<Vec<Attempt>, StoreError> {
        let path = self.run_path(dag_name, run_id)?;
        match fs::read(&path) {
            Ok(bytes) => parse_attempts(&bytes, &path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    fn run_path(&self, dag_name: &str, run_id: &str) -> Result<PathBuf, StoreError> {
        validate_dag_name(dag_name)?;
        validate_run_id(run_id)?;
        Ok(self.root.join(dag_name).join(format!("{run_id}{RUN_EXT}")))
    }

    /// Latest attempt in the run file at `path`; `Ok(None)` when there is none.
    fn load_latest(path: &Path) -> Result<Option<Attempt>, StoreError> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", path)(e)),
        };
        parse_latest(&bytes, path)
    }
}

/// Most threads `create_attempts` syncs files with, and the fewest files each one takes.
const SYNC_THREADS: usize = 8;
const SYNCS_PER_THREAD: usize = 4;

/// A run file with its attempt line written but not yet durable (see `create_attempts`).
struct Creating {
    file: Locked,
    written: u64,
    record: RunRecord,
    dir: PathBuf,
    /// The file's stamp once synced.
    stamp: Option<Stamp>,
}

impl FileRunStore {
    /// The first half of creating an attempt: checks, the directory, and the attempt line
    /// written to the locked run file.
    fn write_attempt(&self, dag: &Dag, record: &RunRecord) -> Result<Creating, StoreError> {
        let path = self.run_path(&record.dag_name, &record.run_id)?;
        let mut record = record.clone();
        if record.attempt_id.is_empty() {
            record.attempt_id = new_attempt_id();
        }
        validate_attempt_id(&record.attempt_id)?;
        let dir = self.root.join(&record.dag_name);
        create_dir_durable(&dir)?;
        let line = encode(
            &LineOut::Attempt {
                dag,
                record: &record,
            },
            &path,
        )?;
        let opened = match Locked::open(&path, true, &self.known) {
            // The directory was removed since this process made it: make it again.
            Err(e) if is_not_found(&e) => {
                forget_durable(&dir);
                create_dir_durable(&dir)?;
                Locked::open(&path, true, &self.known)
            }
            other => other,
        };
        let Some(mut file) = opened? else {
            return Err(io_err("open", &path)(io::ErrorKind::NotFound.into()));
        };
        if file.ids.contains(&record.attempt_id) {
            return Err(StoreError::Io {
                action: "create attempt",
                path,
                source: io::Error::new(io::ErrorKind::AlreadyExists, "attempt exists"),
            });
        }
        let written = match file.write(&line) {
            Ok(written) => written,
            Err(e) => {
                file.remember(&self.known, false);
                return Err(e);
            }
        };
        Ok(Creating {
            file,
            written,
            record,
            dir,
            stamp: None,
        })
    }
}

/// A fresh attempt id, as the store makes one for a record without it: ids made in one process
/// sort by creation time (zero-padded monotonic nanoseconds, then the pid).
pub fn new_attempt_id() -> String {
    format!("{:020}-{}", monotonic_nanos(), std::process::id())
}

impl RunStore for FileRunStore {
    fn find_attempt(&self, dag_name: &str, run_id: &str) -> Result<Attempt, StoreError> {
        let path = self.run_path(dag_name, run_id)?;
        let stamp = fs::metadata(&path).ok().and_then(|m| Stamp::of(&m));
        if let Some(attempt) = stamp.and_then(|stamp| lock_latest(&self.latest).get(&path, stamp)) {
            return Ok(attempt);
        }
        let attempt = Self::load_latest(&path)?.ok_or_else(|| StoreError::NotFound {
            what: format!("run `{dag_name}/{run_id}`"),
        })?;
        // Kept with the stamp seen before the read, so that this process's next reads and
        // writes of the run (the executor takes it, runs it, the worker reports and uploads it)
        // need not read the file again. What was read is at least as new as that stamp: a
        // write in between changed the file's stamp, and the entry is then never taken.
        if let Some(stamp) = stamp {
            lock_latest(&self.latest).put(path, stamp, Arc::new(attempt.clone()));
        }
        Ok(attempt)
    }

    fn create_attempt(&self, dag: &Dag, record: &RunRecord) -> Result<Attempt, StoreError> {
        self.create_attempts(&[(dag, record)])
            .pop()
            .unwrap_or_else(|| {
                Err(StoreError::NotFound {
                    what: format!("run `{}/{}`", record.dag_name, record.run_id),
                })
            })
    }

    /// Each run's attempt line is written first, then the files are synced, several side by side,
    /// and every DAG directory is fsynced once: the syncs wait for their IOs together (on a
    /// journaling filesystem the first one commits the others' data with it).
    fn create_attempts(&self, runs: &[(&Dag, &RunRecord)]) -> Vec<Result<Attempt, StoreError>> {
        let mut written: Vec<Result<Creating, StoreError>> = runs
            .iter()
            .map(|(dag, record)| self.write_attempt(dag, record))
            .collect();
        let sync = |creating: &mut Result<Creating, StoreError>| {
            if let Ok(c) = creating {
                let synced = c.file.sync(c.written, Some(&c.record.attempt_id));
                c.file.remember(&self.known, synced.is_ok());
                c.stamp = c.file.stamp();
                if let Err(e) = synced {
                    *creating = Err(e);
                }
            }
        };
        // Each file's sync is an IO of its own to wait for (without a journal to share, as on
        // ext4 without one, even more so): a few threads wait for them side by side.
        let per_thread = written.len().div_ceil(SYNC_THREADS).max(SYNCS_PER_THREAD);
        if written.len() <= per_thread {
            written.iter_mut().for_each(sync);
        } else {
            std::thread::scope(|scope| {
                for chunk in written.chunks_mut(per_thread) {
                    scope.spawn(move || chunk.iter_mut().for_each(sync));
                }
            });
        }
        // The files may be new (their names need the directory fsync) or left by a process that
        // died before making their names durable; creating attempts is rare enough to always
        // pay, once per directory.
        let mut dirs: Vec<PathBuf> = written
            .iter()
            .filter_map(|c| c.as_ref().ok().map(|c| c.dir.clone()))
            .collect();
        dirs.sort();
        dirs.dedup();
        let failed_dirs: Vec<PathBuf> = dirs
            .into_iter()
            .filter(|dir| fsync_dir(dir).is_err())
            .collect();
        written
            .into_iter()
            .zip(runs)
            .map(|(creating, (dag, _))| {
                let creating = creating?;
                if failed_dirs.contains(&creating.dir) {
                    // Each run of the directory gets the error of its own try.
                    fsync_dir(&creating.dir)?;
                }
                let attempt = Attempt {
                    dag: (*dag).clone(),
                    record: creating.record,
                };
                if let Some(stamp) = creating.stamp {
                    lock_latest(&self.latest).put(
                        creating.file.path.clone(),
                        stamp,
                        Arc::new(attempt.clone()),
                    );
                }
                Ok(attempt)
            })
            .collect()
    }

    fn write_status(&self, record: &RunRecord) -> Result<(), StoreError> {
        let path = self.run_path(&record.dag_name, &record.run_id)?;
        validate_attempt_id(&record.attempt_id)?;
        let not_found = || StoreError::NotFound {
            what: format!(
                "attempt `{}/{}/{}`",
                record.dag_name, record.run_id, record.attempt_id
            ),
        };
        let line = encode(&LineOut::Status(record), &path)?;
        // Opening without create: a removed run must not come back through a late status write.
        let Some(mut file) = Locked::open(&path, false, &self.known)? else {
            return Err(not_found());
        };
        if !file.ids.contains(&record.attempt_id) {
            return Err(not_found());
        }
        if file.len + line.len() as u64 > COMPACT_AT {
            // The file is replaced: what is known of the old one no longer applies.
            file.remember(&self.known, false);
            lock_latest(&self.latest).runs.remove(&path);
            return file.compact(&self.root.join(&record.dag_name), &line);
        }
        let appended = file.append(&line, None);
        file.remember(&self.known, appended.is_ok());
        // Still holding the file's lock, so the cache follows the file's order of writes.
        let stamp = appended.is_ok().then(|| file.stamp()).flatten();
        lock_latest(&self.latest).written(&path, file.opened, stamp, record);
        appended
    }

    fn remove_run(&self, dag_name: &str, run_id: &str) -> Result<(), StoreError> {
        let path = self.run_path(dag_name, run_id)?;
        lock_known(&self.known).remove(&path);
        lock_latest(&self.latest).runs.remove(&path);
        match fs::remove_file(&path) {
            Ok(()) => fsync_dir(&self.root.join(dag_name)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &path)(e)),
        }
    }

    fn list_attempts(&self) -> Result<Vec<Attempt>, StoreError> {
        let mut out = Vec::new();
        for dag_name in list_names(&self.root)? {
            let dag_dir = self.root.join(&dag_name);
            for name in list_names(&dag_dir)? {
                if !name.ends_with(RUN_EXT) {
                    continue;
                }
                // One damaged run must not hide every other run from recovery.
                match Self::load_latest(&dag_dir.join(&name)) {
                    Ok(Some(attempt)) => out.push(attempt),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "skipping unreadable run"),
                }
            }
        }
        Ok(out)
    }
}
