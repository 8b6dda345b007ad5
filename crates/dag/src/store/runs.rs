//! File-backed [`RunStore`]: one directory per attempt holding `dag.json` and `status.json`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::fsutil::{
    create_dir_durable, fsync_dir, io_err, list_names, read_json, to_json, unique_temp_name,
    write_atomic, write_temp,
};
use crate::names::validate_attempt_id;
use crate::{validate_dag_name, validate_run_id, Attempt, Dag, RunRecord, RunStore, StoreError};

const DAG_FILE: &str = "dag.json";
const STATUS_FILE: &str = "status.json";

/// Runs under `<root>/<dag>/<run_id>/<attempt_id>/{dag.json,status.json}`.
///
/// An attempt appears atomically: both files are written into a hidden temp directory that is
/// then renamed into place, so a run either exists with a snapshot and a status or not at all.
#[derive(Debug, Clone)]
pub struct FileRunStore {
    root: PathBuf,
}

impl FileRunStore {
    /// A store rooted at `root` (created when missing).
    pub fn open(root: impl Into<PathBuf>) -> Result<FileRunStore, StoreError> {
        let root = root.into();
        create_dir_durable(&root)?;
        Ok(FileRunStore { root })
    }

    fn run_dir(&self, dag_name: &str, run_id: &str) -> Result<PathBuf, StoreError> {
        validate_dag_name(dag_name)?;
        validate_run_id(run_id)?;
        Ok(self.root.join(dag_name).join(run_id))
    }

    fn load_attempt(dir: &Path) -> Result<Attempt, StoreError> {
        let status_path = dir.join(STATUS_FILE);
        let record: RunRecord = read_json(&status_path)?.ok_or_else(|| StoreError::Corrupt {
            path: status_path.clone(),
            reason: "missing".to_owned(),
        })?;
        let dag_path = dir.join(DAG_FILE);
        let dag: Dag = read_json(&dag_path)?.ok_or_else(|| StoreError::Corrupt {
            path: dag_path.clone(),
            reason: "missing".to_owned(),
        })?;
        Ok(Attempt { dag, record })
    }

    fn latest_attempt_dir(run_dir: &Path) -> Result<Option<PathBuf>, StoreError> {
        Ok(list_names(run_dir)?.pop().map(|name| run_dir.join(name)))
    }
}

/// Attempt ids the store makes sort by creation time, so the latest attempt is the last name.
fn new_attempt_id() -> String {
    format!("{:020}-{}", super::monotonic_nanos(), std::process::id())
}

impl RunStore for FileRunStore {
    fn find_attempt(&self, dag_name: &str, run_id: &str) -> Result<Attempt, StoreError> {
        let run_dir = self.run_dir(dag_name, run_id)?;
        match Self::latest_attempt_dir(&run_dir)? {
            Some(dir) => Self::load_attempt(&dir),
            None => Err(StoreError::NotFound {
                what: format!("run `{dag_name}/{run_id}`"),
            }),
        }
    }

    fn create_attempt(&self, dag: &Dag, record: &RunRecord) -> Result<Attempt, StoreError> {
        let run_dir = self.run_dir(&record.dag_name, &record.run_id)?;
        let mut record = record.clone();
        if record.attempt_id.is_empty() {
            record.attempt_id = new_attempt_id();
        }
        validate_attempt_id(&record.attempt_id)?;
        create_dir_durable(&run_dir)?;

        let tmp_dir = run_dir.join(unique_temp_name(&record.attempt_id));
        let final_dir = run_dir.join(&record.attempt_id);
        let result = (|| {
            fs::create_dir(&tmp_dir).map_err(io_err("create directory", &tmp_dir))?;
            let dag_tmp = write_temp(&tmp_dir, DAG_FILE, &to_json(dag, &tmp_dir.join(DAG_FILE))?)?;
            fs::rename(&dag_tmp, tmp_dir.join(DAG_FILE)).map_err(io_err("rename", &dag_tmp))?;
            let status_bytes = to_json(&record, &tmp_dir.join(STATUS_FILE))?;
            let status_tmp = write_temp(&tmp_dir, STATUS_FILE, &status_bytes)?;
            fs::rename(&status_tmp, tmp_dir.join(STATUS_FILE))
                .map_err(io_err("rename", &status_tmp))?;
            fsync_dir(&tmp_dir)?;
            if final_dir.exists() {
                return Err(StoreError::Io {
                    action: "create attempt",
                    path: final_dir.clone(),
                    source: io::Error::new(io::ErrorKind::AlreadyExists, "attempt exists"),
                });
            }
            fs::rename(&tmp_dir, &final_dir).map_err(io_err("rename", &final_dir))?;
            fsync_dir(&run_dir)
        })();
        if let Err(e) = result {
            let _ = fs::remove_dir_all(&tmp_dir);
            return Err(e);
        }
        Ok(Attempt {
            dag: dag.clone(),
            record,
        })
    }

    fn write_status(&self, record: &RunRecord) -> Result<(), StoreError> {
        let run_dir = self.run_dir(&record.dag_name, &record.run_id)?;
        validate_attempt_id(&record.attempt_id)?;
        let dir = run_dir.join(&record.attempt_id);
        // A removed run must not come back through a late status write.
        if !dir.is_dir() {
            return Err(StoreError::NotFound {
                what: format!(
                    "attempt `{}/{}/{}`",
                    record.dag_name, record.run_id, record.attempt_id
                ),
            });
        }
        let path = dir.join(STATUS_FILE);
        write_atomic(&path, &to_json(record, &path)?)
    }

    fn remove_run(&self, dag_name: &str, run_id: &str) -> Result<(), StoreError> {
        let run_dir = self.run_dir(dag_name, run_id)?;
        match fs::remove_dir_all(&run_dir) {
            Ok(()) => fsync_dir(&self.root.join(dag_name)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &run_dir)(e)),
        }
    }

    fn list_attempts(&self) -> Result<Vec<Attempt>, StoreError> {
        let mut out = Vec::new();
        for dag_name in list_names(&self.root)? {
            let dag_dir = self.root.join(&dag_name);
            for run_id in list_names(&dag_dir)? {
                let run_dir = dag_dir.join(&run_id);
                let Some(dir) = Self::latest_attempt_dir(&run_dir)? else {
                    continue;
                };
                // One damaged run must not hide every other run from recovery.
                match Self::load_attempt(&dir) {
                    Ok(attempt) => out.push(attempt),
                    Err(e) => tracing::warn!(error = %e, "skipping unreadable run attempt"),
                }
            }
        }
        Ok(out)
    }
}
