//! File-backed [`DagStore`]: YAML files in one directory.

use std::path::{Path, PathBuf};

use super::contract::DagStore;
use super::fsutil::{io_err, list_names};
use crate::{load_dag_file, validate_dag_name, Dag, StoreError};

/// DAG files `<dir>/<name>.yaml` or `<dir>/<name>.yml`, read on every call so edits apply to
/// the next run (a queued run keeps its snapshot).
///
/// `load(name)` looks for `<name>.yaml`, then `<name>.yml`; when neither exists it scans the
/// directory for a file whose `name:` key is `name`, so a DAG can be named apart from its file.
#[derive(Debug, Clone)]
pub struct FileDagStore {
    dir: PathBuf,
}

impl FileDagStore {
    /// A store reading `dir` (which may be created later).
    pub fn new(dir: impl Into<PathBuf>) -> FileDagStore {
        FileDagStore { dir: dir.into() }
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
                Ok(m) if m.is_file() => return Ok(load_dag_file(&path)?),
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
