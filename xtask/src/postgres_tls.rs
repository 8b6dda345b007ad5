//! TLS for the throw-away PostgreSQL cluster: an authority of its own and a server certificate it
//! signs, made with the `openssl` program (Debian's `postgresql` package depends on it). The hub's
//! tests connect with `sslrootcert` naming the authority's file, as a deployment on a managed
//! database with a private authority would.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

/// The files of the cluster's TLS, in one directory.
pub(crate) struct TlsFiles {
    /// The authority's certificate (PEM): what a client trusts.
    pub ca: PathBuf,
    /// The server's certificate (PEM), for `localhost` and `127.0.0.1`.
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
}

impl TlsFiles {
    /// Makes an authority and a server certificate it signs, valid for two days, in `dir`.
    pub(crate) fn make(dir: &Path) -> anyhow::Result<TlsFiles> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create `{}`", dir.display()))?;
        let files = TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        };
        let ca_key = dir.join("ca.key");
        let request = dir.join("server.csr");
        let extensions = dir.join("server.ext");
        std::fs::write(
            &extensions,
            "subjectAltName = DNS:localhost, IP:127.0.0.1\n\
             basicConstraints = critical, CA:FALSE\n\
             keyUsage = critical, digitalSignature\n\
             extendedKeyUsage = serverAuth\n",
        )
        .with_context(|| format!("failed to write `{}`", extensions.display()))?;
        // P-256 keys: quick to make, and taken by both rustls and PostgreSQL.
        let new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        openssl(|c| {
            c.args(["req", "-x509", "-nodes", "-days", "2", "-subj"])
                .arg("/CN=dispatch test authority")
                .args(new_key)
                .args(["-addext", "basicConstraints=critical,CA:TRUE"])
                .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
                .arg("-keyout")
                .arg(&ca_key)
                .arg("-out")
                .arg(&files.ca)
        })?;
        openssl(|c| {
            c.args(["req", "-new", "-nodes", "-subj", "/CN=localhost"])
                .args(new_key)
                .arg("-keyout")
                .arg(&files.key)
                .arg("-out")
                .arg(&request)
        })?;
        openssl(|c| {
            c.args(["x509", "-req", "-days", "2", "-set_serial", "1", "-in"])
                .arg(&request)
                .arg("-CA")
                .arg(&files.ca)
                .arg("-CAkey")
                .arg(&ca_key)
                .arg("-extfile")
                .arg(&extensions)
                .arg("-out")
                .arg(&files.cert)
        })?;
        // The authority's key is not needed again: nothing else may be signed with it.
        std::fs::remove_file(&ca_key)
            .with_context(|| format!("failed to remove `{}`", ca_key.display()))?;
        // The server (another user, when xtask runs as root) reads the directory and the
        // certificates whatever the umask; the key is handed over by the cluster.
        for (path, mode) in [(dir, 0o755), (&files.ca, 0o644), (&files.cert, 0o644)] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("failed to open `{}` to the server", path.display()))?;
        }
        Ok(files)
    }
}

/// Runs `openssl` with the arguments `args` adds; an error shows its output.
fn openssl(args: impl FnOnce(&mut Command) -> &mut Command) -> anyhow::Result<()> {
    crate::command::run(args(&mut Command::new("openssl")))
        .context("making the test cluster's TLS files with `openssl` (Debian's `openssl` package)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_a_server_certificate_the_authority_signed() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles::make(dir.path()).unwrap();
        let output = Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(&files.ca)
            .arg(&files.cert)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{said}");
        assert!(said.trim_end().ends_with("OK"), "{said}");
        assert!(files.key.is_file());
        assert!(!dir.path().join("ca.key").exists());
    }
}
