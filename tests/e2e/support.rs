//! Helpers: find (building if needed) the `scheduler` and `hub` binaries, run them as child
//! processes with their output captured, sign webhooks, poll for conditions.
//!
//! Why build from here: `CARGO_BIN_EXE_<name>` exists only for a package's own binaries, and
//! these tests drive binaries of two other packages. So the first test to need them runs
//! `cargo build -p dispatch-scheduler -p dispatch-hub --bins` with the cargo that runs the tests
//! (`env!("CARGO")`), into the same target directory, which is a no-op when they are fresh.
//! Set `DISPATCH_E2E_BIN_DIR` to use prebuilt binaries from that directory instead.

use std::io::{BufRead as _, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Generous bound for anything the tests wait for: a slow, shared 2-core machine.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Path of a binary under test.
pub fn bin(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("DISPATCH_E2E_BIN_DIR") {
            return PathBuf::from(dir);
        }
        // <target>/<profile>/deps/e2e-<hash>
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target profile dir")
            .to_owned();
        let target_dir = profile_dir.parent().expect("target dir").to_owned();
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args([
            "build",
            "-p",
            "dispatch-scheduler",
            "-p",
            "dispatch-hub",
            "--bins",
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(workspace);
        match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => {}
            Some("release") => {
                cmd.arg("--release");
            }
            Some(other) => {
                cmd.args(["--profile", other]);
            }
        }
        let status = cmd
            .status()
            .expect("run cargo build for the binaries under test");
        assert!(
            status.success(),
            "cargo build of scheduler and hub failed: {status}"
        );
        profile_dir
    })
    .join(name)
}

/// A child process whose stdout and stderr are collected; killed on drop if still running.
pub struct Proc {
    child: Child,
    name: String,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    /// Starts `bin(name)` with `args` and `envs` (the `DISPATCH_*` variables of the test
    /// runner's environment are removed so they cannot leak into the test).
    pub fn spawn(name: &str, args: &[&str], envs: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(bin(name));
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("DISPATCH_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("RUST_LOG", "info");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stdout = collect(child.stdout.take().expect("stdout"));
        let stderr = collect(child.stderr.take().expect("stderr"));
        Proc {
            child,
            name: name.to_owned(),
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid")
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until a line of stdout (or else stderr) contains `marker`; returns the rest of
    /// that line after it.
    pub fn wait_for(&mut self, marker: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let text = self.stdout() + &self.stderr();
            if let Some(line) = text.lines().find(|l| l.contains(marker)) {
                let start = line.find(marker).unwrap() + marker.len();
                return line[start..].trim().to_owned();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before printing `{marker}`\n{}",
                    self.name,
                    self.output()
                );
            }
            self.check_deadline(deadline, &format!("print `{marker}`"));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal)
            .expect("send signal");
    }

    /// Waits for the process to exit (at most [`PATIENCE`]).
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Let the reader threads drain the pipes.
                std::thread::sleep(Duration::from_millis(100));
                return status;
            }
            self.check_deadline(deadline, "exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` and expects the process to exit cleanly (code 0).
    pub fn stop_with(&mut self, signal: nix::sys::signal::Signal) {
        self.signal(signal);
        let status = self.wait();
        assert_eq!(status.code(), Some(0), "{}", self.output());
    }

    /// Panics with the output so far once `deadline` has passed: the process did not `what`.
    fn check_deadline(&self, deadline: Instant, what: &str) {
        assert!(
            Instant::now() < deadline,
            "{} did not {what}\n{}",
            self.name,
            self.output()
        );
    }

    pub fn output(&self) -> String {
        format!(
            "--- {} stdout\n{}\n--- {} stderr\n{}",
            self.name,
            self.stdout(),
            self.name,
            self.stderr()
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn collect(stream: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let buffer = Arc::new(Mutex::new(String::new()));
    let sink = buffer.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let mut b = sink.lock().unwrap();
            b.push_str(&line);
            b.push('\n');
        }
    });
    buffer
}

/// Polls `check` until it returns `Some`, at most [`PATIENCE`].
pub async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Delivers the `push/with-new-branch` fixture to the webhook URL `url` as GitHub would: a
/// `push` event under the delivery id `delivery`, signed with `secret`.
pub async fn deliver_push(
    client: &reqwest::Client,
    url: &str,
    secret: &str,
    delivery: &str,
) -> reqwest::Response {
    try_deliver_push(client, url, secret, delivery)
        .await
        .unwrap_or_else(|e| panic!("delivery {delivery} to {url}: {e}"))
}

/// [`deliver_push`] to a hub that may be down: the transport error is returned, as GitHub would
/// see it before it redelivers.
pub async fn try_deliver_push(
    client: &reqwest::Client,
    url: &str,
    secret: &str,
    delivery: &str,
) -> reqwest::Result<reqwest::Response> {
    let body = fixture("push/with-new-branch.payload.json");
    client
        .post(url)
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", github_signature(secret, &body))
        .body(body)
        .send()
        .await
}

/// `sha256=<hex>` of `body` keyed with `secret`, as GitHub's `X-Hub-Signature-256`.
pub fn github_signature(secret: &str, body: &[u8]) -> String {
    dispatch_protocol::webhook_signature::sign(&dispatch_protocol::Secret::new(secret), body)
}

pub use dispatch_test_support::fixture;

/// What `hub print-public-key` prints for the hub whose data directory is `data_dir`, with
/// `extra` arguments (such as `--format base64`).
pub fn hub_public_key(data_dir: &Path, extra: &[&str]) -> String {
    let data_dir = data_dir.display().to_string();
    let mut args = vec!["print-public-key", "--data-dir", &data_dir];
    args.extend(extra);
    let mut print_key = Proc::spawn("hub", &args, &[]);
    assert_eq!(print_key.wait().code(), Some(0), "{}", print_key.output());
    print_key.stdout()
}

/// `hub serve --config <config>` with `extra` arguments and `envs`, once it listens; returns it
/// with its base URL.
pub fn serve_hub(config: &Path, extra: &[&str], envs: &[(&str, &str)]) -> (Proc, String) {
    let config = config.display().to_string();
    let mut args = vec!["serve", "--config", &config];
    args.extend(extra);
    let mut hub = Proc::spawn("hub", &args, envs);
    let url = hub.wait_for("hub listening on");
    (hub, url)
}

/// The body of a GET of `url`, which must answer.
pub async fn get_text(url: &str) -> String {
    let response = reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    response.text().await.unwrap()
}

/// Writes `text` to `dir/name`, creating `dir`.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The text of a hub.toml: the hub listens on `listen`, keeps its data in `data`, checks
/// webhooks with `webhook_secret` and has the license `team` (key `license_key`, plan `pro`);
/// `settings` are more top-level keys, `tables` the bindings and any other table.
pub fn hub_toml(
    listen: &str,
    data: &Path,
    webhook_secret: &str,
    license_key: &str,
    settings: &str,
    tables: &str,
) -> String {
    format!(
        "listen = \"{listen}\"\ndata_dir = \"{data}\"\nwebhook_secret = \"{webhook_secret}\"\n\
         {settings}\n[[license]]\nid = \"team\"\nkey = \"{license_key}\"\nplan = \"pro\"\n\n{tables}",
        data = data.display(),
    )
}

/// A `[[binding]]` table: pushes to `Codertocat/Hello-World` run `dag`.
pub fn push_binding(dag: &str) -> String {
    format!(
        "[[binding]]\nrepository = \"Codertocat/Hello-World\"\ndag = \"{dag}\"\n\
         trigger = \"auto\"\nevent_name = \"push\"\n"
    )
}

/// `scheduler start --home <home> --cloud-url <hub>` (a hub, or a cloud), polling each second
/// (reports too) with long polls of 5 s, then `extra`, with `envs` (such as the license key).
pub fn scheduler_against(home: &Path, hub: &str, extra: &[&str], envs: &[(&str, &str)]) -> Proc {
    let home = home.display().to_string();
    let mut args = vec!["start", "--home", &home, "--cloud-url", hub];
    args.extend(["--poll-interval", "1", "--report-interval", "1"]);
    args.extend(["--long-poll", "5"]);
    args.extend(extra);
    Proc::spawn("scheduler", &args, envs)
}
