//! One step as a real process in its own process group, with a timeout and a stop signal.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// Exit code recorded for a step that hit its timeout (as coreutils `timeout` does).
pub(crate) const TIMEOUT_EXIT_CODE: i32 = 124;

/// Everything needed to start one step process.
#[derive(Debug)]
pub(crate) struct ProcessSpec {
    pub program: String,
    pub args: Vec<OsString>,
    pub working_dir: PathBuf,
    /// Applied in order on top of the inherited environment.
    pub env: Vec<(String, String)>,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    pub timeout: Option<Duration>,
    /// Time between SIGTERM and SIGKILL.
    pub clean_up: Duration,
}

/// How a step process ended.
#[derive(Debug)]
pub(crate) enum ProcessEnd {
    /// It exited (or was killed by a signal nobody here sent).
    Exited(ExitStatus),
    /// The step timeout fired; the group was terminated.
    TimedOut,
    /// `stop` was cancelled; the group was terminated. Holds how the leader ended.
    Stopped(ExitStatus),
    /// The process could not be started.
    SpawnFailed(String),
}

/// Exit code as recorded: the code, or 128 + signal number as a shell reports it.
pub(crate) fn exit_code(status: &ExitStatus) -> Option<i32> {
    status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
}

/// Starts the process and waits for its end, the timeout or `stop`, whichever comes first.
/// `started` is called with the pid once the process runs.
pub(crate) async fn run_process(
    spec: ProcessSpec,
    stop: &CancellationToken,
    started: impl FnOnce(u32),
) -> ProcessEnd {
    let (stdout, stderr) = match (
        std::fs::File::create(&spec.stdout),
        std::fs::File::create(&spec.stderr),
    ) {
        (Ok(out), Ok(err)) => (out, err),
        (Err(e), _) => {
            return ProcessEnd::SpawnFailed(format!(
                "failed to create `{}`: {e}",
                spec.stdout.display()
            ))
        }
        (_, Err(e)) => {
            return ProcessEnd::SpawnFailed(format!(
                "failed to create `{}`: {e}",
                spec.stderr.display()
            ))
        }
    };
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .current_dir(&spec.working_dir)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        // Its own group, so that a stop reaches every process the step started.
        .process_group(0);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            return ProcessEnd::SpawnFailed(format!(
                "failed to start `{}` in `{}`: {e}",
                spec.program,
                spec.working_dir.display()
            ))
        }
    };
    let Some(pid) = child.id() else {
        // Only possible once the child was reaped, which cannot have happened yet.
        return ProcessEnd::SpawnFailed("process exited before its pid was known".into());
    };
    started(pid);
    let timeout = async {
        match spec.timeout {
            Some(limit) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        status = child.wait() => match status {
            Ok(status) => ProcessEnd::Exited(status),
            Err(e) => ProcessEnd::SpawnFailed(format!("failed to wait for the step process: {e}")),
        },
        () = timeout => {
            terminate(&mut child, pid, spec.clean_up).await;
            ProcessEnd::TimedOut
        }
        () = stop.cancelled() => {
            let status = terminate(&mut child, pid, spec.clean_up).await;
            ProcessEnd::Stopped(status.unwrap_or_else(|| ExitStatus::from_raw(Signal::SIGKILL as i32)))
        }
    }
}

/// SIGTERM to the group, SIGKILL after `clean_up` if the leader is still there; once the leader
/// is gone, SIGKILL to the group so that no straggler that ignored the TERM outlives its step.
async fn terminate(child: &mut Child, pid: u32, clean_up: Duration) -> Option<ExitStatus> {
    let group = Pid::from_raw(pid as i32);
    signal_group(group, Signal::SIGTERM);
    let status = match tokio::time::timeout(clean_up, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_elapsed) => {
            signal_group(group, Signal::SIGKILL);
            child.wait().await.ok()
        }
    };
    signal_group(group, Signal::SIGKILL);
    status
}

fn signal_group(group: Pid, signal: Signal) {
    match killpg(group, signal) {
        // The whole group is already gone.
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => {
            tracing::warn!(pgid = group.as_raw(), %signal, error = %e, "failed to signal step process group")
        }
    }
}

/// Kills what is left of a run whose scheduler died: step processes live in their own process
/// groups, so a SIGKILL of the scheduler leaves them running. They are found by the environment
/// every step inherits (`DAG_NAME` and `DAG_RUN_ID` both matching), which a recycled pid cannot
/// fake, and each one's whole group gets SIGKILL. Returns how many processes matched.
///
/// Linux only (it reads `/proc`); elsewhere it finds nothing.
pub(crate) fn kill_orphans(dag_name: &str, run_id: &str) -> usize {
    let want_dag = format!("DAG_NAME={dag_name}");
    let want_run = format!("DAG_RUN_ID={run_id}");
    let own = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut killed = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own {
            continue;
        }
        // Processes of other users, or ones that exit while we look, are simply skipped.
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let mut has_dag = false;
        let mut has_run = false;
        for var in environ.split(|b| *b == 0) {
            has_dag |= var == want_dag.as_bytes();
            has_run |= var == want_run.as_bytes();
        }
        if !(has_dag && has_run) {
            continue;
        }
        let process = Pid::from_raw(pid as i32);
        if let Ok(group) = nix::unistd::getpgid(Some(process)) {
            signal_group(group, Signal::SIGKILL);
        }
        // Also the process itself, in case it left the group.
        let _ = nix::sys::signal::kill(process, Signal::SIGKILL);
        killed += 1;
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &std::path::Path, script: &str) -> ProcessSpec {
        ProcessSpec {
            program: "sh".into(),
            args: vec!["-e".into(), "-c".into(), script.into()],
            working_dir: dir.to_path_buf(),
            env: vec![("STEP_VAR".into(), "v a l".into())],
            stdout: dir.join("s.out"),
            stderr: dir.join("s.err"),
            timeout: None,
            clean_up: Duration::from_secs(1),
        }
    }

    #[tokio::test]
    async fn exit_codes_and_output_files() {
        let dir = tempfile::tempdir().unwrap();
        let stop = CancellationToken::new();
        let end = run_process(
            spec(dir.path(), "echo \"$STEP_VAR\"; echo err >&2; pwd; exit 3"),
            &stop,
            |_| {},
        )
        .await;
        let ProcessEnd::Exited(status) = end else {
            panic!("unexpected {end:?}")
        };
        assert_eq!(exit_code(&status), Some(3));
        let out = std::fs::read_to_string(dir.path().join("s.out")).unwrap();
        let cwd = dir.path().canonicalize().unwrap();
        assert_eq!(out, format!("v a l\n{}\n", cwd.display()));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("s.err")).unwrap(),
            "err\n"
        );
    }

    #[tokio::test]
    async fn missing_shell_is_a_spawn_failure() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(dir.path(), "true");
        s.program = "/nonexistent/shell".into();
        let end = run_process(s, &CancellationToken::new(), |_| {}).await;
        let ProcessEnd::SpawnFailed(msg) = end else {
            panic!("unexpected {end:?}")
        };
        assert!(msg.contains("/nonexistent/shell"), "{msg}");
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        // A background grandchild that ignores TERM must not survive the step.
        let mut s = spec(
            dir.path(),
            "(trap '' TERM; sleep 30) & echo $! > bg.pid; sleep 30",
        );
        s.timeout = Some(Duration::from_millis(300));
        let end = run_process(s, &CancellationToken::new(), |_| {}).await;
        assert!(matches!(end, ProcessEnd::TimedOut), "{end:?}");
        let bg: i32 = std::fs::read_to_string(dir.path().join("bg.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        wait_until_gone(bg).await;
    }

    /// A killed process lingers as a zombie until its parent (here: init) reaps it, so poll.
    async fn wait_until_gone(pid: i32) {
        for _ in 0..200 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .chars()
                .next();
            if stat.is_empty() || state == Some('Z') || state == Some('X') {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("process {pid} still alive");
    }

    /// A stop token cancelled once the step has created `marker` (by then its trap is set).
    fn cancel_once_created(marker: std::path::PathBuf) -> CancellationToken {
        let stop = CancellationToken::new();
        let stopper = stop.clone();
        tokio::spawn(async move {
            while !marker.exists() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            stopper.cancel();
        });
        stop
    }

    #[tokio::test]
    async fn stop_escalates_to_kill_when_term_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(dir.path(), "trap '' TERM; touch started; sleep 60");
        let stop = cancel_once_created(dir.path().join("started"));
        let end = run_process(s, &stop, |_| {}).await;
        let ProcessEnd::Stopped(status) = end else {
            panic!("unexpected {end:?}")
        };
        assert_eq!(status.signal(), Some(Signal::SIGKILL as i32));
    }

    #[tokio::test]
    async fn stop_lets_a_trapping_step_exit_gracefully() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(
            dir.path(),
            "trap 'echo bye > cleaned; exit 0' TERM; touch started; sleep 60 & wait",
        );
        let stop = cancel_once_created(dir.path().join("started"));
        let end = run_process(s, &stop, |_| {}).await;
        let ProcessEnd::Stopped(status) = end else {
            panic!("unexpected {end:?}")
        };
        assert_eq!(status.code(), Some(0));
        assert!(dir.path().join("cleaned").exists());
    }

    #[tokio::test]
    async fn orphans_of_a_run_are_found_by_environment_and_killed() {
        // An orphan of run `r1` (with a child of its own) and a bystander of another run.
        use std::os::unix::process::CommandExt;
        let spawn = |run: &str| {
            let mut cmd = std::process::Command::new("sh");
            cmd.args(["-c", "sleep 60 & wait"])
                .env("DAG_NAME", "orphans")
                .env("DAG_RUN_ID", run)
                .process_group(0);
            cmd.spawn().unwrap()
        };
        let mut orphan = spawn("r1");
        let mut bystander = spawn("r2");
        // Wait until the orphan has exec'd (before that its environment is still ours).
        let environ = format!("/proc/{}/environ", orphan.id());
        for _ in 0..1000 {
            let env = std::fs::read(&environ).unwrap_or_default();
            if env.windows(13).any(|w| w == b"DAG_RUN_ID=r1") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let killed = kill_orphans("orphans", "r1");
        assert!(killed >= 1, "the orphan was not found");
        let status = orphan.wait().unwrap();
        assert_eq!(status.signal(), Some(9), "orphan not killed: {status:?}");
        assert!(
            bystander.try_wait().unwrap().is_none(),
            "bystander was killed"
        );
        bystander.kill().unwrap();
        bystander.wait().unwrap();
    }
}
