//! Hub replicas on one PostgreSQL store (issue 13).
//!
//! `replicas_share_the_work_and_survive_a_sigkill`: two `hub serve` processes (A and B) share a
//! database and report to one wiremock GitHub with a token; one scheduler pulls from A only, one
//! from B only. 200 signed pushes, each making one job, go to A and B in turn; halfway, A is
//! SIGKILLed while jobs are queued, claimed, running and being reported, and started again on the
//! same port a moment later. A delivery A does not take (it is down) is sent again to B under the
//! same delivery id, as GitHub's redelivery would. Once every job is finished and every report
//! sent, the test checks:
//! - every delivery made exactly one job, and the webhook answers named it;
//! - every job ran once (a ledger line per run start), in one scheduler, and finished once (at
//!   most one `job finished` line over every hub life) with its DAG's status: every fifth
//!   delivery's run fails on purpose and must be reported failed;
//! - GitHub heard each job's final commit status, with the right state, and each of its
//!   `pending` statuses at most once — up to the duplicates a SIGKILL can cause (below);
//! - nothing is left queued, claimed or accepted, and no report is left unsent, in the database;
//! - the scheduler pulling from A recovered: it finished jobs through A after A came back.
//!
//! What "exactly once" means for a report: a replica claims a report in the store (held for
//! 120 s), sends it, and deletes it once GitHub answered. A replica killed after GitHub received
//! the call and before the delete leaves the report to be sent again when the hold runs out, so
//! GitHub hears it twice; one killed before sending leaves it to be sent, once, after the hold
//! (which is why this test may take two minutes more than its work), unless it is a `pending`
//! status that the job's final one makes moot first (then it is dropped). A replica sends one
//! report at a time, so one SIGKILL can duplicate at most one report: the test counts duplicates,
//! prints them and fails if there are more than kills. A job's final status is never missing, never
//! sent with two different states, and no `pending` status arrives after it.
//!
//! `a_replica_that_loses_its_database_answers_503_and_recovers`: a TCP proxy in this process
//! stands between a hub and PostgreSQL; cut, it closes every connection and every new one at
//! once. A pull, an accept, a delivery and an activation are answered 503 (not 500, not a hang)
//! while it is cut; restored, the same hub process serves them again.
//!
//! `a_replica_cut_off_mid_write_holds_up_the_others_only_for_a_while`: the proxy stalls instead
//! (connections open, nothing passed on) while replica A is inside a write group, which holds the
//! lock every replica's writes take; a delivery to replica B must still be answered, once the
//! server has ended A's session (30 s).
//!
//! How long they take (a 2-core machine, debug build): the first about 40 s (each scheduler runs
//! one run of the DAG at a time; three minutes on a machine busy with other builds), plus the
//! 120 s report hold when A died holding a final status; the second about a second; the third
//! about 30 s.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dispatch_dag::RunStore as _;
use nix::sys::signal::Signal;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::{
    deliver_push, eventually, hub_toml, push_binding, scheduler_against, serve_hub,
    try_deliver_push, write, Proc,
};

const WEBHOOK_SECRET: &str = "replicas-webhook-secret";
const LICENSE_KEY: &str = "replicas-license-key";
const GITHUB_TOKEN: &str = "replicas-github-token";
/// The `after` commit of the push fixture: every job's statuses go to it.
const PUSH_SHA: &str = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";
const DAG: &str = "replica-work";
const DELIVERIES: usize = 200;
/// Replica A is killed when this many deliveries have gone out.
const KILL_AT: usize = 100;
/// Deliveries sent while A is down before it is started again (A's turns among them fail and go
/// to B); more go out while it starts.
const DOWN_FOR: usize = 30;
/// Time between deliveries: faster than two schedulers run the jobs, so that work piles up and
/// is queued, claimed and running when A dies.
const PACE: Duration = Duration::from_millis(40);
/// Every fifth delivery's run fails on purpose.
const FAIL_EVERY: usize = 5;
/// All work done after the sending began; generous, since a report A held when it died is only
/// sent after the store's 120 s hold.
const DEADLINE: Duration = Duration::from_secs(540);
/// Bound on one HTTP call to a hub: a call that hangs this long is a failure, not a wait.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The delivery id of push `n`; a failing run's id says so, and its DAG looks for the word.
fn delivery_id(n: usize) -> String {
    let verdict = if n.is_multiple_of(FAIL_EVERY) {
        "fail"
    } else {
        "ok"
    };
    format!("replicas-{n:03}-{verdict}")
}

/// Two steps: the first notes the run's start in the ledger shared by both schedulers and takes a
/// moment, the second fails when the run's delivery id (in the `WEBHOOK_HEADERS` param) says so.
fn dag_yaml(ledger: &Path) -> String {
    format!(
        "description: replicas e2e\nenv:\n  LEDGER: \"{}\"\nsteps:\n  - name: start\n    command: |\n      echo \"start $DAG_RUN_ID\" >> \"$LEDGER\"\n      sleep 0.3\n  - name: verdict\n    command: |\n      case \"$WEBHOOK_HEADERS\" in *-fail*) exit 1;; esac\n",
        ledger.display()
    )
}

/// hub.toml of replica `name`: its own data directory, everything else as its peers'. `github`
/// is the API URL, when the hub reports.
fn hub_config(root: &Path, name: &str, store_url: &str, github: Option<&str>) -> PathBuf {
    let data = root.join(format!("hub-{name}-data"));
    let github = github.map_or(String::new(), |url| {
        format!("[github]\napi_url = \"{url}\"\n\n")
    });
    write(
        root,
        &format!("hub-{name}.toml"),
        &hub_toml(
            "127.0.0.1:0",
            &data,
            WEBHOOK_SECRET,
            LICENSE_KEY,
            // A claim made by a replica that died before answering goes back to the queue soon.
            &format!("store_url = \"{store_url}\"\nlease_seconds = 10\n"),
            &(github + &push_binding(DAG)),
        ),
    )
}

/// A replica of the first test: JSON logs (the `job finished` lines are counted), the token by
/// environment.
fn serve_replica(config: &Path, extra: &[&str]) -> (Proc, String) {
    let mut args = vec!["--log-format", "json"];
    args.extend(extra);
    serve_hub(
        config,
        &args,
        &[("DISPATCH_HUB_GITHUB_TOKEN", GITHUB_TOKEN)],
    )
}

fn start_scheduler(home: &Path, hub_url: &str) -> Proc {
    scheduler_against(
        home,
        hub_url,
        &["--max-concurrent-runs", "4"],
        &[("DISPATCH_LICENSE_KEY", LICENSE_KEY)],
    )
}

/// Runs `f` on a connection of its own to the database at `url`, on a thread of its own: the
/// blocking `postgres` client drives its own runtime, which cannot start on a thread of the
/// test's.
fn with_db<T: Send + 'static>(
    url: &str,
    f: impl FnOnce(&mut postgres::Client) -> T + Send + 'static,
) -> T {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect to the test database: {e}"));
        f(&mut client)
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// A row of the hub's `jobs` table.
#[derive(Debug)]
struct JobRow {
    id: String,
    delivery_id: String,
    state: String,
    result_status: String,
    dag_run_id: String,
    claimed_by: String,
    claims: i64,
    accepted_ms: i64,
    updated_ms: i64,
}

fn read_jobs(url: &str) -> Vec<JobRow> {
    with_db(url, |db| {
        let sql = "SELECT id, delivery_id, state, result_status, dag_run_id, claimed_by, claims,
                          accepted_ms, updated_ms
                   FROM jobs ORDER BY id";
        db.query(sql, &[])
            .unwrap()
            .iter()
            .map(|r| JobRow {
                id: r.get(0),
                delivery_id: r.get(1),
                state: r.get(2),
                result_status: r.get(3),
                dag_run_id: r.get(4),
                claimed_by: r.get(5),
                claims: r.get(6),
                accepted_ms: r.get(7),
                updated_ms: r.get(8),
            })
            .collect()
    })
}

/// Jobs per state and the reports not yet sent (each as `job: path (attempts, last error)`).
fn progress(url: &str) -> (BTreeMap<String, i64>, Vec<String>) {
    with_db(url, |db| {
        let states = db
            .query("SELECT state, count(*) FROM jobs GROUP BY state", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let reports = db
            .query(
                "SELECT job_id, path, attempts, last_error, next_attempt_ms FROM reports ORDER BY id",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| {
                let (job, path, attempts): (String, String, i64) = (r.get(0), r.get(1), r.get(2));
                let (error, due): (String, i64) = (r.get(3), r.get(4));
                format!("{job}: {path} (attempts {attempts}, due {due}, error {error:?})")
            })
            .collect();
        (states, reports)
    })
}

/// The reports claimed before `killed_ms` and still held (`job: state, description`): what A was
/// sending when it died. A claim holds a report for 120 s, so those claimed in the minute before
/// the kill are due between a minute and two after it; B's claims since come due later, and a
/// report put off after a failed send sooner.
fn held_reports(url: &str, killed_ms: u64) -> Vec<String> {
    let killed = i64::try_from(killed_ms).unwrap();
    with_db(url, move |db| {
        let sql = "SELECT job_id, body FROM reports
                   WHERE next_attempt_ms > $1::BIGINT + 60000
                     AND next_attempt_ms <= $1::BIGINT + 120000";
        db.query(sql, &[&killed])
            .unwrap()
            .iter()
            .map(|r| {
                let body: Value = serde_json::from_str(r.get(1)).unwrap_or_default();
                let job: String = r.get(0);
                format!("{job}: {}, {}", body["state"], body["description"])
            })
            .collect()
    })
}

/// A time the store keeps (signed milliseconds) as the clock gives it.
fn as_ms(stored: i64) -> u64 {
    u64::try_from(stored).unwrap_or(0)
}

/// The last `max` bytes of `text`, for failure messages that must not drown in logs.
fn tail(text: &str, max: usize) -> &str {
    let start = text.len().saturating_sub(max);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    &text[start..]
}

/// How one delivery went: the job ids its accepting hub answered with, and whether A failed it
/// so that it went to B.
struct Delivered {
    id: String,
    job_ids: Vec<String>,
    via_b_after_a_failed: Option<String>,
}

/// Delivers push `id` to A when `to_a`, else to B; a delivery A does not answer 202 with a JSON
/// body (it is down, or dies mid-call) goes to B under the same id, as GitHub redelivers. B is
/// never killed: it must take every delivery.
async fn deliver(
    client: reqwest::Client,
    a: String,
    b: String,
    to_a: bool,
    id: String,
) -> Delivered {
    let job_ids = |answer: &Value| -> Vec<String> {
        answer["job_ids"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let mut a_failed = None;
    if to_a {
        let url = format!("{a}/webhooks/github");
        match try_deliver_push(&client, &url, WEBHOOK_SECRET, &id).await {
            Ok(response) if response.status() == 202 => match response.json::<Value>().await {
                Ok(answer) => {
                    return Delivered {
                        job_ids: job_ids(&answer),
                        id,
                        via_b_after_a_failed: None,
                    }
                }
                Err(e) => a_failed = Some(format!("answer cut off: {e}")),
            },
            Ok(response) => a_failed = Some(format!("answered {}", response.status())),
            Err(e) => a_failed = Some(format!("{e}")),
        }
    }
    let url = format!("{b}/webhooks/github");
    let response = deliver_push(&client, &url, WEBHOOK_SECRET, &id).await;
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or_default();
    assert_eq!(
        status, 202,
        "delivery {id} to B (A: {a_failed:?}): {answer}"
    );
    Delivered {
        job_ids: job_ids(&answer),
        id,
        via_b_after_a_failed: a_failed,
    }
}

/// One commit status GitHub received, in arrival order.
#[derive(Debug)]
struct Status {
    state: String,
    description: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_work_and_survive_a_sigkill() {
    let Some(db) = dispatch_test_support::postgres_database() else {
        return;
    };
    let test_start = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    // `REPLICAS_KEEP=1` keeps the files and the processes' logs, and prints the jobs per state as
    // the test waits, for a look after a failure.
    let keep = std::env::var_os("REPLICAS_KEEP").is_some();
    let root: PathBuf = if keep {
        let kept = dir.keep();
        eprintln!("replicas test files kept in {}", kept.display());
        kept
    } else {
        dir.path().to_owned()
    };
    let root = root.as_path();
    let ledger = root.join("ledger");
    let github = MockServer::start().await;
    // GitHub takes a moment to answer, as it does: a replica killed while it sends a report
    // finds GitHub holding the call more often than with an instant answer.
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(serde_json::json!({ "id": 1 }))
                .set_delay(Duration::from_millis(20)),
        )
        .mount(&github)
        .await;
    let config_a = hub_config(root, "a", db.url(), Some(&github.uri()));
    let config_b = hub_config(root, "b", db.url(), Some(&github.uri()));
    let (hub_a, url_a) = serve_replica(&config_a, &[]);
    let (mut hub_b, url_b) = serve_replica(&config_b, &[]);
    let homes = [root.join("scheduler-a"), root.join("scheduler-b")];
    for home in &homes {
        write(
            &home.join("dags"),
            &format!("{DAG}.yaml"),
            &dag_yaml(&ledger),
        );
    }
    let mut scheduler_a = start_scheduler(&homes[0], &url_a);
    let mut scheduler_b = start_scheduler(&homes[1], &url_b);
    let client = reqwest::Client::builder()
        .timeout(CALL_TIMEOUT)
        .build()
        .unwrap();
    // Timed from here: building the binaries and starting them are not the test's time.
    let began = Instant::now();
    let setup_secs = began.duration_since(test_start).as_secs_f64();

    // Every hub life, in order; the first is A's, killed halfway.
    let mut hub_lives: Vec<Proc> = Vec::new();
    let mut hub_a = Some(hub_a);
    let mut restarting = None;
    let mut killed_ms = 0;
    let mut restarted_ms = 0;
    let mut orphaned = Vec::new();
    let mut sending = Vec::new();
    for n in 0..DELIVERIES {
        if n == KILL_AT {
            let mut dying = hub_a.take().unwrap();
            dying.signal(Signal::SIGKILL);
            dying.wait();
            killed_ms = dispatch_util::now_ms();
            hub_lives.push(dying);
        }
        if n == KILL_AT + DOWN_FOR {
            orphaned = held_reports(db.url(), killed_ms);
            // Started on a thread, so that deliveries go on while it opens the store.
            let (config, listen) = (
                config_a.clone(),
                url_a.trim_start_matches("http://").to_owned(),
            );
            restarting = Some(tokio::task::spawn_blocking(move || {
                serve_replica(&config, &["--listen", &listen])
            }));
        }
        if restarting.as_ref().is_some_and(|r| r.is_finished()) {
            let (proc, url) = restarting.take().unwrap().await.unwrap();
            assert_eq!(url, url_a, "A came back on another address");
            restarted_ms = dispatch_util::now_ms();
            hub_a = Some(proc);
        }
        // Turns alternate whether A is up or not: GitHub does not know that it is down.
        sending.push(tokio::spawn(deliver(
            client.clone(),
            url_a.clone(),
            url_b.clone(),
            n % 2 == 0,
            delivery_id(n),
        )));
        tokio::time::sleep(PACE).await;
    }
    if let Some(restart) = restarting {
        let (proc, _) = restart.await.unwrap();
        restarted_ms = dispatch_util::now_ms();
        hub_a = Some(proc);
    }
    let mut delivered = Vec::new();
    for task in sending {
        delivered.push(task.await.unwrap());
    }
    let sent_secs = began.elapsed().as_secs_f64();

    // Wait until every job is finished and every report sent (or the deadline).
    let mut finished_secs = None;
    for poll in 0.. {
        let (states, unsent) = progress(db.url());
        if keep && poll % 10 == 0 {
            let at = began.elapsed().as_secs_f64();
            eprintln!("{at:.1}s: jobs {states:?}, {} reports unsent", unsent.len());
        }
        let finished = states.get("finished").copied().unwrap_or(0);
        let total: i64 = states.values().sum();
        if finished == DELIVERIES as i64 && total == finished {
            finished_secs.get_or_insert(began.elapsed().as_secs_f64());
            if unsent.is_empty() {
                break;
            }
        }
        if began.elapsed() > DEADLINE {
            let logs: String = hub_lives
                .iter()
                .chain(hub_a.iter())
                .chain([&hub_b, &scheduler_a, &scheduler_b])
                .map(|p| tail(&p.output(), 3_000).to_owned())
                .collect::<Vec<_>>()
                .join("\n");
            panic!(
                "not everything done within {DEADLINE:?}: jobs per state {states:?}, \
                 unsent reports {unsent:#?}\n{logs}"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let done_secs = began.elapsed().as_secs_f64();

    scheduler_a.stop_with(Signal::SIGTERM);
    scheduler_b.stop_with(Signal::SIGTERM);
    let mut hub_a = hub_a.unwrap();
    hub_a.stop_with(Signal::SIGTERM);
    hub_b.stop_with(Signal::SIGTERM);
    hub_lives.push(hub_a);
    hub_lives.push(hub_b);
    for process in hub_lives.iter().chain([&scheduler_a, &scheduler_b]) {
        assert!(
            !process.output().contains("panicked"),
            "{}",
            tail(&process.output(), 6_000)
        );
    }

    if keep {
        let names = ["hub-a-1", "hub-a-2", "hub-b", "scheduler-a", "scheduler-b"];
        for (name, process) in names
            .iter()
            .zip(hub_lives.iter().chain([&scheduler_a, &scheduler_b]))
        {
            std::fs::write(root.join(format!("{name}.log")), process.output()).unwrap();
        }
    }
    // Deliveries → jobs: one each, the one its answer named.
    let jobs = read_jobs(db.url());
    let deliveries: Vec<(String, String)> = with_db(db.url(), |db| {
        db.query("SELECT delivery_id, job_ids FROM deliveries", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    });
    assert_eq!(deliveries.len(), DELIVERIES, "deliveries stored");
    assert_eq!(jobs.len(), DELIVERIES, "jobs stored");
    let job_of: HashMap<&str, &JobRow> = jobs.iter().map(|j| (j.delivery_id.as_str(), j)).collect();
    assert_eq!(job_of.len(), DELIVERIES, "one delivery made two jobs");
    for (id, ids) in &deliveries {
        let ids: Vec<String> = serde_json::from_str(ids).unwrap();
        let job = job_of
            .get(id.as_str())
            .unwrap_or_else(|| panic!("delivery {id} made no job"));
        assert_eq!(ids, [job.id.as_str()], "delivery {id}");
    }
    let mut resent = 0;
    for d in &delivered {
        let job = job_of
            .get(d.id.as_str())
            .unwrap_or_else(|| panic!("delivery {} is not stored", d.id));
        assert_eq!(
            d.job_ids,
            [job.id.as_str()],
            "delivery {} was answered with other jobs (A: {:?})",
            d.id,
            d.via_b_after_a_failed
        );
        resent += usize::from(d.via_b_after_a_failed.is_some());
    }
    assert!(resent > 0, "no delivery to A failed while it was down");

    // Every job ran once, in one scheduler, and finished with its DAG's status.
    let ledger_text = std::fs::read_to_string(&ledger).unwrap_or_default();
    let mut starts: HashMap<&str, usize> = HashMap::new();
    for line in ledger_text.lines() {
        let run_id = line
            .strip_prefix("start ")
            .unwrap_or_else(|| panic!("ledger line `{line}`"));
        *starts.entry(run_id).or_default() += 1;
    }
    let mut transitions: HashMap<String, usize> = HashMap::new();
    let hub_logs: Vec<String> = hub_lives.iter().map(Proc::stderr).collect();
    for line in hub_logs.iter().flat_map(|log| log.lines()) {
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if event["fields"]["message"] == "job finished" {
            let id = event["fields"]["job_id"].as_str().unwrap_or_default();
            *transitions.entry(id.to_owned()).or_default() += 1;
        }
    }
    let runs: Vec<dispatch_dag::FileRunStore> = homes
        .iter()
        .map(|home| dispatch_dag::FileRunStore::open(home.join("data/runs")).unwrap())
        .collect();
    let server_a = std::fs::read_to_string(homes[0].join("data/license/server_id"))
        .unwrap()
        .trim()
        .to_owned();
    let mut outcomes: BTreeMap<(String, &str), usize> = BTreeMap::new();
    // Jobs the scheduler pulling from A took, and finished, through A's second life: anything
    // it did through A after the kill.
    let (mut taken_after_kill, mut finished_after_kill) = (0, 0);
    let mut reclaimed = 0;
    let mut unlogged = 0;
    for job in &jobs {
        let what = format!("job {} (delivery {})", job.id, job.delivery_id);
        assert_eq!(job.state, "finished", "{what}: {job:?}");
        let expected = if job.delivery_id.ends_with("-fail") {
            "failed"
        } else {
            "succeeded"
        };
        assert_eq!(job.result_status, expected, "{what}: {job:?}");
        assert_eq!(
            job.dag_run_id, job.id,
            "{what}: accepted with its own run id"
        );
        let found: Vec<(usize, dispatch_dag::Attempt)> = runs
            .iter()
            .enumerate()
            .filter_map(|(i, store)| store.find_attempt(DAG, &job.id).ok().map(|a| (i, a)))
            .collect();
        let [(home, attempt)] = found.as_slice() else {
            panic!("{what}: run found in {} scheduler homes", found.len());
        };
        assert_eq!(
            attempt.record.status.as_str(),
            job.result_status,
            "{what}: the hub's result vs the run record {:?}",
            attempt.record
        );
        assert_eq!(
            starts.get(job.id.as_str()).copied(),
            Some(1),
            "{what}: run starts in the ledger"
        );
        let logged = transitions.get(&job.id).copied().unwrap_or(0);
        assert!(logged <= 1, "{what}: {logged} `job finished` lines");
        if logged == 0 {
            // Only a finish A committed and died before logging (its writer commits several
            // writes at once) may lack its line.
            assert!(
                job.claimed_by == server_a && as_ms(job.updated_ms) <= killed_ms,
                "{what}: finished without a `job finished` line: {job:?}"
            );
            unlogged += 1;
        }
        *outcomes
            .entry((job.result_status.clone(), ["a", "b"][*home]))
            .or_default() += 1;
        if job.claimed_by == server_a {
            taken_after_kill += usize::from(as_ms(job.accepted_ms) > killed_ms);
            finished_after_kill += usize::from(as_ms(job.updated_ms) > killed_ms);
        }
        reclaimed += usize::from(job.claims > 1);
    }
    assert_eq!(starts.len(), DELIVERIES, "the ledger names runs no job has");
    // Its runs go on while A is down and their finishes wait for A: at least those go through.
    assert!(
        finished_after_kill > 0,
        "the scheduler pulling from A did nothing through A after A came back\n{}",
        tail(&scheduler_a.output(), 6_000)
    );

    // GitHub: per job, each pending status at most once, the final one exactly once and last.
    let requests = github.received_requests().await.unwrap_or_default();
    let statuses_path = format!("/repos/Codertocat/Hello-World/statuses/{PUSH_SHA}");
    let mut heard: HashMap<String, Vec<Status>> = HashMap::new();
    for request in &requests {
        assert_eq!(
            request.url.path(),
            statuses_path,
            "an unexpected GitHub call"
        );
        let auth = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(auth.ends_with(GITHUB_TOKEN), "authorization {auth:?}");
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body["context"], format!("dispatch/{DAG}"), "{body}");
        let job_id = body["target_url"]
            .as_str()
            .and_then(|url| url.rsplit_once("/jobs/"))
            .map(|(_, id)| id.to_owned())
            .unwrap_or_else(|| panic!("a status without a job's target_url: {body}"));
        heard.entry(job_id).or_default().push(Status {
            state: body["state"].as_str().unwrap_or_default().to_owned(),
            description: body["description"].as_str().unwrap_or_default().to_owned(),
        });
    }
    let mut duplicate_finals = 0;
    let mut duplicate_pendings = 0;
    let mut pendings = 0;
    for job in &jobs {
        let what = format!("job {} (delivery {})", job.id, job.delivery_id);
        let statuses = heard
            .get(&job.id)
            .unwrap_or_else(|| panic!("{what}: GitHub heard nothing"));
        let expected = if job.result_status == "failed" {
            "failure"
        } else {
            "success"
        };
        let first_final = statuses
            .iter()
            .position(|s| s.state != "pending")
            .unwrap_or_else(|| panic!("{what}: no final status in {statuses:?}"));
        let (before, after) = statuses.split_at(first_final);
        for status in after {
            assert_ne!(
                status.state, "pending",
                "{what}: a pending status arrived after the final one: {statuses:?}"
            );
            assert_eq!(
                status.state, expected,
                "{what}: final statuses {statuses:?}"
            );
        }
        duplicate_finals += after.len() - 1;
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for status in before {
            assert!(
                status.description == "queued" || status.description.starts_with("running on "),
                "{what}: pending status {status:?}"
            );
            *seen.entry(status.description.as_str()).or_default() += 1;
        }
        pendings += before.len();
        duplicate_pendings += seen.values().map(|n| n - 1).sum::<usize>();
    }
    assert_eq!(
        heard.len(),
        DELIVERIES,
        "GitHub heard of jobs that do not exist"
    );
    let kills = 1;
    let duplicates = duplicate_finals + duplicate_pendings;
    assert!(
        duplicates <= kills,
        "{duplicates} reports reached GitHub twice ({duplicate_finals} final, \
         {duplicate_pendings} pending); {kills} SIGKILL can duplicate at most {kills}"
    );

    let claims: i64 = jobs.iter().map(|j| j.claims).sum();
    eprintln!(
        "replicas: {DELIVERIES} deliveries ({resent} failed at A and went to B), outcomes by \
         (status, scheduler) {outcomes:?}; {claims} claims ({reclaimed} jobs claimed more than \
         once); A down {restart_gap:.1}s, after which the scheduler pulling from it took \
         {taken_after_kill} jobs and finished {finished_after_kill} through it; GitHub heard {} statuses: {pendings} pending, {DELIVERIES} \
         final, duplicates {duplicate_finals} final + {duplicate_pendings} pending; reports A held \
         when it died: {orphaned:?}; {unlogged} \
         finishes without a log line; sent in {sent_secs:.1}s, all finished at {:.1}s, all \
         reported at {done_secs:.1}s (+{setup_secs:.1}s setup)",
        requests.len(),
        finished_secs.unwrap_or(done_secs),
        restart_gap = restarted_ms.saturating_sub(killed_ms) as f64 / 1000.0,
    );
}

/// A TCP proxy between a hub and PostgreSQL. Cut, it closes every connection it carries and
/// every new one as soon as it arrives, until restored. Stalled, it keeps the connections open
/// but passes nothing on, as a link that stopped (a network partition), until resumed.
struct PgProxy {
    addr: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
    stalled: watch::Sender<bool>,
}

#[derive(Default)]
struct ProxyState {
    cut: bool,
    /// The task carrying each open connection; aborting one closes both its sockets.
    open: Vec<tokio::task::AbortHandle>,
}

/// Copies `from` to `to`; what it reads while the link is stalled waits, and is passed on once
/// it is not. The end of `from` closes `to`, whether stalled or not.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut stalled: watch::Receiver<bool>) {
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stalled.wait_for(|s| !s).await.is_err() || to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

impl PgProxy {
    async fn start(upstream: SocketAddr) -> PgProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let (stalled, link_stalled) = watch::channel(false);
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                // Decided under the lock `cut` takes, so no connection slips past a cut.
                let mut state = shared.lock().unwrap();
                if state.cut {
                    drop(inbound);
                    continue;
                }
                let stalled = link_stalled.clone();
                let link = tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (from_hub, to_hub) = inbound.into_split();
                    let (from_db, to_db) = outbound.into_split();
                    tokio::join!(
                        pump(from_hub, to_db, stalled.clone()),
                        pump(from_db, to_hub, stalled)
                    );
                });
                state.open.retain(|task| !task.is_finished());
                state.open.push(link.abort_handle());
            }
        });
        PgProxy {
            addr,
            state,
            stalled,
        }
    }

    fn cut(&self) {
        let mut state = self.state.lock().unwrap();
        state.cut = true;
        for task in state.open.drain(..) {
            task.abort();
        }
    }

    fn restore(&self) {
        self.state.lock().unwrap().cut = false;
    }

    fn stall(&self) {
        self.stalled.send_replace(true);
    }

    fn resume(&self) {
        self.stalled.send_replace(false);
    }
}

/// Where the host of `url` (`postgres://[user@]host[:port]/db…`) starts and ends.
fn host_span(url: &str) -> (usize, usize) {
    let start = url.find("://").expect("a postgres:// URL") + "://".len();
    let end = url[start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| start + i);
    let start = url[start..end].rfind('@').map_or(start, |i| start + i + 1);
    (start, end)
}

/// The address of the PostgreSQL server of `url`.
fn server_address(url: &str) -> SocketAddr {
    let (start, end) = host_span(url);
    let host = &url[start..end];
    let host = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5432")
    };
    std::net::ToSocketAddrs::to_socket_addrs(&host)
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| panic!("the test server's address `{host}` is not a host and port"))
}

/// `url` with its host and port replaced by `via`.
fn through(url: &str, via: SocketAddr) -> String {
    let (start, end) = host_span(url);
    format!("{}{via}{}", &url[..start], &url[end..])
}

/// A call to the hub at `url` and its status; a call that gets no answer within
/// [`CALL_TIMEOUT`] fails the test, as does one that reaches no hub.
async fn call(client: &reqwest::Client, url: &str, body: &Value) -> (u16, String) {
    let response = client
        .post(url)
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: no answer: {e}"));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_loses_its_database_answers_503_and_recovers() {
    let Some(db) = dispatch_test_support::postgres_database() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let proxy = PgProxy::start(server_address(db.url())).await;
    let store_url = through(db.url(), proxy.addr);
    let config = hub_config(dir.path(), "cut", &store_url, None);
    let (mut hub, hub_url) = serve_hub(&config, &[], &[]);
    let began = Instant::now();
    let client = reqwest::Client::builder()
        .timeout(CALL_TIMEOUT)
        .build()
        .unwrap();
    let api = |path: &str| format!("{hub_url}/api/v1/{path}");

    let server_id = "0190a000-0000-7000-8000-000000000013";
    let activate = serde_json::json!({
        "key": LICENSE_KEY, "server_id": server_id, "machine_name": "proxy-test",
    });
    let (status, text) = call(&client, &api("licenses/activate"), &activate).await;
    assert_eq!(status, 200, "activate: {text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    let token = answer["token"].as_str().unwrap();
    let license_id = dispatch_protocol::token::decode_unverified(token)
        .unwrap()
        .jti;
    let secret = answer["heartbeat_secret"].as_str().unwrap().to_owned();
    let pull = serde_json::json!({
        "license_id": license_id, "server_id": server_id, "heartbeat_secret": secret,
    });
    let hook = format!("{hub_url}/webhooks/github");
    let stored = deliver_push(&client, &hook, WEBHOOK_SECRET, "cut-0").await;
    assert_eq!(stored.status(), 202);
    let (status, text) = call(&client, &api("github/dispatch/pull"), &pull).await;
    assert_eq!(status, 200, "pull: {text}");
    let job: Value = serde_json::from_str(&text).unwrap();
    let job_id = job["id"].as_str().unwrap().to_owned();
    let accept = serde_json::json!({
        "license_id": license_id, "server_id": server_id, "secret": secret, "dag_run_id": job_id,
    });
    let accept_url = api(&format!("github/dispatch/{job_id}/accept"));

    proxy.cut();
    let cut_at = Instant::now();
    // Reads (pull), writes (accept, delivery, activation) and a repeat of each: every one is
    // 503, each attempt to reconnect failing at once.
    for round in 0..2 {
        for (what, url, body) in [
            ("pull", api("github/dispatch/pull"), &pull),
            ("accept", accept_url.clone(), &accept),
            ("activate", api("licenses/activate"), &activate),
        ] {
            let (status, text) = call(&client, &url, body).await;
            assert_eq!(
                status, 503,
                "{what} (round {round}) with the database cut: {text}"
            );
            assert!(text.contains("out of reach"), "{what}: {text}");
        }
        let delivery = try_deliver_push(&client, &hook, WEBHOOK_SECRET, "cut-1")
            .await
            .expect("the hub answers a delivery with the database cut");
        assert_eq!(
            delivery.status(),
            503,
            "delivery (round {round}) with the database cut"
        );
    }
    let cut_secs = cut_at.elapsed().as_secs_f64();

    proxy.restore();
    // The same process serves again: each of its connections (reader, writer, listener) is
    // opened again on its next use.
    let (status, text) = eventually("the hub to pull again", async || {
        let answer = call(&client, &api("github/dispatch/pull"), &pull).await;
        (answer.0 != 503).then_some(answer)
    })
    .await;
    // Nothing to take, unless the one job's lease ran out meanwhile and it is ours again.
    let again = serde_json::from_str::<Value>(&text).unwrap_or_default();
    assert!(
        status == 204 || (status == 200 && again["id"] == job_id.as_str()),
        "pull after the database came back: {status} {text}"
    );
    let (status, text) = call(&client, &accept_url, &accept).await;
    assert_eq!(status, 204, "accept after the database came back: {text}");
    let finish = serde_json::json!({
        "license_id": license_id, "server_id": server_id, "secret": secret,
        "result_status": "succeeded",
    });
    let finish_url = api(&format!("github/dispatch/{job_id}/finish"));
    let (status, text) = call(&client, &finish_url, &finish).await;
    assert_eq!(status, 204, "finish after the database came back: {text}");
    // The delivery answered 503 while the database was out of reach, sent again as GitHub does.
    let again = deliver_push(&client, &hook, WEBHOOK_SECRET, "cut-1").await;
    assert_eq!(
        again.status(),
        202,
        "the delivery refused during the cut, sent again"
    );
    let (status, text) = call(&client, &api("github/dispatch/pull"), &pull).await;
    assert_eq!(status, 200, "the redelivered push's job: {text}");

    assert!(!hub.output().contains("panicked"), "{}", hub.output());
    assert!(
        hub.stderr().contains("store out of reach; answered 503"),
        "{}",
        hub.output()
    );
    hub.stop_with(Signal::SIGTERM);
    eprintln!(
        "database cut: 8 calls answered 503 in {cut_secs:.1}s; the hub served again after the \
         restore; {:.1}s after the hub started",
        began.elapsed().as_secs_f64()
    );
}

/// Whether a session on the database of `url` has sat inside a transaction, waiting for its
/// client, for over a second: a write group whose replica stopped talking mid-way.
fn held_transaction(url: &str) -> bool {
    with_db(url, |db| {
        let sql = "SELECT count(*) FROM pg_stat_activity
                   WHERE datname = current_database() AND state = 'idle in transaction'
                     AND state_change < now() - interval '1 second'";
        db.query_one(sql, &[]).unwrap().get::<_, i64>(0) > 0
    })
}

/// A replica whose link to the database stops in the middle of a write group, its connections
/// left open (a network partition, not a crash), holds the writers' lock that every replica's
/// writes take. The other replicas wait only until the server ends that session (the hub asks
/// for that after 30 s inside a transaction), not for as long as the link is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_mid_write_holds_up_the_others_only_for_a_while() {
    let Some(db) = dispatch_test_support::postgres_database() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let proxy = PgProxy::start(server_address(db.url())).await;
    let config_a = hub_config(dir.path(), "a", &through(db.url(), proxy.addr), None);
    let config_b = hub_config(dir.path(), "b", db.url(), None);
    let (mut hub_a, url_a) = serve_hub(&config_a, &[], &[]);
    let (mut hub_b, url_b) = serve_hub(&config_b, &[], &[]);
    let began = Instant::now();
    let client = reqwest::Client::builder()
        .timeout(CALL_TIMEOUT)
        .build()
        .unwrap();
    let (hook_a, hook_b) = (
        format!("{url_a}/webhooks/github"),
        format!("{url_b}/webhooks/github"),
    );
    // Deliveries through A without pause, so that its writer is mostly inside a write group.
    let loading = Arc::new(std::sync::atomic::AtomicBool::new(true));
    for k in 0..4 {
        let (client, hook, loading) = (client.clone(), hook_a.clone(), loading.clone());
        tokio::spawn(async move {
            for i in 0.. {
                if !loading.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let id = format!("load-{k}-{i}");
                // Refused or cut off while A's link is down: only the load matters here.
                let _ = try_deliver_push(&client, &hook, WEBHOOK_SECRET, &id).await;
            }
        });
    }
    let stored = |url: &str| {
        with_db(url, |db| {
            db.query_one("SELECT count(*) FROM deliveries", &[])
                .unwrap()
                .get::<_, i64>(0)
        })
    };
    // Stall the link until it stops inside a write group (else the group not yet begun simply
    // waits): then A's session sits idle in its transaction, holding the lock.
    let mut stalls = 0;
    loop {
        let before = stored(db.url());
        eventually("deliveries through A", async || {
            (stored(db.url()) > before).then_some(())
        })
        .await;
        proxy.stall();
        stalls += 1;
        let looked = Instant::now();
        let mut caught = false;
        while !caught && looked.elapsed() < Duration::from_secs(3) {
            caught = held_transaction(db.url());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if caught {
            break;
        }
        proxy.resume();
        assert!(stalls < 20, "A's link never stalled inside a write group");
    }
    let stalled_at = Instant::now();
    // A write through B: it waits for A's group, which the server ends after 30 s.
    let response = try_deliver_push(&client, &hook_b, WEBHOOK_SECRET, "through-b")
        .await
        .unwrap_or_else(|e| {
            panic!(
                "B did not answer a delivery within {CALL_TIMEOUT:?} while A's stalled write \
                 group held the writers' lock: {e:?}"
            )
        });
    assert_eq!(response.status(), 202, "a delivery to B while A is cut off");
    let b_waited = stalled_at.elapsed().as_secs_f64();
    proxy.resume();
    loading.store(false, std::sync::atomic::Ordering::Relaxed);
    // A, its session ended by the server, connects again on its own.
    let (status, _) = eventually("A to take a delivery again", async || {
        let answer = try_deliver_push(&client, &hook_a, WEBHOOK_SECRET, "through-a").await;
        answer
            .ok()
            .filter(|r| r.status() == 202)
            .map(|r| (r.status(), ()))
    })
    .await;
    assert_eq!(status, 202);
    for hub in [&hub_a, &hub_b] {
        assert!(!hub.output().contains("panicked"), "{}", hub.output());
    }
    hub_a.stop_with(Signal::SIGTERM);
    hub_b.stop_with(Signal::SIGTERM);
    eprintln!(
        "cut off mid-write: caught after {stalls} stall(s); B's write waited {b_waited:.1}s; \
         {:.1}s after the hubs started",
        began.elapsed().as_secs_f64()
    );
}
