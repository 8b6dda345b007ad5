//! Fault matrix (the faults section of `docs/architecture.md`): the worker, with the real tracker, stores and executor, against
//! a cloud that misbehaves on one endpoint at a time. Each row checks that the worker
//!
//! 1. does not crash: `run` is still running after the fault, no panic on a runtime thread, and
//!    it stops cleanly at the end;
//! 2. does not busy-loop: the requests the faulty endpoint received in a [`WINDOW`] after the
//!    first one stay under a bound the backoff implies (a slow machine only lowers the count);
//! 3. loses no tracked job and finishes each exactly once: a job tracked as `accepted` whose run
//!    already failed is finished once with its real status; after the fault is healed a job
//!    served by pull is taken in, accepted once and finished once; the tracker ends empty; nothing
//!    else is accepted or finished, no redirect is followed, no other path or host is asked.
//!
//! The cloud is one piece of state ([`Cloud`]) served either by wiremock, where it can express
//! the fault, or by a raw TCP server on loopback for what it cannot (a body that trickles, a
//! connection reset before or during the answer, a body without a length, bytes that are not
//! HTTP). Rows run side by side, each with its own worker,
//! dirs and servers, so the matrix takes about as long as its slowest row.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use dispatch_dag::{RunStatus, StepRecord, StepStatus};
use dispatch_enqueue::{enqueue_webhook_run, EnqueueOutcome};
use dispatch_license::MAX_RESPONSE_BYTES;
use dispatch_tracker::Phase;
use dispatch_worker::WorkerConfig;
use futures_util::future::join_all;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use wiremock::matchers::any;
use wiremock::{Mock, Request, Respond, ResponseTemplate};

use crate::common::*;

/// How long after the first faulty request the requests are counted.
const WINDOW: Duration = Duration::from_secs(2);
/// The client's request timeout; the slow faults stall well past it.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(1);
/// Bound for rows retried on the plain backoff: each retry waits at least `backoff_min`
/// (100 ms), so a 2 s window holds at most 21 requests; a busy loop makes hundreds.
const BACKOFF_BOUND: usize = 25;
/// Bound for rows that wait at least a second per attempt (`Retry-After: 1`, or the client
/// timeout): at most one request at the start of the window and one per second after it.
const SLOW_BOUND: usize = 3;

const DAG: &str = "quick";
const SEED_SUMMARY: &str =
    "Run `quick` finished with `failed`. First error: exit status 2. Failed steps: `s` (exit 2).";
const FRESH_SUMMARY: &str = "Run `quick` finished with `succeeded`.";

fn matrix_config() -> WorkerConfig {
    WorkerConfig {
        idle_delay: Duration::from_millis(200),
        report_interval: Duration::from_millis(200),
        long_poll: Duration::ZERO,
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_millis(400),
        credentials_recheck: Duration::from_millis(50),
        shutdown_grace: Duration::from_secs(5),
        intake_concurrency: 4,
        pull_concurrency: 1,
        pull_batch_size: 32,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Pull,
    Accept,
    Finish,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Wiremock,
    Raw,
}

/// Where a redirect points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// Another path on the same server.
    OtherPath,
    /// The same path on another listener (a trap that counts connections).
    OtherHost,
}

#[derive(Clone, Debug)]
enum Fault {
    /// A non-2xx status with this body (and a `Retry-After`, if given).
    Status {
        code: u16,
        retry_after: Option<&'static str>,
        content_type: &'static str,
        body: &'static str,
    },
    /// The headers never come; the client timeout fires first.
    SlowHeaders,
    /// 200 headers at once, then the body a byte at a time, past the client timeout.
    SlowBody,
    /// The request is read, then the connection is reset without an answer.
    ResetBeforeAnswer,
    /// 200 headers and part of the body, then a reset.
    ResetMidBody,
    /// Something that is not HTTP at all (a wrong port: another service's banner).
    NotHttp,
    /// 200 `application/json` that is not JSON.
    MalformedJson,
    /// 200 with an empty body.
    Empty200,
    /// 200 with a job whose `id` is empty (a malformed answer, not an empty queue).
    JobWithoutId,
    /// 200 with a well-formed job larger than the client reads, `Content-Length` declared.
    OversizedJob,
    /// The same, streamed without a length (the end is the connection's close).
    OversizedJobStreamed,
    /// 200 `text/html` with a page, as a captive portal or proxy answers.
    HtmlPage,
    /// Healthy answers with this content type instead of `application/json`. The client goes by
    /// the body, not the label: Go's net/http labels a JSON body written without a content type
    /// `text/plain; charset=utf-8`, and a server that speaks the protocol that way must work.
    JobLabelled(&'static str),
    /// A redirect.
    Redirect { code: u16, to: Target },
}

impl Fault {
    fn wiremock_can(&self) -> bool {
        !matches!(
            self,
            Fault::SlowBody
                | Fault::ResetBeforeAnswer
                | Fault::ResetMidBody
                | Fault::NotHttp
                | Fault::OversizedJobStreamed
        )
    }
}

/// What a server does with one request.
enum Reply {
    Answer {
        status: u16,
        content_type: Option<&'static str>,
        headers: Vec<(&'static str, String)>,
        body: Vec<u8>,
    },
    Stall,
    Trickle,
    ResetBeforeAnswer,
    ResetMidBody,
    Bytes(&'static [u8]),
    Stream(Vec<u8>),
}

impl Reply {
    fn json(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply::Answer {
            status,
            content_type: Some("application/json"),
            headers: Vec::new(),
            body: body.into(),
        }
    }

    fn no_content() -> Reply {
        Reply::Answer {
            status: 204,
            content_type: None,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }
}

/// A call the cloud answered 2xx: what a hub would have taken in.
#[derive(Debug, Clone)]
struct Delivery {
    endpoint: Endpoint,
    job_id: String,
    body: Value,
}

#[derive(Default)]
struct CloudState {
    fault: Option<(Endpoint, Fault)>,
    jobs: VecDeque<String>,
    hits: Vec<(Endpoint, Instant)>,
    delivered: Vec<Delivery>,
    strays: Vec<String>,
    trap_url: String,
}

/// The cloud's behaviour and record, shared by whichever server fronts it.
#[derive(Clone, Default)]
struct Cloud(Arc<Mutex<CloudState>>);

fn route(path: &str) -> Option<(Endpoint, String)> {
    let rest = path.strip_prefix("/api/v1/github/dispatch/")?;
    if rest == "pull" {
        return Some((Endpoint::Pull, String::new()));
    }
    let (id, action) = rest.split_once('/')?;
    match action {
        "accept" => Some((Endpoint::Accept, id.to_owned())),
        "finish" => Some((Endpoint::Finish, id.to_owned())),
        _ => None,
    }
}

fn job_json(id: &str) -> String {
    json!({"id": id, "dag_name": DAG, "repository_name": "octo/repo", "ref": "refs/heads/main"})
        .to_string()
}

/// A job that is fine except for its size: taken in, it would be accepted and run.
fn oversized_job() -> Vec<u8> {
    let pad = "x".repeat(MAX_RESPONSE_BYTES + 64 * 1024);
    json!({"id": "oversized", "dag_name": DAG, "payload": {"pad": pad}})
        .to_string()
        .into_bytes()
}

impl Cloud {
    fn state(&self) -> std::sync::MutexGuard<'_, CloudState> {
        self.0.lock().unwrap()
    }

    fn set_fault(&self, endpoint: Endpoint, fault: Fault) {
        self.state().fault = Some((endpoint, fault));
    }

    fn heal(&self) {
        self.state().fault = None;
    }

    fn offer(&self, job_id: &str) {
        self.state().jobs.push_back(job_json(job_id));
    }

    fn handle(&self, path: &str, body: &[u8]) -> Reply {
        let mut state = self.state();
        let Some((endpoint, job_id)) = route(path) else {
            state.strays.push(path.to_owned());
            return Reply::json(404, r#"{"message":"no such path"}"#);
        };
        state.hits.push((endpoint, Instant::now()));
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let fault = match &state.fault {
            Some((e, f)) if *e == endpoint => Some(f.clone()),
            _ => None,
        };
        // Accept and finish succeed on any 2xx whatever the body, so a 2xx fault on them is
        // still a delivery.
        let deliver_2xx = |state: &mut CloudState| {
            if endpoint != Endpoint::Pull {
                state.delivered.push(Delivery {
                    endpoint,
                    job_id: job_id.clone(),
                    body: body.clone(),
                });
            }
        };
        match fault {
            None => healthy(&mut state, endpoint, &job_id, body, "application/json"),
            Some(Fault::JobLabelled(content_type)) => {
                healthy(&mut state, endpoint, &job_id, body, content_type)
            }
            Some(Fault::Status {
                code,
                retry_after,
                content_type,
                body,
            }) => Reply::Answer {
                status: code,
                content_type: Some(content_type),
                headers: retry_after
                    .map(|r| vec![("Retry-After", r.to_owned())])
                    .unwrap_or_default(),
                body: body.as_bytes().to_vec(),
            },
            Some(Fault::SlowHeaders) => Reply::Stall,
            Some(Fault::SlowBody) => Reply::Trickle,
            Some(Fault::ResetBeforeAnswer) => Reply::ResetBeforeAnswer,
            Some(Fault::ResetMidBody) => Reply::ResetMidBody,
            Some(Fault::NotHttp) => Reply::Bytes(b"SSH-2.0-OpenSSH_9.6\r\n"),
            Some(Fault::MalformedJson) => {
                deliver_2xx(&mut state);
                Reply::json(
                    200,
                    r#"{"id": "malformed", "dag_name": "quick", "payload": {"#,
                )
            }
            Some(Fault::Empty200) => {
                deliver_2xx(&mut state);
                Reply::json(200, "")
            }
            Some(Fault::JobWithoutId) => {
                deliver_2xx(&mut state);
                Reply::json(200, r#"{"id": "", "dag_name": "quick"}"#)
            }
            Some(Fault::OversizedJob) => Reply::json(200, oversized_job()),
            Some(Fault::OversizedJobStreamed) => Reply::Stream(oversized_job()),
            Some(Fault::HtmlPage) => {
                deliver_2xx(&mut state);
                Reply::Answer {
                    status: 200,
                    content_type: Some("text/html; charset=utf-8"),
                    headers: Vec::new(),
                    body:
                        b"<!doctype html><html><body><h1>Sign in to the network</h1></body></html>"
                            .to_vec(),
                }
            }
            Some(Fault::Redirect { code, to }) => {
                let location = match to {
                    Target::OtherPath => "/moved/elsewhere".to_owned(),
                    Target::OtherHost => format!("{}{path}", state.trap_url),
                };
                Reply::Answer {
                    status: code,
                    content_type: Some("text/plain"),
                    headers: vec![("Location", location)],
                    body: b"moved".to_vec(),
                }
            }
        }
    }

    /// Requests to `endpoint` in `[first, first + WINDOW]`, and when the first was.
    fn hits_in_window(&self, endpoint: Endpoint) -> Option<(Instant, usize)> {
        let state = self.state();
        let mut hits = state.hits.iter().filter(|(e, _)| *e == endpoint);
        let (_, first) = *hits.next()?;
        Some((
            first,
            1 + hits.filter(|(_, at)| *at <= first + WINDOW).count(),
        ))
    }

    fn delivered(&self) -> Vec<Delivery> {
        self.state().delivered.clone()
    }

    fn delivered_to(&self, endpoint: Endpoint, job_id: &str) -> Vec<Value> {
        self.delivered()
            .into_iter()
            .filter(|d| d.endpoint == endpoint && d.job_id == job_id)
            .map(|d| d.body)
            .collect()
    }
}

fn healthy(
    state: &mut CloudState,
    endpoint: Endpoint,
    job_id: &str,
    body: Value,
    content_type: &'static str,
) -> Reply {
    match endpoint {
        Endpoint::Pull => match state.jobs.pop_front() {
            Some(job) => Reply::Answer {
                status: 200,
                content_type: Some(content_type),
                headers: Vec::new(),
                body: job.into_bytes(),
            },
            None => Reply::no_content(),
        },
        Endpoint::Accept | Endpoint::Finish => {
            state.delivered.push(Delivery {
                endpoint,
                job_id: job_id.to_owned(),
                body,
            });
            Reply::no_content()
        }
    }
}

/// Wiremock front: turns the cloud's reply into a template.
struct WiremockFront(Cloud);

impl Respond for WiremockFront {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        match self.0.handle(request.url.path(), &request.body) {
            Reply::Answer {
                status,
                content_type,
                headers,
                body,
            } => {
                let mut template = ResponseTemplate::new(status);
                for (name, value) in headers {
                    template = template.insert_header(name, value.as_str());
                }
                match content_type {
                    Some(mime) => template.set_body_raw(body, mime),
                    None => template,
                }
            }
            Reply::Stall => ResponseTemplate::new(503).set_delay(Duration::from_secs(60)),
            // Rows check `Fault::wiremock_can` before choosing this front; a teapot would show
            // up as a plain error and fail the row's delivery assertions.
            _ => ResponseTemplate::new(418),
        }
    }
}

/// Raw front: an HTTP/1.1 server on loopback, one request per connection.
async fn start_raw(cloud: Cloud) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of descriptors, say: wait instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let cloud = cloud.clone();
            tokio::spawn(async move {
                // The client going away mid-answer is part of the game.
                let _ = serve_conn(stream, cloud).await;
            });
        }
    });
    format!("http://{addr}")
}

/// A listener that only counts the connections made to it.
async fn start_trap() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (format!("http://{addr}"), count)
}

async fn read_request(stream: &mut TcpStream) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return Ok(None);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let Some(path) = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .map(str::to_owned)
    else {
        return Ok(None);
    };
    let length: usize = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Ok(Some((path, body)))
}

fn head(status: u16, content_type: Option<&str>, length: Option<usize>) -> String {
    let mut head = format!("HTTP/1.1 {status} Fault Matrix\r\nConnection: close\r\n");
    if let Some(mime) = content_type {
        head.push_str(&format!("Content-Type: {mime}\r\n"));
    }
    if let Some(length) = length {
        head.push_str(&format!("Content-Length: {length}\r\n"));
    }
    head
}

async fn serve_conn(mut stream: TcpStream, cloud: Cloud) -> std::io::Result<()> {
    let Some((path, body)) = read_request(&mut stream).await? else {
        return Ok(());
    };
    match cloud.handle(&path, &body) {
        Reply::Answer {
            status,
            content_type,
            headers,
            body,
        } => {
            let length = (status != 204).then_some(body.len());
            let mut text = head(status, content_type, length);
            for (name, value) in headers {
                text.push_str(&format!("{name}: {value}\r\n"));
            }
            text.push_str("\r\n");
            stream.write_all(text.as_bytes()).await?;
            stream.write_all(&body).await?;
            stream.shutdown().await?;
        }
        Reply::Stall => {
            // Until the client gives up and closes (or a minute passes).
            let mut byte = [0u8; 1];
            let _ = tokio::time::timeout(Duration::from_secs(60), stream.read(&mut byte)).await;
        }
        Reply::Trickle => {
            let text = head(200, Some("application/json"), Some(100_000)) + "\r\n";
            stream.write_all(text.as_bytes()).await?;
            for _ in 0..600 {
                // Whitespace is valid JSON padding: the body is fine, only too slow.
                stream.write_all(b" ").await?;
                stream.flush().await?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Reply::ResetBeforeAnswer => {
            stream.set_zero_linger()?;
            drop(stream);
        }
        Reply::ResetMidBody => {
            let job = job_json("reset-mid-body");
            let text = head(200, Some("application/json"), Some(job.len() + 4096)) + "\r\n";
            stream.write_all(text.as_bytes()).await?;
            stream.write_all(job.as_bytes()).await?;
            stream.flush().await?;
            // Let the headers reach the client, so the reset cuts the body, not the head.
            tokio::time::sleep(Duration::from_millis(50)).await;
            stream.set_zero_linger()?;
            drop(stream);
        }
        Reply::Bytes(bytes) => {
            stream.write_all(bytes).await?;
            stream.shutdown().await?;
        }
        Reply::Stream(body) => {
            let text = head(200, Some("application/json"), None) + "\r\n";
            stream.write_all(text.as_bytes()).await?;
            for part in body.chunks(64 * 1024) {
                stream.write_all(part).await?;
            }
            stream.shutdown().await?;
        }
    }
    Ok(())
}

/// Panics on runtime threads (worker tasks, blocking tasks, servers) since the process started.
/// Test assertions run on the test's own thread and are not counted.
fn runtime_panics() -> usize {
    static HOOK: Once = Once::new();
    static PANICS: AtomicUsize = AtomicUsize::new(0);
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // Tokio's worker and blocking threads: `tokio-rt-worker` here, `tokio-runtime-worker`
            // in older versions.
            if std::thread::current()
                .name()
                .is_some_and(|name| name.starts_with("tokio-"))
            {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
    PANICS.load(Ordering::SeqCst)
}

/// Tracks `job_id` as `accepted` with a run that already failed, as a worker that stopped
/// before finishing it would have left it.
async fn seed_failed_run(rig: &Rig, job_id: &str) {
    let stores = rig.stores();
    let dag = stores.dags.load(DAG).unwrap();
    let params = dispatch_webhook_params::build_runtime_params("{}", "{}", &BTreeMap::new());
    let outcome = enqueue_webhook_run(&stores, &dag, job_id, &params, 1).unwrap();
    assert_eq!(outcome, EnqueueOutcome::Enqueued);
    let attempt = stores.runs.find_attempt(DAG, job_id).unwrap();
    let item = stores.queue.dequeue(&attempt.dag.queue).unwrap().unwrap();
    assert_eq!(item.run_id, job_id);
    let mut record = attempt.record;
    record.status = RunStatus::Failed;
    record.steps = vec![StepRecord {
        name: "s".into(),
        status: StepStatus::Failed,
        exit_code: Some(2),
        error: Some("exit status 2".into()),
        ..StepRecord::default()
    }];
    // A pid no live process has.
    record.pid = Some(u32::MAX - 7);
    stores.runs.write_status(&record).unwrap();
    rig.with_tracker(|t| t.upsert(tracked(job_id, DAG, Phase::Accepted)).unwrap())
        .await;
}

struct Row {
    name: &'static str,
    fault: Fault,
    transport: Transport,
    max_in_window: usize,
}

/// A fault retried on the plain backoff: at most [`BACKOFF_BOUND`] requests in the window.
fn backoff(name: &'static str, fault: Fault, transport: Transport) -> Row {
    Row {
        name,
        fault,
        transport,
        max_in_window: BACKOFF_BOUND,
    }
}

/// A fault that costs at least a second per attempt: at most [`SLOW_BOUND`] requests in the
/// window.
fn slow(name: &'static str, fault: Fault, transport: Transport) -> Row {
    Row {
        max_in_window: SLOW_BOUND,
        ..backoff(name, fault, transport)
    }
}

/// An answer the worker takes as done: one call, no retry.
fn once(name: &'static str, fault: Fault, transport: Transport) -> Row {
    Row {
        max_in_window: 1,
        ..backoff(name, fault, transport)
    }
}

fn status(code: u16) -> Fault {
    Fault::Status {
        code,
        retry_after: None,
        content_type: "application/json",
        body: r#"{"message":"the cloud is having a bad day"}"#,
    }
}

fn status_retry_after(code: u16) -> Fault {
    Fault::Status {
        code,
        retry_after: Some("1"),
        content_type: "application/json",
        body: r#"{"message":"slow down"}"#,
    }
}

fn redirect(code: u16, to: Target) -> Fault {
    Fault::Redirect { code, to }
}

fn proxy_page(code: u16) -> Fault {
    Fault::Status {
        code,
        retry_after: None,
        content_type: "text/html",
        body: "<html><body><h1>502 Bad Gateway</h1></body></html>",
    }
}

async fn run_row(endpoint: Endpoint, row: Row) {
    let name = row.name;
    assert!(
        row.transport == Transport::Raw || row.fault.wiremock_can(),
        "{name}: wiremock cannot serve {:?}",
        row.fault
    );
    let rig = Rig::bare().await;
    rig.write_step_dag(DAG, "\"true\"");
    let seed = format!("seed-{name}");
    let fresh = format!("fresh-{name}");
    seed_failed_run(&rig, &seed).await;

    let (trap_url, trap_connections) = start_trap().await;
    let cloud = Cloud::default();
    cloud.state().trap_url = trap_url;
    cloud.set_fault(endpoint, row.fault.clone());
    // An accept fault needs a job to accept; a job with the wrong content type is the fault
    // itself.
    let offered_early = endpoint == Endpoint::Accept || matches!(row.fault, Fault::JobLabelled(_));
    if offered_early {
        cloud.offer(&fresh);
    }
    let base_url = match row.transport {
        Transport::Wiremock => {
            Mock::given(any())
                .respond_with(WiremockFront(cloud.clone()))
                .mount(&rig.server)
                .await;
            rig.server.uri()
        }
        Transport::Raw => start_raw(cloud.clone()).await,
    };
    let w = rig
        .start_against(
            base_url,
            matrix_config(),
            TestCreds::present(),
            CLIENT_TIMEOUT,
        )
        .await;

    // (2) No busy loop while the fault lasts.
    eventually(&format!("{name}: first faulty request"), || async {
        cloud.hits_in_window(endpoint).is_some()
    })
    .await;
    let (first, _) = cloud.hits_in_window(endpoint).unwrap();
    tokio::time::sleep((first + WINDOW).saturating_duration_since(Instant::now())).await;
    let (_, in_window) = cloud.hits_in_window(endpoint).unwrap();
    assert!(
        in_window <= row.max_in_window,
        "{name}: {in_window} requests to {:?} within {WINDOW:?} (at most {} expected)",
        endpoint,
        row.max_in_window
    );
    // (1) Still running.
    assert!(
        !w.handle.is_finished(),
        "{name}: worker ended during the fault"
    );

    // (3) Healed: everything is delivered, exactly once.
    cloud.heal();
    if !offered_early {
        cloud.offer(&fresh);
    }
    eventually(&format!("{name}: seed and fresh job finished"), || async {
        !cloud.delivered_to(Endpoint::Finish, &seed).is_empty()
            && !cloud.delivered_to(Endpoint::Finish, &fresh).is_empty()
    })
    .await;
    // The worker counts a finish once the call returned; wait for both before stopping.
    eventually(&format!("{name}: finishes counted"), || async {
        w.stats.jobs_finished_total() >= 2
    })
    .await;
    // A few more report passes: room for a duplicate accept or finish to show up.
    tokio::time::sleep(3 * matrix_config().report_interval).await;
    assert!(
        !w.handle.is_finished(),
        "{name}: worker ended after healing"
    );
    let stores = w.stores.clone();
    w.stop().await;

    assert_eq!(
        cloud.delivered_to(Endpoint::Finish, &seed),
        vec![finish_body("failed", SEED_SUMMARY)],
        "{name}: tracked job finished once with its real status"
    );
    assert_eq!(
        cloud.delivered_to(Endpoint::Finish, &fresh),
        vec![finish_body("succeeded", FRESH_SUMMARY)],
        "{name}: fresh job finished once"
    );
    let delivered = cloud.delivered();
    let order: Vec<(Endpoint, &str)> = delivered
        .iter()
        .filter(|d| d.job_id == fresh)
        .map(|d| (d.endpoint, d.job_id.as_str()))
        .collect();
    assert_eq!(
        order,
        vec![
            (Endpoint::Accept, fresh.as_str()),
            (Endpoint::Finish, fresh.as_str())
        ],
        "{name}: fresh job accepted once, then finished once"
    );
    assert_eq!(
        cloud.delivered_to(Endpoint::Accept, &fresh),
        vec![accept_body(&fresh)],
        "{name}"
    );
    let others: Vec<&Delivery> = delivered
        .iter()
        .filter(|d| d.job_id != fresh && !(d.job_id == seed && d.endpoint == Endpoint::Finish))
        .collect();
    assert!(
        others.is_empty(),
        "{name}: unexpected deliveries {others:?}"
    );
    let mut runs: Vec<String> = stores
        .runs
        .list_attempts()
        .unwrap()
        .into_iter()
        .map(|a| a.record.run_id)
        .collect();
    runs.sort();
    let mut expected = vec![fresh.clone(), seed.clone()];
    expected.sort();
    assert_eq!(runs, expected, "{name}: no other run was started");
    assert_eq!(
        cloud.state().strays,
        Vec::<String>::new(),
        "{name}: a redirect was followed"
    );
    assert_eq!(
        trap_connections.load(Ordering::SeqCst),
        0,
        "{name}: a redirect to another host was followed"
    );
    assert!(
        rig.with_tracker(|t| t.list().unwrap()).await.is_empty(),
        "{name}: tracker drained"
    );
}

async fn run_rows(endpoint: Endpoint, rows: Vec<Row>) {
    let panics_before = runtime_panics();
    join_all(rows.into_iter().map(|row| run_row(endpoint, row))).await;
    assert_eq!(
        runtime_panics(),
        panics_before,
        "a task panicked on a runtime thread"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_faults_back_off_and_recover() {
    use Target::{OtherHost, OtherPath};
    use Transport::{Raw, Wiremock};
    run_rows(
        Endpoint::Pull,
        vec![
            backoff("pull-500", status(500), Wiremock),
            backoff("pull-502-html", proxy_page(502), Wiremock),
            backoff("pull-503", status(503), Raw),
            slow("pull-429-ra", status_retry_after(429), Wiremock),
            slow("pull-503-ra", status_retry_after(503), Raw),
            slow("pull-slow-headers", Fault::SlowHeaders, Wiremock),
            slow("pull-slow-body", Fault::SlowBody, Raw),
            backoff("pull-reset-before", Fault::ResetBeforeAnswer, Raw),
            backoff("pull-not-http", Fault::NotHttp, Raw),
            backoff("pull-reset-mid-body", Fault::ResetMidBody, Raw),
            backoff("pull-malformed", Fault::MalformedJson, Wiremock),
            backoff("pull-no-id", Fault::JobWithoutId, Wiremock),
            backoff("pull-empty-200", Fault::Empty200, Wiremock),
            backoff("pull-oversized", Fault::OversizedJob, Wiremock),
            backoff("pull-oversized-stream", Fault::OversizedJobStreamed, Raw),
            backoff("pull-html-200", Fault::HtmlPage, Wiremock),
            backoff(
                "pull-json-as-text",
                Fault::JobLabelled("text/plain; charset=utf-8"),
                Raw,
            ),
            backoff(
                "pull-json-as-html",
                Fault::JobLabelled("text/html"),
                Wiremock,
            ),
            backoff("pull-301-path", redirect(301, OtherPath), Wiremock),
            backoff("pull-302-host", redirect(302, OtherHost), Raw),
            backoff("pull-307-host", redirect(307, OtherHost), Wiremock),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_faults_are_retried_and_the_job_is_accepted_once() {
    use Target::OtherHost;
    use Transport::{Raw, Wiremock};
    run_rows(
        Endpoint::Accept,
        vec![
            backoff("accept-500", status(500), Wiremock),
            slow("accept-503-ra", status_retry_after(503), Raw),
            backoff("accept-reset", Fault::ResetBeforeAnswer, Raw),
            slow("accept-timeout", Fault::SlowHeaders, Raw),
            // Any 2xx is an accept (`docs/protocol.md`): one call, no retry.
            once("accept-malformed", Fault::MalformedJson, Raw),
            backoff("accept-307-host", redirect(307, OtherHost), Wiremock),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finish_faults_are_retried_and_each_job_is_finished_once() {
    use Target::OtherHost;
    use Transport::{Raw, Wiremock};
    run_rows(
        Endpoint::Finish,
        vec![
            backoff("finish-500", status(500), Raw),
            backoff("finish-502-html", proxy_page(502), Wiremock),
            slow("finish-429-ra", status_retry_after(429), Wiremock),
            backoff("finish-reset", Fault::ResetBeforeAnswer, Raw),
            slow("finish-timeout", Fault::SlowHeaders, Wiremock),
            backoff("finish-not-http", Fault::NotHttp, Raw),
            // Any 2xx is a finish (`docs/protocol.md`): one call, no retry.
            once("finish-malformed", Fault::MalformedJson, Wiremock),
            backoff("finish-307-host", redirect(307, OtherHost), Raw),
        ],
    )
    .await;
}
