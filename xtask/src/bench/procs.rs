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
        // `cargo run` (how `cargo xtask` starts) points LD_LIBRARY_PATH at its build directories
        // and the toolchain. Every program a DAG step runs would search them for its libraries
        // first: about a hundred failed opens per exec, measured as the scheduler's cost.
        if let Some(paths) = std::env::var_os("LD_LIBRARY_PATH") {
            let kept: Vec<PathBuf> = std::env::split_paths(&paths)
                .filter(|p| !added_by_cargo(p))
                .collect();
            match std::env::join_paths(&kept) {
                Ok(joined) if !kept.is_empty() => command.env("LD_LIBRARY_PATH", joined),
                _ => command.env_remove("LD_LIBRARY_PATH"),
            };
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

/// Whether a library directory is one `cargo run` added: the build output of this workspace or a
/// rustup toolchain.
fn added_by_cargo(dir: &Path) -> bool {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
        });
    let target = target.canonicalize().unwrap_or(target);
    dir.starts_with(&target)
        || dir.canonicalize().is_ok_and(|d| d.starts_with(&target))
        || dir.components().any(|c| c.as_os_str() == ".rustup")
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
    read_proc(pid, "status", parse_vm_rss)
}

/// Reads `/proc/<pid>/<file>` and parses it with `parse`.
fn read_proc<T>(pid: u32, file: &str, parse: fn(&str) -> Option<T>) -> anyhow::Result<T> {
    let path = format!("/proc/{pid}/{file}");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("failed to read `{path}`"))?;
    parse(&text).with_context(|| format!("unexpected format of `{path}`"))
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
    cpu_usage(pid).map(|u| u.own())
}

/// CPU time of a process, in clock ticks: its own threads, and the children it has waited for
/// (for the scheduler: the step processes of the runs it executed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CpuUsage {
    pub(crate) user: u64,
    pub(crate) system: u64,
    pub(crate) children: u64,
}

impl CpuUsage {
    pub(crate) fn own(self) -> u64 {
        self.user + self.system
    }

    /// What was used between `earlier` and `self`.
    pub(crate) fn since(self, earlier: CpuUsage) -> CpuUsage {
        CpuUsage {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
            children: self.children.saturating_sub(earlier.children),
        }
    }
}

pub(crate) fn cpu_usage(pid: u32) -> anyhow::Result<CpuUsage> {
    read_proc(pid, "stat", parse_stat)
}

fn parse_stat(stat: &str) -> Option<CpuUsage> {
    // The command name (field 2) may hold spaces and parentheses; fields after its closing
    // parenthesis start at field 3 (state), so utime (14), stime (15), cutime (16) and
    // cstime (17) are at 11 to 14.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some(CpuUsage {
        user: field(11)?,
        system: field(12)?,
        children: field(13).unwrap_or(0) + field(14).unwrap_or(0),
    })
}

/// A profiler (`cargo xtask bench --profile '<command>'`) around a process under measurement.
///
/// A command with `{pid}` attaches to the running process (`strace -c -f -p {pid}`,
/// `perf record -g -p {pid}`) and is interrupted with SIGINT when the measurement ends, so that
/// it writes its report; one without it is a prefix the process is started under
/// (`valgrind --tool=callgrind`), which writes its report when the process exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Profile(pub(crate) String);

impl Profile {
    fn attaches(&self) -> bool {
        self.0.contains("{pid}")
    }

    /// `command`, run under the profiler when it is a prefix.
    pub(crate) fn wrap(&self, command: Command) -> Command {
        if self.attaches() {
            return command;
        }
        let mut wrapped = Command::new("sh");
        wrapped
            .arg("-c")
            .arg(format!("exec {} \"$@\"", self.0))
            .arg("sh")
            .arg(command.get_program())
            .args(command.get_args());
        for (key, value) in command.get_envs() {
            match value {
                Some(value) => wrapped.env(key, value),
                None => wrapped.env_remove(key),
            };
        }
        if let Some(dir) = command.get_current_dir() {
            wrapped.current_dir(dir);
        }
        wrapped
    }

    /// Attaches the profiler to `pid` when it attaches; its output goes to `log`.
    pub(crate) fn attach(&self, pid: u32, log: &Path) -> anyhow::Result<Option<Attached>> {
        if !self.attaches() {
            return Ok(None);
        }
        let mut command = Command::new("sh");
        command.arg("-c").arg(format!(
            "exec {}",
            self.0.replace("{pid}", &pid.to_string())
        ));
        let proc = Proc::spawn("profiler", command, log)?;
        // Let it attach before the measured work starts.
        std::thread::sleep(Duration::from_millis(500));
        Ok(Some(Attached(proc)))
    }

    /// How long a profiled process may take to stop: a wrapped one runs far slower.
    pub(crate) fn grace(profile: Option<&Profile>) -> Duration {
        Duration::from_secs(if profile.is_some() { 300 } else { 10 })
    }
}

/// An attached profiler; [`Attached::finish`] lets it write its report.
pub(crate) struct Attached(Proc);

impl Attached {
    /// SIGINT, then up to a minute to write the report.
    pub(crate) fn finish(mut self) {
        let pid = Pid::from_raw(self.0.pid() as i32);
        if kill(pid, Signal::SIGINT).is_ok() {
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if matches!(self.0.child.try_wait(), Ok(Some(_))) {
                    self.0.stopped = true;
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.0.stop(Duration::from_secs(5));
    }
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
    fn library_paths_of_cargo_are_told_apart() {
        let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/deps");
        assert!(added_by_cargo(&target));
        assert!(added_by_cargo(Path::new(
            "/opt/.rustup/toolchains/stable-x86_64-unknown-linux-gnu/lib"
        )));
        assert!(!added_by_cargo(Path::new("/usr/local/lib")));
    }

    #[test]
    fn reads_rss_from_status() {
        let status = "Name:\tscheduler\nVmPeak:\t  99999 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(12345));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn reads_cpu_ticks_even_with_odd_command_names() {
        let stat = "4242 (sched (x) y) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    57 43 7 3 20 0 5 0 100 0 0";
        let usage = parse_stat(stat).unwrap();
        assert_eq!(usage.own(), 100);
        assert_eq!(usage.children, 10);
        assert_eq!(parse_stat("4242 (short) S 1"), None);
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
