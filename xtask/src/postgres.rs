//! The PostgreSQL server the tests run against: the one `DISPATCH_TEST_POSTGRES_URL` names, or
//! a throw-away cluster of our own.
//!
//! The cluster is made from the PostgreSQL binaries on the machine (Debian's `postgresql`
//! package keeps them in `/usr/lib/postgresql/<version>/bin`): `initdb` in a fresh temporary
//! directory, a server on a free loopback port with trust authentication, stopped and removed
//! when its [`Cluster`] drops. As root, `initdb` refuses to run, so the cluster then runs as the
//! `postgres` system user. `cargo xtask bench --only postgres` starts one too, with its commits
//! synced ([`Durability`]).

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use dispatch_test_support::{process_gone, POSTGRES_CA_VAR, POSTGRES_URL_VAR};

use crate::command::run;
use crate::postgres_tls::TlsFiles;

/// Where Debian installs each PostgreSQL version's binaries, one directory per version.
const DEBIAN_VERSIONS_DIR: &str = "/usr/lib/postgresql";

/// Name prefix of the cluster directories under the system's temporary directory.
const DIR_PREFIX: &str = "dispatch-postgres-";

/// The file in a cluster directory holding the pid of the xtask that owns the cluster.
const OWNER_FILE: &str = "xtask.pid";

/// The system user a cluster runs as when xtask runs as root.
const SYSTEM_USER: &str = "postgres";

/// The cluster's superuser, the user in its URL.
const SUPERUSER: &str = "postgres";

/// The PostgreSQL server the test processes get.
pub(crate) enum TestServer {
    /// `DISPATCH_TEST_POSTGRES_URL` was set; the test processes inherit it.
    Given,
    /// A cluster of our own, stopped and removed when this value drops.
    Started(Cluster),
    /// No PostgreSQL binaries outside CI: the PostgreSQL tests skip.
    Missing,
}

impl TestServer {
    /// The server named by the environment, else a new cluster, else (outside CI, without
    /// PostgreSQL binaries) none. Fails in CI when there are no binaries.
    pub(crate) fn prepare() -> anyhow::Result<TestServer> {
        if std::env::var_os(POSTGRES_URL_VAR).is_some_and(|u| !u.is_empty()) {
            println!("xtask: PostgreSQL tests use the server in {POSTGRES_URL_VAR}");
            return Ok(TestServer::Given);
        }
        let bin = match binaries() {
            Ok(bin) => bin,
            Err(reason) if std::env::var_os("CI").is_some() => return Err(reason),
            Err(reason) => {
                println!("xtask: the PostgreSQL tests will be skipped: {reason}");
                return Ok(TestServer::Missing);
            }
        };
        Ok(TestServer::Started(Cluster::start(
            &bin,
            Durability::Unsynced,
        )?))
    }

    /// The variables the test processes must be given, when the server is ours: its URL and
    /// its TLS authority's file.
    pub(crate) fn env_to_set(&self) -> Vec<(&'static str, String)> {
        match self {
            TestServer::Started(cluster) => cluster.env(),
            TestServer::Given | TestServer::Missing => Vec::new(),
        }
    }
}

/// Whether a cluster's commits wait for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    /// `fsync = off`, for the tests: the cluster is thrown away after the run and no test checks
    /// PostgreSQL's own durability across a machine crash (a crash ends the run anyway). Without
    /// it every commit and `CREATE DATABASE` would wait for the disk.
    Unsynced,
    /// PostgreSQL's defaults, every commit synced to the disk as on a production server, for the
    /// bench: its figures stand beside those of the SQLite store, which syncs its commits too.
    Synced,
}

/// A running throw-away cluster: stopped (`pg_ctl stop -m fast`) and its directory removed when
/// this value drops.
pub(crate) struct Cluster {
    /// Holds `data/` (the cluster), the server's log and its unix socket.
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Run `initdb` and `pg_ctl` as [`SYSTEM_USER`], since we are root.
    as_system_user: bool,
    url: String,
    tls: TlsFiles,
}

impl Cluster {
    /// A new cluster from the binaries in `bin`, running and accepting connections.
    pub(crate) fn start(bin: &Path, durability: Durability) -> anyhow::Result<Cluster> {
        let as_system_user = nix::unistd::geteuid().is_root();
        sweep_leftovers(bin, as_system_user);
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir()
            .context("failed to create the PostgreSQL cluster's directory")?;
        std::fs::write(dir.path().join(OWNER_FILE), std::process::id().to_string())
            .context("failed to write the PostgreSQL cluster's owner file")?;
        if as_system_user {
            let user = nix::unistd::User::from_name(SYSTEM_USER)
                .ok()
                .flatten()
                .with_context(|| {
                    format!(
                        "as root, PostgreSQL's `initdb` must run as the `{SYSTEM_USER}` system \
                         user, which does not exist (Debian's `postgresql` package creates it)"
                    )
                })?;
            nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid)).with_context(|| {
                format!(
                    "failed to hand `{}` to `{SYSTEM_USER}`",
                    dir.path().display()
                )
            })?;
        }
        let port = free_port()?;
        let tls = TlsFiles::make(&dir.path().join("tls"))?;
        let cluster = Cluster {
            dir,
            bin: bin.to_path_buf(),
            as_system_user,
            // The server speaks TLS with a certificate of its own authority, which the hub
            // would refuse by default (`prefer` checks it against the public ones): the tests
            // connect in plain text, and the TLS tests name the authority (`sslrootcert`).
            url: format!("postgres://{SUPERUSER}@127.0.0.1:{port}/postgres?sslmode=disable"),
            tls,
        };
        let data = cluster.data_dir();
        run(cluster
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--locale=C"])
            // A crash loses a throw-away cluster either way, so initdb need not sync it.
            .arg("--no-sync"))?;
        cluster.hand_key_to_server()?;
        cluster.configure(port, durability)?;
        let log = cluster.dir.path().join("server.log");
        let started = run(cluster
            .command("pg_ctl")
            .args(["start", "-w", "-t", "60", "-D"])
            .arg(&data)
            .arg("-l")
            .arg(&log));
        if let Err(err) = started {
            let server_log = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(err.context(format!("server log:\n{}", server_log.trim_end())));
        }
        let version = cluster.version();
        println!(
            "xtask: started a throw-away PostgreSQL cluster ({version}) at {}, in {}",
            cluster.url,
            cluster.dir.path().display()
        );
        Ok(cluster)
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres?sslmode=disable`, with trust
    /// authentication.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The variables naming this cluster to the tests: its URL and its TLS authority's file.
    pub(crate) fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            (POSTGRES_URL_VAR, self.url.clone()),
            (POSTGRES_CA_VAR, self.tls.ca.display().to_string()),
        ]
    }

    /// The server reads its key as its own user, and only from a file no one else can read.
    fn hand_key_to_server(&self) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let key = &self.tls.key;
        std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("failed to make `{}` private", key.display()))?;
        if self.as_system_user {
            let user = nix::unistd::User::from_name(SYSTEM_USER)
                .ok()
                .flatten()
                .with_context(|| format!("no `{SYSTEM_USER}` user to own the server's key"))?;
            nix::unistd::chown(key.as_path(), Some(user.uid), Some(user.gid)).with_context(
                || format!("failed to hand `{}` to `{SYSTEM_USER}`", key.display()),
            )?;
        }
        Ok(())
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Appends the settings of a private test server to the cluster's `postgresql.conf`.
    fn configure(&self, port: u16, durability: Durability) -> anyhow::Result<()> {
        let socket_dir = self.dir.path().display().to_string().replace('\'', "''");
        let mut settings = String::new();
        // Loopback only, and the unix socket in our own directory rather than the system's
        // `/var/run/postgresql`, which the machine's own server may use.
        writeln!(settings, "listen_addresses = '127.0.0.1'")?;
        writeln!(settings, "port = {port}")?;
        writeln!(settings, "unix_socket_directories = '{socket_dir}'")?;
        // Tests run in parallel, each with a store holding a few connections.
        writeln!(settings, "max_connections = 300")?;
        writeln!(settings, "ssl = on")?;
        for (setting, file) in [
            ("ssl_cert_file", &self.tls.cert),
            ("ssl_key_file", &self.tls.key),
        ] {
            let file = file.display().to_string().replace('\'', "''");
            writeln!(settings, "{setting} = '{file}'")?;
        }
        if durability == Durability::Unsynced {
            writeln!(settings, "fsync = off")?;
        }
        let path = self.data_dir().join("postgresql.conf");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(settings.as_bytes()))
            .with_context(|| format!("failed to append settings to `{}`", path.display()))
    }

    /// A command running one of the cluster's PostgreSQL binaries.
    fn command(&self, program: &str) -> Command {
        pg_command(&self.bin, program, self.as_system_user)
    }

    /// `pg_ctl`'s version line, such as `pg_ctl (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)`.
    fn version(&self) -> String {
        Command::new(self.bin.join("pg_ctl"))
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|e| format!("version unknown: {e}"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data_dir();
        // No pid file: the server never started (initdb or the start failed).
        if data.join("postmaster.pid").exists() {
            let stopped = run(self
                .command("pg_ctl")
                .args(["stop", "-w", "-m", "fast", "-D"])
                .arg(&data));
            match stopped {
                Ok(()) => println!("xtask: stopped the throw-away PostgreSQL cluster"),
                Err(err) => eprintln!("xtask: failed to stop the PostgreSQL cluster: {err:#}"),
            }
        }
        // The temporary directory removes itself after this.
    }
}

/// A command running `bin/program`, through `runuser` as [`SYSTEM_USER`] when `as_system_user`.
fn pg_command(bin: &Path, program: &str, as_system_user: bool) -> Command {
    let program = bin.join(program);
    if as_system_user {
        let mut command = Command::new("runuser");
        command.args(["-u", SYSTEM_USER, "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// The directory holding both `initdb` and `pg_ctl`: the first such on PATH, else Debian's
/// highest installed version; else an error saying where they were looked for and how to get
/// them.
pub(crate) fn binaries() -> anyhow::Result<PathBuf> {
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    find_binaries(on_path, Path::new(DEBIAN_VERSIONS_DIR))
}

/// [`binaries`] in the directories `on_path`, then in `<versions_dir>/<version>/bin`.
fn find_binaries(on_path: Vec<PathBuf>, versions_dir: &Path) -> anyhow::Result<PathBuf> {
    let mut versions: Vec<String> = std::fs::read_dir(versions_dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    sort_highest_first(&mut versions);
    let debian = versions.iter().map(|v| versions_dir.join(v).join("bin"));
    on_path
        .into_iter()
        .chain(debian)
        .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
        .with_context(|| {
            format!(
                "no PostgreSQL binaries (`initdb`, `pg_ctl`) on PATH or under \
                 {}/<version>/bin; install Debian's `postgresql` package or set {POSTGRES_URL_VAR}",
                versions_dir.display()
            )
        })
}

/// Sorts version directory names (`15`, `9.6`) by their numbers, highest first; names that are
/// not versions go last.
fn sort_highest_first(versions: &mut [String]) {
    let key = |v: &String| -> Vec<u32> { v.split('.').map(|n| n.parse().unwrap_or(0)).collect() };
    versions.sort_by_key(|v| std::cmp::Reverse(key(v)));
}

/// A loopback port nobody listens on right now. Another process could take it before the
/// server binds it; the server then fails to start and says so in its log.
fn free_port() -> anyhow::Result<u16> {
    let listener =
        TcpListener::bind(("127.0.0.1", 0)).context("failed to find a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// Stops and removes the clusters that runs killed before their drop (Ctrl-C) left in the
/// temporary directory: those whose owner process has ended. A directory without an owner file
/// is another run's, still being set up, and is left alone.
fn sweep_leftovers(bin: &Path, as_system_user: bool) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    let ours = entries.filter_map(|e| Some(e.ok()?.path())).filter(|dir| {
        dir.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(DIR_PREFIX))
    });
    for dir in ours {
        let owner = std::fs::read_to_string(dir.join(OWNER_FILE))
            .ok()
            .and_then(|pid| pid.trim().parse::<i32>().ok());
        let Some(owner) = owner.filter(|pid| process_gone(*pid)) else {
            continue;
        };
        let data = dir.join("data");
        if data.join("postmaster.pid").exists() {
            // Best effort: a server that is already gone makes this fail, which is fine.
            let _ = pg_command(bin, "pg_ctl", as_system_user)
                .args(["stop", "-w", "-m", "immediate", "-D"])
                .arg(&data)
                .output();
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => println!(
                "xtask: removed the PostgreSQL cluster `{}` left by an interrupted run (pid {owner})",
                dir.display()
            ),
            Err(e) => eprintln!("xtask: failed to remove `{}`: {e}", dir.display()),
        }
    }
}

/// `cargo xtask postgres`: a cluster for running tests by hand, until Enter (or the end of
/// stdin).
pub(crate) fn run_until_enter() -> anyhow::Result<()> {
    let cluster = match TestServer::prepare()? {
        TestServer::Started(cluster) => cluster,
        TestServer::Given => bail!("{POSTGRES_URL_VAR} is set already; no cluster started"),
        TestServer::Missing => bail!("no cluster started"),
    };
    for (key, value) in cluster.env() {
        // Quoted: the URL holds a `?`, which a shell would take as a pattern.
        println!("export {key}='{value}'");
    }
    println!("xtask: press Enter to stop the cluster");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    drop(cluster);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests of TLS to the cluster skip without the authority's file, so a cluster must
    /// always name it beside its URL.
    #[test]
    fn a_started_cluster_names_its_url_and_its_tls_authority() {
        let bin = match binaries() {
            Ok(bin) => bin,
            Err(reason) => {
                assert!(std::env::var_os("CI").is_none(), "CI is set and {reason:#}");
                eprintln!("skipped: {reason:#}");
                return;
            }
        };
        let cluster = Cluster::start(&bin, Durability::Unsynced).unwrap();
        let env: std::collections::HashMap<_, _> = cluster.env().into_iter().collect();
        assert_eq!(env[POSTGRES_URL_VAR], cluster.url());
        assert!(
            cluster.url().ends_with("?sslmode=disable"),
            "{}",
            cluster.url()
        );
        let ca = std::fs::read_to_string(&env[POSTGRES_CA_VAR]).unwrap();
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
    }

    #[test]
    fn binaries_are_found_on_path_first_then_in_the_highest_version() {
        let dir = tempfile::tempdir().unwrap();
        let both = |bin: &Path| {
            std::fs::create_dir_all(bin).unwrap();
            for program in ["initdb", "pg_ctl"] {
                std::fs::write(bin.join(program), "").unwrap();
            }
        };
        let versions = dir.path().join("versions");
        both(&versions.join("13").join("bin"));
        both(&versions.join("15").join("bin"));
        // Only one of the two programs: not a place to run a cluster from.
        let half = dir.path().join("half");
        std::fs::create_dir_all(&half).unwrap();
        std::fs::write(half.join("initdb"), "").unwrap();
        assert_eq!(
            find_binaries(vec![half.clone()], &versions).unwrap(),
            versions.join("15").join("bin")
        );
        let on_path = dir.path().join("path");
        both(&on_path);
        assert_eq!(
            find_binaries(vec![half, on_path.clone()], &versions).unwrap(),
            on_path
        );
    }

    #[test]
    fn without_binaries_the_error_says_how_to_get_them() {
        let dir = tempfile::tempdir().unwrap();
        let err = find_binaries(Vec::new(), &dir.path().join("none")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("install Debian's `postgresql` package"),
            "{text}"
        );
        assert!(text.contains(POSTGRES_URL_VAR), "{text}");
    }

    #[test]
    fn versions_sort_by_number_highest_first() {
        let mut versions: Vec<String> = ["9.6", "15", "10", "notes", "16"]
            .into_iter()
            .map(String::from)
            .collect();
        sort_highest_first(&mut versions);
        assert_eq!(versions, ["16", "15", "10", "9.6", "notes"]);
    }
}
