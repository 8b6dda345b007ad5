//! The hub's webhook intake, end to end: a real hub (`Hub::start`, SQLite in a temp dir) on
//! loopback gets each input as a `POST /webhooks/github` over a plain TCP connection. The hub's
//! signature check (`dispatch_protocol::webhook_signature::verify`), JSON parse and binding match
//! (`matching::jobs_for_delivery`) run inside the handler, so they are fuzzed through the HTTP
//! surface.
//!
//! Input layout: byte 0 chooses the event (low 4 bits), the signature (bits 4–5: 0/1 = valid,
//! 2 = wrong, 3 = none), bit 6 drops `X-GitHub-Delivery`, bit 7 sends the same delivery twice.
//! The rest is the body.
//!
//! Checked: never a 5xx, a hang or a panic; 401 for a bad or missing signature; 400 for a signed
//! body that is not JSON or a delivery without id; 200/202 with `job_ids` for a signed JSON body,
//! none when the repository matches no binding; a repeated delivery gets the same ids marked
//! `duplicate`; every job id can then be pulled (`/api/v1/github/dispatch/pull`) exactly once with
//! `payload` equal to the body's bytes (trimmed) and the delivery's headers and ids.
#![no_main]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use dispatch_hub::{Binding, Hub, HubConfig, LicenseKey};
use dispatch_protocol::{webhook_signature, DispatchJob, Secret};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const WEBHOOK_SECRET: &str = "fuzz-webhook-secret";
const LICENSE_ID: &str = "lic-fuzz";
const LICENSE_KEY: &str = "key-fuzz";
const DATA_DIR_PREFIX: &str = "dispatch-fuzz-hub-";
const SERVER_ID: &str = "0190a000-0000-7000-8000-000000000001";
const REPOSITORIES: [&str; 2] = ["Codertocat/Hello-World", "octo-org/octo-repo"];

const EVENTS: [&str; 16] = [
    "push",
    "pull_request",
    "create",
    "release",
    "check_run",
    "issue_comment",
    "pull_request_review_comment",
    "repository_dispatch",
    "workflow_dispatch",
    "ping",
    "issues",
    "delete",
    "check_suite",
    "merge_group",
    "deployment",
    "workflow_run",
];

struct Fixture {
    addr: SocketAddr,
    heartbeat_secret: String,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();
static DELIVERY: AtomicU64 = AtomicU64::new(0);

fn bindings() -> Vec<Binding> {
    let raw = json!([
        {"repository": "Codertocat/Hello-World", "dag": "build", "trigger": "auto"},
        {"repository": "Codertocat/Hello-World", "dag": "release", "trigger": "auto",
         "branch_pattern": "release/**", "tag_pattern": "v*"},
        {"repository": "Codertocat/Hello-World", "dag": "prs", "trigger": "auto",
         "event_name": "pull_request", "action": "opened", "branch_pattern": "ma*"},
        {"repository": "Codertocat/Hello-World", "dag": "deploy", "trigger": "comment_command"},
        {"repository": "octo-org/octo-repo", "dag": "ship", "trigger": "comment_command",
         "command_alias": "ship", "license": LICENSE_ID},
        {"repository": "octo-org/octo-repo", "dag": "nightly", "trigger": "manual_dispatch",
         "dispatch_event_type": "on-demand-test"},
        {"repository": "octo-org/octo-repo", "dag": "any", "trigger": "manual_dispatch"},
    ]);
    serde_json::from_value(raw).expect("fuzz bindings deserialize")
}

/// libFuzzer ends the process with `exit`, so no destructor removes the hub's data dir; each run
/// removes those left by runs whose process is gone (the pid is in the name).
fn remove_stale_data_dirs(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DATA_DIR_PREFIX)) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        // tmpfs when there is one: the hub fsyncs every delivery.
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        remove_stale_data_dirs(&base);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DATA_DIR_PREFIX}{}-", std::process::id()))
            .tempdir_in(&base)
            .expect("temp dir");
        let license: LicenseKey =
            serde_json::from_value(json!({"id": LICENSE_ID, "key": LICENSE_KEY}))
                .expect("license deserializes");
        let cfg = HubConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: dir.keep(),
            webhook_secret: Secret::new(WEBHOOK_SECRET),
            bindings: bindings(),
            licenses: vec![license],
            // Claimed jobs must not come back during a run: every pull is checked against the
            // delivery that made it.
            lease: Duration::from_secs(24 * 3600),
            ..HubConfig::default()
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let handle = rt
            .block_on(Hub::start(cfg, CancellationToken::new()))
            .expect("hub starts");
        // The runtime keeps serving from its worker thread for the life of the process.
        std::mem::forget(rt);
        let addr = handle.addr;
        std::mem::forget(handle);
        let activate = json!({"key": LICENSE_KEY, "server_id": SERVER_ID, "machine_name": "fuzz"});
        let (status, body) = post(
            addr,
            "/api/v1/licenses/activate",
            &[],
            activate.to_string().as_bytes(),
        );
        assert_eq!(status, 200, "activate: {}", String::from_utf8_lossy(&body));
        let answer: Value = serde_json::from_slice(&body).expect("activate answer is json");
        let heartbeat_secret = answer["heartbeat_secret"]
            .as_str()
            .expect("heartbeat_secret")
            .to_owned();
        Fixture {
            addr,
            heartbeat_secret,
        }
    })
}

/// One HTTP/1.1 request on a fresh connection; returns status and body.
fn post(addr: SocketAddr, path: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).expect("connect to hub");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).expect("send request");
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .unwrap_or_else(|e| panic!("hub did not answer {path}: {e}"));
    let head_end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "no header end in answer: {:?}",
                String::from_utf8_lossy(&answer)
            )
        });
    let head = String::from_utf8_lossy(&answer[..head_end]).into_owned();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head:?}"));
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "chunked answers are not expected: {head}"
    );
    (status, answer[head_end + 4..].to_vec())
}

fn sign(body: &[u8]) -> String {
    webhook_signature::sign(&Secret::new(WEBHOOK_SECRET), body)
}

fn job_ids(body: &[u8]) -> (Vec<String>, bool) {
    let answer: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "webhook answer is not json ({e}): {:?}",
            String::from_utf8_lossy(body)
        )
    });
    let ids = answer["job_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("no job_ids in {answer}"))
        .iter()
        .map(|v| v.as_str().expect("job id is a string").to_owned())
        .collect();
    (ids, answer.get("duplicate") == Some(&Value::Bool(true)))
}

fn pull(fx: &Fixture) -> Option<DispatchJob> {
    let req = json!({"license_id": LICENSE_ID, "server_id": SERVER_ID, "heartbeat_secret": fx.heartbeat_secret});
    let (status, body) = post(
        fx.addr,
        "/api/v1/github/dispatch/pull",
        &[],
        req.to_string().as_bytes(),
    );
    match status {
        204 => None,
        200 => Some(serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "pulled job does not decode ({e}): {}",
                String::from_utf8_lossy(&body)
            )
        })),
        other => panic!("pull answered {other}: {}", String::from_utf8_lossy(&body)),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, body)) = data.split_first() else {
        return;
    };
    let fx = fixture();
    let event = EVENTS[usize::from(control & 0x0f)];
    let signature = (control >> 4) & 0x3;
    let with_delivery = control & 0x40 == 0;
    let twice = control & 0x80 != 0;
    let delivery = format!("fuzz-{}", DELIVERY.fetch_add(1, Ordering::Relaxed));

    let mut headers = vec![
        ("Content-Type", "application/json".to_owned()),
        ("User-Agent", "GitHub-Hookshot/fuzz".to_owned()),
        ("X-GitHub-Event", event.to_owned()),
    ];
    if with_delivery {
        headers.push(("X-GitHub-Delivery", delivery.clone()));
    }
    match signature {
        0 | 1 => headers.push(("X-Hub-Signature-256", sign(body))),
        2 => {
            let mut wrong = sign(body);
            wrong.pop();
            wrong.push('x');
            headers.push(("X-Hub-Signature-256", wrong));
        }
        _ => {}
    }

    let (status, answer) = post(fx.addr, "/webhooks/github", &headers, body);
    let shown = || String::from_utf8_lossy(&answer).into_owned();
    assert!(status < 500, "webhook answered {status}: {}", shown());
    if signature >= 2 {
        assert_eq!(status, 401, "{}", shown());
        return;
    }
    if event == "ping" {
        assert_eq!(status, 200, "{}", shown());
        return;
    }
    if !with_delivery {
        assert_eq!(status, 400, "{}", shown());
        return;
    }
    let Ok(payload) = serde_json::from_slice::<Value>(body) else {
        assert_eq!(status, 400, "invalid json was accepted: {}", shown());
        return;
    };
    assert!(
        status == 200 || status == 202,
        "signed json answered {status}: {}",
        shown()
    );
    let (ids, duplicate) = job_ids(&answer);
    assert!(!duplicate, "first delivery marked duplicate");
    assert_eq!(
        status == 202,
        !ids.is_empty(),
        "status {status} with {} jobs",
        ids.len()
    );
    let repo = payload
        .pointer("/repository/full_name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !REPOSITORIES.iter().any(|r| r.eq_ignore_ascii_case(repo)) {
        assert!(
            ids.is_empty(),
            "jobs for unbound repository {repo:?}: {ids:?}"
        );
    }

    if twice {
        let (status2, answer2) = post(fx.addr, "/webhooks/github", &headers, body);
        assert!(
            status2 == 200 || status2 == 202,
            "repeat answered {status2}"
        );
        let (ids2, duplicate2) = job_ids(&answer2);
        assert!(duplicate2, "repeated delivery not marked duplicate");
        assert_eq!(ids, ids2, "repeated delivery got other jobs");
    }

    let text = std::str::from_utf8(body).expect("json is utf-8");
    let mut pulled = Vec::new();
    for _ in 0..ids.len() {
        let job = pull(fx).unwrap_or_else(|| panic!("job of {ids:?} cannot be pulled"));
        assert!(
            ids.contains(&job.id),
            "pulled unknown job {} (want {ids:?})",
            job.id
        );
        assert!(!pulled.contains(&job.id), "job {} pulled twice", job.id);
        assert_eq!(job.delivery_id, delivery);
        assert_eq!(job.event_name, event);
        let raw_payload = job.payload.as_deref().map(|r| r.get());
        assert_eq!(raw_payload, Some(text.trim()), "payload bytes changed");
        let job_headers: Value =
            serde_json::from_str(job.headers.as_deref().expect("job has headers").get())
                .expect("headers are json");
        assert_eq!(job_headers["x-github-event"], json!([event]));
        assert_eq!(job_headers["x-github-delivery"], json!([delivery]));
        assert!(
            job_headers.get("x-hub-signature-256").is_none(),
            "signature leaked into headers"
        );
        pulled.push(job.id);
    }
    assert!(pull(fx).is_none(), "a job is left over after {ids:?}");
});
