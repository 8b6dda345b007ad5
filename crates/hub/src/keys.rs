//! The hub's Ed25519 signing key, kept as a PKCS#8 PEM file (mode 0600) in the data directory
//! (0700).

use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{spki::der::pem::LineEnding, DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::SigningKey;

use crate::error::HubError;

/// File name of the signing key under the data directory.
pub const KEY_FILE: &str = "hub_ed25519.key";

/// Loads `<data_dir>/hub_ed25519.key`, creating the directory and a new key when absent. An
/// existing key readable by others is made private first.
///
/// A new key is written to a temporary file, synced and then hard-linked into place, so two
/// processes starting at once end up using the same key and a crash never leaves a partial file.
pub fn load_or_create_signing_key(data_dir: &Path) -> Result<SigningKey, HubError> {
    let path = data_dir.join(KEY_FILE);
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| HubError::Io { path, source }
    };
    crate::files::private_dir(data_dir)?;
    crate::files::tighten(&path)?;
    match std::fs::read_to_string(&path) {
        Ok(text) => return parse_key(&text, path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&path)(e)),
    }
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|_| HubError::KeyFormat { path: path.clone() })?;
    let tmp: PathBuf = data_dir.join(format!(".{KEY_FILE}.{}.tmp", std::process::id()));
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp).map_err(io(&tmp))?;
        crate::files::make_private(&tmp)?;
        file.write_all(pem.as_bytes()).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
    }
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            if let Ok(dir) = std::fs::File::open(data_dir) {
                let _ = dir.sync_all();
            }
            Ok(key)
        }
        // Another process created the key first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            parse_key(&text, path)
        }
        Err(e) => Err(io(&path)(e)),
    }
}

/// The signing key all hub replicas on one PostgreSQL store share, kept in the store itself
/// (created by the first replica to start).
pub(crate) fn shared_signing_key(store: &crate::store::Store) -> Result<SigningKey, HubError> {
    let name = PathBuf::from("postgres:hub_keys/signing");
    let candidate = SigningKey::generate(&mut rand::rngs::OsRng)
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|_| HubError::KeyFormat { path: name.clone() })?;
    let pem = store.shared_key("signing", &candidate)?;
    parse_key(&pem, name)
}

fn parse_key(text: &str, path: PathBuf) -> Result<SigningKey, HubError> {
    SigningKey::from_pkcs8_pem(text).map_err(|_| HubError::KeyFormat { path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_then_loads_same_key_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let a = load_or_create_signing_key(&data).unwrap();
        let b = load_or_create_signing_key(&data).unwrap();
        assert_eq!(a.to_bytes(), b.to_bytes());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(data.join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn garbage_key_file_is_a_format_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KEY_FILE), "not a key").unwrap();
        let err = load_or_create_signing_key(dir.path()).unwrap_err();
        assert!(matches!(err, HubError::KeyFormat { .. }), "{err}");
        assert!(err.to_string().contains(KEY_FILE));
    }
}
