//! `scheduler` with its embedded hub: `scheduler demo`, and a webhook sent to the printed URL
//! with the generated secret, through a forced stop (second signal) and a restart.

use nix::sys::signal::Signal;

use crate::support::{deliver_push, eventually, write, Proc};

#[test]
fn demo_exits_0_with_every_job_as_expected() {
    let mut demo = Proc::spawn("scheduler", &["demo"], &[]);
    let status = demo.wait();
    assert_eq!(status.code(), Some(0), "{}", demo.output());
    let out = demo.stdout();
    for row in [
        "build          succeeded  succeeded ok",
        "test-pr        succeeded  succeeded ok",
        "lint           failed     failed ok",
        "release        succeeded  succeeded ok",
        "long           aborted    aborted ok",
        "cancel (long)  answered   answered ok",
    ] {
        assert!(out.contains(row), "missing `{row}` in\n{out}");
    }
    assert!(
        out.contains("GITHUB_SHA=6113728f27ae82c7b1a177c8d03f9e96e0adf246"),
        "{out}"
    );
    assert!(out.contains("all 6 jobs ended as expected"), "{out}");
}

/// Starts `scheduler start` with the embedded hub, a binding push → `sleepy` and a DAG whose
/// step touches a file and sleeps; sends a push webhook and waits for the step to run.
/// Returns the process, its start arguments and the job id.
async fn start_with_a_running_job(
    home: &std::path::Path,
    extra: &[&str],
) -> (Proc, Vec<String>, String) {
    let started = home.join("started");
    write(
        &home.join("dags"),
        "sleepy.yaml",
        &format!(
            "steps:\n  - name: wait\n    command: touch '{}' && sleep 20\n",
            started.display()
        ),
    );
    write(
        home,
        "bindings.toml",
        "[[binding]]\nrepository = \"Codertocat/Hello-World\"\ndag = \"sleepy\"\ntrigger = \"auto\"\nevent_name = \"push\"\n",
    );
    let mut args: Vec<String> = [
        "start",
        "--home",
        &home.display().to_string(),
        "--hub-listen",
        "127.0.0.1:0",
        "--report-interval",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut scheduler = Proc::spawn("scheduler", &arg_refs, &[]);
    let url = scheduler.wait_for("webhook URL:");
    let secret = std::fs::read_to_string(home.join("webhook_secret")).unwrap();

    let response = deliver_push(
        &reqwest::Client::new(),
        &url,
        secret.trim(),
        "e2e-embedded-1",
    )
    .await;
    assert_eq!(response.status(), 202);
    let answer: serde_json::Value = response.json().await.unwrap();
    let job_id = answer["job_ids"][0].as_str().unwrap().to_owned();
    eventually("the step to start", async || started.exists().then_some(())).await;
    (scheduler, args, job_id)
}

/// Starts the scheduler again with `args` and waits until it has finished `job_id` with the
/// status word `status`.
fn restart_finishes(args: &[String], job_id: &str, status: &str) -> Proc {
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut again = Proc::spawn("scheduler", &arg_refs, &[]);
    let finished = again.wait_for(&format!("dispatch job finished job_id={job_id}"));
    assert!(
        finished.contains(&format!("status=\"{status}\"")),
        "{finished}\n{}",
        again.output()
    );
    again
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_signal_stops_runs_after_the_grace_and_exits_0() {
    let home = tempfile::tempdir().unwrap();
    let (mut scheduler, args, job_id) =
        start_with_a_running_job(home.path(), &["--shutdown-grace", "1"]).await;
    scheduler.stop_with(Signal::SIGINT);
    assert!(
        scheduler.stderr().contains(&format!(
            "run finished dag=sleepy run_id={job_id} status=aborted"
        )),
        "{}",
        scheduler.output()
    );
    // The job was not finished before the exit; the next start reports the aborted run.
    let mut again = restart_finishes(&args, &job_id, "aborted");
    again.stop_with(Signal::SIGTERM);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_signal_stops_at_once_and_restart_finishes_the_job() {
    let home = tempfile::tempdir().unwrap();
    let (mut scheduler, args, job_id) = start_with_a_running_job(home.path(), &[]).await;
    // The first signal starts a graceful stop, which waits for the running step; the second
    // one ends the process at once.
    scheduler.signal(Signal::SIGTERM);
    scheduler.wait_for("shutting down gracefully");
    scheduler.signal(Signal::SIGTERM);
    let status = scheduler.wait();
    assert_eq!(status.code(), Some(1), "{}", scheduler.output());

    // The tracker kept the job: the next start finishes it with the run's real outcome (the
    // run was cut off, so recovery marks it failed) and reports it to the hub exactly once.
    let mut again = restart_finishes(&args, &job_id, "failed");
    again.stop_with(Signal::SIGINT);
    let runs = again
        .stderr()
        .matches(&format!("dispatch job finished job_id={job_id}"))
        .count();
    assert_eq!(runs, 1, "{}", again.output());
}
