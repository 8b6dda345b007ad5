//! One step process in its own process group, with a timeout and a stop signal; its output
//! goes through the executor (secret masking, the `stdout`/`stderr` copies, capture for
//! `output:`) into the step's log files.

use std::ffi::OsString;
use std::io::Write as _;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::mask::{Masker, Secrets};

/// Exit code recorded for a step that hit its timeout (as coreutils `timeout` does).
pub(crate) const TIMEOUT_EXIT_CODE: i32 = 124;

/// How long output is still read after the step's process exited. A process the step left
/// running in the background may hold the pipe open for ever: after this, its output is still
/// written to the log (the reader goes on in the background), but the step is done and what
/// was captured so far is what it captured.
const DRAIN: Duration = Duration::from_secs(1);

/// Where one output stream of a process goes.
#[derive(Debug, Clone)]
pub(crate) struct Sink {
    /// The step's log file (`<step>.out` / `<step>.err`), appended to.
    pub log: PathBuf,
    /// The step's `stdout` / `stderr` file, appended to.
    pub copy: Option<PathBuf>,
    /// Keep up to this many bytes of the stream as written (unmasked), plus one to tell that
    /// there was more.
    pub capture: usize,
    /// Masked in what is written to the files.
    pub secrets: Secrets,
}

#[cfg(test)]
impl Sink {
    /// Just the log file.
    pub(crate) fn log(path: PathBuf) -> Sink {
        Sink {
            log: path,
            copy: None,
            capture: 0,
            secrets: Secrets::default(),
        }
    }
}

/// What was kept of a stream.
#[derive(Debug, Clone, Default)]
pub(crate) struct Captured {
    pub bytes: Vec<u8>,
    /// The stream was longer than the capture limit.
    pub truncated: bool,
}

/// Everything needed to start one step process.
#[derive(Debug)]
pub(crate) struct ProcessSpec {
    pub program: String,
    pub args: Vec<OsString>,
    pub working_dir: PathBuf,
    /// Applied in order on top of the inherited environment.
    pub env: Vec<(String, String)>,
    pub stdout: Sink,
    pub stderr: Sink,
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

/// How a process ended and what it wrote.
#[derive(Debug)]
pub(crate) struct ProcessOutcome {
    pub end: ProcessEnd,
    pub stdout: Captured,
    pub stderr: Captured,
}

impl ProcessOutcome {
    fn failed(message: String) -> ProcessOutcome {
        ProcessOutcome {
            end: ProcessEnd::SpawnFailed(message),
            stdout: Captured::default(),
            stderr: Captured::default(),
        }
    }
}

/// Exit code as recorded: the code, or 128 + signal number as a shell reports it.
pub(crate) fn exit_code(status: &ExitStatus) -> Option<i32> {
    status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
}

fn open_append(path: &Path) -> Result<std::fs::File, String> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("failed to open `{}`: {e}", path.display()))
}

/// Reads `stream` to its end into the sink's files; what it keeps is in `captured`.
async fn pump(
    mut stream: impl AsyncRead + Unpin,
    mut files: Vec<std::fs::File>,
    sink: Sink,
    captured: Arc<Mutex<Captured>>,
) {
    let mut masker = Masker::new(sink.secrets.clone());
    let mut buf = vec![0u8; 64 * 1024];
    let write = |files: &mut Vec<std::fs::File>, bytes: &[u8]| {
        if bytes.is_empty() {
            return;
        }
        for file in files.iter_mut() {
            if let Err(e) = file.write_all(bytes) {
                tracing::warn!(error = %e, log = %sink.log.display(), "failed to write step output");
            }
        }
    };
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        if sink.capture > 0 {
            if let Ok(mut c) = captured.lock() {
                let room = (sink.capture + 1).saturating_sub(c.bytes.len());
                c.bytes.extend_from_slice(&chunk[..room.min(n)]);
                if c.bytes.len() > sink.capture {
                    c.bytes.truncate(sink.capture);
                    c.truncated = true;
                }
            }
        }
        let masked = masker.push(chunk);
        write(&mut files, &masked);
    }
    let rest = masker.finish();
    write(&mut files, &rest);
}

/// The program to start: a bare name is looked up in the `PATH` the process will have (the last
/// one `env` sets, else ours), as `execvp` would. With a path, the standard library starts the
/// process with `posix_spawn` (a vfork); with a bare name and a `PATH` in the environment it
/// forks the scheduler, copying its page tables, for every step. A name not found is left bare,
/// to fail as it did.
fn program_path(program: &str, env: &[(String, String)], working_dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    if program.contains('/') {
        return PathBuf::from(program);
    }
    let search = env
        .iter()
        .rev()
        .find(|(key, _)| key == "PATH")
        .map(|(_, value)| OsString::from(value))
        .or_else(|| std::env::var_os("PATH"));
    for dir in search.iter().flat_map(std::env::split_paths) {
        // An empty or relative entry is relative to where the process starts.
        let candidate = working_dir.join(dir).join(program);
        let executable = std::fs::metadata(&candidate)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
        if executable {
            return candidate;
        }
    }
    PathBuf::from(program)
}

/// Starts the process and waits for its end, the timeout or `stop`, whichever comes first.
/// `started` is called with the pid once the process runs.
pub(crate) async fn run_process(
    spec: ProcessSpec,
    stop: &CancellationToken,
    started: impl FnOnce(u32),
) -> ProcessOutcome {
    let mut outputs = Vec::new();
    for sink in [&spec.stdout, &spec.stderr] {
        let mut files = Vec::new();
        for path in std::iter::once(&sink.log).chain(sink.copy.as_ref()) {
            match open_append(path) {
                Ok(file) => files.push(file),
                Err(message) => return ProcessOutcome::failed(message),
            }
        }
        outputs.push(files);
    }
    let mut command = Command::new(program_path(&spec.program, &spec.env, &spec.working_dir));
    command
        .args(&spec.args)
        .current_dir(&spec.working_dir)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so that a stop reaches every process the step started.
        .process_group(0);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            return ProcessOutcome::failed(format!(
                "failed to start `{}` in `{}`: {e}",
                spec.program,
                spec.working_dir.display()
            ))
        }
    };
    let Some(pid) = child.id() else {
        // Only possible once the child was reaped, which cannot have happened yet.
        return ProcessOutcome::failed("process exited before its pid was known".into());
    };
    started(pid);
    let captured = [
        Arc::new(Mutex::new(Captured::default())),
        Arc::new(Mutex::new(Captured::default())),
    ];
    let mut err_files = outputs.pop().unwrap_or_default();
    let mut out_files = outputs.pop().unwrap_or_default();
    let mut readers = Vec::new();
    // Boxed so that both streams go through one loop (one allocation per process).
    type Stream = Box<dyn AsyncRead + Unpin + Send>;
    let streams = [
        (
            child.stdout.take().map(|s| Box::new(s) as Stream),
            &mut out_files,
            &spec.stdout,
        ),
        (
            child.stderr.take().map(|s| Box::new(s) as Stream),
            &mut err_files,
            &spec.stderr,
        ),
    ];
    for ((stream, files, sink), captured) in streams.into_iter().zip(&captured) {
        if let Some(stream) = stream {
            let files = std::mem::take(files);
            readers.push(tokio::spawn(pump(
                stream,
                files,
                sink.clone(),
                captured.clone(),
            )));
        }
    }
    let timeout = async {
        match spec.timeout {
            Some(limit) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    };
    let end = tokio::select! {
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
    };
    // Dropping a reader's handle detaches it: it goes on writing the log until the pipe
    // closes.
    let _ = tokio::time::timeout(DRAIN, async {
        for reader in &mut readers {
            let _ = reader.await;
        }
    })
    .await;
    let take = |c: &Arc<Mutex<Captured>>| c.lock().map(|c| c.clone()).unwrap_or_default();
    ProcessOutcome {
        end,
        stdout: take(&captured[0]),
        stderr: take(&captured[1]),
    }
}

/// Runs a short helper process (a condition check, a param's `eval`) in its own group and
/// returns how it exited and its stdout (at most `limit` bytes; with 0 it is not read at all);
/// stderr is dropped. `stop` terminates it.
pub(crate) async fn run_captured(
    program: &str,
    args: &[OsString],
    working_dir: &Path,
    env: &[(String, String)],
    stop: &CancellationToken,
    clean_up: Duration,
    limit: usize,
) -> Result<(ExitStatus, Vec<u8>), String> {
    let mut command = Command::new(program_path(program, env, working_dir));
    command
        .args(args)
        .current_dir(working_dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(if limit == 0 {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stderr(Stdio::null())
        .process_group(0);
    let mut child = command.spawn().map_err(|e| {
        format!(
            "failed to start `{program}` in `{}`: {e}",
            working_dir.display()
        )
    })?;
    let pid = child
        .id()
        .ok_or("process exited before its pid was known")?;
    let captured = Arc::new(Mutex::new(Vec::new()));
    let reader = child.stdout.take().map(|mut stdout| {
        let captured = captured.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 8192];
            while let Ok(n) = stdout.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                if let Ok(mut out) = captured.lock() {
                    let room = limit.saturating_sub(out.len());
                    out.extend_from_slice(&buf[..n.min(room)]);
                }
            }
        })
    });
    let status = tokio::select! {
        status = child.wait() => status.map_err(|e| format!("failed to wait for `{program}`: {e}"))?,
        () = stop.cancelled() => {
            terminate(&mut child, pid, clean_up).await;
            return Err("stopped".to_owned());
        }
    };
    // As for steps: a background process may keep the pipe open.
    if let Some(reader) = reader {
        let _ = tokio::time::timeout(DRAIN, reader).await;
    }
    let out = captured.lock().map(|o| o.clone()).unwrap_or_default();
    Ok((status, out))
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

    #[test]
    fn a_bare_program_is_found_in_the_path_the_process_gets() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let (first, second) = (tmp.path().join("first"), tmp.path().join("second"));
        for (dir, mode) in [(&first, 0o644), (&second, 0o755)] {
            std::fs::create_dir(dir).unwrap();
            let tool = dir.join("tool");
            std::fs::write(&tool, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let path = format!("{}:{}", first.display(), second.display());
        let env = vec![
            ("PATH".to_owned(), "/nowhere".to_owned()),
            ("PATH".to_owned(), path),
        ];
        // The last PATH counts; a file that is not executable is passed over, as execvp does.
        assert_eq!(program_path("tool", &env, tmp.path()), second.join("tool"));
        // A relative entry is taken from where the process starts.
        let relative = vec![("PATH".to_owned(), "second".to_owned())];
        assert_eq!(
            program_path("tool", &relative, tmp.path()),
            tmp.path().join("second").join("tool")
        );
        assert_eq!(
            program_path("missing", &env, tmp.path()),
            PathBuf::from("missing")
        );
        assert_eq!(
            program_path("./tool", &env, tmp.path()),
            PathBuf::from("./tool")
        );
        // Without a PATH of its own the process gets ours.
        assert!(program_path("sh", &[], tmp.path()).is_absolute());
    }

    fn spec(dir: &std::path::Path, script: &str) -> ProcessSpec {
        ProcessSpec {
            program: "sh".into(),
            args: vec!["-e".into(), "-c".into(), script.into()],
            working_dir: dir.to_path_buf(),
            env: vec![("STEP_VAR".into(), "v a l".into())],
            stdout: Sink::log(dir.join("s.out")),
            stderr: Sink::log(dir.join("s.err")),
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
        .await
        .end;
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
    async fn output_is_masked_copied_and_captured() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(
            dir.path(),
            "printf 'token=hunter2\\n'; printf 'e hunter2' >&2; echo more",
        );
        let secrets = Secrets::new(["hunter2".to_owned()]);
        s.stdout.copy = Some(dir.path().join("copy.txt"));
        s.stdout.capture = 10;
        s.stdout.secrets = secrets.clone();
        s.stderr.secrets = secrets;
        let out = run_process(s, &CancellationToken::new(), |_| {}).await;
        assert!(
            matches!(out.end, ProcessEnd::Exited(s) if s.success()),
            "{out:?}"
        );
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert_eq!(read("s.out"), "token=*******\nmore\n");
        assert_eq!(read("copy.txt"), "token=*******\nmore\n");
        assert_eq!(read("s.err"), "e *******");
        // The capture holds what the process wrote (for `output:`), cut at the limit.
        assert_eq!(out.stdout.bytes, b"token=hunt");
        assert!(out.stdout.truncated);
        assert!(out.stderr.bytes.is_empty());
    }

    #[tokio::test]
    async fn a_background_process_holding_the_pipe_does_not_hold_the_step() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(dir.path(), "sleep 30 & echo started");
        let mut leader = 0;
        let out = run_process(s, &CancellationToken::new(), |pid| leader = pid).await;
        assert!(
            matches!(out.end, ProcessEnd::Exited(s) if s.success()),
            "{out:?}"
        );
        signal_group(Pid::from_raw(leader as i32), Signal::SIGKILL);
        let log = std::fs::read_to_string(dir.path().join("s.out")).unwrap();
        assert_eq!(log, "started\n");
    }

    #[tokio::test]
    async fn missing_shell_is_a_spawn_failure() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(dir.path(), "true");
        s.program = "/nonexistent/shell".into();
        let end = run_process(s, &CancellationToken::new(), |_| {}).await.end;
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
        let end = run_process(s, &CancellationToken::new(), |_| {}).await.end;
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
            if dispatch_test_support::process_gone(pid) {
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
        let end = run_process(s, &stop, |_| {}).await.end;
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
        let end = run_process(s, &stop, |_| {}).await.end;
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
