//! The tracker directory on disk: opening it (lock, stray temp file, torn tail), replaying the
//! journal, and writing a snapshot of the live map (a new journal, or a compaction of the old one).
//!
//! Nothing here knows about batches or callers; the group commit above decides when to append and
//! when to compact, and keeps the in-memory state in step with what these functions return.

use std::collections::HashMap;
use std::fs::{self, DirBuilder, File, OpenOptions, TryLockError};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{io_err, TrackerError};
use crate::job::TrackedJob;
use crate::journal::{self, Entry, EntryRef, HEADER_LEN, MAGIC};

const JOURNAL_FILE: &str = "journal";
const TEMP_FILE: &str = "journal.tmp";
const LOCK_FILE: &str = "LOCK";
const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;
/// Longest single wait in [`acquire`]; the waits double from 1 ms, about 0.5 s in all.
const LOCK_RETRY_MAX_WAIT: Duration = Duration::from_millis(256);

/// The journal of a tracker directory, replayed and ready for appends.
#[derive(Debug)]
pub(crate) struct Opened {
    /// The journal file.
    pub(crate) journal_path: PathBuf,
    /// The journal, open for positioned writes at `len`.
    pub(crate) file: File,
    /// The live map the journal replays to.
    pub(crate) jobs: HashMap<String, TrackedJob>,
    /// Entries in the journal (live or superseded, each change of a batch counted).
    pub(crate) records: usize,
    /// End of the last intact record: where the next append goes.
    pub(crate) len: u64,
}

/// Opens (creating if needed, mode 0700) the tracker directory `dir`: takes its lock, removes a
/// stray compaction temp file, creates an empty journal if there is none, replays it and cuts off
/// a torn tail. Returns the lock file, whose lock lasts as long as it stays open, and the journal.
pub(crate) fn open_dir(dir: &Path) -> Result<(File, Opened), TrackerError> {
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
    let opened = Opened {
        journal_path,
        file,
        jobs,
        records,
        len,
    };
    Ok((lock, opened))
}

/// A compacted journal, renamed over the old one.
#[derive(Debug)]
pub(crate) struct Compacted {
    /// The new journal; appends must go to it from now on.
    pub(crate) file: File,
    /// Its length.
    pub(crate) len: u64,
    /// The directory fsync after the rename; when it failed, the rename may not be durable.
    pub(crate) dir_synced: Result<(), TrackerError>,
}

/// Writes `jobs` as a fresh journal of `dir` and renames it over the old one. An error means the
/// old journal is still in place and still the one to append to; once the rename is done the new
/// file is returned even if the directory fsync after it fails.
pub(crate) fn compact<'a>(
    dir: &Path,
    jobs: impl Iterator<Item = &'a TrackedJob>,
) -> Result<Compacted, TrackerError> {
    let temp_path = dir.join(TEMP_FILE);
    let (file, len) = match write_temp_snapshot(dir, jobs) {
        Ok(x) => x,
        Err(e) => {
            let _ = fs::remove_file(&temp_path);
            return Err(e);
        }
    };
    let journal_path = dir.join(JOURNAL_FILE);
    if let Err(source) = fs::rename(&temp_path, &journal_path) {
        let _ = fs::remove_file(&temp_path);
        return Err(TrackerError::Io {
            action: "rename compacted journal onto",
            path: journal_path,
            source,
        });
    }
    Ok(Compacted {
        file,
        len,
        dir_synced: sync_dir(dir),
    })
}

/// Writes `jobs` as the journal of `dir` via temp file, fsync, rename and directory fsync.
pub(crate) fn write_snapshot<'a>(
    dir: &Path,
    jobs: impl Iterator<Item = &'a TrackedJob>,
) -> Result<File, TrackerError> {
    let (file, _) = write_temp_snapshot(dir, jobs)?;
    let journal_path = dir.join(JOURNAL_FILE);
    fs::rename(dir.join(TEMP_FILE), &journal_path)
        .map_err(io_err("rename temp file onto", &journal_path))?;
    sync_dir(dir)?;
    Ok(file)
}

/// Writes `jobs` as a fresh journal to the temp file and fsyncs it, without renaming it.
/// Returns the open file and its length.
fn write_temp_snapshot<'a>(
    dir: &Path,
    jobs: impl Iterator<Item = &'a TrackedJob>,
) -> Result<(File, u64), TrackerError> {
    let temp_path = dir.join(TEMP_FILE);
    let file = open_private(&temp_path, true)?;
    let mut out = BufWriter::with_capacity(1 << 16, &file);
    let mut len = MAGIC.len() as u64;
    out.write_all(MAGIC).map_err(io_err("write", &temp_path))?;
    for job in jobs {
        let record = journal::encode_record(&EntryRef::Upsert { job })?;
        len += record.len() as u64;
        out.write_all(&record)
            .map_err(io_err("write", &temp_path))?;
    }
    out.flush().map_err(io_err("write", &temp_path))?;
    drop(out);
    file.sync_all().map_err(io_err("fsync", &temp_path))?;
    Ok((file, len))
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
    let mut wait = Duration::from_millis(1);
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
