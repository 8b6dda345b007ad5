//! Small durable files: exclusive create, atomic replace (temp + fsync + rename + dir fsync).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A file operation under the license directory failed.
#[derive(Debug, thiserror::Error)]
#[error("failed to {op} `{}`", path.display())]
pub struct FileError {
    op: &'static str,
    path: PathBuf,
    #[source]
    source: io::Error,
}

impl FileError {
    pub(crate) fn io(op: &'static str, path: PathBuf, source: io::Error) -> Self {
        Self { op, path, source }
    }

    /// The file or directory concerned.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Creates the directory (and parents); new directories are private (0700) as they hold secrets.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), FileError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| FileError::io("create directory", dir.to_owned(), e))
}

/// The file's bytes, or `None` when it does not exist.
pub(crate) fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, FileError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(FileError::io("read", path.to_owned(), e)),
    }
}

/// Creates `path` only if absent, durably. `Ok(false)` when it already existed.
pub(crate) fn create_exclusive(path: &Path, bytes: &[u8], mode: u32) -> Result<bool, FileError> {
    let mut file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(FileError::io("create", path.to_owned(), e)),
    };
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| FileError::io("write", path.to_owned(), e))?;
    sync_parent(path)?;
    Ok(true)
}

/// Replaces `path` atomically: a reader sees the old or the new content, never a mix, and the
/// new content survives a crash once this returns.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    let dir = parent(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = (|| {
        let mut file: File = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| FileError::io("create", tmp.clone(), e))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| FileError::io("write", tmp.clone(), e))?;
        fs::rename(&tmp, path).map_err(|e| FileError::io("rename into", path.to_owned(), e))?;
        sync_parent(path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Removes `path` durably; `Ok(false)` when it was not there.
pub(crate) fn remove_if_exists(path: &Path) -> Result<bool, FileError> {
    match fs::remove_file(path) {
        Ok(()) => {
            sync_parent(path)?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(FileError::io("remove", path.to_owned(), e)),
    }
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn sync_parent(path: &Path) -> Result<(), FileError> {
    let dir = parent(path);
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| FileError::io("sync directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dispatch_test_support::temp_path;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_write_replaces_with_mode_and_leaves_no_temp() {
        let (dir, p) = temp_path("f.json");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f.json")]);
    }

    #[test]
    fn exclusive_create_does_not_overwrite() {
        let (_dir, p) = temp_path("id");
        assert!(create_exclusive(&p, b"a", 0o644).unwrap());
        assert!(!create_exclusive(&p, b"b", 0o644).unwrap());
        assert_eq!(fs::read(&p).unwrap(), b"a");
        assert!(remove_if_exists(&p).unwrap());
        assert!(!remove_if_exists(&p).unwrap());
        assert_eq!(read_optional(&p).unwrap(), None);
    }

    #[test]
    fn errors_name_the_path() {
        let (_dir, missing) = temp_path("missing-dir");
        let p = missing.join("f");
        let e = write_atomic(&p, b"x", 0o600).unwrap_err();
        assert!(e.to_string().contains("missing-dir"), "{e}");
        assert!(std::error::Error::source(&e).is_some());
    }
}
