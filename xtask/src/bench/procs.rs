//! Processes under measurement: started with their output in a log file, stopped with SIGTERM
//! (SIGKILL after a grace period) when dropped, and read through `/proc`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A running binary of ours; stopped on drop so a failed measurement leaves nothing behind.
pub(crate) struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    stopped: bool,
}

impl Proc {
    /// Starts `command` with stdout and stderr appended to `log` and no inherited `DISPATCH_*`
    /// or `RUST_LOG` settings, so only the flags the bench passes count.
    pub(crate) fn spawn(name: &str, mut command: Command, log: &Path) -> anyhow::Result<Proc> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("failed to open `{}`", log.display()))?;
        let err = out.try_clone()?;
        for (key, _) in std::env::vars_os() {
            let key_text = key.to_string_lossy();
            if key_text.starts_with("DISPATCH_") || key_text == "RUST_LOG" {
                command.env_remove(&key);
            }
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = command
            .spawn()
            .with_context(|| format!("failed to start {name} ({command:?})"))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
            stopped: false,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error naming the process and the end of its log if it has exited.
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            self.stopped = true;
            bail!(
                "{} exited early ({status}); last log lines:\n{}",
                self.name,
                log_tail(&self.log, 15)
            );
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub(crate) fn stop(&mut self, grace: Duration) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let pid = Pid::from_raw(self.child.id() as i32);
        if kill(pid, Signal::SIGTERM).is_ok() {
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

/// The last `lines` lines of a log file, for error messages.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Polls `check` every `every` until it yields a value, `alive` fails, or `timeout` passes.
pub(crate) fn wait_for<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut alive: impl FnMut() -> anyhow::Result<()>,
    mut check: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        alive()?;
        if Instant::now() >= deadline {
            bail!(
                "timed out after {:.0}s waiting for {what}",
                timeout.as_secs_f64()
            );
        }
        std::thread::sleep(every);
    }
}

/// `VmRSS` of a process in KiB.
pub(crate) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("failed to read `{path}`"))?;
    parse_vm_rss(&text).with_context(|| format!("no VmRSS line in `{path}`"))
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|n| n.trim().parse().ok())
}

/// CPU time used so far (user + system), in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("failed to read `{path}`"))?;
    parse_stat_ticks(&text).with_context(|| format!("unexpected format of `{path}`"))
}

fn parse_stat_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses; fields after its closing
    // parenthesis start at field 3 (state), so utime (14) and stime (15) are at 11 and 12.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`), 100 when it cannot be asked.
pub(crate) fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(100)
}

/// A free loopback port: bound, read and released (the short race is acceptable for a bench).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("failed to bind a port")?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rss_from_status() {
        let status = "Name:\tscheduler\nVmPeak:\t  99999 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(12345));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn reads_cpu_ticks_even_with_odd_command_names() {
        let stat = "4242 (sched (x) y) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    57 43 0 0 20 0 5 0 100 0 0";
        assert_eq!(parse_stat_ticks(stat), Some(100));
        assert_eq!(parse_stat_ticks("4242 (short) S 1"), None);
    }

    #[test]
    fn measures_this_process() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        cpu_ticks(me).unwrap();
        assert!(clock_ticks_per_second() > 0);
    }

    #[test]
    fn stops_a_real_child_and_reports_early_exit() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sleep.log");
        let mut command = Command::new("sleep");
        command.arg("30");
        let mut sleeper = Proc::spawn("sleep", command, &log).unwrap();
        sleeper.check_alive().unwrap();
        let started = Instant::now();
        sleeper.stop(Duration::from_secs(10));
        assert!(started.elapsed() < Duration::from_secs(10));

        let mut command = Command::new("sh");
        command.args(["-c", "echo going away; exit 3"]);
        let mut quitter = Proc::spawn("quitter", command, &log).unwrap();
        let err = wait_for(
            "nothing",
            Duration::from_secs(20),
            Duration::from_millis(10),
            || quitter.check_alive(),
            || None::<()>,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("quitter exited early"), "{err}");
        assert!(err.contains("going away"), "{err}");
    }
}
