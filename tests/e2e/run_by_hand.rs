//! `scheduler run` and `scheduler validate` as a user types them: the real binary, real step
//! processes, exit codes, the output on the terminal and signals.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::{bin, write, Proc, PATIENCE};

/// Runs `scheduler <args>` in `cwd` to its end (at most [`PATIENCE`]), with `HOME` pointing
/// into `cwd` so that nothing of the user's own home is read.
fn scheduler(cwd: &Path, args: &[&str]) -> Output {
    scheduler_with(cwd, args, &[])
}

fn scheduler_with(cwd: &Path, args: &[&str], envs: &[(&str, &Path)]) -> Output {
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
    child.wait_with_output().expect("scheduler output")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn show(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// Waits until the process `pid` no longer exists (or is a zombie), at most a few seconds.
fn assert_gone(pid: &str) {
    let stat = format!("/proc/{}/stat", pid.trim());
    for _ in 0..500 {
        match std::fs::read_to_string(&stat) {
            Err(_) => return,
            Ok(s) if s[s.rfind(')').unwrap() + 1..].trim_start().starts_with('Z') => return,
            Ok(_) => std::thread::sleep(Duration::from_millis(10)),
        }
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
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let out = scheduler_with(
        dir.path(),
        &["run", dag.to_str().unwrap()],
        &[("TMPDIR", &tmp)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let at = |line: &str| {
        lines
            .iter()
            .position(|l| *l == line)
            .unwrap_or_else(|| panic!("no line `{line}`\n{}", show(&out)))
    };
    assert!(at("[build] compiling...") < at("[test] all passed"));
    assert!(
        text(&out.stderr).contains("[build] warning"),
        "{}",
        show(&out)
    );
    assert!(
        lines.last().unwrap().ends_with(": succeeded"),
        "{}",
        show(&out)
    );
    // The temporary home is gone.
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().collect();
    assert!(left.is_empty(), "{left:?}");
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
    let out = scheduler(&cwd, &["run", dag.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let stdout = text(&out.stdout);
    let cwd = cwd.canonicalize().unwrap();
    assert!(
        stdout.contains(&format!("[where] {}", cwd.display())),
        "{}",
        show(&out)
    );
    assert!(
        stdout.contains("[script] hello from the script"),
        "{}",
        show(&out)
    );

    // A relative DAG path is taken from the current directory too.
    write(
        &cwd,
        "local.yaml",
        "steps:\n  - name: a\n    command: echo local\n",
    );
    let out = scheduler(&cwd, &["run", "local.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(text(&out.stdout).contains("[a] local"), "{}", show(&out));
}

#[test]
fn run_shows_the_output_of_sub_dag_runs_under_the_calling_step() {
    let dir = tempfile::tempdir().unwrap();
    let dag = write(
        dir.path(),
        "parent.yaml",
        "steps:\n  - id: deploy\n    call: child\n    params: \"WHO=kid\"\n  - id: fan\n    call: child\n    parallel:\n      items: [a, b]\n---\nname: child\nparams:\n  - WHO: nobody\nsteps:\n  - id: hello\n    run: echo \"hello $WHO\"\n",
    );
    let out = scheduler(dir.path(), &["run", dag.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().map(str::trim_end).collect();
    assert!(
        lines.contains(&"[deploy/hello] hello kid"),
        "{}",
        show(&out)
    );
    // Each item of `parallel` is one child run, its params the item; the children are told
    // apart by their index.
    let mut fan: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("[fan["))
        .collect();
    fan.sort_unstable();
    assert_eq!(
        fan,
        ["0]/hello] hello a", "1]/hello] hello b"],
        "{}",
        show(&out)
    );
}

#[test]
fn run_a_foreach_step_shows_each_body_and_passes_what_it_collected() {
    let dir = tempfile::tempdir().unwrap();
    let dag = write(
        dir.path(),
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
    );
    let out = scheduler(dir.path(), &["run", dag.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().map(str::trim_end).collect();
    let mut bodies: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("[each["))
        .collect();
    bodies.sort_unstable();
    assert_eq!(
        bodies,
        ["0]/greet] hi ann", "1]/greet] hi bob"],
        "{}",
        show(&out)
    );
    assert!(
        lines.contains(&"[report] 2 done, last hi bob"),
        "{}",
        show(&out)
    );
}

#[test]
fn run_with_a_failing_step_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let dag = write(
        dir.path(),
        "fails.yaml",
        "steps:\n  - name: ok\n    command: echo fine\n  - name: boom\n    command: echo about to fail; exit 3\n  - name: never\n    command: echo unreachable\n",
    );
    let out = scheduler(dir.path(), &["run", dag.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("[boom] about to fail"), "{}", show(&out));
    assert!(!stdout.contains("unreachable"), "{}", show(&out));
    assert!(stdout.contains("skipped"), "{}", show(&out));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("failed") && stderr.contains("exit status 3"),
        "{}",
        show(&out)
    );
}

#[test]
fn run_partially_succeeded_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let dag = write(
        dir.path(),
        "partial.yaml",
        "steps:\n  - name: flaky\n    command: exit 1\n    continue_on:\n      failure: true\n  - name: after\n    command: echo still ran\n",
    );
    let out = scheduler(dir.path(), &["run", dag.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("[after] still ran"), "{}", show(&out));
    assert!(stdout.contains(": partially_succeeded"), "{}", show(&out));
}

#[test]
fn run_a_dag_that_does_not_load_exits_1_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let dag = write(
        dir.path(),
        "bad.yaml",
        "steps:\n  - name: a\n    command: echo never\n    bogus_key: 1\n",
    );
    let out = scheduler(dir.path(), &["run", dag.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:4", dag.display())) && stderr.contains("bogus_key"),
        "{}",
        show(&out)
    );
    assert!(!text(&out.stdout).contains("never"), "{}", show(&out));

    let out = scheduler(dir.path(), &["run", "missing.yaml"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(text(&out.stderr).contains("missing.yaml"), "{}", show(&out));
}

#[test]
fn run_params_after_the_separator_reach_the_step_environment() {
    let dir = tempfile::tempdir().unwrap();
    let dag = write(
        dir.path(),
        "params.yaml",
        "params:\n  - GREETING: hello\n  - TARGET: world\n  - MOOD: calm\nsteps:\n  - name: say\n    command: echo \"$GREETING, $TARGET ($MOOD) $EXTRA\"\n",
    );
    let out = scheduler(
        dir.path(),
        &[
            "run",
            dag.to_str().unwrap(),
            "--",
            "hi",
            "TARGET=big \"wide\" world",
            "EXTRA=$(echo not run)",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    // The positional value replaced the first default; values reach the step as environment
    // variables, never as command text (the `$(...)` stays a string).
    assert!(
        text(&out.stdout).contains("[say] hi, big \"wide\" world (calm) $(echo not run)"),
        "{}",
        show(&out)
    );
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
    let out = scheduler(
        dir.path(),
        &["run", "--home", home.to_str().unwrap(), "hello"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(
        text(&out.stdout).contains("[greet] hello"),
        "{}",
        show(&out)
    );

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
    let out = scheduler(
        dir.path(),
        &["run", "--home", home.to_str().unwrap(), "hello"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        text(&out.stderr).contains("is a scheduler running on this home"),
        "{}",
        show(&out)
    );

    let out = scheduler(
        dir.path(),
        &["run", "--home", home.to_str().unwrap(), "nope"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        text(&out.stderr).contains("no DAG named `nope`"),
        "{}",
        show(&out)
    );
}

#[test]
fn run_interrupted_ends_aborted_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("step.pid");
    let dag = write(
        dir.path(),
        "long.yaml",
        &format!(
            "steps:\n  - name: long\n    command: echo $$ > '{}'; echo started; sleep 30\n  - name: next\n    command: echo never\nhandler_on:\n  abort:\n    command: echo cleaning up\n",
            pid_file.display()
        ),
    );
    let mut proc = Proc::spawn("scheduler", &["run", dag.to_str().unwrap()], &[]);
    proc.wait_for("[long] started");
    proc.signal(Signal::SIGINT);
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
    assert_gone(&std::fs::read_to_string(&pid_file).unwrap());
}

#[test]
fn run_interrupted_twice_stops_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("step.pid");
    // The step ignores SIGTERM and the DAG allows a minute of clean-up: only the second
    // interrupt can end it quickly.
    let dag = write(
        dir.path(),
        "stubborn.yaml",
        &format!(
            "max_clean_up_time_sec: 60\nsteps:\n  - name: stubborn\n    command: trap '' TERM; echo $$ > '{}'; echo started; sleep 60\n",
            pid_file.display()
        ),
    );
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let mut proc = Proc::spawn(
        "scheduler",
        &["run", dag.to_str().unwrap()],
        &[("TMPDIR", tmp.to_str().unwrap())],
    );
    proc.wait_for("[stubborn] started");
    proc.signal(Signal::SIGINT);
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
    assert_gone(&std::fs::read_to_string(&pid_file).unwrap());
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().collect();
    assert!(left.is_empty(), "temporary home left behind: {left:?}");
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
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert_eq!(text(&out.stdout), "ok good.yaml\n", "{}", show(&out));
    let stderr = text(&out.stderr);
    for (line, key) in [(4, "bogus_one"), (7, "bogus_two"), (8, "bogus_top")] {
        assert!(
            stderr.lines().any(
                |l| l.starts_with(&format!("{}:{line}: ", unknown.display())) && l.contains(key)
            ),
            "{}",
            show(&out)
        );
    }
    assert!(
        stderr.contains(&no_steps.display().to_string()) && stderr.contains("steps"),
        "{}",
        show(&out)
    );
    assert!(
        stderr.contains("2 of 3 DAG files are invalid"),
        "{}",
        show(&out)
    );
    assert!(!dir.path().join("ran.txt").exists(), "validate ran a step");

    let out = scheduler(dir.path(), &["validate", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(text(&out.stderr).is_empty(), "{}", show(&out));
}
