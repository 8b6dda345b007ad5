//! The data directory and the hub's files in it are private to the hub's user: the directory
//! 0700, the database (with its `-wal` and `-shm` files) and the signing key 0600. Modes are set
//! explicitly after creating, so the umask does not decide them, and checked again at start:
//! files from an older release (0644 in a 0755 directory) are tightened.

use std::path::Path;

use crate::error::HubError;

/// Names of the files the hub keeps in its data directory (plus the key's temporary files,
/// which start with a dot).
const HUB_FILES: [&str; 4] = [
    "hub.sqlite3",
    "hub.sqlite3-wal",
    "hub.sqlite3-shm",
    "hub_ed25519.key",
];

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HubError + '_ {
    move |source| HubError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Creates the data directory 0700 (its parents as the umask says), or tightens an existing one
/// to 0700 when it is the hub's own: empty or holding nothing but the hub's files. A directory
/// that also holds other things (say the data directory was pointed at a shared folder) is left
/// as it is, with a warning.
pub(crate) fn private_dir(dir: &Path) -> Result<(), HubError> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => return set_mode(dir, 0o700),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(dir)(e)),
    }
    let mode = mode(dir)?;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    let ours = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(Result::ok)
        .all(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            HUB_FILES.contains(&name.as_ref()) || name.starts_with(".hub_ed25519.key.")
        });
    if ours {
        set_mode(dir, 0o700)?;
        tracing::info!(path = ?dir, from = format!("{mode:o}"), "data directory made private (0700)");
    } else {
        tracing::warn!(path = ?dir, mode = format!("{mode:o}"),
            "data directory holds other files too, so its mode is left alone; other users may list it (chmod 700 it if it is the hub's)");
    }
    Ok(())
}

/// Creates `path` empty with mode 0600 unless it exists (SQLite then gives its `-wal` and
/// `-shm` files the same mode).
pub(crate) fn create_private(path: &Path) -> Result<(), HubError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => set_mode(path, 0o600),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io(path)(e)),
    }
}

/// Sets `path` to exactly 0600, whatever the umask made of it when it was created.
pub(crate) fn make_private(path: &Path) -> Result<(), HubError> {
    set_mode(path, 0o600)
}

/// Sets `path` (if it exists) to 0600 when group or others may read it.
pub(crate) fn tighten(path: &Path) -> Result<(), HubError> {
    let mode = match mode(path) {
        Ok(mode) => mode,
        Err(HubError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(())
        }
        Err(e) => return Err(e),
    };
    if mode & 0o077 != 0 {
        set_mode(path, 0o600)?;
        tracing::info!(path = ?path, from = format!("{mode:o}"), "file made private (0600)");
    }
    Ok(())
}

#[cfg(unix)]
fn mode(path: &Path) -> Result<u32, HubError> {
    use std::os::unix::fs::PermissionsExt;
    Ok(std::fs::metadata(path)
        .map_err(io(path))?
        .permissions()
        .mode()
        & 0o7777)
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<(), HubError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io(path))
}

#[cfg(not(unix))]
fn mode(path: &Path) -> Result<u32, HubError> {
    std::fs::metadata(path).map_err(io(path))?;
    Ok(0o600)
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> Result<(), HubError> {
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn directories_are_made_or_tightened_only_when_they_are_the_hubs() {
        let root = tempfile::tempdir().unwrap();
        let fresh = root.path().join("a/b/data");
        private_dir(&fresh).unwrap();
        assert_eq!(mode(&fresh).unwrap(), 0o700);

        // An existing 0755 directory holding one file: (its name, the file, the mode after).
        let existing = [
            ("old", "hub.sqlite3", 0o700, "the hub's own directory"),
            (
                "shared",
                "notes.txt",
                0o755,
                "someone else's files live here",
            ),
        ];
        for (name, file, after, why) in existing {
            let dir = root.path().join(name);
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join(file), "").unwrap();
            set_mode(&dir, 0o755).unwrap();
            private_dir(&dir).unwrap();
            assert_eq!(mode(&dir).unwrap(), after, "{name}: {why}");
        }
    }

    #[test]
    fn files_are_created_and_tightened_to_0600() {
        let root = tempfile::tempdir().unwrap();
        let new = root.path().join("new");
        create_private(&new).unwrap();
        assert_eq!(mode(&new).unwrap(), 0o600);
        let old = root.path().join("old");
        std::fs::write(&old, "x").unwrap();
        set_mode(&old, 0o644).unwrap();
        create_private(&old).unwrap();
        assert_eq!(std::fs::read_to_string(&old).unwrap(), "x", "kept");
        tighten(&old).unwrap();
        assert_eq!(mode(&old).unwrap(), 0o600);
        tighten(&root.path().join("missing")).unwrap();
    }
}
