//! File-backed [`QueueStore`]: one file per queued item.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::contract::{Priority, QueueItem, QueueStore};
use super::fsutil::{
    create_dir_durable, forget_durable, io_err, is_not_found, list_names, monotonic_nanos,
    read_json, to_json, write_temp,
};
use crate::names::validate_queue_name;
use crate::StoreError;

/// Queues under `<root>/<queue>/`, one JSON file per item named
/// `{prio}_{unix_nanos:020}_{pid:010}.json` (`prio` 0 = high, 1 = low), so the lexical order of
/// the names is the service order: priority, then FIFO.
///
/// Several processes may share the directory. An item appears by an atomic no-replace rename
/// (or link) of a complete temp file; a dequeue claims the first name by unlinking it, and the
/// filesystem lets exactly one unlink of a name succeed, so no item is served twice or lost
/// among running processes.
///
/// Durability: none of these calls fsync (each would cost milliseconds on the dispatch path).
/// The run record in the [`crate::RunStore`] is the durable truth and the queue is an index of
/// it that recovery repairs: after a power cut an enqueued item may be missing (its run is still
/// `queued`, and recovery enqueues it again), an item may come back after its dequeue (its run is
/// then `running` or final, and the consumer drops items whose run is not `queued`), or an item
/// file may be empty (it is set aside as corrupt, and recovery enqueues its run again). A caller
/// that needs an item to survive a crash on its own must not use this store that way. Items of one process keep
/// their order even if the clock steps back (the timestamp is made monotonic per process).
/// Undecodable item files are moved to `<root>/<queue>/.corrupt/` and skipped, so one bad file
/// cannot block a queue.
#[derive(Debug, Clone)]
pub struct FileQueueStore {
    root: PathBuf,
}

impl FileQueueStore {
    /// A store rooted at `root` (created when missing).
    pub fn open(root: impl Into<PathBuf>) -> Result<FileQueueStore, StoreError> {
        let root = root.into();
        create_dir_durable(&root)?;
        Ok(FileQueueStore { root })
    }

    fn queue_dir(&self, queue: &str) -> Result<PathBuf, StoreError> {
        validate_queue_name(queue)?;
        Ok(self.root.join(queue))
    }

    /// Reads one item file; `Ok(None)` when another consumer took it meanwhile or it was corrupt
    /// (and has been set aside).
    fn read_item(dir: &Path, name: &str) -> Result<Option<QueueItem>, StoreError> {
        let path = dir.join(name);
        match read_json::<QueueItem>(&path) {
            Ok(item) => Ok(item),
            Err(StoreError::Corrupt { path, reason }) => {
                tracing::warn!(path = %path.display(), %reason, "setting aside corrupt queue item");
                let aside = dir.join(".corrupt");
                fs::create_dir_all(&aside).map_err(io_err("create directory", &aside))?;
                match fs::rename(&path, aside.join(name)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("rename", &path)(e)),
                }
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Unlinks `name`; true when this call removed it (false: someone else did first).
    fn claim(dir: &Path, name: &str) -> Result<bool, StoreError> {
        let path = dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("remove", &path)(e)),
        }
    }
}

/// Moves `tmp` to `path` unless `path` exists, so a name collision can never drop an item:
/// one `renameat2(RENAME_NOREPLACE)` where available (one directory update fewer, and each
/// waits on the filesystem journal when other processes fsync), else `link` + `unlink`.
fn place_no_replace(tmp: &Path, path: &Path) -> io::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use nix::fcntl::{renameat2, RenameFlags};
        match renameat2(None, tmp, None, path, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => return Ok(()),
            // Filesystems without the flag: fall through to link + unlink.
            Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOSYS) => {}
            Err(errno) => return Err(errno.into()),
        }
    }
    fs::hard_link(tmp, path)?;
    let _ = fs::remove_file(tmp);
    Ok(())
}

fn item_names(dir: &Path) -> Result<Vec<String>, StoreError> {
    let mut names = list_names(dir)?;
    names.retain(|n| n.ends_with(".json"));
    Ok(names)
}

impl QueueStore for FileQueueStore {
    fn enqueue(&self, queue: &str, priority: Priority, item: &QueueItem) -> Result<(), StoreError> {
        let dir = self.queue_dir(queue)?;
        create_dir_durable(&dir)?;
        let prio = match priority {
            Priority::High => 0,
            Priority::Low => 1,
        };
        let name = format!(
            "{prio}_{:020}_{:010}.json",
            monotonic_nanos(),
            std::process::id()
        );
        let path = dir.join(&name);
        let bytes = to_json(item, &path)?;
        let tmp = match write_temp(&dir, "item", &bytes, false) {
            // The directory was removed since this process made it: make it again.
            Err(e) if is_not_found(&e) => {
                forget_durable(&dir);
                create_dir_durable(&dir)?;
                write_temp(&dir, "item", &bytes, false)?
            }
            other => other?,
        };
        let placed = place_no_replace(&tmp, &path);
        if placed.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        placed.map_err(io_err("link", &path))
    }

    fn dequeue(&self, queue: &str) -> Result<Option<QueueItem>, StoreError> {
        let dir = self.queue_dir(queue)?;
        for name in item_names(&dir)? {
            let Some(item) = Self::read_item(&dir, &name)? else {
                continue;
            };
            if Self::claim(&dir, &name)? {
                return Ok(Some(item));
            }
        }
        Ok(None)
    }

    fn remove(&self, queue: &str, item: &QueueItem) -> Result<bool, StoreError> {
        let dir = self.queue_dir(queue)?;
        let mut removed = false;
        for name in item_names(&dir)? {
            if Self::read_item(&dir, &name)?.as_ref() == Some(item) && Self::claim(&dir, &name)? {
                removed = true;
            }
        }
        Ok(removed)
    }

    fn list(&self, queue: &str) -> Result<Vec<QueueItem>, StoreError> {
        let dir = self.queue_dir(queue)?;
        let mut items = Vec::new();
        for name in item_names(&dir)? {
            if let Some(item) = Self::read_item(&dir, &name)? {
                items.push(item);
            }
        }
        Ok(items)
    }

    fn queues(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for queue in list_names(&self.root)? {
            if !item_names(&self.root.join(&queue))?.is_empty() {
                out.push(queue);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placing_never_replaces_an_existing_item() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join(".a"), tmp.path().join("b.json"));
        fs::write(&a, "new").unwrap();
        fs::write(&b, "old").unwrap();
        let e = place_no_replace(&a, &b).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read_to_string(&b).unwrap(), "old");
        fs::remove_file(&b).unwrap();
        place_no_replace(&a, &b).unwrap();
        assert_eq!(fs::read_to_string(&b).unwrap(), "new");
        assert!(!a.exists());
    }
}
