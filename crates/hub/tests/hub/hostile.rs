//! Hostile traffic over real loopback TCP: connections that never finish their headers or never
//! read their answers, more connections than the cap, unsigned uploads, bodies past a budget,
//! stalled or sent too slowly, and the content types a delivery may come in. Waits are generous deadlines, never timed assertions.

use std::net::SocketAddr;

use dispatch_hub::ServeLimits;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::*;

const MIB: usize = 1024 * 1024;
/// Longer than any timeout the tests set; what a closed connection must be seen within.
const PATIENCE: Duration = Duration::from_secs(30);

/// One raw client connection.
struct Raw {
    stream: TcpStream,
    seen: Vec<u8>,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.unwrap(),
            seen: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads until one whole answer is in (head, plus a body of its `content-length`) and
    /// returns it as text, leaving what follows for the next call.
    async fn answer(&mut self) -> String {
        tokio::time::timeout(PATIENCE, async {
            loop {
                if let Some(len) = complete_answer(&self.seen) {
                    let rest = self.seen.split_off(len);
                    let answer = std::mem::replace(&mut self.seen, rest);
                    return String::from_utf8(answer).unwrap();
                }
                let mut buf = [0u8; 4096];
                let n = self.stream.read(&mut buf).await.unwrap();
                assert!(
                    n > 0,
                    "connection closed before a whole answer: {:?}",
                    self.text()
                );
                self.seen.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .expect("an answer in time")
    }

    /// Waits until the hub closes the connection (end of stream or reset); what it sent before
    /// is kept.
    async fn closed_by_hub(&mut self) {
        tokio::time::timeout(PATIENCE, async {
            loop {
                let mut buf = [0u8; 4096];
                match self.stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => self.seen.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await
        .expect("the hub closes the connection");
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen).into_owned()
    }
}

/// The length of the first whole answer in `bytes`, if it is all there.
fn complete_answer(bytes: &[u8]) -> Option<usize> {
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&bytes[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    (bytes.len() >= head_end + length).then_some(head_end + length)
}

fn status_of(answer: &str) -> u16 {
    answer.split(' ').nth(1).unwrap().parse().unwrap()
}

fn has_header(answer: &str, line: &str) -> bool {
    answer
        .to_ascii_lowercase()
        .contains(&format!("\r\n{line}\r\n"))
}

/// A webhook POST's head; `headers` are extra lines like `x-github-event: push`.
fn webhook_head(length: usize, headers: &[&str]) -> Vec<u8> {
    let mut head =
        format!("POST /webhooks/github HTTP/1.1\r\nhost: hub\r\ncontent-length: {length}\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

const EVENT: &str = "x-github-event: push";
const DELIVERY: &str = "x-github-delivery: d-1";
const JSON_TYPE: &str = "content-type: application/json";
const FAKE_SIGNATURE: &str =
    "x-hub-signature-256: sha256=0000000000000000000000000000000000000000000000000000000000000000";

/// A forged delivery's headers: all a webhook needs, with a signature that cannot match.
const FORGED: &[&str] = &[FAKE_SIGNATURE, EVENT, DELIVERY, JSON_TYPE];

/// A hub building every push, serving with the limits `change` sets.
async fn limited_hub(change: impl FnOnce(&mut ServeLimits)) -> TestHub {
    TestHub::start_with(vec![build(Trigger::Auto)], move |cfg| {
        change(&mut cfg.limits)
    })
    .await
}

/// Waits until a fresh connection to `addr` gets `/healthz` answered (`what` names the wait).
async fn a_fresh_connection_is_served(addr: SocketAddr, what: &str) {
    eventually(what, || async {
        let mut fresh = Raw::connect(addr).await;
        fresh
            .send(b"GET /healthz HTTP/1.1\r\nhost: hub\r\nconnection: close\r\n\r\n")
            .await;
        fresh.closed_by_hub().await;
        fresh.text().starts_with("HTTP/1.1 200")
    })
    .await;
}

#[tokio::test]
async fn a_connection_that_never_finishes_its_headers_is_closed() {
    let hub = limited_hub(|l| l.header_timeout = Duration::from_secs(1)).await;
    let mut slow = Raw::connect(hub.handle().addr).await;
    slow.send(b"GET /healthz HTTP/1.1\r\nhost: hub\r\n").await;
    slow.closed_by_hub().await;
    assert!(!slow.text().contains("200 OK"), "{}", slow.text());

    // One that sends nothing at all is closed the same way.
    let mut silent = Raw::connect(hub.handle().addr).await;
    silent.closed_by_hub().await;

    // And the hub still answers.
    assert_eq!(hub.get("/healthz").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn connections_beyond_the_cap_are_refused_while_open_ones_still_answer() {
    let hub = limited_hub(|l| l.max_connections = 2).await;
    let addr = hub.handle().addr;
    let healthz = b"GET /healthz HTTP/1.1\r\nhost: hub\r\n\r\n";

    let mut kept = Raw::connect(addr).await;
    kept.send(healthz).await;
    assert_eq!(status_of(&kept.answer().await), 200);
    // The second slot: a connection that says nothing (the header timeout is 10 s by default).
    let quiet = Raw::connect(addr).await;

    let mut extra = Raw::connect(addr).await;
    extra.closed_by_hub().await;
    let refused = extra.text();
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(has_header(&refused, "retry-after: 1"), "{refused}");

    // The keep-alive connection that holds a slot is still served.
    kept.send(healthz).await;
    assert_eq!(status_of(&kept.answer().await), 200);

    // A slot given back takes a new connection again.
    drop(quiet);
    a_fresh_connection_is_served(addr, "a new connection to be served").await;
}

/// A client that pipelines `GET /healthz` as fast as the hub takes them and never reads an
/// answer, through a small receive buffer so the hub's answers back up at once. The task ends
/// when the hub closes the connection (a write fails).
fn pipeliner(addr: SocketAddr) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(1024).unwrap();
        let mut stream = socket.connect(addr).await.unwrap();
        let requests = b"GET /healthz HTTP/1.1\r\nhost: hub\r\n\r\n".repeat(1000);
        while stream.write_all(&requests).await.is_ok() {}
    })
}

#[tokio::test]
async fn a_client_that_pipelines_and_never_reads_is_closed() {
    let hub = limited_hub(|l| {
        l.header_timeout = Duration::from_secs(1);
        l.max_connections = 2;
    })
    .await;
    let addr = hub.handle().addr;
    let stuck = [pipeliner(addr), pipeliner(addr)];
    // Both slots are taken, then given back when the hub gives up writing to them: a fresh
    // connection is served again while neither client has read a byte.
    a_fresh_connection_is_served(addr, "a fresh connection to be served").await;
    for client in stuck {
        tokio::time::timeout(PATIENCE, client)
            .await
            .expect("the hub closes the pipelining connection")
            .unwrap();
    }
}

#[tokio::test]
async fn a_long_poll_longer_than_the_header_timeout_is_answered() {
    // The write deadline runs only while an answer waits for the socket, never while a handler
    // is still working on one.
    let hub = limited_hub(|l| l.header_timeout = Duration::from_secs(1)).await;
    let c = hub.activate("lic-a", "srv").await;
    assert_eq!(hub.pull(&c, 3).await.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn webhooks_are_refused_from_their_headers_before_the_body_is_read() {
    let hub = TestHub::start(vec![build(Trigger::Auto)]).await;
    let addr = hub.handle().addr;
    let cases: [(&[&str], u16, usize); 5] = [
        (&[EVENT, DELIVERY, JSON_TYPE], 401, 25 * MIB),
        (&[FAKE_SIGNATURE, DELIVERY, JSON_TYPE], 400, 25 * MIB),
        (&[FAKE_SIGNATURE, EVENT, JSON_TYPE], 400, 25 * MIB),
        (
            &[FAKE_SIGNATURE, EVENT, DELIVERY, "content-type: text/plain"],
            415,
            25 * MIB,
        ),
        (FORGED, 413, 25 * MIB + 1),
    ];
    for (headers, status, length) in cases {
        // Only the head is sent: an answer can only come from a hub that did not wait for the body.
        let mut upload = Raw::connect(addr).await;
        upload.send(&webhook_head(length, headers)).await;
        let answer = upload.answer().await;
        assert_eq!(status_of(&answer), status, "{headers:?}: {answer}");
        assert!(has_header(&answer, "connection: close"), "{answer}");
        assert!(answer.contains("\"message\""), "{answer}");
        // And the connection is closed, so the body cannot be streamed in after all.
        upload.closed_by_hub().await;
    }
    let m = hub
        .metrics_with(&[
            "dispatch_hub_webhooks_received_total{outcome=\"bad_signature\"} 1",
            "dispatch_hub_webhooks_received_total{outcome=\"bad_request\"} 2",
            "dispatch_hub_webhooks_received_total{outcome=\"unsupported_media_type\"} 1",
            "dispatch_hub_webhooks_received_total{outcome=\"too_large\"} 1",
        ])
        .await;
    assert!(m.contains("dispatch_hub_jobs{state=\"queued\"} 0"), "{m}");
}

#[tokio::test]
async fn an_unknown_content_type_gets_415_with_a_clear_message() {
    let hub = TestHub::start(vec![build(Trigger::Auto)]).await;
    let body = fixture(PUSH);
    let resp = hub
        .http
        .post(format!("{}/webhooks/github", hub.base))
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", "xml")
        .header("X-Hub-Signature-256", sign(&body))
        .header("Content-Type", "application/xml")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let message = resp.json::<Value>().await.unwrap()["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("application/xml") && message.contains("application/json"),
        "{message}"
    );
}

/// An upload that sends `head`, then `first` bytes of body at once, then `drip` bytes every
/// 250 ms, and never ends. Dropping it closes the connection.
struct Dripping {
    task: tokio::task::JoinHandle<String>,
}

impl Dripping {
    fn start(addr: SocketAddr, head: Vec<u8>, first: usize, drip: usize) -> Dripping {
        let task = tokio::spawn(async move {
            let (mut from_hub, mut to_hub) = TcpStream::connect(addr).await.unwrap().into_split();
            let sending = async move {
                let mut bytes = head;
                bytes.resize(bytes.len() + first, b' ');
                let mut more = to_hub.write_all(&bytes).await.is_ok();
                while more {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    more = to_hub.write_all(&vec![b' '; drip]).await.is_ok();
                }
                std::future::pending::<()>().await;
            };
            let mut seen = Vec::new();
            tokio::select! {
                () = sending => {}
                _ = from_hub.read_to_end(&mut seen) => {}
            }
            String::from_utf8_lossy(&seen).into_owned()
        });
        Dripping { task }
    }

    /// What the hub answered before it closed the connection.
    async fn answer(mut self) -> String {
        tokio::time::timeout(PATIENCE, &mut self.task)
            .await
            .expect("the hub answers and closes")
            .unwrap()
    }
}

impl Drop for Dripping {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Above the hub's minimum rate (4 KiB a second): 8 KiB a second.
const DRIP: usize = 2048;

fn activate_head(length: usize) -> Vec<u8> {
    format!(
        "POST /api/v1/licenses/activate HTTP/1.1\r\nhost: hub\r\ncontent-type: application/json\r\n\
         content-length: {length}\r\n\r\n"
    )
    .into_bytes()
}

#[tokio::test]
async fn webhook_bodies_beyond_their_budget_get_503_with_retry_after() {
    // The smallest budget allowed: one webhook of GitHub's largest size.
    let hub = limited_hub(|l| l.body_budget = 25 * MIB).await;
    let addr = hub.handle().addr;
    let c = hub.activate("lic-a", "srv").await;
    // It passes the header checks and sends 17 MiB, so its buffer (doubled, but never past the
    // 25 MiB it declares) takes the whole budget; then it keeps sending a little.
    let holder = Dripping::start(addr, webhook_head(25 * MIB, FORGED), 17 * MIB, DRIP);
    let probe = |head: Vec<u8>| async move {
        let mut probe = Raw::connect(addr).await;
        probe.send(&head).await;
        probe.answer().await
    };
    // A delivery's head alone is enough for the answer: the body is not waited for.
    let head = webhook_head(1000, FORGED);
    eventually("the held upload to fill the budget", || async {
        status_of(&probe(head.clone()).await) == 503
    })
    .await;
    let busy = probe(head.clone()).await;
    assert_eq!(status_of(&busy), 503, "{busy}");
    assert!(has_header(&busy, "retry-after: 1"), "{busy}");
    assert!(has_header(&busy, "connection: close"), "{busy}");

    // A body without a length takes its share as it arrives, and is refused the same way.
    let mut chunked = Raw::connect(addr).await;
    chunked
        .send(
            b"POST /webhooks/github HTTP/1.1\r\nhost: hub\r\ntransfer-encoding: chunked\r\n\
              x-github-event: push\r\nx-github-delivery: c-1\r\n\
              x-hub-signature-256: sha256=00\r\n\r\n5\r\nhello\r\n",
        )
        .await;
    let answer = chunked.answer().await;
    assert_eq!(status_of(&answer), 503, "{answer}");
    assert!(has_header(&answer, "retry-after: 1"), "{answer}");

    // The scheduler API has a budget of its own.
    assert_eq!(hub.pull(&c, 0).await.status(), StatusCode::NO_CONTENT);

    // Once the holder goes away its share comes back.
    drop(holder);
    eventually("the budget to come back", || async {
        status_of(&probe(head.clone()).await) != 503
    })
    .await;
    let (status, _) = hub.push("after").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let m = hub.metrics().await;
    assert!(
        m.contains("dispatch_hub_webhooks_received_total{outcome=\"busy\"}"),
        "{m}"
    );
}

#[tokio::test]
async fn api_bodies_beyond_their_budget_do_not_turn_webhooks_away() {
    let hub = TestHub::start(vec![build(Trigger::Auto)]).await;
    let addr = hub.handle().addr;
    let c = hub.activate("lic-a", "srv").await;
    // Sixteen activations of 1 MiB that have sent just over half: each buffer is 1 MiB, and the
    // sixteen fill the 16 MiB the API may hold.
    let holders: Vec<Dripping> = (0..16)
        .map(|_| Dripping::start(addr, activate_head(MIB), MIB / 2 + 8 * 1024, DRIP))
        .collect();
    eventually("the API budget to be full", || async {
        hub.pull(&c, 0).await.status() == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    let (status, _) = hub.push("while-the-api-is-full").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    drop(holders);
    eventually("the API budget to come back", || async {
        hub.pull(&c, 0).await.status() == StatusCode::OK
    })
    .await;
}

#[tokio::test]
async fn stalled_forged_webhooks_declaring_25_mib_hold_no_budget() {
    // The body timeout is far away: what cuts the stalled uploads is the minimum rate.
    let hub = limited_hub(|l| l.body_timeout = Duration::from_secs(600)).await;
    let addr = hub.handle().addr;
    let c = hub.activate("lic-a", "srv").await;
    // Before, each reserved what it declared: 64 MiB, the whole default budget.
    let mut stalled = Vec::new();
    for length in [25 * MIB, 25 * MIB, 14 * MIB] {
        let mut upload = Raw::connect(addr).await;
        upload.send(&webhook_head(length, FORGED)).await;
        upload.send(b"{\"pad\":").await;
        stalled.push(upload);
    }
    for round in 0..10 {
        let pull = hub.pull(&c, 0).await.status();
        assert!(pull.is_success(), "round {round}: pull answered {pull}");
        let (status, _) = hub.push(&format!("signed-{round}")).await;
        assert_eq!(status, StatusCode::ACCEPTED, "round {round}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for mut upload in stalled {
        let answer = upload.answer().await;
        assert_eq!(status_of(&answer), 408, "{answer}");
        assert!(answer.contains("slower than"), "{answer}");
        upload.closed_by_hub().await;
    }
    hub.metrics_with(&["dispatch_hub_webhooks_received_total{outcome=\"too_slow\"} 3"])
        .await;
}

#[tokio::test]
async fn stalled_activations_declaring_1_mib_do_not_block_a_webhook() {
    let hub = TestHub::start(vec![build(Trigger::Auto)]).await;
    let addr = hub.handle().addr;
    let c = hub.activate("lic-a", "srv").await;
    // Before, 64 of them reserved the whole default budget of 64 MiB.
    let mut stalled = Vec::new();
    for _ in 0..64 {
        let mut upload = Raw::connect(addr).await;
        upload.send(&activate_head(MIB)).await;
        upload.send(b"{").await;
        stalled.push(upload);
    }
    for round in 0..10 {
        let (status, _) = hub.push(&format!("signed-{round}")).await;
        assert_eq!(status, StatusCode::ACCEPTED, "round {round}");
        let pull = hub.pull(&c, 0).await.status();
        assert!(pull.is_success(), "round {round}: pull answered {pull}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(stalled);
}

#[tokio::test]
async fn a_body_that_drips_slower_than_the_minimum_rate_is_cut() {
    let hub = limited_hub(|l| l.body_timeout = Duration::from_secs(600)).await;
    let addr = hub.handle().addr;
    // 400 bytes a second, well under 4 KiB, but never silent.
    let slow = Dripping::start(addr, webhook_head(MIB, FORGED), 100, 100);
    let answer = slow.answer().await;
    assert_eq!(status_of(&answer), 408, "{answer}");
    assert!(answer.contains("slower than"), "{answer}");
    assert!(has_header(&answer, "connection: close"), "{answer}");
    // The scheduler API's bodies are held to the same rate.
    let slow = Dripping::start(addr, activate_head(MIB), 100, 100);
    assert_eq!(status_of(&slow.answer().await), 408);
    hub.metrics_with(&["dispatch_hub_webhooks_received_total{outcome=\"too_slow\"} 1"])
        .await;
}

#[tokio::test]
async fn a_stalled_body_is_cut_by_the_body_timeout() {
    let hub = limited_hub(|l| l.body_timeout = Duration::from_secs(1)).await;
    let mut slow = Raw::connect(hub.handle().addr).await;
    slow.send(&webhook_head(1000, FORGED)).await;
    slow.send(b"{\"a\":").await;
    let answer = slow.answer().await;
    assert_eq!(status_of(&answer), 408, "{answer}");
    slow.closed_by_hub().await;

    // The scheduler API's bodies are bounded the same way.
    let mut api = Raw::connect(hub.handle().addr).await;
    api.send(
        b"POST /api/v1/github/dispatch/pull HTTP/1.1\r\nhost: hub\r\ncontent-length: 100\r\n\r\n{",
    )
    .await;
    assert_eq!(status_of(&api.answer().await), 408);
    hub.metrics_with(&["dispatch_hub_webhooks_received_total{outcome=\"timeout\"} 1"])
        .await;
}

#[tokio::test]
async fn api_bodies_over_their_small_cap_get_413() {
    let hub = TestHub::start(vec![]).await;
    let resp = hub
        .http
        .post(format!("{}/api/v1/licenses/activate", hub.base))
        .header("content-type", "application/json")
        .body(vec![b' '; MIB + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

/// `payload=<url-encoded JSON>`, as GitHub sends a delivery with the form content type.
fn form_body(json: &[u8]) -> Vec<u8> {
    let mut body = b"payload=".to_vec();
    body.extend(form_urlencoded::byte_serialize(json).flat_map(str::bytes));
    body
}

async fn post_form(
    hub: &TestHub,
    delivery: &str,
    body: Vec<u8>,
    signature: String,
) -> reqwest::Response {
    hub.http
        .post(format!("{}/webhooks/github", hub.base))
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", delivery)
        .header("X-Hub-Signature-256", signature)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("User-Agent", "GitHub-Hookshot/test")
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_form_encoded_delivery_makes_the_same_job_as_a_json_one() {
    let hub = TestHub::start(vec![build(Trigger::Auto)]).await;
    let json = fixture(PUSH);
    let form = form_body(&json);

    // Signed over the JSON inside, not over the body GitHub signs: refused.
    let resp = post_form(&hub, "form-bad", form.clone(), sign(&json)).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // Signed, but no payload field.
    let resp = post_form(&hub, "form-empty", b"other=1".to_vec(), sign(b"other=1")).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    let (status, _) = hub.push("as-json").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let resp = post_form(&hub, "as-form", form.clone(), sign(&form)).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);

    let c = hub.activate("lic-a", "srv").await;
    let mut from_json = hub.pull_job(&c).await;
    let mut from_form = hub.pull_job(&c).await;
    assert_eq!(hub.pull(&c, 0).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(from_json["delivery_id"], "as-json");
    assert_eq!(from_form["delivery_id"], "as-form");
    assert_eq!(
        from_form["payload"], from_json["payload"],
        "the job carries the decoded JSON"
    );
    assert_eq!(
        from_form["headers"]["content-type"],
        json!(["application/x-www-form-urlencoded"]),
        "the headers say what GitHub sent"
    );
    for job in [&mut from_json, &mut from_form] {
        let fields = job.as_object_mut().unwrap();
        for differs in ["id", "delivery_id", "headers"] {
            fields.remove(differs);
        }
    }
    assert_eq!(from_form, from_json);
}

/// The limits come from `[limits]` in hub.toml, `hub serve` flags and `DISPATCH_HUB_*`; a value
/// out of range is a config error (exit 2) naming the setting.
#[test]
fn limits_are_set_by_file_flag_and_env() {
    let dir = tempfile::tempdir().unwrap();
    let refused = |mut cmd: std::process::Command, setting: &str| {
        for key in [
            "DISPATCH_HUB_HEADER_TIMEOUT",
            "DISPATCH_HUB_BODY_TIMEOUT",
            "DISPATCH_HUB_MAX_CONNECTIONS",
            "DISPATCH_HUB_BODY_BUDGET_MIB",
        ] {
            if !cmd.get_envs().any(|(k, _)| k == key) {
                cmd.env_remove(key);
            }
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(&format!("`{setting}`")), "{err}");
    };
    let path = hub_toml(dir.path(), "[limits]\nbody_budget_mib = 1\n");
    refused(hub_bin(&["serve", "--config"], &path), "limits.body_budget");

    let path = hub_toml(dir.path(), "");
    let mut flag = hub_bin(&["serve", "--config"], &path);
    flag.args(["--header-timeout", "31"]);
    refused(flag, "limits.header_timeout");
    let mut env = hub_bin(&["serve", "--config"], &path);
    env.env("DISPATCH_HUB_MAX_CONNECTIONS", "0");
    refused(env, "limits.max_connections");
    let mut env = hub_bin(&["serve", "--config"], &path);
    env.env("DISPATCH_HUB_BODY_TIMEOUT", "0");
    refused(env, "limits.body_timeout");
}
