//! The real system under measurement: a `scheduler` with its embedded hub, or a standalone
//! `hub` plus a `scheduler` pulling from it, each in a scratch home with one binding and one
//! no-op DAG whose step records the instant it started.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use super::build::Artifact;
use super::http::{self, WebhookSender};
use super::procs::{self, Proc};

/// The DAG every bench delivery starts.
const DAG: &str = "bench-noop";
/// The repository of the payload below.
const REPOSITORY: &str = "Codertocat/Hello-World";
/// A real GitHub `push` delivery from the repository's fixtures (the demo sends the same one).
const PAYLOAD: &str = "push/with-new-branch.payload.json";
/// Known values, so the bench can sign deliveries and activate a license without reading what
/// the binaries generate.
const WEBHOOK_SECRET: &str = "bench-webhook-secret-not-for-production";
const LICENSE_KEY: &str = "bench-license-key-not-for-production";

fn bindings_toml() -> String {
    format!(
        "[[binding]]\nrepository = \"{REPOSITORY}\"\ndag = \"{DAG}\"\ntrigger = \"auto\"\nevent_name = \"push\"\n"
    )
}

/// One step that writes `date +%s%N` (ns since the epoch) to `<stamps>/<run id>`; run id = job id.
fn dag_yaml(stamps: &Path) -> String {
    format!(
        "description: cargo xtask bench no-op; records when its first step started\n\
         steps:\n  - name: stamp\n    command: date +%s%N > '{}'/\"$DAG_RUN_ID\"\n",
        stamps.display()
    )
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("failed to write `{}`", path.display()))
}

/// The webhook body every bench delivery carries.
pub(crate) fn payload() -> Vec<u8> {
    dispatch_test_support::fixture(PAYLOAD)
}

/// A scheduler home with the DAG (and, for the embedded hub, bindings and webhook secret).
pub(crate) struct Home {
    pub(crate) home: PathBuf,
    pub(crate) stamps: PathBuf,
}

impl Home {
    pub(crate) fn create(dir: &Path) -> anyhow::Result<Home> {
        let home = dir.join("home");
        let stamps = dir.join("stamps");
        for d in [home.join("dags"), stamps.clone()] {
            std::fs::create_dir_all(&d)
                .with_context(|| format!("failed to create `{}`", d.display()))?;
        }
        write(
            &home.join("dags").join(format!("{DAG}.yaml")),
            &dag_yaml(&stamps),
        )?;
        write(&home.join("bindings.toml"), &bindings_toml())?;
        write(&home.join("webhook_secret"), WEBHOOK_SECRET)?;
        Ok(Home { home, stamps })
    }

    /// When the first step of run `job_id` started (ns since the epoch), once it has.
    pub(crate) fn stamp(&self, job_id: &str) -> Option<u128> {
        let text = std::fs::read_to_string(self.stamps.join(job_id)).ok()?;
        // An empty or partial file is a step still writing; the caller polls again.
        text.trim().parse().ok()
    }

    pub(crate) fn log(&self) -> PathBuf {
        self.home.join("scheduler.log")
    }
}

/// Flags of `scheduler start` that differ between measurements.
pub(crate) struct Polling {
    pub(crate) long_poll_s: u64,
    pub(crate) idle_delay_s: u64,
}

/// `scheduler start` with its embedded hub on a free loopback port, ready for webhooks.
pub(crate) struct Embedded {
    pub(crate) scheduler: Proc,
    pub(crate) home: Home,
    pub(crate) hub: SocketAddr,
}

impl Embedded {
    pub(crate) fn start(
        context: &super::Context,
        dir: &Path,
        polling: &Polling,
    ) -> anyhow::Result<Embedded> {
        let home = Home::create(dir)?;
        let hub = SocketAddr::from(([127, 0, 0, 1], procs::free_port()?));
        let mut scheduler = spawn_scheduler(context, &home, polling, |command| {
            command.arg("--hub-listen").arg(hub.to_string())
        })?;
        wait_healthy(hub, &mut scheduler)?;
        Ok(Embedded {
            scheduler,
            home,
            hub,
        })
    }

    pub(crate) fn sender(&self) -> anyhow::Result<WebhookSender> {
        Ok(WebhookSender::new(self.hub, WEBHOOK_SECRET, payload()))
    }
}

/// The sum of the named series on a hub's `/metrics` (all must be present).
pub(crate) fn hub_metric(addr: SocketAddr, series: &[&str]) -> anyhow::Result<f64> {
    let text = http::get_text(addr, "/metrics")?;
    series
        .iter()
        .map(|s| {
            http::prometheus_value(&text, s).with_context(|| format!("hub /metrics has no `{s}`"))
        })
        .sum()
}

fn wait_healthy(addr: SocketAddr, process: &mut Proc) -> anyhow::Result<()> {
    procs::wait_for(
        &format!("http://{addr}/healthz"),
        Duration::from_secs(30),
        Duration::from_millis(20),
        || process.check_alive(),
        || http::get_text(addr, "/healthz").ok(),
    )
    .map(drop)
}

/// A standalone `hub serve` with one license and the bench binding.
pub(crate) struct StandaloneHub {
    pub(crate) process: Proc,
    pub(crate) addr: SocketAddr,
    public_key_file: PathBuf,
}

impl StandaloneHub {
    pub(crate) fn start(context: &super::Context, dir: &Path) -> anyhow::Result<StandaloneHub> {
        Self::start_with(context, dir, &[])
    }

    /// [`StandaloneHub::start`] with `extra` flags for `hub serve`.
    pub(crate) fn start_with(
        context: &super::Context,
        dir: &Path,
        extra: &[&str],
    ) -> anyhow::Result<StandaloneHub> {
        Self::start_with_bindings(context, dir, extra, &bindings_toml())
    }

    /// [`StandaloneHub::start_with`] with `bindings` (`[[binding]]` tables) instead of the one
    /// binding of every other group.
    pub(crate) fn start_with_bindings(
        context: &super::Context,
        dir: &Path,
        extra: &[&str],
        bindings: &str,
    ) -> anyhow::Result<StandaloneHub> {
        let hub_bin = context.artifacts.exe(Artifact::Hub)?;
        let data = dir.join("hub-data");
        std::fs::create_dir_all(&data)
            .with_context(|| format!("failed to create `{}`", data.display()))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], procs::free_port()?));
        let config = dir.join("hub.toml");
        write(
            &config,
            &format!(
                "listen = \"{addr}\"\ndata_dir = \"{}\"\nwebhook_secret = \"{WEBHOOK_SECRET}\"\n\n\
                 [[license]]\nid = \"bench\"\nkey = \"{LICENSE_KEY}\"\nplan = \"bench\"\n\n{}",
                data.display(),
                bindings
            ),
        )?;
        let key = Command::new(&hub_bin)
            .arg("print-public-key")
            .arg("--data-dir")
            .arg(&data)
            .output()
            .context("failed to run `hub print-public-key`")?;
        if !key.status.success() {
            anyhow::bail!(
                "`hub print-public-key` failed ({}): {}",
                key.status,
                String::from_utf8_lossy(&key.stderr).trim()
            );
        }
        let public_key_file = dir.join("hub-public-key.pem");
        std::fs::write(&public_key_file, &key.stdout)
            .with_context(|| format!("failed to write `{}`", public_key_file.display()))?;
        let mut command = Command::new(&hub_bin);
        command
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .args(extra);
        let mut process = Proc::spawn("hub", command, &dir.join("hub.log"))?;
        wait_healthy(addr, &mut process)?;
        Ok(StandaloneHub {
            process,
            addr,
            public_key_file,
        })
    }

    pub(crate) fn sender(&self) -> anyhow::Result<WebhookSender> {
        Ok(WebhookSender::new(self.addr, WEBHOOK_SECRET, payload()))
    }

    /// Activates the bench license for `server_id` (a UUID) as a scheduler does, and returns the
    /// body of a pull (`wait_seconds` 0) with the credentials it got.
    pub(crate) fn activate(&self, server_id: &str) -> anyhow::Result<Vec<u8>> {
        let request = serde_json::json!({
            "key": LICENSE_KEY,
            "server_id": server_id,
            "machine_name": "bench",
        });
        let response = http::request(
            self.addr,
            "POST",
            "/api/v1/licenses/activate",
            &[("Content-Type", "application/json")],
            request.to_string().as_bytes(),
        )?;
        let text = String::from_utf8_lossy(&response.body);
        if response.status != 200 {
            anyhow::bail!("activation answered {}: {}", response.status, text.trim());
        }
        let answer: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("activation answer is not json: {text}"))?;
        let secret = answer["heartbeat_secret"]
            .as_str()
            .context("activation answer has no heartbeat_secret")?;
        Ok(serde_json::json!({
            "license_id": "bench",
            "server_id": server_id,
            "heartbeat_secret": secret,
            "wait_seconds": 0,
        })
        .to_string()
        .into_bytes())
    }

    /// Starts `scheduler start --cloud-url` against this hub, activating the bench license.
    pub(crate) fn start_scheduler(
        &self,
        context: &super::Context,
        home: &Home,
        polling: &Polling,
    ) -> anyhow::Result<Proc> {
        spawn_scheduler(context, home, polling, |command| {
            command
                .arg("--cloud-url")
                .arg(format!("http://{}", self.addr))
                .arg("--license-key")
                .arg(LICENSE_KEY)
                .arg("--license-public-key")
                .arg(&self.public_key_file)
        })
    }
}

/// `scheduler start` in `home` with the bench's polling and the arguments `cloud` adds (where
/// its cloud is), under the profiler when one is asked for; it logs into the home.
fn spawn_scheduler(
    context: &super::Context,
    home: &Home,
    polling: &Polling,
    cloud: impl FnOnce(&mut Command) -> &mut Command,
) -> anyhow::Result<Proc> {
    let mut command = Command::new(context.artifacts.exe(Artifact::Scheduler)?);
    command
        .arg("start")
        .arg("--home")
        .arg(&home.home)
        .arg("--long-poll")
        .arg(polling.long_poll_s.to_string())
        .arg("--poll-interval")
        .arg(polling.idle_delay_s.to_string());
    cloud(&mut command);
    if let Some(profile) = &context.profile {
        command = profile.wrap(command);
    }
    Proc::spawn("scheduler", command, &home.log())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dag_records_its_start_under_the_run_id() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::create(dir.path()).unwrap();
        let yaml = std::fs::read_to_string(home.home.join("dags").join("bench-noop.yaml")).unwrap();
        let command = yaml
            .lines()
            .find_map(|l| l.trim().strip_prefix("command: "))
            .unwrap();
        // Run the step's command the way the executor does.
        let status = Command::new("sh")
            .args(["-e", "-c", command])
            .env("DAG_RUN_ID", "0193abc")
            .status()
            .unwrap();
        assert!(status.success());
        let before = http::unix_ns();
        let stamp = home.stamp("0193abc").unwrap();
        assert!(stamp <= before && stamp > before - 60_000_000_000);
        assert_eq!(home.stamp("other"), None);
    }

    #[test]
    fn bindings_route_pushes_of_the_payload_repository_to_the_dag() {
        let text = bindings_toml();
        assert!(text.contains("repository = \"Codertocat/Hello-World\""));
        assert!(text.contains("dag = \"bench-noop\""));
        assert!(text.contains("event_name = \"push\""));
        let payload = payload();
        let json: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(json["repository"]["full_name"], REPOSITORY);
    }
}
