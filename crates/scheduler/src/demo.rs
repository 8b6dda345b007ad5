//! `scheduler demo`: the whole loop on bundled real GitHub payloads, in a temporary home.
//!
//! It starts the same system as `scheduler start` (embedded hub on a loopback port, worker
//! pulling from it over HTTP with long-poll), plus a stand-in for the GitHub API on loopback
//! that records the commit statuses and comments the hub reports. Then it sends signed webhook
//! deliveries built from the payloads, follows each job to its end and prints a table. It exits
//! 0 only if every job ended as expected.
//!
//! Outcomes are read from the scheduler's run store (the run's status) and from the reports the
//! hub sent to the GitHub stand-in: a cancel command has no run of its own, and the hub answers
//! it with one comment (the cancel job it routes to the scheduler posts nothing).

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use dispatch_dag::{RunStatus, Stores};
use dispatch_protocol::Secret;
use rand::RngCore as _;
use tokio_util::sync::CancellationToken;

use crate::app::System;
use crate::cli::DemoArgs;
use crate::config::{CloudTarget, Settings};
use crate::error::AppError;

const PUSH: &[u8] =
    include_bytes!("../../../tests/fixtures/github-webhooks/push/with-new-branch.payload.json");
const PULL_REQUEST: &[u8] =
    include_bytes!("../../../tests/fixtures/github-webhooks/pull_request/opened.payload.json");
const RELEASE: &[u8] =
    include_bytes!("../../../tests/fixtures/github-webhooks/release/published.payload.json");
const ISSUE_COMMENT: &[u8] =
    include_bytes!("../../../tests/fixtures/github-webhooks/issue_comment/created.payload.json");
const BINDINGS: &str = include_str!("../demo/bindings.toml");
const DAGS: [(&str, &str); 5] = [
    ("build.yaml", include_str!("../demo/dags/build.yaml")),
    ("test-pr.yaml", include_str!("../demo/dags/test-pr.yaml")),
    ("release.yaml", include_str!("../demo/dags/release.yaml")),
    ("lint.yaml", include_str!("../demo/dags/lint.yaml")),
    ("long.yaml", include_str!("../demo/dags/long.yaml")),
];
/// The whole demo normally takes a few seconds; this bounds a broken run.
const DEADLINE: Duration = Duration::from_secs(50);
const TICK: Duration = Duration::from_millis(50);

/// One webhook delivery of the demo.
struct Delivery {
    label: &'static str,
    event: &'static str,
    body: Vec<u8>,
}

/// A job the demo expects, and what it saw of it.
struct Tracked {
    label: &'static str,
    /// The DAGs this job may be for: the hub answers with job ids only, so the DAG is known
    /// once the job's run shows up in the run store under one of them.
    candidates: Vec<&'static str>,
    dag: String,
    job_id: String,
    expected: &'static str,
    /// The cancel command has no run; its outcome is the hub's answer.
    is_cancel: bool,
    sent_at: Instant,
    sent_ms: u64,
    /// Start of the demo, for the progress lines.
    began: Instant,
    last_seen: String,
    started_ms: Option<u64>,
    ended: Option<(String, Instant)>,
}

/// What the GitHub stand-in received.
#[derive(Debug, Clone)]
struct Report {
    path: String,
    body: serde_json::Value,
}

pub(crate) async fn run(args: DemoArgs) -> Result<(), AppError> {
    let home = tempfile::Builder::new()
        .prefix("dispatch-demo-")
        .tempdir()
        .map_err(|err| AppError::component("create a temporary home", err))?;
    let result = run_in(home.path(), args.keep, args.serve).await;
    if args.keep {
        let kept = home.keep();
        say!("home kept at {}", kept.display());
    }
    result
}

async fn run_in(home: &std::path::Path, verbose_paths: bool, serve: bool) -> Result<(), AppError> {
    let began = Instant::now();
    let dags_dir = home.join("dags");
    std::fs::create_dir_all(&dags_dir)
        .map_err(|err| AppError::component("create the demo DAGs directory", err))?;
    for (name, text) in DAGS {
        std::fs::write(dags_dir.join(name), text)
            .map_err(|err| AppError::component(format!("write demo DAG {name}"), err))?;
    }
    std::fs::write(home.join("bindings.toml"), BINDINGS)
        .map_err(|err| AppError::component("write the demo bindings", err))?;

    let shutdown = CancellationToken::new();
    crate::signals::install(shutdown.clone())
        .map_err(|err| AppError::component("install signal handlers", err))?;
    let reports = Arc::new(Mutex::new(Vec::<Report>::new()));
    let github_addr = serve_github(reports.clone(), shutdown.clone()).await?;

    let settings = Settings {
        home: home.to_owned(),
        dags_dir,
        data_dir: home.join("data"),
        log_dir: home.join("logs"),
        cloud: CloudTarget::Embedded {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            storage: crate::config::HubStorage::default(),
            github_api_url: reqwest::Url::parse(&format!("http://{github_addr}"))
                .map_err(|err| AppError::component("build the GitHub stand-in URL", err))?,
            github_token: Some(Secret::new("demo-token")),
            github_app: None,
            public_url: None,
        },
        license_key: None,
        license_public_key: None,
        poll_interval: Duration::from_secs(1),
        report_interval: Duration::from_secs(1),
        long_poll: Duration::from_secs(30),
        max_concurrent_runs: Some(8),
        shutdown_grace: Duration::from_secs(5),
        metrics_addr: None,
        log_format: crate::cli::LogFormat::Text,
        hist_retention_days: dispatch_dag::DEFAULT_HIST_RETENTION_DAYS,
    };
    let system = System::start(&settings, &shutdown).await?;
    let hub = system
        .hub
        .clone()
        .ok_or_else(|| AppError::Demo("the embedded hub did not start".into()))?;
    say!("dispatch demo: home {}", home.display());
    say!(
        "embedded hub {} · GitHub stand-in http://{github_addr} · started in {} ms",
        hub.addr,
        began.elapsed().as_millis()
    );
    say!();

    let outcome = drive(
        &system,
        &hub.local_webhook_url,
        &hub.webhook_secret,
        &reports,
        &shutdown,
    )
    .await;
    // With --serve the table comes while the hub still runs, which then waits for Ctrl-C.
    if serve {
        if let Ok((jobs, failures)) = &outcome {
            print_outcome(jobs, failures, &reports, &hub, began, true);
            say!("\nThe embedded hub stays up for its web pages; log in with");
            say!("  {}", hub.login_hint(std::io::stdout().is_terminal()));
            say!("Ctrl-C to stop.");
            shutdown.cancelled().await;
        }
    }
    shutdown.cancel();
    let stopped = system.wait().await;
    let (jobs, failures) = outcome?;
    stopped?;
    if !serve {
        print_outcome(&jobs, &failures, &reports, &hub, began, false);
    }
    if verbose_paths {
        say!("logs under {}", home.join("logs").display());
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(AppError::Demo(failures.join("; ")))
    }
}

/// The table, each job's page on the hub and the verdict.
fn print_outcome(
    jobs: &[Tracked],
    failures: &[String],
    reports: &Mutex<Vec<Report>>,
    hub: &crate::app::EmbeddedHub,
    began: Instant,
    serving: bool,
) {
    print_table(jobs, &reports.lock().map(|r| r.clone()).unwrap_or_default());
    if serving {
        say!("\njob pages on the hub (log in first, as said below):");
    } else {
        say!("\njob pages on the hub (it stops with the demo: `scheduler demo --serve` keeps it up):");
    }
    for job in jobs.iter().filter(|j| !j.is_cancel) {
        say!(
            "  {:<34} {}",
            format!("{} → {}", job.label, job.dag),
            hub.job_url(&job.job_id)
        );
    }
    if failures.is_empty() {
        say!(
            "\nall {} jobs ended as expected in {:.1} s",
            jobs.len(),
            began.elapsed().as_secs_f64()
        );
    }
}

async fn drive(
    system: &System,
    webhook_url: &str,
    secret: &Secret,
    reports: &Mutex<Vec<Report>>,
    shutdown: &CancellationToken,
) -> Result<(Vec<Tracked>, Vec<String>), AppError> {
    let began = Instant::now();
    let http = reqwest::Client::new();
    let deliveries = [
        Delivery {
            label: "push",
            event: "push",
            body: PUSH.to_vec(),
        },
        Delivery {
            label: "pull_request opened",
            event: "pull_request",
            body: PULL_REQUEST.to_vec(),
        },
        Delivery {
            label: "release published",
            event: "release",
            body: RELEASE.to_vec(),
        },
        Delivery {
            label: "comment \"@dispatch long\"",
            event: "issue_comment",
            body: comment_payload("@dispatch long")?,
        },
    ];
    let mut jobs = Vec::new();
    for delivery in &deliveries {
        let job_ids = send(&http, webhook_url, secret, delivery).await?;
        let dags = dags_for(delivery);
        if job_ids.len() != dags.len() {
            return Err(AppError::Demo(format!(
                "the {} webhook made {} job(s), expected {} ({})",
                delivery.label,
                job_ids.len(),
                dags.len(),
                dags.join(", ")
            )));
        }
        for job_id in job_ids {
            jobs.push(new_tracked(delivery, job_id, false, began));
        }
    }
    let deadline = Instant::now() + DEADLINE;
    let mut cancel_sent = false;
    loop {
        if shutdown.is_cancelled() {
            return Err(AppError::Demo("interrupted".into()));
        }
        observe(&system.stores, &mut jobs, reports);
        // The cancel is sent once `long` runs, and once the other PR/issue jobs are over so it
        // cannot stop them instead.
        let long_running = jobs
            .iter()
            .any(|j| j.dag == "long" && j.last_seen == RunStatus::Running.as_str());
        if !cancel_sent && long_running {
            let delivery = Delivery {
                label: "comment \"@dispatch cancel\"",
                event: "issue_comment",
                body: comment_payload("@dispatch cancel")?,
            };
            // The hub routes the cancel to the scheduler holding `long`: at once when it has
            // accepted the job, else as soon as it does (then the answer names no job yet).
            let job_ids = send(&http, webhook_url, secret, &delivery).await?;
            let label = if job_ids.is_empty() {
                "(on accept)".to_owned()
            } else {
                job_ids.join(", ")
            };
            jobs.push(new_tracked(&delivery, label, true, began));
            cancel_sent = true;
        }
        if cancel_sent && jobs.iter().all(|j| j.ended.is_some()) {
            break;
        }
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(TICK).await;
    }
    let mut failures = Vec::new();
    if !cancel_sent {
        failures.push("the `long` run never started, so no cancel was sent".to_owned());
    }
    for job in &jobs {
        match &job.ended {
            Some((status, _)) if status == job.expected => {}
            Some((status, _)) => failures.push(format!(
                "{} → {}: expected {}, got {status}",
                job.label, job.dag, job.expected
            )),
            None => failures.push(format!(
                "{} → {}: still `{}` after {} s",
                job.label,
                job.dag,
                job.last_seen,
                DEADLINE.as_secs()
            )),
        }
    }
    if let Some(build) = jobs.iter().find(|j| j.dag == "build") {
        print_context(&system.stores, build);
    }
    Ok((jobs, failures))
}

fn new_tracked(delivery: &Delivery, job_id: String, is_cancel: bool, began: Instant) -> Tracked {
    let candidates = dags_for(delivery);
    let dag = if candidates.len() == 1 {
        candidates[0].to_owned()
    } else {
        candidates.join(" or ")
    };
    let what = if is_cancel {
        format!("cancel ({dag})")
    } else {
        dag.clone()
    };
    say!(
        "{:>7}  {}: job {job_id} → {what}",
        elapsed_label(began.elapsed()),
        delivery.label
    );
    Tracked {
        label: delivery.label,
        expected: if is_cancel { ANSWERED } else { expected(&dag) },
        candidates,
        dag,
        job_id,
        is_cancel,
        sent_at: Instant::now(),
        sent_ms: dispatch_util::now_ms(),
        began,
        last_seen: "dispatched".to_owned(),
        started_ms: None,
        ended: None,
    }
}

/// Updates every job from the run store and the received reports; prints each change.
fn observe(stores: &Stores, jobs: &mut [Tracked], reports: &Mutex<Vec<Report>>) {
    let received = reports.lock().map(|r| r.clone()).unwrap_or_default();
    for job in jobs.iter_mut().filter(|j| j.ended.is_none()) {
        let status = if job.is_cancel {
            // The hub answers the command with one comment of its own; a job's report starts
            // with "dispatch `<dag>`".
            received
                .iter()
                .any(is_command_answer)
                .then(|| ANSWERED.to_owned())
        } else {
            let mut found = None;
            for dag in &job.candidates {
                match stores.runs.find_attempt(dag, &job.job_id) {
                    Ok(attempt) => {
                        found = Some((*dag, attempt));
                        break;
                    }
                    Err(err) if err.is_not_found() => {}
                    Err(err) => {
                        tracing::warn!(error = %err, job = %job.job_id, "cannot read the run")
                    }
                }
            }
            found.map(|(dag, attempt)| {
                if job.dag != dag {
                    job.dag = dag.to_owned();
                    job.expected = expected(dag);
                }
                job.started_ms = attempt.record.started_at;
                attempt.record.status.as_str().to_owned()
            })
        };
        let Some(status) = status else { continue };
        if status != job.last_seen {
            let what = if job.is_cancel {
                format!("cancel ({})", job.dag)
            } else {
                job.dag.clone()
            };
            say!(
                "{:>7}  {what}: {status}",
                elapsed_label(job.began.elapsed())
            );
            job.last_seen = status.clone();
        }
        let is_final = job.is_cancel || RunStatus::parse(&status).is_ok_and(|s| s.is_final());
        if is_final {
            job.ended = Some((status, Instant::now()));
        }
    }
}

/// The status the demo shows for a command the hub answered.
const ANSWERED: &str = "answered";

/// Whether a report is the hub's answer to a command: a comment that is not a job's report.
fn is_command_answer(report: &Report) -> bool {
    report.path.contains("/issues/")
        && report.body["body"]
            .as_str()
            .is_some_and(|b| !b.starts_with("dispatch `"))
}

fn elapsed_label(d: Duration) -> String {
    format!("+{:.2}s", d.as_secs_f64())
}

/// What the hub reported to the GitHub stand-in for a job: a commit status (by its context) or
/// a comment (by its first line).
fn reported(job: &Tracked, reports: &[Report]) -> String {
    let command = if job.is_cancel {
        "cancel"
    } else {
        job.dag.as_str()
    };
    let comment = format!("dispatch `{}` ({command}): ", job.dag);
    let mut seen = Vec::new();
    for r in reports {
        if job.is_cancel && is_command_answer(r) {
            seen.push("answer on the issue".to_owned());
        }
        if !job.is_cancel && r.body["context"].as_str() == Some(&format!("dispatch/{}", job.dag)) {
            seen.push(format!(
                "status {}",
                r.body["state"].as_str().unwrap_or("?")
            ));
        }
        if r.body["body"]
            .as_str()
            .is_some_and(|b| b.starts_with(&comment))
        {
            let issue = r
                .path
                .split("/issues/")
                .nth(1)
                .and_then(|rest| rest.split('/').next())
                .unwrap_or("?");
            seen.push(format!("comment on #{issue}"));
        }
    }
    if seen.is_empty() {
        "-".to_owned()
    } else {
        seen.join(", ")
    }
}

fn print_table(jobs: &[Tracked], reports: &[Report]) {
    say!();
    let header = [
        "event",
        "DAG",
        "status",
        "expected",
        "dispatch",
        "total",
        "reported to GitHub",
    ];
    let rows: Vec<[String; 7]> = jobs
        .iter()
        .map(|j| {
            let status = j
                .ended
                .as_ref()
                .map_or_else(|| j.last_seen.clone(), |(s, _)| s.clone());
            let mark = if j.ended.as_ref().is_some_and(|(s, _)| s == j.expected) {
                "ok"
            } else {
                "MISMATCH"
            };
            // Dispatch latency: webhook sent → first step started (from the run record).
            let dispatch = j
                .started_ms
                .map(|started| format!("{} ms", started.saturating_sub(j.sent_ms)))
                .unwrap_or_else(|| "-".to_owned());
            let total = j
                .ended
                .as_ref()
                .map(|(_, at)| format!("{:.2} s", at.duration_since(j.sent_at).as_secs_f64()))
                .unwrap_or_else(|| "-".to_owned());
            let dag = if j.is_cancel {
                format!("cancel ({})", j.dag)
            } else {
                j.dag.clone()
            };
            [
                j.label.to_owned(),
                dag,
                status,
                format!("{} {mark}", j.expected),
                dispatch,
                total,
                reported(j, reports),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        say!("  {}", parts.join("  ").trim_end());
    };
    line(&header.map(str::to_owned));
    line(&widths.map(|w| "-".repeat(w)));
    for row in &rows {
        line(row);
    }
    say!("\n  dispatch = webhook sent → first step started; total = webhook sent → final status seen");
}

/// Shows what the `build` DAG printed: the GitHub context derived from the push payload.
fn print_context(stores: &Stores, job: &Tracked) {
    let Ok(attempt) = stores.runs.find_attempt(&job.dag, &job.job_id) else {
        return;
    };
    let Some(step) = attempt.record.steps.iter().find(|s| s.name == "context") else {
        return;
    };
    if let Ok(text) = std::fs::read_to_string(&step.stdout) {
        say!("\n  `build` saw this GitHub context (from its step log):");
        for line in text.lines() {
            say!("    {line}");
        }
    }
}

/// The issue comment payload with its body replaced by `command`, from the repository's owner:
/// the hub takes comment commands only from commenters its bindings allow (by default owners,
/// members and collaborators).
fn comment_payload(command: &str) -> Result<Vec<u8>, AppError> {
    let mut value: serde_json::Value = serde_json::from_slice(ISSUE_COMMENT)
        .map_err(|err| AppError::component("read the bundled issue_comment payload", err))?;
    let comment = value
        .get_mut("comment")
        .and_then(|c| c.as_object_mut())
        .ok_or_else(|| AppError::Demo("bundled issue_comment payload has no comment".into()))?;
    comment.insert("body".into(), serde_json::Value::String(command.to_owned()));
    comment.insert(
        "author_association".into(),
        serde_json::Value::String("OWNER".into()),
    );
    serde_json::to_vec(&value)
        .map_err(|err| AppError::component("write the issue_comment payload", err))
}

/// What the demo expects a DAG's run to end with.
fn expected(dag: &str) -> &'static str {
    match dag {
        "lint" => "failed",
        "long" => "aborted",
        _ => "succeeded",
    }
}

/// Sends one signed delivery; returns the ids of the jobs the hub created.
async fn send(
    http: &reqwest::Client,
    url: &str,
    secret: &Secret,
    delivery: &Delivery,
) -> Result<Vec<String>, AppError> {
    let signature = dispatch_protocol::webhook_signature::sign(secret, &delivery.body);
    let mut id = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut id);
    let response = http
        .post(url)
        .header("content-type", "application/json")
        .header("user-agent", "GitHub-Hookshot/dispatch-demo")
        .header("x-github-event", delivery.event)
        .header("x-github-delivery", dispatch_util::hex(&id))
        .header("x-hub-signature-256", signature)
        .body(delivery.body.clone())
        .send()
        .await
        .map_err(|err| AppError::component(format!("send the {} webhook", delivery.label), err))?;
    let status = response.status();
    let answer: serde_json::Value = response.json().await.map_err(|err| {
        AppError::component(
            format!("read the hub's answer to the {} webhook", delivery.label),
            err,
        )
    })?;
    // 202 with jobs; 200 for a delivery that made none (a cancel waiting for its accept), as
    // long as the hub took it.
    let taken = answer["outcome"].as_str() == Some("accepted");
    if !(status == StatusCode::ACCEPTED || (status == StatusCode::OK && taken)) {
        return Err(AppError::Demo(format!(
            "hub answered {status} to the {} webhook: {answer}",
            delivery.label
        )));
    }
    let ids: Vec<String> = answer["job_ids"]
        .as_array()
        .map(|ids| {
            ids.iter()
                .filter_map(|id| id.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Ok(ids)
}

/// The DAGs the demo bindings start for a delivery.
fn dags_for(delivery: &Delivery) -> Vec<&'static str> {
    match delivery.event {
        "push" => vec!["build"],
        "pull_request" => vec!["test-pr", "lint"],
        "release" => vec!["release"],
        _ => vec!["long"],
    }
}

/// A loopback stand-in for the GitHub API: records statuses and comments, answers 201.
async fn serve_github(
    reports: Arc<Mutex<Vec<Report>>>,
    cancel: CancellationToken,
) -> Result<SocketAddr, AppError> {
    async fn record(
        State(reports): State<Arc<Mutex<Vec<Report>>>>,
        UrlPath(path): UrlPath<String>,
        Json(body): Json<serde_json::Value>,
    ) -> (StatusCode, Json<serde_json::Value>) {
        if let Ok(mut r) = reports.lock() {
            r.push(Report {
                path: format!("/{path}"),
                body,
            });
        }
        (StatusCode::CREATED, Json(serde_json::json!({ "id": 1 })))
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|err| AppError::component("listen for the GitHub stand-in", err))?;
    let addr = listener
        .local_addr()
        .map_err(|err| AppError::component("listen for the GitHub stand-in", err))?;
    let app = Router::new()
        .route("/{*path}", post(record))
        .with_state(reports);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await;
    });
    Ok(addr)
}
