//! Crash anywhere: signed webhooks go into the real `hub`, the real `scheduler` pulls and runs
//! the jobs, and the test SIGKILLs the scheduler at random moments (and restarts it) until every
//! job is finished. Then, for every job: the hub finished it exactly once, with the status its
//! DAG run really produced; no DAG run started twice; and the scheduler's tracker is empty.
//!
//! The randomness is a xorshift seeded from `CRASH_SEED` (or the clock); the seed is printed at
//! the start and in every assertion message, so `CRASH_SEED=<seed> cargo test -p dispatch-e2e
//! crash` replays the same kill schedule (the machine's timing still varies).
//!
//! The scheduler talks to the hub through a recording proxy in this process: the hub answers a
//! repeated finish with the same status like the first one and keeps no count, so the proxy is
//! where repeated and refused finishes become visible.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde_json::Value;

use crate::support::{bin, deliver_push, hub_public_key, hub_toml, push_binding, serve_hub, write};

const WEBHOOK_SECRET: &str = "crash-webhook-secret";
const LICENSE_KEY: &str = "crash-license-key";
/// Each push matches two bindings: one job of `crash-ok`, one of `crash-bad`.
const WEBHOOKS: usize = 30;
const MIN_KILLS: usize = 10;
/// After this many kills the scheduler is left alone to drain what is left.
const MAX_KILLS: usize = 40;
/// The whole test, kills and drain, must be done by then.
const DEADLINE: Duration = Duration::from_secs(170);
/// What recovery writes into a run its dead scheduler left `running`.
const TERMINATED: &str = "process terminated unexpectedly";

/// xorshift64: enough to spread kill times; no dependency, replayable from the seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform enough in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn seed() -> u64 {
    match std::env::var("CRASH_SEED") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("CRASH_SEED `{text}` is not a u64")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

/// One finish call the proxy forwarded, with the hub's answer (`None`: the hub did not answer).
#[derive(Debug, Clone)]
struct FinishCall {
    job_id: String,
    result_status: String,
    answer: Option<u16>,
}

/// A loopback HTTP proxy in front of the hub that records every finish call. Each request is
/// forwarded inside its handler, so when a killed scheduler's connection closes, the server drops
/// the handler and with it the call to the hub, just as the hub drops the handler of a direct
/// connection. (Forwarding from a task of its own would leave the long-polls of dead schedulers
/// claiming jobs for nobody, until the hub rejects those jobs after `MAX_CLAIMS` lost claims.)
struct Proxy {
    upstream: String,
    client: reqwest::Client,
    finishes: Mutex<Vec<FinishCall>>,
}

impl Proxy {
    async fn start(upstream: String) -> (Arc<Proxy>, String) {
        let proxy = Arc::new(Proxy {
            upstream,
            client: reqwest::Client::new(),
            finishes: Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(proxy.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (proxy, url)
    }

    fn finishes(&self) -> Vec<FinishCall> {
        self.finishes.lock().unwrap().clone()
    }
}

async fn forward(
    axum::extract::State(proxy): axum::extract::State<Arc<Proxy>>,
    request: axum::extract::Request,
) -> axum::response::Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let url = format!(
        "{}{}",
        proxy.upstream,
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut outgoing = proxy.client.request(
        reqwest::Method::from_bytes(parts.method.as_str().as_bytes()).unwrap(),
        url,
    );
    for (name, value) in &parts.headers {
        if !matches!(
            name.as_str(),
            "host" | "content-length" | "connection" | "transfer-encoding"
        ) {
            outgoing = outgoing.header(name.as_str(), value.as_bytes());
        }
    }
    let finished_job = path
        .strip_prefix("/api/v1/github/dispatch/")
        .and_then(|rest| rest.strip_suffix("/finish"))
        .map(str::to_owned);
    let status_word = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["result_status"].as_str().map(str::to_owned))
        .unwrap_or_default();
    // Recorded on arrival: a call abandoned by a dying scheduler keeps `answer: None`.
    let index = finished_job.map(|job_id| {
        let mut calls = proxy.finishes.lock().unwrap();
        calls.push(FinishCall {
            job_id,
            result_status: status_word,
            answer: None,
        });
        calls.len() - 1
    });
    let Ok(upstream) = outgoing.body(body).send().await else {
        return axum::response::Response::builder()
            .status(502)
            .body(axum::body::Body::from("hub unreachable"))
            .unwrap();
    };
    let status = upstream.status().as_u16();
    if let Some(i) = index {
        proxy.finishes.lock().unwrap()[i].answer = Some(status);
    }
    let headers = upstream.headers().clone();
    let bytes = upstream.bytes().await.unwrap_or_default();
    let mut response = axum::response::Response::builder().status(status);
    for (name, value) in &headers {
        if !matches!(
            name.as_str(),
            "content-length" | "connection" | "transfer-encoding"
        ) {
            response = response.header(name.as_str(), value.as_bytes());
        }
    }
    response.body(axum::body::Body::from(bytes)).unwrap()
}

/// One life of the scheduler; output goes to a file so that step processes it leaves behind
/// hold no pipe of the test open.
struct Scheduler {
    child: Child,
    log: PathBuf,
}

impl Scheduler {
    fn start(life: usize, root: &Path, home: &Path, cloud_url: &str, public_key: &str) -> Self {
        let log = root.join(format!("scheduler-{life:02}.log"));
        let out = File::create(&log).unwrap();
        let mut cmd = Command::new(bin("scheduler"));
        cmd.args(["start", "--home"])
            .arg(home)
            .args(["--cloud-url", cloud_url])
            .args(["--license-public-key", public_key])
            .args(["--poll-interval", "1", "--report-interval", "1"])
            .args(["--long-poll", "5", "--max-concurrent-runs", "4"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("DISPATCH_") {
                cmd.env_remove(key);
            }
        }
        // The key goes by environment, not argv, so it stays out of `ps`.
        cmd.env("RUST_LOG", "info")
            .env("DISPATCH_LICENSE_KEY", LICENSE_KEY);
        let child = cmd.spawn().expect("spawn scheduler");
        Scheduler { child, log }
    }

    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap())
    }

    fn output(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        // The tail is where a failure shows; whole logs would drown the message.
        let start = text.len().saturating_sub(6_000);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        format!("--- {} (tail)\n{}", self.log.display(), &text[start..])
    }

    fn kill(&mut self) {
        nix::sys::signal::kill(self.pid(), Signal::SIGKILL).expect("SIGKILL scheduler");
        self.child.wait().expect("reap scheduler");
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The hub's job counts by state, from its `/metrics`.
async fn hub_job_counts(client: &reqwest::Client, hub_url: &str) -> HashMap<String, u64> {
    let Ok(response) = client.get(format!("{hub_url}/metrics")).send().await else {
        return HashMap::new();
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("dispatch_hub_jobs{state=\"")?;
            let (state, count) = rest.split_once("\"} ")?;
            Some((state.to_owned(), count.trim().parse().ok()?))
        })
        .collect()
}

async fn send_push(
    client: &reqwest::Client,
    hub_url: &str,
    delivery: usize,
    tag: &str,
) -> Vec<String> {
    let response = deliver_push(
        client,
        &format!("{hub_url}/webhooks/github"),
        WEBHOOK_SECRET,
        &format!("crash-delivery-{delivery}"),
    )
    .await;
    assert_eq!(response.status(), 202, "{tag} webhook {delivery}");
    let answer: Value = response.json().await.unwrap();
    let ids: Vec<String> = answer["job_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("{tag} no job_ids in {answer}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 2, "{tag} {answer}");
    ids
}

/// A job's row in the hub's store.
#[derive(Debug)]
struct HubJob {
    state: String,
    dag: String,
    dag_run_id: String,
    result_status: String,
    result_summary: String,
    claims: i64,
}

fn read_hub_jobs(db: &Path) -> BTreeMap<String, HubJob> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn
        .prepare("SELECT id, state, dag_run_id, result_status, result_summary, job_json, claims FROM jobs")
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            let job_json: String = r.get(5)?;
            let job: Value = serde_json::from_str(&job_json).unwrap();
            Ok((
                r.get::<_, String>(0)?,
                HubJob {
                    state: r.get(1)?,
                    dag: job["dag_name"].as_str().unwrap_or_default().to_owned(),
                    dag_run_id: r.get(2)?,
                    result_status: r.get(3)?,
                    result_summary: r.get(4)?,
                    claims: r.get(6)?,
                },
            ))
        })
        .unwrap();
    rows.map(Result::unwrap).collect()
}

/// The latest attempt's status of a run, read through the run store itself (its file layout is
/// the `dag` crate's business), as JSON for the messages.
fn run_record(runs: &dispatch_dag::FileRunStore, dag: &str, run_id: &str) -> Value {
    use dispatch_dag::RunStore as _;
    let attempt = runs
        .find_attempt(dag, run_id)
        .unwrap_or_else(|e| panic!("run `{dag}`/`{run_id}`: {e}"));
    serde_json::to_value(&attempt.record).unwrap()
}

/// Processes whose environment names this test's ledger: the step processes (each `sh` leads
/// its own process group, with its `sleep` in it), wherever their scheduler is.
fn step_processes(ledger: &Path) -> Vec<Pid> {
    let marker = format!("LEDGER={}", ledger.display());
    // Entries that are not processes, or that ended meanwhile, are passed over.
    let ours = |entry: std::fs::DirEntry| {
        let pid = entry.file_name().to_str()?.parse::<i32>().ok()?;
        let environ = std::fs::read(entry.path().join("environ")).ok()?;
        let mut vars = environ.split(|&b| b == 0);
        vars.any(|var| var == marker.as_bytes())
            .then(|| Pid::from_raw(pid))
    };
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(ours)
        .collect()
}

/// Steps (process groups) among `processes`.
fn step_groups(processes: &[Pid]) -> usize {
    processes
        .iter()
        .filter(|&&pid| nix::unistd::getpgid(Some(pid)) == Ok(pid))
        .count()
}

fn dag_yaml(ledger: &Path, last_step: &str) -> String {
    format!(
        "description: crash-anywhere e2e\nenv:\n  LEDGER: \"{}\"\nsteps:\n  - name: start\n    command: |\n      echo \"start $DAG_RUN_ID $DAG_NAME $$\" >> \"$LEDGER\"\n      sleep 0.2\n  - name: last\n    command: |\n      {last_step}\n",
        ledger.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_survive_scheduler_sigkills_at_random_moments() {
    let seed = seed();
    let mut rng = Rng::new(seed);
    let test_start = Instant::now();
    eprintln!("crash test seed: {seed} (replay with CRASH_SEED={seed})");
    let tag = format!("[CRASH_SEED={seed}]");

    let dir = tempfile::tempdir().unwrap();
    // `CRASH_KEEP=1` keeps the logs, stores and ledger for a look after a failure.
    let root: PathBuf = if std::env::var_os("CRASH_KEEP").is_some() {
        let kept = dir.keep();
        eprintln!("crash test files kept in {}", kept.display());
        kept
    } else {
        dir.path().to_owned()
    };
    let root = root.as_path();
    let hub_data = root.join("hub-data");
    let home = root.join("scheduler");
    let ledger = root.join("ledger");
    write(
        &home.join("dags"),
        "crash-ok.yaml",
        &dag_yaml(
            &ledger,
            "sleep 0.2; echo \"end $DAG_RUN_ID\" >> \"$LEDGER\"",
        ),
    );
    write(
        &home.join("dags"),
        "crash-bad.yaml",
        &dag_yaml(&ledger, "sleep 0.1; exit 1"),
    );
    let config = write(
        root,
        "hub.toml",
        &hub_toml(
            "127.0.0.1:0",
            &hub_data,
            WEBHOOK_SECRET,
            LICENSE_KEY,
            // Short leases: a job claimed by a scheduler that died before accepting it is
            // handed out again soon.
            "lease_seconds = 3\n",
            &(push_binding("crash-ok") + "\n" + &push_binding("crash-bad")),
        ),
    );
    let public_key = hub_public_key(&hub_data, &["--format", "base64"])
        .trim()
        .to_owned();
    let (mut hub, hub_url) = serve_hub(&config, &["--log-format", "json"], &[]);
    let (proxy, proxy_url) = Proxy::start(hub_url.clone()).await;
    let client = reqwest::Client::new();
    // Timed from here: building the binaries is not the test's time.
    let began = Instant::now();
    let setup_secs = began.duration_since(test_start).as_secs_f64();

    // Kill loop: webhooks keep arriving between kills, so kills land while jobs are pulled,
    // taken in, run, accepted and finished, and while the scheduler starts up.
    let mut job_ids: Vec<String> = Vec::new();
    let mut sent = 0;
    let mut kills = 0;
    let mut orphaned_steps = 0;
    let mut life = 0;
    let mut scheduler = Scheduler::start(life, root, &home, &proxy_url, &public_key);
    let total = 2 * WEBHOOKS as u64;
    loop {
        for _ in 0..rng.between(0, 4) {
            if sent < WEBHOOKS {
                job_ids.extend(send_push(&client, &hub_url, sent, &tag).await);
                sent += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.between(50, 700))).await;
        if let Some(status) = scheduler.child.try_wait().unwrap() {
            panic!(
                "{tag} scheduler life {life} exited by itself ({status})\n{}",
                scheduler.output()
            );
        }
        let finished = hub_job_counts(&client, &hub_url)
            .await
            .get("finished")
            .copied()
            .unwrap_or(0);
        let all_done = sent == WEBHOOKS && finished == total;
        if kills >= MAX_KILLS || (kills >= MIN_KILLS && all_done) {
            break;
        }
        scheduler.kill();
        kills += 1;
        // Step processes live in their own process groups, so they outlive their scheduler.
        orphaned_steps += step_groups(&step_processes(&ledger));
        life += 1;
        scheduler = Scheduler::start(life, root, &home, &proxy_url, &public_key);
        assert!(
            began.elapsed() < DEADLINE,
            "{tag} deadline passed during the kill loop after {kills} kills"
        );
    }
    while sent < WEBHOOKS {
        job_ids.extend(send_push(&client, &hub_url, sent, &tag).await);
        sent += 1;
    }
    let kill_loop_secs = began.elapsed().as_secs_f64();

    // Drain: no more kills; every job must end up finished at the hub.
    loop {
        let counts = hub_job_counts(&client, &hub_url).await;
        if counts.get("finished").copied().unwrap_or(0) == total {
            break;
        }
        if began.elapsed() > DEADLINE {
            hub.signal(Signal::SIGTERM);
            hub.wait();
            let jobs = read_hub_jobs(&hub_data.join("hub.sqlite3"));
            let missing: Vec<String> = jobs
                .iter()
                .filter(|(_, j)| j.state != "finished")
                .map(|(id, j)| format!("{id} ({}, {})", j.dag, j.state))
                .collect();
            panic!(
                "{tag} not every job finished within {DEADLINE:?} ({kills} kills); counts {counts:?}; unfinished: {missing:?}\n{}",
                scheduler.output()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drained_secs = began.elapsed().as_secs_f64();

    if let Some(status) = scheduler.child.try_wait().unwrap() {
        panic!(
            "{tag} scheduler exited by itself ({status})\n{}",
            scheduler.output()
        );
    }
    nix::sys::signal::kill(scheduler.pid(), Signal::SIGTERM).unwrap();
    let status = scheduler.child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "{tag} graceful stop\n{}",
        scheduler.output()
    );
    hub.signal(Signal::SIGTERM);
    assert_eq!(hub.wait().code(), Some(0), "{tag} {}", hub.output());
    let stopped_secs = began.elapsed().as_secs_f64();
    // Orphans of the last kills may still be sleeping; none may outlive the test.
    let leftovers = step_processes(&ledger);
    let orphans = step_groups(&leftovers);
    for pid in leftovers {
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
    }

    // The tracker: nothing left once every job is finished.
    let tracker = dispatch_tracker::Tracker::open(&home.join("data/tracker")).unwrap();
    let left = tracker.list().unwrap();
    assert!(
        left.is_empty(),
        "{tag} tracker still holds {} jobs after all finished: {left:?}\n{}",
        left.len(),
        scheduler.output()
    );
    drop(tracker);

    // The hub: every job it created was finished, by one transition.
    let hub_jobs = read_hub_jobs(&hub_data.join("hub.sqlite3"));
    let mut expected_ids = job_ids.clone();
    expected_ids.sort();
    assert_eq!(
        hub_jobs.keys().cloned().collect::<Vec<_>>(),
        expected_ids,
        "{tag} the hub's jobs are the webhooks' jobs"
    );
    let mut transitions: HashMap<String, usize> = HashMap::new();
    for line in hub.stderr().lines() {
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if event["fields"]["message"] == "job finished" {
            let id = event["fields"]["job_id"].as_str().unwrap_or_default();
            *transitions.entry(id.to_owned()).or_default() += 1;
        }
    }
    let finish_calls = proxy.finishes();
    if std::env::var_os("CRASH_KEEP").is_some() {
        std::fs::write(root.join("hub.log"), hub.stderr()).unwrap();
        std::fs::write(root.join("finish-calls.txt"), format!("{finish_calls:#?}")).unwrap();
    }
    let ledger_text = std::fs::read_to_string(&ledger).unwrap_or_default();
    let mut starts: HashMap<&str, usize> = HashMap::new();
    let mut ends: HashMap<&str, usize> = HashMap::new();
    for line in ledger_text.lines() {
        let mut words = line.split_whitespace();
        let (kind, run_id) = (words.next(), words.next().unwrap_or_default());
        match kind {
            Some("start") => *starts.entry(run_id).or_default() += 1,
            Some("end") => *ends.entry(run_id).or_default() += 1,
            _ => panic!("{tag} bad ledger line `{line}`"),
        }
    }
    // Runs recovery marked failed whose last step, orphaned, still ran to its end.
    let mut failed_but_completed = 0;
    let runs = dispatch_dag::FileRunStore::open(home.join("data/runs")).unwrap();
    let mut killed_mid_run = 0;
    let claims: i64 = hub_jobs.values().map(|j| j.claims).sum();
    let mut repeated_finishes = 0;
    let mut unlogged_finishes = 0;
    let mut outcome: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (id, job) in &hub_jobs {
        let what = format!("{tag} job {id} ({})", job.dag);
        assert_eq!(job.state, "finished", "{what}: {job:?}");
        assert_ne!(
            job.result_status, "rejected",
            "{what}: the hub gave up on it after {} claims that no scheduler accepted: {job:?}",
            job.claims
        );
        assert_eq!(job.dag_run_id, *id, "{what}: accepted with its own run id");

        let record = &run_record(&runs, &job.dag, id);
        let run_status = record["status"].as_str().unwrap_or_default();
        let run_error = record["error"].as_str().unwrap_or_default();
        assert_eq!(
            job.result_status, run_status,
            "{what}: hub result vs run record {record}"
        );
        let interrupted = run_error == TERMINATED;
        killed_mid_run += usize::from(interrupted);
        let expected = match job.dag.as_str() {
            "crash-bad" => "failed",
            "crash-ok" if interrupted => "failed",
            "crash-ok" => "succeeded",
            other => panic!("{what}: unexpected DAG `{other}`"),
        };
        assert_eq!(run_status, expected, "{what}: run record {record}");
        if interrupted {
            assert!(
                job.result_summary.contains(TERMINATED),
                "{what}: summary `{}`",
                job.result_summary
            );
        }
        *outcome
            .entry((job.dag.clone(), job.result_status.clone()))
            .or_default() += 1;

        let calls: Vec<&FinishCall> = finish_calls.iter().filter(|c| c.job_id == *id).collect();
        assert!(!calls.is_empty(), "{what}: no finish call reached the hub");
        for call in &calls {
            assert_eq!(
                call.result_status, job.result_status,
                "{what}: a finish call disagrees with the hub's record: {calls:?}"
            );
            assert!(
                matches!(call.answer, Some(204) | None),
                "{what}: the hub refused a finish: {calls:?}"
            );
        }
        repeated_finishes += calls.len() - 1;
        // The hub logs `job finished` on the transition only, after the commit; when the caller
        // hangs up in between (a scheduler killed mid-call), the handler is dropped and the line
        // is lost although the finish stands. So: at most one line, and none only then.
        let logged = transitions.get(id).copied().unwrap_or(0);
        assert!(
            logged <= 1,
            "{what}: the hub logged {logged} `job finished` transitions"
        );
        if logged == 0 {
            assert!(
                calls.iter().any(|c| c.answer.is_none()),
                "{what}: finished at the hub without a `job finished` line: {calls:?}"
            );
            unlogged_finishes += 1;
        }

        let started = starts.get(id.as_str()).copied().unwrap_or(0);
        let ended = ends.get(id.as_str()).copied().unwrap_or(0);
        assert!(
            ended <= 1,
            "{what}: the last step ended {ended} times (ledger)"
        );
        if job.dag == "crash-ok" && run_status == "succeeded" {
            assert_eq!(
                ended, 1,
                "{what}: succeeded without its last step's ledger line"
            );
        }
        if interrupted && ended == 1 {
            failed_but_completed += 1;
        }
        assert!(
            started <= 1,
            "{what}: the run started {started} times (ledger)"
        );
        // A first step that exited 0 has surely written its ledger line.
        if record["steps"][0]["status"] == "succeeded" {
            assert_eq!(
                started, 1,
                "{what}: first step ran but left no ledger line: {record}"
            );
        }
    }
    for run_id in starts.keys() {
        assert!(
            hub_jobs.contains_key(*run_id),
            "{tag} ledger names a run `{run_id}` no job has"
        );
    }
    assert!(kills >= MIN_KILLS, "{tag} only {kills} kills");
    eprintln!(
        "crash test seed {seed}: {} jobs, {kills} kills, {killed_mid_run} runs killed mid-run, \
         {} runs started (ledger), {repeated_finishes} repeated finish calls ({unlogged_finishes} \
         transitions the hub did not log), \
         {claims} claims at the hub, {orphaned_steps} \
         step process groups alive right after a kill ({orphans} still running at the end; \
         {failed_but_completed} runs reported failed although their orphaned last step completed), outcomes {outcome:?}; kill loop {kill_loop_secs:.1}s, \
         all finished at {drained_secs:.1}s, both stopped at {stopped_secs:.1}s, total {:.1}s (+{setup_secs:.1}s setup)",
        hub_jobs.len(),
        starts.len(),
        began.elapsed().as_secs_f64()
    );
}
