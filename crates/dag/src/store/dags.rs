//! File-backed [`DagStore`]: YAML files in one directory.

use std::collections::HashMap;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::contract::DagStore;
use super::fsutil::{io_err, list_names};
use crate::{load_dag_file, validate_dag_name, Dag, StoreError};

/// A file whose modification time is closer than this to the moment it was read may still be
/// written to within the same timestamp tick; its parse is not reused.
const SETTLED: Duration = Duration::from_secs(2);

/// Most parsed files kept; the cache is emptied when full.
const MAX_CACHED: usize = 1024;

/// DAG files `<dir>/<name>.yaml` or `<dir>/<name>.yml`, looked at on every call so edits apply
/// to the next run (a queued run keeps its snapshot).
///
/// `load(name)` looks for `<name>.yaml`, then `<name>.yml`; when neither exists it scans the
/// directory for a file whose `name:` key is `name`, so a DAG can be named apart from its file.
///
/// A file found by its name is parsed again only when it changed: the store keeps the DAG of
/// each file it parsed with the file's identity, size, and change and modification times, and a
/// `stat` that shows the same ones reuses it (a burst of webhooks for one DAG parsed its YAML
/// once per job). A file modified within two seconds of being read is not reused, since a
/// second write in the same timestamp tick would not show.
#[derive(Debug, Clone)]
pub struct FileDagStore {
    dir: PathBuf,
    parsed: Arc<Mutex<HashMap<PathBuf, Parsed>>>,
    /// [`SETTLED`], except in tests.
    settled_after: Duration,
}

/// A parsed DAG file and what its `stat` said when it was read.
#[derive(Debug)]
struct Parsed {
    stamp: Stamp,
    dag: Dag,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl Stamp {
    fn of(meta: &Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            modified: (meta.mtime(), meta.mtime_nsec()),
            changed: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Whether the file had not been written to for `after` at `now`.
    fn settled(&self, now: SystemTime, after: Duration) -> bool {
        let latest = self.modified.max(self.changed);
        let Ok(latest_secs) = u64::try_from(latest.0) else {
            return false;
        };
        let written = SystemTime::UNIX_EPOCH
            + Duration::from_secs(latest_secs)
            + Duration::from_nanos(u64::try_from(latest.1).unwrap_or(0));
        now.duration_since(written).is_ok_and(|age| age >= after)
    }
}

impl FileDagStore {
    /// A store reading `dir` (which may be created later).
    pub fn new(dir: impl Into<PathBuf>) -> FileDagStore {
        FileDagStore {
            dir: dir.into(),
            parsed: Arc::default(),
            settled_after: SETTLED,
        }
    }

    /// The DAG in the file at `path` (whose `stat` is `meta`), parsed again only if it changed.
    fn load_file(&self, path: &Path, meta: &Metadata) -> Result<Dag, StoreError> {
        let stamp = Stamp::of(meta);
        let mut parsed = self
            .parsed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(hit) = parsed.get(path).filter(|p| p.stamp == stamp) {
            return Ok(hit.dag.clone());
        }
        parsed.remove(path);
        drop(parsed);
        let read_at = SystemTime::now();
        let dag = load_dag_file(path)?;
        if stamp.settled(read_at, self.settled_after) {
            let mut parsed = self
                .parsed
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if parsed.len() >= MAX_CACHED {
                parsed.clear();
            }
            parsed.insert(
                path.to_path_buf(),
                Parsed {
                    stamp,
                    dag: dag.clone(),
                },
            );
        }
        Ok(dag)
    }

    /// The directory read.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn yaml_files(&self) -> Result<Vec<PathBuf>, StoreError> {
        Ok(list_names(&self.dir)?
            .into_iter()
            .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
            .map(|n| self.dir.join(n))
            .filter(|p| p.is_file())
            .collect())
    }
}

impl DagStore for FileDagStore {
    fn load(&self, name: &str) -> Result<Dag, StoreError> {
        validate_dag_name(name)?;
        for ext in ["yaml", "yml"] {
            let path = self.dir.join(format!("{name}.{ext}"));
            match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => return self.load_file(&path, &m),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("read", &path)(e)),
            }
        }
        // Broken files are skipped here: they are reported by `list` and by their own name.
        for path in self.yaml_files()? {
            if let Ok(dag) = load_dag_file(&path) {
                if dag.name == name {
                    return Ok(dag);
                }
            }
        }
        Err(StoreError::NotFound {
            what: format!("DAG `{name}`"),
        })
    }

    fn list(&self) -> Result<Vec<Result<Dag, StoreError>>, StoreError> {
        Ok(self
            .yaml_files()?
            .iter()
            .map(|p| load_dag_file(p).map_err(StoreError::from))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dag_yaml(command: &str) -> String {
        format!("steps:\n  - name: one\n    command: {command}\n")
    }

    #[test]
    fn a_settled_file_is_parsed_once_and_an_edit_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.yaml");
        std::fs::write(&path, dag_yaml("echo one")).unwrap();
        let command = |store: &FileDagStore| store.load("d").unwrap().steps[0].command.clone();
        // Written just now: parsed, not kept.
        let store = FileDagStore::new(dir.path());
        assert_eq!(command(&store).as_deref(), Some("echo one"));
        assert!(store.parsed.lock().unwrap().is_empty());

        let mut store = FileDagStore::new(dir.path());
        store.settled_after = Duration::ZERO;
        assert_eq!(command(&store).as_deref(), Some("echo one"));
        assert_eq!(store.parsed.lock().unwrap().len(), 1);
        assert_eq!(command(&store).as_deref(), Some("echo one"));
        std::fs::write(&path, dag_yaml("echo two, longer")).unwrap();
        assert_eq!(command(&store).as_deref(), Some("echo two, longer"));
    }

    #[test]
    fn stamps_settle_after_the_latest_write() {
        let now = SystemTime::now();
        let secs = |t: SystemTime| {
            let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
            (d.as_secs() as i64, i64::from(d.subsec_nanos()))
        };
        let stamp = |modified, changed| Stamp {
            dev: 1,
            ino: 2,
            len: 3,
            modified,
            changed,
        };
        let old = secs(now - Duration::from_secs(60));
        let fresh = secs(now - Duration::from_millis(100));
        assert!(stamp(old, old).settled(now, SETTLED));
        assert!(!stamp(old, fresh).settled(now, SETTLED));
        assert!(!stamp(fresh, old).settled(now, SETTLED));
        assert!(!stamp((-1, 0), (-1, 0)).settled(now, SETTLED));
    }
}
