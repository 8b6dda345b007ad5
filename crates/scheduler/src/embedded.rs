//! Files of the embedded hub under the home directory: the webhook secret and the embedded
//! license key (generated on first start, 0600, fsynced), and the bindings file (the hub's
//! example written on first start).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use dispatch_protocol::Secret;
use rand::RngCore as _;

/// Reads the secret at `path`, or creates it with `bytes` random bytes (hex) when the file is
/// missing or empty. Exclusive create means two starts racing agree on one value.
pub(crate) fn load_or_create_secret(
    path: &Path,
    prefix: &str,
    bytes: usize,
) -> std::io::Result<Secret> {
    for _ in 0..2 {
        match std::fs::read_to_string(path) {
            Ok(text) if !text.trim().is_empty() => return Ok(Secret::new(text.trim())),
            // An empty file is a torn first write: replace it.
            Ok(_) => std::fs::remove_file(path)?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        let mut raw = vec![0u8; bytes];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let value = format!("{prefix}{}", dispatch_util::hex(&raw));
        if create_synced(path, format!("{value}\n").as_bytes(), 0o600)? {
            return Ok(Secret::new(value));
        }
    }
    Err(std::io::Error::other("secret file keeps changing under us"))
}

/// Writes `contents` to `path` unless it exists; returns whether it wrote.
pub(crate) fn write_if_absent(path: &Path, contents: &str) -> std::io::Result<bool> {
    create_synced(path, contents.as_bytes(), 0o644)
}

/// Creates `path` with `contents` and `mode`, synced to disk with its directory entry; `false`
/// when the file already exists, which it leaves alone.
fn create_synced(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<bool> {
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
    {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(err) => return Err(err),
    };
    file.write_all(contents)?;
    file.sync_all()?;
    sync_parent(path)?;
    Ok(true)
}

fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use dispatch_test_support::temp_path;

    use super::*;

    #[test]
    fn secret_is_created_once_with_0600() {
        let (_dir, path) = temp_path("webhook_secret");
        let first = load_or_create_secret(&path, "", 32).unwrap();
        assert_eq!(first.expose().len(), 64);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_or_create_secret(&path, "", 32).unwrap(), first);
    }

    #[test]
    fn empty_secret_file_is_replaced() {
        let (_dir, path) = temp_path("k");
        std::fs::write(&path, "").unwrap();
        let key = load_or_create_secret(&path, "dsp_", 8).unwrap();
        assert!(key.expose().starts_with("dsp_") && key.expose().len() == 20);
    }

    #[test]
    fn write_if_absent_keeps_user_edits() {
        let (_dir, path) = temp_path("bindings.toml");
        assert!(write_if_absent(&path, "a").unwrap());
        std::fs::write(&path, "mine").unwrap();
        assert!(!write_if_absent(&path, "a").unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "mine");
    }
}
