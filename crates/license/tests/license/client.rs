//! `CloudClient` against wiremock (and a raw TCP peer where wiremock cannot misbehave enough).

use std::time::Duration;

use dispatch_license::{
    ClientConfig, CloudClient, CloudError, CloudErrorKind, MAX_BATCH_RESPONSE_BYTES,
    MAX_RESPONSE_BYTES,
};
use dispatch_protocol::{
    AcceptBatchItem, AcceptBatchRequest, AcceptRequest, ActivateRequest, FinishRequest,
    HeartbeatRequest, PullBatchRequest, PullRequest, Secret,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const VERSION: &str = "1.2.3-test";
const KEY: &str = "lk_SECRET_KEY_4f1e";
const HB: &str = "hb_SECRET_VALUE_9a7c";
const PULL: &str = "/api/v1/github/dispatch/pull";
const PULL_BATCH: &str = "/api/v1/github/dispatch/pull-batch";

fn client(server: &MockServer) -> CloudClient {
    client_with_timeout(&server.uri(), Duration::from_secs(10))
}

fn client_with_timeout(base: &str, timeout: Duration) -> CloudClient {
    CloudClient::new(ClientConfig {
        base_url: base.to_owned(),
        version: VERSION.to_owned(),
        request_timeout: timeout,
    })
    .unwrap()
}

fn activate_req(version: &str) -> ActivateRequest {
    ActivateRequest {
        key: Secret::new(KEY),
        server_id: "0190-server".into(),
        machine_name: "box-1".into(),
        client_version: version.into(),
    }
}

fn heartbeat_req(version: &str) -> HeartbeatRequest {
    HeartbeatRequest {
        license_id: "lic-1".into(),
        server_id: "0190-server".into(),
        heartbeat_secret: Secret::new(HB),
        client_version: version.into(),
    }
}

fn pull_req(wait: u32) -> PullRequest {
    PullRequest {
        license_id: "lic-1".into(),
        server_id: "0190-server".into(),
        heartbeat_secret: Secret::new(HB),
        wait_seconds: wait,
    }
}

fn accept_req() -> AcceptRequest {
    AcceptRequest {
        license_id: "lic-1".into(),
        server_id: "0190-server".into(),
        secret: Secret::new(HB),
        dag_run_id: "job-1".into(),
    }
}

fn finish_req(summary: &str) -> FinishRequest {
    FinishRequest {
        license_id: "lic-1".into(),
        server_id: "0190-server".into(),
        secret: Secret::new(HB),
        result_status: "succeeded".into(),
        result_summary: summary.into(),
    }
}

async fn mount(server: &MockServer, p: &str, resp: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(path(p))
        .respond_with(resp)
        .mount(server)
        .await;
}

/// Like [`mount`], for the first request only: later requests fall through to the mocks
/// mounted after it.
async fn mount_once(server: &MockServer, p: &str, resp: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(path(p))
        .respond_with(resp)
        .up_to_n_times(1)
        .mount(server)
        .await;
}

async fn mount_any(server: &MockServer, resp: ResponseTemplate) {
    Mock::given(method("POST"))
        .respond_with(resp)
        .mount(server)
        .await;
}

async fn only_request(server: &MockServer) -> Request {
    let mut reqs = server.received_requests().await.unwrap();
    assert_eq!(reqs.len(), 1, "expected exactly one request");
    reqs.remove(0)
}

/// Method, raw path, headers and the exact JSON body of a request.
fn assert_request(req: &Request, want_path: &str, want_body: Value) {
    assert_eq!(req.method.as_str(), "POST");
    assert_eq!(req.url.path(), want_path);
    assert_eq!(req.url.query(), None);
    assert_eq!(
        req.headers.get("content-type").unwrap().to_str().unwrap(),
        "application/json"
    );
    assert_eq!(
        req.headers.get("user-agent").unwrap().to_str().unwrap(),
        format!("dispatch/{VERSION}")
    );
    let body: Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(body, want_body);
}

fn assert_no_secret(e: &CloudError) {
    let text = format!("{e} | {e:?}");
    assert!(!text.contains(KEY), "{text}");
    assert!(!text.contains(HB), "{text}");
}

#[tokio::test]
async fn activate_sends_exact_body_and_reads_answer() {
    let server = MockServer::start().await;
    mount(
        &server,
        "/api/v1/licenses/activate",
        ResponseTemplate::new(200)
            .set_body_json(json!({"token": "t.o.k", "heartbeat_secret": "hb", "extra": [1]})),
    )
    .await;
    let resp = client(&server)
        .activate(&activate_req("9.9"))
        .await
        .unwrap();
    assert_eq!(resp.token.expose(), "t.o.k");
    assert_eq!(resp.heartbeat_secret.expose(), "hb");
    assert_request(
        &only_request(&server).await,
        "/api/v1/licenses/activate",
        json!({"key": KEY, "server_id": "0190-server", "machine_name": "box-1", "client_version": "9.9"}),
    );
}

#[tokio::test]
async fn activate_omits_empty_client_version() {
    let server = MockServer::start().await;
    mount_any(
        &server,
        ResponseTemplate::new(200).set_body_json(json!({"token": "t", "heartbeat_secret": "h"})),
    )
    .await;
    client(&server).activate(&activate_req("")).await.unwrap();
    let req = only_request(&server).await;
    assert_request(
        &req,
        "/api/v1/licenses/activate",
        json!({"key": KEY, "server_id": "0190-server", "machine_name": "box-1"}),
    );
    assert!(!String::from_utf8(req.body)
        .unwrap()
        .contains("client_version"));
}

#[tokio::test]
async fn heartbeat_sends_exact_body() {
    let server = MockServer::start().await;
    mount(
        &server,
        "/api/v1/licenses/heartbeat",
        ResponseTemplate::new(200).set_body_json(json!({"token": "new.tok.en"})),
    )
    .await;
    let c = client(&server);
    let resp = c.heartbeat(&heartbeat_req("9.9")).await.unwrap();
    assert_eq!(resp.token.expose(), "new.tok.en");
    c.heartbeat(&heartbeat_req("")).await.unwrap();
    let reqs = server.received_requests().await.unwrap();
    assert_request(
        &reqs[0],
        "/api/v1/licenses/heartbeat",
        json!({"license_id": "lic-1", "server_id": "0190-server", "heartbeat_secret": HB, "client_version": "9.9"}),
    );
    assert_request(
        &reqs[1],
        "/api/v1/licenses/heartbeat",
        json!({"license_id": "lic-1", "server_id": "0190-server", "heartbeat_secret": HB}),
    );
}

#[tokio::test]
async fn heartbeat_empty_200_is_decode_error() {
    let server = MockServer::start().await;
    mount_any(&server, ResponseTemplate::new(200)).await;
    let e = client(&server)
        .heartbeat(&heartbeat_req(""))
        .await
        .unwrap_err();
    assert_eq!(e.kind, CloudErrorKind::Decode);
    assert_eq!(e.status, None);
}

const JOB_JSON: &str = r#"{
  "id": "job-42",
  "binding_id": "b-1",
  "installation_id": 77,
  "repository_id": 12345,
  "repository_name": "octo/hello",
  "license_id": "lic-1",
  "dag_name": "build",
  "event_name": "push",
  "event_action": "",
  "delivery_id": "d-1",
  "ref": "refs/heads/main",
  "sha": "abc123",
  "pull_request_number": 0,
  "issue_number": 0,
  "comment_id": 0,
  "command": "",
  "actor_login": "octocat",
  "check_run_id": 9,
  "status": "claimed",
  "claimed_by": "0190-server",
  "dag_run_id": "",
  "future_field": {"nested": [1, 2, 3]},
  "payload": {"ref":"refs/heads/main",  "n": 1.50, "u":"\u00e9\n", "big": 12345678901234567890},
  "headers": {"x-github-event":["push"],   "x-github-delivery":["d-1"]}
}"#;

#[tokio::test]
async fn pull_parses_job_and_keeps_raw_bytes() {
    let server = MockServer::start().await;
    mount(&server, PULL, json_answer(JOB_JSON)).await;
    let job = client(&server)
        .pull_dispatch(&pull_req(25))
        .await
        .unwrap()
        .expect("a job");
    assert_eq!(job.id, "job-42");
    assert_eq!(job.installation_id, 77);
    assert_eq!(job.repository_name, "octo/hello");
    assert_eq!(job.git_ref, "refs/heads/main");
    assert_eq!(job.check_run_id, 9);
    assert_eq!(job.actor_login, "octocat");
    // Whitespace, number spelling and escapes survive untouched.
    assert_eq!(
        job.payload.unwrap().get(),
        r#"{"ref":"refs/heads/main",  "n": 1.50, "u":"\u00e9\n", "big": 12345678901234567890}"#
    );
    assert_eq!(
        job.headers.unwrap().get(),
        r#"{"x-github-event":["push"],   "x-github-delivery":["d-1"]}"#
    );
    assert_request(
        &only_request(&server).await,
        PULL,
        json!({"license_id": "lic-1", "server_id": "0190-server", "heartbeat_secret": HB, "wait_seconds": 25}),
    );
}

#[tokio::test]
async fn pull_204_is_none_and_omits_zero_wait() {
    let server = MockServer::start().await;
    mount(&server, PULL, ResponseTemplate::new(204)).await;
    let got = client(&server).pull_dispatch(&pull_req(0)).await.unwrap();
    assert!(got.is_none());
    let req = only_request(&server).await;
    assert_request(
        &req,
        PULL,
        json!({"license_id": "lic-1", "server_id": "0190-server", "heartbeat_secret": HB}),
    );
    assert!(!String::from_utf8(req.body)
        .unwrap()
        .contains("wait_seconds"));
}

#[tokio::test]
async fn pull_malformed_answers_are_errors_not_empty_queue() {
    let cases: Vec<(&str, ResponseTemplate)> = vec![
        ("empty 200", ResponseTemplate::new(200)),
        (
            "whitespace 200",
            ResponseTemplate::new(200).set_body_string(" \n"),
        ),
        ("no id", json_answer(r#"{"dag_name":"x"}"#)),
        ("empty id", json_answer(r#"{"id":""}"#)),
        ("invalid json", json_answer(r#"{"id":"j","#)),
        ("not an object", json_answer("[1,2]")),
        (
            "wrong type",
            json_answer(r#"{"id":"j","installation_id":"x"}"#),
        ),
    ];
    for (name, resp) in cases {
        let server = MockServer::start().await;
        mount_any(&server, resp).await;
        let e = client(&server)
            .pull_dispatch(&pull_req(0))
            .await
            .expect_err(name);
        assert_eq!(e.kind, CloudErrorKind::Decode, "{name}: {e}");
        assert_eq!(e.status, None, "{name}");
        assert!(!e.is_retryable(), "{name}");
        assert_no_secret(&e);
    }
}

#[tokio::test]
async fn accept_and_finish_send_exact_bodies_and_accept_any_2xx() {
    for code in [200u16, 202, 204] {
        let server = MockServer::start().await;
        mount_any(&server, ResponseTemplate::new(code)).await;
        let c = client(&server);
        c.accept_dispatch("job-1", &accept_req()).await.unwrap();
        c.finish_dispatch("job-1", &finish_req("all good"))
            .await
            .unwrap();
        c.finish_dispatch("job-1", &finish_req("")).await.unwrap();
        let reqs = server.received_requests().await.unwrap();
        assert_eq!(reqs.len(), 3);
        assert_request(
            &reqs[0],
            "/api/v1/github/dispatch/job-1/accept",
            json!({"license_id": "lic-1", "server_id": "0190-server", "secret": HB, "dag_run_id": "job-1"}),
        );
        assert_request(
            &reqs[1],
            "/api/v1/github/dispatch/job-1/finish",
            json!({"license_id": "lic-1", "server_id": "0190-server", "secret": HB,
                   "result_status": "succeeded", "result_summary": "all good"}),
        );
        assert_request(
            &reqs[2],
            "/api/v1/github/dispatch/job-1/finish",
            json!({"license_id": "lic-1", "server_id": "0190-server", "secret": HB, "result_status": "succeeded"}),
        );
        assert!(!String::from_utf8(reqs[2].body.clone())
            .unwrap()
            .contains("result_summary"));
    }
}

#[tokio::test]
async fn job_id_is_one_escaped_path_segment() {
    let server = MockServer::start().await;
    mount_any(&server, ResponseTemplate::new(204)).await;
    let c = client(&server);
    let id = "a/b?c=%2F#frag é✓ x";
    c.accept_dispatch(id, &accept_req()).await.unwrap();
    c.finish_dispatch(id, &finish_req("")).await.unwrap();
    let reqs = server.received_requests().await.unwrap();
    let seg = "a%2Fb%3Fc%3D%252F%23frag%20%C3%A9%E2%9C%93%20x";
    assert_eq!(
        reqs[0].url.path(),
        format!("/api/v1/github/dispatch/{seg}/accept")
    );
    assert_eq!(
        reqs[1].url.path(),
        format!("/api/v1/github/dispatch/{seg}/finish")
    );
    for r in &reqs {
        assert_eq!(r.url.query(), None);
        assert_eq!(r.url.fragment(), None);
    }
    // Dot segments would be resolved away by URL parsing: refused before sending.
    let e = c.accept_dispatch("..", &accept_req()).await.unwrap_err();
    assert_eq!(e.kind, CloudErrorKind::InvalidInput);
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
}

#[tokio::test]
async fn base_url_path_prefix_is_kept() {
    let server = MockServer::start().await;
    mount_any(&server, ResponseTemplate::new(204)).await;
    let c = client_with_timeout(&format!("{}/cloud/", server.uri()), Duration::from_secs(10));
    assert!(c.pull_dispatch(&pull_req(0)).await.unwrap().is_none());
    assert_eq!(
        only_request(&server).await.url.path(),
        "/cloud/api/v1/github/dispatch/pull"
    );
}

#[tokio::test]
async fn http_errors_carry_status_message_and_retry_after() {
    struct Case {
        code: u16,
        body: &'static str,
        retry_after: Option<&'static str>,
        want_message: &'static str,
        want_retry: Option<Duration>,
        retryable: bool,
    }
    let cases = [
        Case {
            code: 401,
            body: r#"{"message":"bad heartbeat secret"}"#,
            retry_after: None,
            want_message: "bad heartbeat secret",
            want_retry: None,
            retryable: false,
        },
        Case {
            code: 410,
            body: r#"{"message":"license revoked","code":"gone"}"#,
            retry_after: None,
            want_message: "license revoked",
            want_retry: None,
            retryable: false,
        },
        Case {
            code: 400,
            body: r#"{"message":"license expired"}"#,
            retry_after: None,
            want_message: "license expired",
            want_retry: None,
            retryable: false,
        },
        Case {
            code: 500,
            body: r#"{"message":"db down"}"#,
            retry_after: None,
            want_message: "db down",
            want_retry: None,
            retryable: true,
        },
        Case {
            code: 500,
            body: "  upstream exploded\n",
            retry_after: None,
            want_message: "upstream exploded",
            want_retry: None,
            retryable: true,
        },
        Case {
            code: 502,
            body: r#"{"message":""}"#,
            retry_after: None,
            want_message: r#"{"message":""}"#,
            want_retry: None,
            retryable: true,
        },
        Case {
            code: 503,
            body: "",
            retry_after: Some("7"),
            want_message: "service unavailable",
            want_retry: Some(Duration::from_secs(7)),
            retryable: true,
        },
        Case {
            code: 429,
            body: r#"{"message":"slow down"}"#,
            retry_after: Some("120"),
            want_message: "slow down",
            want_retry: Some(Duration::from_secs(120)),
            retryable: true,
        },
        Case {
            code: 429,
            body: "x",
            retry_after: Some("Thu, 01 Jan 1970 00:00:00 GMT"),
            want_message: "x",
            want_retry: Some(Duration::ZERO),
            retryable: true,
        },
    ];
    for case in cases {
        let server = MockServer::start().await;
        let mut resp = ResponseTemplate::new(case.code).set_body_string(case.body);
        if let Some(ra) = case.retry_after {
            resp = resp.insert_header("retry-after", ra);
        }
        mount_any(&server, resp).await;
        let c = client(&server);
        let errors = [
            c.activate(&activate_req("1")).await.unwrap_err(),
            c.heartbeat(&heartbeat_req("1")).await.unwrap_err(),
            c.pull_dispatch(&pull_req(0)).await.unwrap_err(),
            c.accept_dispatch("j", &accept_req()).await.unwrap_err(),
            c.finish_dispatch("j", &finish_req("s")).await.unwrap_err(),
        ];
        for e in errors {
            assert_eq!(e.kind, CloudErrorKind::Http);
            assert_eq!(e.status, Some(case.code));
            assert_eq!(e.message, case.want_message);
            assert_eq!(e.retry_after, case.want_retry);
            assert_eq!(e.is_retryable(), case.retryable, "{}", case.code);
            assert!(e.to_string().contains(&case.code.to_string()));
            assert_no_secret(&e);
        }
    }
}

#[tokio::test]
async fn retry_after_http_date_in_future() {
    let server = MockServer::start().await;
    let when = std::time::SystemTime::now() + Duration::from_secs(3600);
    mount_any(
        &server,
        ResponseTemplate::new(503).insert_header("retry-after", httpdate::fmt_http_date(when)),
    )
    .await;
    let e = client(&server)
        .pull_dispatch(&pull_req(0))
        .await
        .unwrap_err();
    let ra = e.retry_after.unwrap();
    assert!(
        ra > Duration::from_secs(3000) && ra <= Duration::from_secs(3600),
        "{ra:?}"
    );
}

#[tokio::test]
async fn long_error_bodies_are_capped_and_echoed_secrets_redacted() {
    let server = MockServer::start().await;
    let body = format!("{{\"message\":\"unknown key {KEY}, really {KEY}\"}}");
    mount(
        &server,
        "/api/v1/licenses/activate",
        ResponseTemplate::new(401).set_body_string(body),
    )
    .await;
    mount(
        &server,
        PULL,
        ResponseTemplate::new(500).set_body_string("y".repeat(10_000)),
    )
    .await;
    let c = client(&server);
    let e = c.activate(&activate_req("")).await.unwrap_err();
    assert_no_secret(&e);
    assert!(e.message.contains("<redacted>"), "{}", e.message);
    let e = c.pull_dispatch(&pull_req(0)).await.unwrap_err();
    assert_eq!(e.status, Some(500));
    assert!(e.message.chars().count() <= 513, "{}", e.message.len());
}

/// A body that parses as a job when cut at 1 MiB: a truncating reader would accept it.
fn oversized_job_body() -> Vec<u8> {
    let mut body = br#"{"id":"job-big"}"#.to_vec();
    body.resize(MAX_RESPONSE_BYTES + 1, b' ');
    body
}

#[tokio::test]
async fn body_over_one_mib_is_an_error_not_a_truncated_parse() {
    let server = MockServer::start().await;
    mount_any(&server, json_answer(oversized_job_body())).await;
    let e = client(&server)
        .pull_dispatch(&pull_req(0))
        .await
        .unwrap_err();
    assert_eq!(e.kind, CloudErrorKind::BodyTooLarge);
    assert_eq!(e.status, None);

    // Exactly the cap is fine.
    let server = MockServer::start().await;
    let mut body = br#"{"id":"job-cap"}"#.to_vec();
    body.resize(MAX_RESPONSE_BYTES, b' ');
    mount_any(&server, json_answer(body)).await;
    let job = client(&server)
        .pull_dispatch(&pull_req(0))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.id, "job-cap");
}

/// A one-shot HTTP peer on loopback that reads one request and writes `response` raw.
async fn raw_peer(response: Vec<u8>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut seen = Vec::new();
        // Read until the end of the headers plus the declared body, enough for our small requests.
        loop {
            let n = sock.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if let Some(end) = find(&seen, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse().unwrap())
                    .unwrap_or(0);
                if seen.len() >= end + 4 + len {
                    break;
                }
            }
        }
        let _ = sock.write_all(&response).await;
        let _ = sock.shutdown().await;
    });
    format!("http://{addr}")
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[tokio::test]
async fn chunked_body_over_one_mib_is_an_error() {
    // No Content-Length: the cap must hold while streaming.
    let body = oversized_job_body();
    let mut resp =
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
            .to_vec();
    for chunk in body.chunks(64 * 1024) {
        resp.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        resp.extend_from_slice(chunk);
        resp.extend_from_slice(b"\r\n");
    }
    resp.extend_from_slice(b"0\r\n\r\n");
    let base = raw_peer(resp).await;
    let c = client_with_timeout(&base, Duration::from_secs(10));
    let e = c.pull_dispatch(&pull_req(0)).await.unwrap_err();
    assert_eq!(e.kind, CloudErrorKind::BodyTooLarge, "{e}");
}

#[tokio::test]
async fn connection_reset_mid_body_is_a_retryable_request_error() {
    let resp = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n{\"id\":\"j"
        .to_vec();
    let base = raw_peer(resp).await;
    let c = client_with_timeout(&base, Duration::from_secs(10));
    let e = c.pull_dispatch(&pull_req(0)).await.unwrap_err();
    assert_eq!(e.kind, CloudErrorKind::Request, "{e}");
    assert!(e.is_retryable());
    assert_no_secret(&e);
}

#[tokio::test]
async fn connection_refused_is_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let c = client_with_timeout(&format!("http://127.0.0.1:{port}"), Duration::from_secs(10));
    let e = c.activate(&activate_req("1")).await.unwrap_err();
    assert_eq!(e.kind, CloudErrorKind::Connect, "{e}");
    assert_eq!(e.status, None);
    assert!(e.is_retryable());
    assert!(e.message.contains("/api/v1/licenses/activate"), "{e}");
    assert_no_secret(&e);
}

#[tokio::test]
async fn slow_answer_times_out_and_pull_wait_extends_timeout() {
    let server = MockServer::start().await;
    mount_any(
        &server,
        ResponseTemplate::new(204).set_delay(Duration::from_millis(400)),
    )
    .await;
    let c = client_with_timeout(&server.uri(), Duration::from_millis(100));
    let e = c.heartbeat(&heartbeat_req("")).await.unwrap_err();
    assert_eq!(e.kind, CloudErrorKind::Timeout, "{e}");
    assert!(e.is_retryable());
    assert_no_secret(&e);
    let e = c.pull_dispatch(&pull_req(0)).await.unwrap_err();
    assert_eq!(e.kind, CloudErrorKind::Timeout, "{e}");
    // With a long-poll wait the same slow answer is within the (wait + request) timeout.
    assert!(c.pull_dispatch(&pull_req(5)).await.unwrap().is_none());
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let server = MockServer::start().await;
    mount_any(
        &server,
        ResponseTemplate::new(307).insert_header("location", "http://example.invalid/steal"),
    )
    .await;
    let e = client(&server)
        .activate(&activate_req(""))
        .await
        .unwrap_err();
    assert_eq!(e.status, Some(307));
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
}

fn pull_batch_req(max_jobs: u32, max_bytes: u64) -> PullBatchRequest {
    PullBatchRequest {
        license_id: "lic-1".into(),
        server_id: "0190-server".into(),
        heartbeat_secret: Secret::new(HB),
        max_jobs,
        max_bytes,
    }
}

/// A 200 answer with this JSON body, byte for byte.
fn json_answer(body: impl Into<Vec<u8>>) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_raw(body, "application/json")
}

/// An answer that names the protocol extensions the cloud offers.
fn offering(status: u16, extensions: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).insert_header("X-Dispatch-Extensions", extensions)
}

#[tokio::test]
async fn the_extension_is_known_from_the_last_answer() {
    let server = MockServer::start().await;
    let c = client(&server);
    assert!(!c.supports_pull_batch(), "nothing answered yet");
    mount_once(&server, PULL, offering(204, "other, pull-batch")).await;
    mount(&server, PULL, ResponseTemplate::new(204)).await;
    assert!(c.pull_dispatch(&pull_req(0)).await.unwrap().is_none());
    assert!(c.supports_pull_batch());
    assert!(
        c.clone().supports_pull_batch(),
        "clones share what they learned"
    );
    // An answer without the header (a cloud rolled back, a proxy) turns it off again.
    assert!(c.pull_dispatch(&pull_req(0)).await.unwrap().is_none());
    assert!(!c.supports_pull_batch());
}

#[tokio::test]
async fn batched_pull_sends_the_limits_and_reads_every_job() {
    let server = MockServer::start().await;
    let second = JOB_JSON.replace("job-42", "job-43");
    mount(
        &server,
        PULL_BATCH,
        offering(200, "pull-batch").set_body_raw(
            format!("{{\"jobs\":[{JOB_JSON},{second}]}}"),
            "application/json",
        ),
    )
    .await;
    let c = client(&server);
    let jobs = c
        .pull_dispatch_batch(&pull_batch_req(16, u64::MAX))
        .await
        .unwrap();
    let ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, ["job-42", "job-43"]);
    assert_eq!(
        jobs[1].payload.as_ref().unwrap().get(),
        r#"{"ref":"refs/heads/main",  "n": 1.50, "u":"\u00e9\n", "big": 12345678901234567890}"#
    );
    assert!(c.supports_pull_batch());
    // The byte limit asked for is what the client can read back with one more job.
    assert_request(
        &only_request(&server).await,
        PULL_BATCH,
        json!({"license_id": "lic-1", "server_id": "0190-server", "heartbeat_secret": HB,
               "max_jobs": 16, "max_bytes": MAX_BATCH_RESPONSE_BYTES / 2}),
    );
}

#[tokio::test]
async fn batched_pull_answers_empty_bad_and_unknown() {
    let server = MockServer::start().await;
    let c = client(&server);
    mount_once(&server, PULL_BATCH, offering(204, "pull-batch")).await;
    mount_once(
        &server,
        PULL_BATCH,
        offering(200, "pull-batch").set_body_raw(r#"{"jobs":[{"id":""}]}"#, "application/json"),
    )
    .await;
    mount(
        &server,
        PULL_BATCH,
        ResponseTemplate::new(404).set_body_json(json!({"message": "no route"})),
    )
    .await;
    assert!(c
        .pull_dispatch_batch(&pull_batch_req(4, 1024))
        .await
        .unwrap()
        .is_empty());
    assert!(c.supports_pull_batch());
    let err = c
        .pull_dispatch_batch(&pull_batch_req(4, 1024))
        .await
        .unwrap_err();
    assert_eq!(err.kind, CloudErrorKind::Decode, "{err}");
    let err = c
        .pull_dispatch_batch(&pull_batch_req(4, 1024))
        .await
        .unwrap_err();
    assert_eq!(err.status, Some(404));
    assert!(
        !c.supports_pull_batch(),
        "a cloud that does not know the call is not asked again"
    );
}

#[tokio::test]
async fn batched_accept_sends_every_job_and_checks_the_answer() {
    let server = MockServer::start().await;
    mount_once(
        &server,
        "/api/v1/github/dispatch/accept-batch",
        ResponseTemplate::new(200).set_body_json(json!({"results": [
            {"job_id": "a", "status": 204},
            {"job_id": "b", "status": 409, "message": "taken by another server"}
        ]})),
    )
    .await;
    mount(
        &server,
        "/api/v1/github/dispatch/accept-batch",
        ResponseTemplate::new(200).set_body_json(
            json!({"results": [{"job_id": "b", "status": 204}, {"job_id": "a", "status": 204}]}),
        ),
    )
    .await;
    let c = client(&server);
    let req = AcceptBatchRequest {
        license_id: "lic-1".into(),
        server_id: "0190-server".into(),
        secret: Secret::new(HB),
        jobs: ["a", "b"]
            .map(|id| AcceptBatchItem {
                job_id: id.into(),
                dag_run_id: id.into(),
            })
            .to_vec(),
    };
    let results = c.accept_dispatch_batch(&req).await.unwrap();
    assert_eq!(results[0], Ok(()));
    let refused = results[1].clone().unwrap_err();
    assert_eq!(refused.status, Some(409));
    assert_eq!(refused.kind, CloudErrorKind::Http);
    assert_eq!(refused.message, "taken by another server");
    let first = server.received_requests().await.unwrap().remove(0);
    assert_request(
        &first,
        "/api/v1/github/dispatch/accept-batch",
        json!({"license_id": "lic-1", "server_id": "0190-server", "secret": HB,
               "jobs": [{"job_id": "a", "dag_run_id": "a"}, {"job_id": "b", "dag_run_id": "b"}]}),
    );
    // Results in another order than the jobs are not trusted.
    let err = c.accept_dispatch_batch(&req).await.unwrap_err();
    assert_eq!(err.kind, CloudErrorKind::Decode, "{err}");
}
