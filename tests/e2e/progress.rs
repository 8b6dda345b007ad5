//! The `progress` extension end to end: the real `hub` and `scheduler` binaries, real step
//! processes. Each step's log reaches the hub while the step runs, masked (the DAG's secrets and
//! the license key), and whole exactly once after the scheduler is killed mid-run and started
//! again, after a hub outage, and up to the per-job cap with its marker. Against a cloud that
//! does not advertise the extension, the scheduler makes only the calls of the base contract.
//!
//! The hub's copy is read from its SQLite store (the tables `job_steps`, `log_chunks`,
//! `job_progress`), the scheduler's from the step log files the executor wrote.

use std::net::TcpListener;
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use wiremock::ResponseTemplate;

use crate::cloud::Cloud;
use crate::support::{
    eventually, fixture, github_signature, hub_toml, push_binding, scheduler_against, write, Proc,
};

const WEBHOOK_SECRET: &str = "e2e-progress-webhook-secret";
const LICENSE_KEY: &str = "team-key-progress-e2e";
const DEPLOY_TOKEN: &str = "deploy-token-from-env-e2e";
const FILE_TOKEN: &str = "file-token-from-disk-e2e";
/// The license key as the hub must show it.
const MASK: &str = "*******";

/// A hub on a fixed loopback port (so that it can be started again at the same address) and a
/// scheduler home, with the DAG `logs`.
struct Pair {
    dir: tempfile::TempDir,
    port: u16,
    key_file: PathBuf,
}

impl Pair {
    fn new(dag: &str) -> Pair {
        let dir = tempfile::tempdir().unwrap();
        // A port the system gave out a moment ago is free; the hub binds it again at once.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        write(
            dir.path(),
            "hub.toml",
            &hub_toml(
                &format!("127.0.0.1:{port}"),
                &dir.path().join("hub-data"),
                WEBHOOK_SECRET,
                LICENSE_KEY,
                "",
                &push_binding("logs"),
            ),
        );
        let mut print_key = Proc::spawn(
            "hub",
            &[
                "print-public-key",
                "--data-dir",
                &dir.path().join("hub-data").display().to_string(),
            ],
            &[],
        );
        assert_eq!(print_key.wait().code(), Some(0), "{}", print_key.output());
        let key_file = write(dir.path(), "hub.pub", &print_key.stdout());
        let dags = dir.path().join("scheduler").join("dags");
        write(&dags, "logs.yaml", dag);
        write(&dags, "token.txt", &format!("{FILE_TOKEN}\n"));
        Pair {
            dir,
            port,
            key_file,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn hub(&self) -> Proc {
        let config = self.dir.path().join("hub.toml").display().to_string();
        let mut hub = Proc::spawn("hub", &["serve", "--config", &config], &[]);
        hub.wait_for("hub listening on");
        hub
    }

    fn scheduler(&self) -> Proc {
        scheduler_against(
            &self.dir.path().join("scheduler"),
            &self.url(),
            &["--license-public-key", &self.key_file.display().to_string()],
            &[
                ("DISPATCH_LICENSE_KEY", LICENSE_KEY),
                ("E2E_DEPLOY_TOKEN", DEPLOY_TOKEN),
            ],
        )
    }

    /// Sends a signed push webhook; returns the id of the one job it made.
    async fn push(&self, delivery: &str) -> String {
        let body = fixture("push/with-new-branch.payload.json");
        let response = reqwest::Client::new()
            .post(format!("{}/webhooks/github", self.url()))
            .header("content-type", "application/json")
            .header("x-github-event", "push")
            .header("x-github-delivery", delivery)
            .header(
                "x-hub-signature-256",
                github_signature(WEBHOOK_SECRET, &body),
            )
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        let answer: Value = response.json().await.unwrap();
        answer["job_ids"][0].as_str().unwrap().to_owned()
    }

    fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open_with_flags(
            self.dir.path().join("hub-data").join("hub.sqlite3"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap()
    }

    /// The hub's copy of one step stream.
    fn hub_log(&self, job_id: &str, step: &str, stream: &str) -> String {
        let db = self.db();
        let mut stmt = db
            .prepare(
                "SELECT start_offset, data FROM log_chunks
                 WHERE job_id = ?1 AND step = ?2 AND stream = ?3 ORDER BY end_offset",
            )
            .unwrap();
        let mut text = String::new();
        let rows = stmt
            .query_map(rusqlite::params![job_id, step, stream], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })
            .unwrap();
        for row in rows {
            let (start, data) = row.unwrap();
            assert_eq!(start as usize, text.len(), "chunks follow each other");
            text.push_str(&data);
        }
        text
    }

    fn job_state(&self, job_id: &str) -> Option<(String, String)> {
        self.db()
            .query_row(
                "SELECT state, result_status FROM jobs WHERE id = ?1",
                [job_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .ok()
    }

    fn step(&self, job_id: &str, step: &str) -> Option<(String, i64, i64)> {
        self.db()
            .query_row(
                "SELECT status, started_ms, finished_ms FROM job_steps
                 WHERE job_id = ?1 AND name = ?2",
                [job_id, step],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .ok()
    }

    fn progress(&self, job_id: &str) -> Option<(i64, i64, bool)> {
        self.db()
            .query_row(
                "SELECT run_started_ms, log_bytes, truncated FROM job_progress WHERE job_id = ?1",
                [job_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .ok()
    }

    /// The scheduler's own log file of a step stream (`<step>.out` / `.err` in the run's
    /// directory).
    fn local_log(&self, step: &str, suffix: &str) -> Option<Vec<u8>> {
        let name = format!("{step}.{suffix}");
        find_file(&self.dir.path().join("scheduler"), &name).map(|p| std::fs::read(p).unwrap())
    }

    async fn finished(&self, job_id: &str) -> String {
        eventually("the job finished on the hub", async || {
            self.job_state(job_id)
                .filter(|(state, _)| state == "finished")
                .map(|(_, status)| status)
        })
        .await
    }
}

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        } else if path.file_name().and_then(|n| n.to_str()) == Some(name) {
            return Some(path);
        }
    }
    None
}

/// The text the hub must hold for a local log: the license key masked (the DAG's secrets the
/// executor already masked in the file).
fn as_uploaded(local: &[u8]) -> String {
    String::from_utf8(local.to_vec())
        .unwrap()
        .replace(LICENSE_KEY, MASK)
}

fn assert_nothing_secret(text: &str) {
    for secret in [LICENSE_KEY, DEPLOY_TOKEN, FILE_TOKEN] {
        assert!(!text.contains(secret), "`{secret}` reached the hub");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_go_live_masked_and_whole_once_across_a_scheduler_kill_and_a_hub_outage() {
    let gate1 = tempfile::tempdir().unwrap();
    let (go, end) = (gate1.path().join("go"), gate1.path().join("end"));
    // The license key comes where the first call of the burst ends its 128 KiB of text (and,
    // when the burst is read at once, where a 64 KiB read of the file ends): masking has to
    // see both sides of the cut. The unit tests of `logtext` try every cut.
    let dag = format!(
        r#"secrets:
  - name: DEPLOY_TOKEN
    provider: env
    key: E2E_DEPLOY_TOKEN
  - name: FILE_TOKEN
    provider: file
    key: token.txt
steps:
  - name: talk
    command: |
      echo "deploy=$DEPLOY_TOKEN file=$FILE_TOKEN"
      echo "to stderr" >&2
      while [ ! -e '{go}' ]; do sleep 0.1; done
      head -c 131069 /dev/zero | tr '\0' 'a'
      printf '%s\n' '{LICENSE_KEY}'
      head -c 3000000 /dev/zero | tr '\0' 'b'
      echo
      while [ ! -e '{end}' ]; do sleep 0.1; done
      echo done
"#,
        go = go.display(),
        end = end.display(),
    );
    let pair = Pair::new(&dag);
    let mut hub = pair.hub();
    let mut scheduler = pair.scheduler();
    let job = pair.push("progress-e2e-1").await;

    // Live: the first line is on the hub while the step still runs, its secrets masked.
    let first = eventually("the first line on the hub", async || {
        let text = pair.hub_log(&job, "talk", "stdout");
        (!text.is_empty()).then_some(text)
    })
    .await;
    assert_eq!(first, format!("deploy={MASK} file={MASK}\n"));
    let (status, started, finished) = pair.step(&job, "talk").unwrap();
    assert_eq!((status.as_str(), finished), ("running", 0));
    assert!(started > 0);
    assert!(pair.progress(&job).unwrap().0 > 0, "run start sent");
    eventually("stderr on the hub", async || {
        (pair.hub_log(&job, "talk", "stderr") == "to stderr\n").then_some(())
    })
    .await;

    // The step writes 3 MB at once; the scheduler dies before it has sent it all.
    std::fs::write(&go, "").unwrap();
    let local_len = eventually("the burst in the local log", async || {
        pair.local_log("talk", "out")
            .map(|l| l.len())
            .filter(|&n| n > 3_000_000)
    })
    .await;
    scheduler.signal(Signal::SIGKILL);
    scheduler.wait();
    let held = pair.hub_log(&job, "talk", "stdout").len();
    assert!(
        held < local_len,
        "the hub had it all before the kill: {held}"
    );

    // The hub goes away too, and the scheduler starts again without it.
    hub.signal(Signal::SIGTERM);
    assert_eq!(hub.wait().code(), Some(0), "{}", hub.output());
    let mut scheduler = pair.scheduler();
    std::fs::write(&end, "").unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let hub = pair.hub();

    let status = pair.finished(&job).await;
    let local = pair.local_log("talk", "out").unwrap();
    let uploaded = pair.hub_log(&job, "talk", "stdout");
    assert_eq!(uploaded.len(), as_uploaded(&local).len());
    assert!(uploaded == as_uploaded(&local), "the hub's copy differs");
    assert!(uploaded.contains(&format!("a{MASK}\nbbb")));
    assert_nothing_secret(&uploaded);
    let (step_status, _, finished) = pair.step(&job, "talk").unwrap();
    assert!(finished > 0, "step {step_status} has an end");
    assert_ne!(step_status, "running");
    assert_ne!(status, "succeeded", "the killed run cannot have succeeded");
    let (_, log_bytes, truncated) = pair.progress(&job).unwrap();
    assert_eq!(log_bytes as usize, uploaded.len() + "to stderr\n".len());
    assert!(!truncated);
    let db = pair.db();
    let complete: (bool, bool) = db
        .query_row(
            "SELECT stdout_complete, stderr_complete FROM job_steps WHERE job_id = ?1",
            [&job],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(complete, (true, true));

    scheduler.signal(Signal::SIGTERM);
    assert_eq!(scheduler.wait().code(), Some(0), "{}", scheduler.output());
    drop(hub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_goes_on_through_a_hub_outage_is_uploaded_when_the_hub_is_back() {
    let gates = tempfile::tempdir().unwrap();
    let go = gates.path().join("go");
    let dag = format!(
        r#"steps:
  - name: first
    command: |
      echo one
      while [ ! -e '{go}' ]; do sleep 0.1; done
      seq 1 20000
  - name: second
    depends: [first]
    command: echo two
"#,
        go = go.display(),
    );
    let pair = Pair::new(&dag);
    let mut hub = pair.hub();
    let mut scheduler = pair.scheduler();
    let job = pair.push("progress-e2e-2").await;
    eventually("the first line on the hub", async || {
        (pair.hub_log(&job, "first", "stdout") == "one\n").then_some(())
    })
    .await;
    hub.signal(Signal::SIGTERM);
    assert_eq!(hub.wait().code(), Some(0), "{}", hub.output());
    std::fs::write(&go, "").unwrap();
    eventually("the run ended here", async || {
        pair.local_log("second", "out").filter(|l| l == b"two\n")
    })
    .await;
    let _hub = pair.hub();
    assert_eq!(pair.finished(&job).await, "succeeded");
    let local = pair.local_log("first", "out").unwrap();
    assert_eq!(pair.hub_log(&job, "first", "stdout"), as_uploaded(&local));
    assert_eq!(pair.hub_log(&job, "second", "stdout"), "two\n");
    let steps: Vec<(String, String)> = pair
        .db()
        .prepare("SELECT name, status FROM job_steps WHERE job_id = ?1 ORDER BY position")
        .unwrap()
        .query_map([&job], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        steps,
        [
            ("first".to_owned(), "succeeded".to_owned()),
            ("second".to_owned(), "succeeded".to_owned())
        ]
    );
    scheduler.signal(Signal::SIGTERM);
    assert_eq!(scheduler.wait().code(), Some(0), "{}", scheduler.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_past_the_cap_is_cut_there_with_the_truncated_marker() {
    let cap = dispatch_protocol::DEFAULT_JOB_LOG_CAP as usize;
    let dag = format!(
        "steps:\n  - name: loud\n    command: head -c {} /dev/zero | tr '\\0' 'x'\n",
        cap + 1_000_000
    );
    let pair = Pair::new(&dag);
    let _hub = pair.hub();
    let mut scheduler = pair.scheduler();
    let job = pair.push("progress-e2e-3").await;
    assert_eq!(pair.finished(&job).await, "succeeded");
    let (_, log_bytes, truncated) = pair.progress(&job).unwrap();
    assert_eq!((log_bytes as usize, truncated), (cap, true));
    let uploaded = pair.hub_log(&job, "loud", "stdout");
    assert_eq!(uploaded.len(), cap);
    assert!(uploaded.bytes().all(|b| b == b'x'));
    scheduler.signal(Signal::SIGTERM);
    assert_eq!(scheduler.wait().code(), Some(0), "{}", scheduler.output());
}

/// A cloud that speaks only the base contract (no `X-Dispatch-Extensions`): the scheduler runs
/// a job whose step writes a log, and makes no call outside the five endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_without_the_extension_gets_only_the_original_calls() {
    const JOB_ID: &str = "job-plain-1";
    let home = tempfile::tempdir().unwrap();
    write(
        &home.path().join("dags"),
        "logs.yaml",
        "steps:\n  - name: talk\n    command: seq 1 1000\n",
    );
    let cloud = Cloud::start("lic-plain", "hb-plain", 7).await;
    let job = json!({"id": JOB_ID, "license_id": "lic-plain", "dag_name": "logs",
                     "event_name": "push", "repository_name": "Codertocat/Hello-World"});
    cloud
        .hand_out_once(JOB_ID, ResponseTemplate::new(200).set_body_json(job))
        .await;
    let home_dir = home.path().display().to_string();
    let mut args = vec!["start", "--home", &home_dir];
    let cloud_args = cloud.scheduler_args();
    args.extend(cloud_args.iter().map(String::as_str));
    let mut scheduler = Proc::spawn("scheduler", &args, &[("DISPATCH_LICENSE_KEY", "key-plain")]);
    let finish = format!("/api/v1/github/dispatch/{JOB_ID}/finish");
    eventually("the finish", async || {
        let requests = cloud.requests().await;
        requests
            .iter()
            .any(|r| r.url.path() == finish)
            .then_some(())
    })
    .await;
    // A few more passes of every loop, in which an upload would show.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    scheduler.signal(Signal::SIGTERM);
    assert_eq!(scheduler.wait().code(), Some(0), "{}", scheduler.output());
    let allowed = [
        "/api/v1/licenses/activate".to_owned(),
        "/api/v1/licenses/heartbeat".to_owned(),
        "/api/v1/github/dispatch/pull".to_owned(),
        format!("/api/v1/github/dispatch/{JOB_ID}/accept"),
        finish,
    ];
    for request in cloud.requests().await {
        assert!(
            allowed.contains(&request.url.path().to_owned()),
            "unexpected call {} {}",
            request.method,
            request.url.path()
        );
    }
}
