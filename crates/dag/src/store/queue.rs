//! File-backed [`QueueStore`]: one file per queued item, and an in-memory index of the names;
//! optionally, the items of this process stay in memory until they have waited a while.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::contract::{Priority, QueueItem, QueueStore};
use super::fsutil::{
    create_dir_durable, forget_durable, io_err, is_not_found, list_names, monotonic_nanos,
    read_json, to_json, write_temp,
};
use crate::names::validate_queue_name;
use crate::StoreError;

/// How long a listing of a queue directory is trusted for the items of other processes: an item
/// another process wrote is seen within this time, or at once when this process's own view of
/// the queue is empty.
const RELIST_AFTER: Duration = Duration::from_secs(1);

/// Queues under `<root>/<queue>/`, one JSON file per item named
/// `{prio}_{unix_nanos:020}_{pid:010}.json` (`prio` 0 = high, 1 = low), so the lexical order of
/// the names is the service order: priority, then FIFO.
///
/// Several processes may share the directory. An item file appears by an atomic no-replace
/// rename (or link) of a complete temp file; a dequeue claims the first name by unlinking it,
/// and the filesystem lets exactly one unlink of a name succeed, so no item is served twice or
/// lost among running processes.
///
/// The store keeps the names of each queue in memory, with the item of every name it has
/// written or read (a name's file never changes once placed), so that a dequeue is at most one
/// unlink instead of a directory listing and a read: listing a queue of `n` items for each of
/// `n` dequeues was quadratic. The directory is listed again when this view is empty, and at the
/// latest a second after the last listing, which is how items other processes wrote are found;
/// between listings they wait behind the ones this process knows. Names another process claimed
/// are found out by their failing unlink.
///
/// Opened with [`FileQueueStore::open_with_write_delay`], the store keeps an item this process
/// enqueues in memory only, under the name its file will have, and serves it from there: its
/// file is written once it has waited the delay (checked whenever the store is used) or when the
/// last handle of the store is dropped. A queue that keeps up with its runs then never creates
/// and removes a file per run, which was most of the store's cost (and on ext4 without a
/// journal, every file created after many were removed is slower). Other processes see such an
/// item only once it is written, and a crash loses it (see below): for a process that consumes
/// the queue it fills, such as the scheduler, which holds its home for itself.
///
/// Durability: none of these calls fsync (each would cost milliseconds on the dispatch path).
/// The run record in the [`crate::RunStore`] is the durable truth and the queue is an index of
/// it that recovery repairs: after a power cut (or, with a write delay, a crash) an enqueued
/// item may be missing (its run is still `queued`, and recovery enqueues it again), an item may
/// come back after its
/// dequeue (its run is then `running` or final, and the consumer drops items whose run is not
/// `queued`), or an item file may be empty (it is set aside as corrupt, and recovery enqueues its
/// run again). A caller that needs an item to survive a crash on its own must not use this store
/// that way. Items of one process keep their order even if the clock steps back (the timestamp
/// is made monotonic per process). Undecodable item files are moved to
/// `<root>/<queue>/.corrupt/` and skipped, so one bad file cannot block a queue.
#[derive(Debug, Clone)]
pub struct FileQueueStore {
    root: PathBuf,
    /// Shared by clones, so that every handle of one store sees the same view; dropping the last
    /// one writes the items still in memory.
    index: Arc<Mutex<Index>>,
    /// [`RELIST_AFTER`], except in tests.
    relist_after: Duration,
}

/// What this process knows of the queue directories.
#[derive(Debug)]
struct Index {
    root: PathBuf,
    queues: HashMap<String, Known>,
    /// When the root was last listed for queue directories.
    root_listed: Option<Instant>,
    /// When the oldest item in memory only is due to be written.
    next_write: Option<Instant>,
    /// How long an item this process enqueues stays in memory only; zero: written at once.
    write_after: Duration,
}

/// The names of one queue, in service order.
#[derive(Debug, Default)]
struct Known {
    names: BTreeMap<String, Entry>,
    /// When the directory was last listed; `None`: never.
    listed: Option<Instant>,
}

/// One name of a queue.
#[derive(Debug)]
enum Entry {
    /// A file in the directory, with its item once read.
    File(Option<QueueItem>),
    /// Enqueued by this process and not written yet (since the instant given).
    Memory(QueueItem, Instant),
}

impl Known {
    fn stale(&self, now: Instant, relist_after: Duration) -> bool {
        self.names.is_empty()
            || self
                .listed
                .is_none_or(|at| now.duration_since(at) >= relist_after)
    }
}

impl Index {
    /// Writes the items that have waited in memory long enough (all of them with `all`). A
    /// failed write is logged and tried again after another wait: the item stays served from
    /// memory meanwhile.
    fn write_due(&mut self, now: Instant, all: bool) {
        if !all && self.next_write.is_none_or(|due| now < due) {
            return;
        }
        let mut next: Option<Instant> = None;
        for (queue, known) in &mut self.queues {
            let dir = self.root.join(queue);
            for (name, entry) in known.names.iter_mut() {
                let Entry::Memory(item, since) = entry else {
                    continue;
                };
                if all || now.duration_since(*since) >= self.write_after {
                    match write_item(&dir, name, item) {
                        Ok(()) => {
                            *entry = Entry::File(Some(item.clone()));
                            continue;
                        }
                        Err(error) => {
                            tracing::warn!(%error, queue = %queue, "cannot write a queue item; keeping it in memory");
                            *since = now;
                        }
                    }
                }
                let due = *since + self.write_after;
                next = Some(next.map_or(due, |n| n.min(due)));
            }
        }
        self.next_write = next;
    }
}

impl Drop for Index {
    fn drop(&mut self) {
        self.write_due(Instant::now(), true);
    }
}

impl FileQueueStore {
    /// A store rooted at `root` (created when missing) whose enqueues write their item's file at
    /// once.
    pub fn open(root: impl Into<PathBuf>) -> Result<FileQueueStore, StoreError> {
        Self::open_with_write_delay(root, Duration::ZERO)
    }

    /// A store rooted at `root` (created when missing) that keeps the items this process
    /// enqueues in memory only until they have waited `delay` (see the type's docs).
    pub fn open_with_write_delay(
        root: impl Into<PathBuf>,
        delay: Duration,
    ) -> Result<FileQueueStore, StoreError> {
        let root = root.into();
        create_dir_durable(&root)?;
        Ok(FileQueueStore {
            index: Arc::new(Mutex::new(Index {
                root: root.clone(),
                queues: HashMap::new(),
                root_listed: None,
                next_write: None,
                write_after: delay,
            })),
            root,
            relist_after: RELIST_AFTER,
        })
    }

    /// The index, with the items due by now written.
    fn index(&self) -> MutexGuard<'_, Index> {
        // The view is checked against the directory at every claim and replaced at every
        // listing (items in memory only are kept apart), so a panic halfway through an update
        // cannot make the queue serve an item twice.
        let mut index = self
            .index
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        index.write_due(Instant::now(), false);
        index
    }

    /// Replaces the view of a queue with a listing of `dir`, keeping the items already known
    /// and the ones in memory only. Called with the index locked, so a file this process writes
    /// is in the view before or after, never lost in between.
    fn relist(dir: &Path, known: &mut Known, now: Instant) -> Result<(), StoreError> {
        let names = item_names(dir)?;
        let mut old = std::mem::take(&mut known.names);
        known.names = names
            .into_iter()
            .map(|name| {
                let item = match old.remove(&name) {
                    Some(Entry::File(item)) => item,
                    Some(Entry::Memory(item, _)) => Some(item),
                    None => None,
                };
                (name, Entry::File(item))
            })
            .collect();
        for (name, entry) in old {
            if matches!(entry, Entry::Memory(..)) {
                known.names.insert(name, entry);
            }
        }
        known.listed = Some(now);
        Ok(())
    }

    /// The item behind `name`, read (and remembered) when not known yet; `None` when its file
    /// is gone or was set aside as corrupt.
    fn item_of(dir: &Path, known: &mut Known, name: &str) -> Result<Option<QueueItem>, StoreError> {
        match known.names.get(name) {
            Some(Entry::File(Some(item)) | Entry::Memory(item, _)) => {
                return Ok(Some(item.clone()))
            }
            Some(Entry::File(None)) => {}
            None => return Ok(None),
        }
        match Self::read_item(dir, name)? {
            Some(item) => {
                known
                    .names
                    .insert(name.to_owned(), Entry::File(Some(item.clone())));
                Ok(Some(item))
            }
            None => {
                known.names.remove(name);
                Ok(None)
            }
        }
    }

    /// Lists `queue` afresh and calls `visit` with each item it holds now (in file-name order),
    /// under the index lock: `remove` and `list` must see the directory as it is, not the view
    /// a claim may still be working from.
    fn each_item(
        &self,
        queue: &str,
        mut visit: impl FnMut(&Path, &mut Known, &str, QueueItem) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let dir = self.queue_dir(queue)?;
        let now = Instant::now();
        let mut index = self.index();
        let known = index.queues.entry(queue.to_owned()).or_default();
        Self::relist(&dir, known, now)?;
        let names: Vec<String> = known.names.keys().cloned().collect();
        for name in names {
            if let Some(item) = Self::item_of(&dir, known, &name)? {
                visit(&dir, known, &name, item)?;
            }
        }
        Ok(())
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
        let now = Instant::now();
        let mut index = self.index();
        let entry = if index.write_after.is_zero() {
            write_item(&dir, &name, item)?;
            Entry::File(Some(item.clone()))
        } else {
            let due = now + index.write_after;
            index.next_write = Some(index.next_write.map_or(due, |n| n.min(due)));
            Entry::Memory(item.clone(), now)
        };
        index
            .queues
            .entry(queue.to_owned())
            .or_default()
            .names
            .insert(name, entry);
        Ok(())
    }

    fn dequeue(&self, queue: &str) -> Result<Option<QueueItem>, StoreError> {
        let dir = self.queue_dir(queue)?;
        let now = Instant::now();
        let mut index = self.index();
        let known = index.queues.entry(queue.to_owned()).or_default();
        let mut relisted = false;
        if known.stale(now, self.relist_after) {
            Self::relist(&dir, known, now)?;
            relisted = true;
        }
        loop {
            let Some((name, entry)) = known.names.pop_first() else {
                if relisted {
                    return Ok(None);
                }
                // Every name this process knew was claimed by another: look again.
                Self::relist(&dir, known, now)?;
                relisted = true;
                continue;
            };
            let item = match entry {
                // Never written: nobody else can have it.
                Entry::Memory(item, _) => return Ok(Some(item)),
                Entry::File(Some(item)) => item,
                Entry::File(None) => match Self::read_item(&dir, &name) {
                    Ok(Some(item)) => item,
                    Ok(None) => continue,
                    Err(e) => {
                        known.names.insert(name, Entry::File(None));
                        return Err(e);
                    }
                },
            };
            match Self::claim(&dir, &name) {
                Ok(true) => return Ok(Some(item)),
                Ok(false) => {}
                Err(e) => {
                    known.names.insert(name, Entry::File(Some(item)));
                    return Err(e);
                }
            }
        }
    }

    fn remove(&self, queue: &str, item: &QueueItem) -> Result<bool, StoreError> {
        let mut removed = false;
        self.each_item(queue, |dir, known, name, found| {
            if &found != item {
                return Ok(());
            }
            match known.names.remove(name) {
                Some(Entry::Memory(..)) => removed = true,
                _ => removed |= Self::claim(dir, name)?,
            }
            Ok(())
        })?;
        Ok(removed)
    }

    fn list(&self, queue: &str) -> Result<Vec<QueueItem>, StoreError> {
        let mut items = Vec::new();
        self.each_item(queue, |_, _, _, item| {
            items.push(item);
            Ok(())
        })?;
        Ok(items)
    }

    fn queues(&self) -> Result<Vec<String>, StoreError> {
        let now = Instant::now();
        let mut index = self.index();
        let listed = index
            .root_listed
            .is_some_and(|at| now.duration_since(at) < self.relist_after);
        if !listed {
            for queue in list_names(&self.root)? {
                let dir = self.root.join(&queue);
                let known = index.queues.entry(queue).or_default();
                if known.stale(now, self.relist_after) {
                    Self::relist(&dir, known, now)?;
                }
            }
            index.root_listed = Some(now);
        }
        let mut out: Vec<String> = index
            .queues
            .iter()
            .filter(|(_, known)| !known.names.is_empty())
            .map(|(queue, _)| queue.clone())
            .collect();
        out.sort();
        Ok(out)
    }
}

/// Writes the file of item `name` into the queue directory `dir`: a complete temp file, placed
/// under its name without replacing anything. Makes the directory again when it was removed.
fn write_item(dir: &Path, name: &str, item: &QueueItem) -> Result<(), StoreError> {
    let path = dir.join(name);
    let bytes = to_json(item, &path)?;
    let tmp = match write_temp(dir, "item", &bytes, false) {
        // The directory was removed since this process made it: make it again.
        Err(e) if is_not_found(&e) => {
            forget_durable(dir);
            create_dir_durable(dir)?;
            write_temp(dir, "item", &bytes, false)?
        }
        other => other?,
    };
    let placed = place_no_replace(&tmp, &path);
    if placed.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    placed.map_err(io_err("link", &path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(run: &str) -> QueueItem {
        QueueItem {
            dag_name: "d".into(),
            run_id: run.into(),
        }
    }

    /// A store whose items are written at once and whose listings are trusted for an hour.
    fn eager(dir: &Path) -> FileQueueStore {
        let mut store = FileQueueStore::open(dir).unwrap();
        store.relist_after = Duration::from_secs(3600);
        store
    }

    const DELAY: Duration = Duration::from_secs(3600);

    #[test]
    fn items_of_another_store_wait_for_the_next_listing() {
        let tmp = tempfile::tempdir().unwrap();
        let a = eager(tmp.path());
        let b = eager(tmp.path());
        assert_eq!(a.dequeue("q").unwrap(), None);
        a.enqueue("q", Priority::Low, &item("a1")).unwrap();
        a.enqueue("q", Priority::Low, &item("a2")).unwrap();
        b.enqueue("q", Priority::High, &item("b1")).unwrap();
        // `a` knows its own two names and has listed the queue recently: it does not look.
        assert_eq!(a.queues().unwrap(), vec!["q".to_owned()]);
        assert_eq!(a.dequeue("q").unwrap(), Some(item("a1")));
        // `b` lists (it never has), and serves the high-priority item first.
        assert_eq!(b.dequeue("q").unwrap(), Some(item("b1")));
        assert_eq!(b.dequeue("q").unwrap(), Some(item("a2")));
        assert_eq!(a.dequeue("q").unwrap(), None);
        // Once its view is empty, `a` looks at once.
        b.enqueue("q", Priority::Low, &item("b2")).unwrap();
        assert_eq!(a.dequeue("q").unwrap(), Some(item("b2")));
    }

    /// A store with a write delay on a fresh directory, holding `a1` then `a2` in memory.
    fn delayed_with_a1_a2() -> (tempfile::TempDir, FileQueueStore) {
        let tmp = tempfile::tempdir().unwrap();
        let a = FileQueueStore::open_with_write_delay(tmp.path(), DELAY).unwrap();
        a.enqueue("q", Priority::Low, &item("a1")).unwrap();
        a.enqueue("q", Priority::Low, &item("a2")).unwrap();
        (tmp, a)
    }

    #[test]
    fn items_stay_in_memory_until_they_have_waited() {
        let (tmp, a) = delayed_with_a1_a2();
        let files = || item_names(&tmp.path().join("q")).unwrap().len();
        // Served from memory: no file is written or removed.
        assert_eq!(a.dequeue("q").unwrap(), Some(item("a1")));
        assert_eq!(files(), 0);
        assert_eq!(a.list("q").unwrap(), vec![item("a2")]);
        // Once due, the next use of the store writes it, under the name it had.
        {
            let mut index = a.index();
            index.write_after = Duration::ZERO;
            index.next_write = Some(Instant::now());
        }
        assert_eq!(a.queues().unwrap(), vec!["q".to_owned()]);
        assert_eq!(files(), 1);
        let other = FileQueueStore::open(tmp.path()).unwrap();
        assert_eq!(other.list("q").unwrap(), vec![item("a2")]);
        assert_eq!(a.dequeue("q").unwrap(), Some(item("a2")));
        assert_eq!(other.dequeue("q").unwrap(), None);
        a.index().write_after = DELAY;
        // Dropping the last handle writes what is still in memory.
        a.enqueue("q", Priority::High, &item("a3")).unwrap();
        let clone = a.clone();
        drop(a);
        assert_eq!(files(), 0);
        drop(clone);
        assert_eq!(other.dequeue("q").unwrap(), Some(item("a3")));
        assert_eq!(files(), 0);
    }

    #[test]
    fn remove_takes_an_item_still_in_memory() {
        let (tmp, a) = delayed_with_a1_a2();
        assert!(a.remove("q", &item("a1")).unwrap());
        assert!(!a.remove("q", &item("a1")).unwrap());
        assert_eq!(a.dequeue("q").unwrap(), Some(item("a2")));
        assert_eq!(a.dequeue("q").unwrap(), None);
        drop(a);
        assert!(item_names(&tmp.path().join("q")).unwrap().is_empty());
    }

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
