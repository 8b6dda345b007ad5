//! `scheduler run` and `scheduler validate` as a user types them: the real binary, real step
//! processes, exit codes, the output on the terminal and signals.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use dispatch_test_support::process_gone;
use nix::sys::signal::Signal;

use crate::support::{bin, write, Proc, PATIENCE};

/// Runs `scheduler <args>` in `cwd` to its end (at most [`PATIENCE`]), with `HOME` pointing
/// into `cwd` so that nothing of the user's own home is read.
fn scheduler(cwd: &Path, args: &[&str]) -> Ran {
    scheduler_with(cwd, args, &[])
}

/// `scheduler run <dag>` in `cwd`.
fn run_file(cwd: &Path, dag: &Path) -> Ran {
    scheduler(cwd, &["run", dag.to_str().unwrap()])
}

/// The commonest call of these tests: the DAG file `file` holding `yaml`, in a fresh directory
/// (the first of what it returns; the test keeps it alive), run there with the params after
/// `--`. Returns the directory, the file and the run.
fn run_new_dag(file: &str, yaml: &str, params: &[&str]) -> (tempfile::TempDir, PathBuf, Ran) {
    let dir = tempfile::tempdir().unwrap();
    let dag = write(dir.path(), file, yaml);
    let mut args = vec!["run", dag.to_str().unwrap()];
    if !params.is_empty() {
        args.push("--");
        args.extend(params);
    }
    let out = scheduler(dir.path(), &args);
    (dir, dag, out)
}

fn scheduler_with(cwd: &Path, args: &[&str], envs: &[(&str, &Path)]) -> Ran {
    let mut cmd = Command::new(bin("scheduler"));
    cmd.args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("HOME", cwd.join("user-home"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("DISPATCH_") {
            cmd.env_remove(key);
        }
    }
    for (key, value) in envs {
        cmd.env(key, value);
    }
    let mut child = cmd.spawn().expect("spawn scheduler");
    let deadline = Instant::now() + PATIENCE;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("scheduler {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("scheduler output");
    Ran {
        args: args.join(" "),
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A finished `scheduler` call as the user saw it. Its checks print the whole call when they
/// fail, since the output is what tells why.
struct Ran {
    /// The arguments, which name the case in a failure.
    args: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn show(&self) -> String {
        format!(
            "scheduler {}\nstatus {}\n--- stdout\n{}\n--- stderr\n{}",
            self.args, self.status, self.stdout, self.stderr
        )
    }

    #[track_caller]
    fn assert_exit(&self, code: i32) {
        assert_eq!(self.status.code(), Some(code), "{}", self.show());
    }

    #[track_caller]
    fn assert_stdout_has(&self, text: &str) {
        assert!(
            self.stdout.contains(text),
            "stdout lacks `{text}`\n{}",
            self.show()
        );
    }

    #[track_caller]
    fn assert_stdout_lacks(&self, text: &str) {
        assert!(
            !self.stdout.contains(text),
            "stdout has `{text}`\n{}",
            self.show()
        );
    }

    #[track_caller]
    fn assert_stderr_has(&self, text: &str) {
        assert!(
            self.stderr.contains(text),
            "stderr lacks `{text}`\n{}",
            self.show()
        );
    }

    /// The stdout lines, trailing blanks cut.
    fn lines(&self) -> Vec<&str> {
        self.stdout.lines().map(str::trim_end).collect()
    }

    /// The stdout lines that start with `prefix`, without it, sorted: the output of the child
    /// runs of a fan-out, whose order between children is not fixed.
    fn sorted_lines_after(&self, prefix: &str) -> Vec<&str> {
        let mut lines: Vec<&str> = self
            .lines()
            .into_iter()
            .filter_map(|l| l.strip_prefix(prefix))
            .collect();
        lines.sort_unstable();
        lines
    }
}

/// A new empty directory `name` in `dir`, for a test that checks nothing is left in it.
fn empty_dir(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir(&path).unwrap();
    path
}

/// Starts `scheduler run` of the DAG `yaml` (saved in `dir` as `<step>.yaml`) whose step `step`
/// writes its pid to the file that stands for `PID_FILE` and then prints `started`, and
/// interrupts it (SIGINT, as Ctrl-C does) once that line is out. Returns the scheduler and the
/// pid file.
fn interrupt_when_started(
    dir: &Path,
    step: &str,
    yaml: &str,
    envs: &[(&str, &str)],
) -> (Proc, PathBuf) {
    let pid_file = dir.join("step.pid");
    let yaml = yaml.replace("PID_FILE", &pid_file.display().to_string());
    let dag = write(dir, &format!("{step}.yaml"), &yaml);
    let mut proc = Proc::spawn("scheduler", &["run", dag.to_str().unwrap()], envs);
    proc.wait_for(&format!("[{step}] started"));
    proc.signal(Signal::SIGINT);
    (proc, pid_file)
}

#[track_caller]
fn assert_empty(dir: &Path, what: &str) {
    let left: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
    assert!(left.is_empty(), "{what} left behind: {left:?}");
}

/// Waits until the process whose pid a step wrote to `pid_file` no longer exists (or is a
/// zombie), at most a few seconds.
fn assert_gone(pid_file: &Path) {
    let text = std::fs::read_to_string(pid_file).unwrap();
    let pid: i32 = text.trim().parse().unwrap();
    for _ in 0..500 {
        if process_gone(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("step process {pid} is still running");
}

#[test]
fn run_a_dag_file_streams_prefixed_output_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let dag = write(
        dir.path(),
        "build.yaml",
        "steps:\n  - name: build\n    command: echo compiling...; echo warning >&2\n  - name: test\n    command: echo all passed\n",
    );
    let tmp = empty_dir(dir.path(), "tmp");
    let out = scheduler_with(
        dir.path(),
        &["run", dag.to_str().unwrap()],
        &[("TMPDIR", &tmp)],
    );
    out.assert_exit(0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    let at = |line: &str| {
        lines
            .iter()
            .position(|l| *l == line)
            .unwrap_or_else(|| panic!("no line `{line}`\n{}", out.show()))
    };
    assert!(at("[build] compiling...") < at("[test] all passed"));
    out.assert_stderr_has("[build] warning");
    assert!(
        lines.last().unwrap().ends_with(": succeeded"),
        "{}",
        out.show()
    );
    assert_empty(&tmp, "temporary home");
}

#[test]
fn run_uses_the_current_directory_for_relative_paths() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().join("project");
    write(
        &cwd.join("scripts"),
        "hello.sh",
        "echo hello from the script\n",
    );
    let dag = write(
        &dir.path().join("elsewhere"),
        "rel.yaml",
        "steps:\n  - name: where\n    command: pwd\n  - name: script\n    command: sh ./scripts/hello.sh\n",
    );
    let out = run_file(&cwd, &dag);
    out.assert_exit(0);
    let cwd = cwd.canonicalize().unwrap();
    out.assert_stdout_has(&format!("[where] {}", cwd.display()));
    out.assert_stdout_has("[script] hello from the script");

    // A relative DAG path is taken from the current directory too.
    write(
        &cwd,
        "local.yaml",
        "steps:\n  - name: a\n    command: echo local\n",
    );
    let out = scheduler(&cwd, &["run", "local.yaml"]);
    out.assert_exit(0);
    out.assert_stdout_has("[a] local");
}

#[test]
fn run_shows_the_output_of_sub_dag_runs_under_the_calling_step() {
    let (_dir, _, out) = run_new_dag(
        "parent.yaml",
        "steps:\n  - id: deploy\n    call: child\n    params: \"WHO=kid\"\n  - id: fan\n    call: child\n    parallel:\n      items: [a, b]\n---\nname: child\nparams:\n  - WHO: nobody\nsteps:\n  - id: hello\n    run: echo \"hello $WHO\"\n",
        &[],
    );
    out.assert_exit(0);
    assert!(
        out.lines().contains(&"[deploy/hello] hello kid"),
        "{}",
        out.show()
    );
    // Each item of `parallel` is one child run, its params the item; the children are told
    // apart by their index.
    assert_eq!(
        out.sorted_lines_after("[fan["),
        ["0]/hello] hello a", "1]/hello] hello b"],
        "{}",
        out.show()
    );
}

#[test]
fn run_a_foreach_step_shows_each_body_and_passes_what_it_collected() {
    let (_dir, _, out) = run_new_dag(
        "each.yaml",
        r#"steps:
  - id: each
    foreach:
      items: [{name: ann}, {name: bob}]
      key: ${foreach.item.name}
      steps:
        - id: greet
          run: |
            echo "hi ${foreach.item.name}"
            printf 'line=hi %s\n' "${foreach.item.name}" >> "$DAGU_OUTPUT_FILE"
          outputs: [{name: line}]
      collect:
        line: ${steps.greet.outputs.line}
    output: ALL
  - id: report
    run: echo "${ALL.summary.succeeded} done, last ${each.outputs[1].line}"
"#,
        &[],
    );
    out.assert_exit(0);
    assert_eq!(
        out.sorted_lines_after("[each["),
        ["0]/greet] hi ann", "1]/greet] hi bob"],
        "{}",
        out.show()
    );
    assert!(
        out.lines().contains(&"[report] 2 done, last hi bob"),
        "{}",
        out.show()
    );
}

/// One DAG file run by hand, with what the user must see.
struct RunCase {
    /// The file's name, which also names the case in a failure.
    file: &'static str,
    yaml: &'static str,
    /// The params after `--`.
    params: &'static [&'static str],
    exit: i32,
    stdout_has: &'static [&'static str],
    stdout_lacks: &'static [&'static str],
    stderr_has: &'static [&'static str],
}

#[test]
fn run_exits_and_prints_as_the_run_ended() {
    let cases = [
        RunCase {
            file: "fails.yaml",
            yaml: "steps:\n  - name: ok\n    command: echo fine\n  - name: boom\n    command: echo about to fail; exit 3\n  - name: never\n    command: echo unreachable\n",
            params: &[],
            exit: 1,
            stdout_has: &["[boom] about to fail", "skipped"],
            stdout_lacks: &["unreachable"],
            stderr_has: &["failed", "exit status 3"],
        },
        RunCase {
            file: "partial.yaml",
            yaml: "steps:\n  - name: flaky\n    command: exit 1\n    continue_on:\n      failure: true\n  - name: after\n    command: echo still ran\n",
            params: &[],
            exit: 0,
            stdout_has: &["[after] still ran", ": partially_succeeded"],
            stdout_lacks: &[],
            stderr_has: &[],
        },
        // The params after the separator: the positional value replaces the first default;
        // values reach the step as environment variables, never as command text (the `$(...)`
        // stays a string).
        RunCase {
            file: "params.yaml",
            yaml: "params:\n  - GREETING: hello\n  - TARGET: world\n  - MOOD: calm\nsteps:\n  - name: say\n    command: echo \"$GREETING, $TARGET ($MOOD) $EXTRA\"\n",
            params: &["hi", "TARGET=big \"wide\" world", "EXTRA=$(echo not run)"],
            exit: 0,
            stdout_has: &["[say] hi, big \"wide\" world (calm) $(echo not run)"],
            stdout_lacks: &[],
            stderr_has: &[],
        },
    ];
    for case in cases {
        let (_dir, _, out) = run_new_dag(case.file, case.yaml, case.params);
        out.assert_exit(case.exit);
        for text in case.stdout_has {
            out.assert_stdout_has(text);
        }
        for text in case.stdout_lacks {
            out.assert_stdout_lacks(text);
        }
        for text in case.stderr_has {
            out.assert_stderr_has(text);
        }
    }
}

#[test]
fn run_a_dag_that_does_not_load_exits_1_naming_file_line_and_key() {
    let (dir, dag, out) = run_new_dag(
        "bad.yaml",
        "steps:\n  - name: a\n    command: echo never\n    bogus_key: 1\n",
        &[],
    );
    out.assert_exit(1);
    out.assert_stderr_has(&format!("{}:4", dag.display()));
    out.assert_stderr_has("bogus_key");
    out.assert_stdout_lacks("never");

    let out = scheduler(dir.path(), &["run", "missing.yaml"]);
    out.assert_exit(1);
    out.assert_stderr_has("missing.yaml");
}

#[test]
fn run_by_name_with_a_home_keeps_the_record_and_logs() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    write(
        &home.join("dags"),
        "hello.yaml",
        "steps:\n  - name: greet\n    command: echo hello\n",
    );
    let run_in_home =
        |name: &str| scheduler(dir.path(), &["run", "--home", home.to_str().unwrap(), name]);
    let out = run_in_home("hello");
    out.assert_exit(0);
    out.assert_stdout_has("[greet] hello");

    let runs: Vec<PathBuf> = std::fs::read_dir(home.join("data/runs/hello"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let record = std::fs::read_to_string(&runs[0]).unwrap();
    let last: serde_json::Value = serde_json::from_str(record.lines().last().unwrap()).unwrap();
    assert_eq!(last["status"]["status"], "succeeded", "{record}");
    assert_eq!(last["status"]["trigger"], "manual", "{record}");
    let run_id = last["status"]["run_id"].as_str().unwrap();
    let logs = home.join("logs/hello").join(run_id);
    assert!(logs.is_dir(), "{}", logs.display());

    // A scheduler holding the home (here: its tracker) keeps `scheduler run --home` off it.
    let _held = dispatch_tracker::Tracker::open(&home.join("data/tracker")).unwrap();
    let out = run_in_home("hello");
    out.assert_exit(1);
    out.assert_stderr_has("is a scheduler running on this home");

    let out = run_in_home("nope");
    out.assert_exit(1);
    out.assert_stderr_has("no DAG named `nope`");
}

#[test]
fn run_interrupted_ends_aborted_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let (mut proc, pid_file) = interrupt_when_started(
        dir.path(),
        "long",
        "steps:\n  - name: long\n    command: echo $$ > 'PID_FILE'; echo started; sleep 30\n  - name: next\n    command: echo never\nhandler_on:\n  abort:\n    command: echo cleaning up\n",
        &[],
    );
    let status = proc.wait();
    assert_eq!(status.code(), Some(1), "{}", proc.output());
    let stdout = proc.stdout();
    assert!(
        stdout.contains("[on_abort] cleaning up"),
        "{}",
        proc.output()
    );
    assert!(stdout.contains(": aborted"), "{}", proc.output());
    assert!(!stdout.contains("never"), "{}", proc.output());
    assert_gone(&pid_file);
}

#[test]
fn run_interrupted_twice_stops_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = empty_dir(dir.path(), "tmp");
    // The step ignores SIGTERM and the DAG allows a minute of clean-up: only the second
    // interrupt can end it quickly.
    let (mut proc, pid_file) = interrupt_when_started(
        dir.path(),
        "stubborn",
        "max_clean_up_time_sec: 60\nsteps:\n  - name: stubborn\n    command: trap '' TERM; echo $$ > 'PID_FILE'; echo started; sleep 60\n",
        &[("TMPDIR", tmp.to_str().unwrap())],
    );
    proc.wait_for("stopping the run");
    let second = Instant::now();
    proc.signal(Signal::SIGINT);
    let status = proc.wait();
    assert_eq!(status.code(), Some(1), "{}", proc.output());
    assert!(
        second.elapsed() < Duration::from_secs(15),
        "took {:?}",
        second.elapsed()
    );
    assert_gone(&pid_file);
    assert_empty(&tmp, "temporary home");
}

#[test]
fn validate_lists_every_bad_file_and_oks_the_good_ones() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(
        dir.path(),
        "good.yaml",
        "steps:\n  - name: a\n    command: echo never run > ran.txt\n",
    );
    // Three errors in one file: each is listed.
    let unknown = write(
        dir.path(),
        "unknown.yaml",
        "steps:\n  - name: a\n    command: 'true'\n    bogus_one: 1\n  - name: b\n    command: 'true'\n    bogus_two: 2\nbogus_top: 1\n",
    );
    let no_steps = write(dir.path(), "nosteps.yaml", "description: nothing\n");
    let out = scheduler(
        dir.path(),
        &[
            "validate",
            "good.yaml",
            unknown.to_str().unwrap(),
            no_steps.to_str().unwrap(),
        ],
    );
    out.assert_exit(1);
    assert_eq!(out.stdout, "ok good.yaml\n", "{}", out.show());
    for (line, key) in [(4, "bogus_one"), (7, "bogus_two"), (8, "bogus_top")] {
        assert!(
            out.stderr.lines().any(
                |l| l.starts_with(&format!("{}:{line}: ", unknown.display())) && l.contains(key)
            ),
            "no error for `{key}` at line {line}\n{}",
            out.show()
        );
    }
    out.assert_stderr_has(&no_steps.display().to_string());
    out.assert_stderr_has("steps");
    out.assert_stderr_has("2 of 3 DAG files are invalid");
    assert!(!dir.path().join("ran.txt").exists(), "validate ran a step");

    let out = scheduler(dir.path(), &["validate", good.to_str().unwrap()]);
    out.assert_exit(0);
    assert!(out.stderr.is_empty(), "{}", out.show());
}
