//! Durable file primitives shared by the file stores.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::StoreError;

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

pub(crate) fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io {
        action,
        path,
        source,
    }
}

/// A name no other writer (thread or process) picks: temp files never collide.
pub(crate) fn unique_temp_name(prefix: &str) -> String {
    format!(
        ".{prefix}.tmp-{}-{}",
        std::process::id(),
        TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Makes directory entries (create, rename, unlink) durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

/// Writes `bytes` to a fresh temp file in `dir` (with `fdatasync` when `sync`); returns its path.
/// The data sync is enough for a file that is then renamed or linked into place: the name
/// becomes durable with the fsync of the directory, which the caller does.
pub(crate) fn write_temp(
    dir: &Path,
    prefix: &str,
    bytes: &[u8],
    sync: bool,
) -> Result<PathBuf, StoreError> {
    let tmp = dir.join(unique_temp_name(prefix));
    let result = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            if sync {
                f.sync_data()?;
            }
            Ok(())
        });
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("write", &tmp)(e));
    }
    Ok(tmp)
}

/// Directories whose own entry this process has made durable (or found and made durable once),
/// so each costs one parent fsync per process rather than one per call.
fn durable_dirs() -> &'static Mutex<HashSet<PathBuf>> {
    static DIRS: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    DIRS.get_or_init(|| Mutex::new(HashSet::new()))
}

fn is_known_durable(dir: &Path) -> bool {
    durable_dirs()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .contains(dir)
}

/// Forgets that `dir` is durable (it was found missing: removed behind this process's back).
pub(crate) fn forget_durable(dir: &Path) {
    durable_dirs()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .remove(dir);
}

pub(crate) fn is_not_found(e: &StoreError) -> bool {
    matches!(e, StoreError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
}

/// Creates `dir` and its missing parents so that their entries survive a power cut. The first
/// call for a directory in this process fsyncs its parent even when the directory already
/// existed (another process may have crashed between its `mkdir` and that fsync); later calls
/// cost nothing.
pub(crate) fn create_dir_durable(dir: &Path) -> Result<(), StoreError> {
    if is_known_durable(dir) {
        return Ok(());
    }
    let existed = dir.is_dir();
    if !existed {
        if let Some(p) = dir.parent() {
            if !p.as_os_str().is_empty() {
                create_dir_durable(p)?;
            }
        }
        let mut created = fs::create_dir(dir);
        if matches!(&created, Err(e) if e.kind() == io::ErrorKind::NotFound) {
            // A parent thought durable was removed behind this process's back.
            let p = parent(dir);
            forget_durable(p);
            create_dir_durable(p)?;
            created = fs::create_dir(dir);
        }
        match created {
            Ok(()) => {}
            // Another process or thread created it meanwhile.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("create directory", dir)(e)),
        }
    }
    fsync_dir(parent(dir))?;
    durable_dirs()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(dir.to_path_buf());
    Ok(())
}

pub(crate) fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Names of the entries of `dir` that are not hidden (temp files start with `.`), sorted.
/// A missing directory (or a plain file) is empty.
pub(crate) fn list_names(dir: &Path) -> Result<Vec<String>, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(Vec::new())
        }
        Err(e) => return Err(io_err("read directory", dir)(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err("read directory", dir))?;
        // Names that are not UTF-8 were not written by this store.
        if let Ok(name) = entry.file_name().into_string() {
            if !name.starts_with('.') {
                names.push(name);
            }
        }
    }
    names.sort();
    Ok(names)
}

/// Reads and decodes a JSON file; a missing file is `Ok(None)`, undecodable content is
/// [`StoreError::Corrupt`] naming the file.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
) -> Result<Option<T>, StoreError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read", path)(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| StoreError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

pub(crate) fn to_json<T: serde::Serialize>(value: &T, path: &Path) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec_pretty(value).map_err(|e| StoreError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("cannot encode: {e}"),
    })
}

/// Unix nanoseconds, strictly increasing within this process (also across threads and when the
/// wall clock steps back), so names built from it sort in creation order and never repeat.
pub(crate) fn monotonic_nanos() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}
