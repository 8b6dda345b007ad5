//! Blocking HTTP for the bench (through `ureq`), and signed GitHub webhook deliveries.
//!
//! The latency figure starts at the instant the sender has the hub's answer: [`request`] stamps it
//! as soon as the client returns the status line and headers, before the body is read.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde::Deserialize;

/// The part of the hub's 202 answer to a delivery the bench reads: the jobs it made.
#[derive(Deserialize)]
struct JobsMade {
    #[serde(default)]
    job_ids: Vec<String>,
}

/// An answer, with the wall-clock time its head was read.
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
    /// Nanoseconds since the Unix epoch, comparable with `date +%s%N` in a step.
    pub(crate) answered_ns: u128,
}

pub(crate) fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// One client for the whole bench: keeps connections to the hub open between requests, as a
/// real sender (GitHub, a load balancer) does. Every status is an answer, not an error.
fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into()
    })
}

/// Sends one request and reads the whole answer.
pub(crate) fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<Response> {
    let url = format!("http://{addr}{path}");
    let mut answer = match method {
        "GET" => {
            let mut req = agent().get(&url);
            for (name, value) in headers {
                req = req.header(*name, *value);
            }
            req.call()
        }
        _ => {
            let mut req = agent().post(&url);
            for (name, value) in headers {
                req = req.header(*name, *value);
            }
            req.send(body)
        }
    }
    .with_context(|| format!("{method} {url} failed"))?;
    let answered_ns = unix_ns();
    let status = answer.status().as_u16();
    let body = answer
        .body_mut()
        .read_to_vec()
        .with_context(|| format!("failed to read the answer to {method} {url}"))?;
    Ok(Response {
        status,
        body,
        answered_ns,
    })
}

/// GitHub's `X-Hub-Signature-256` value for `body`.
pub(crate) fn signature(secret: &str, body: &[u8]) -> String {
    dispatch_protocol::webhook_signature::sign(&dispatch_protocol::Secret::new(secret), body)
}

/// Sends signed `push` deliveries of one payload to a hub, each with its own delivery id.
pub(crate) struct WebhookSender {
    pub(crate) addr: SocketAddr,
    body: Vec<u8>,
    signature: String,
    delivery_prefix: String,
}

/// What the hub answered to one accepted (202) delivery.
pub(crate) struct Delivered {
    pub(crate) job_ids: Vec<String>,
    /// When the sender received the answer (ns since the epoch).
    pub(crate) answered_ns: u128,
}

impl WebhookSender {
    pub(crate) fn new(addr: SocketAddr, secret: &str, body: Vec<u8>) -> WebhookSender {
        let signature = signature(secret, &body);
        WebhookSender {
            addr,
            body,
            signature,
            // Unique per bench run so a reused hub database never sees a duplicate delivery.
            delivery_prefix: format!("bench-{}-{}", std::process::id(), unix_ns()),
        }
    }

    /// Delivers the payload as delivery number `n`; any answer but 202 is an error.
    pub(crate) fn send(&self, n: usize) -> anyhow::Result<Delivered> {
        let delivery = format!("{}-{n}", self.delivery_prefix);
        let response = request(
            self.addr,
            "POST",
            "/webhooks/github",
            &[
                ("Content-Type", "application/json"),
                ("User-Agent", "GitHub-Hookshot/bench"),
                ("X-GitHub-Event", "push"),
                ("X-GitHub-Delivery", &delivery),
                ("X-Hub-Signature-256", &self.signature),
            ],
            &self.body,
        )?;
        let text = String::from_utf8_lossy(&response.body);
        if response.status != 202 {
            bail!(
                "hub answered delivery `{delivery}` with {} (expected 202): {}",
                response.status,
                text.trim()
            );
        }
        let JobsMade { job_ids } = serde_json::from_str(&text)
            .with_context(|| format!("hub answer to `{delivery}` is not json: {text}"))?;
        if job_ids.is_empty() {
            bail!("hub accepted delivery `{delivery}` without a job: {text}");
        }
        Ok(Delivered {
            job_ids,
            answered_ns: response.answered_ns,
        })
    }
}

/// `GET path`, expecting 200; returns the body as text.
pub(crate) fn get_text(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let response = request(addr, "GET", path, &[], &[])?;
    if response.status != 200 {
        bail!("GET {path} answered {}", response.status);
    }
    String::from_utf8(response.body).with_context(|| format!("GET {path} is not utf-8"))
}

/// The value of a Prometheus sample line `name{labels} value` (exact name and labels).
pub(crate) fn prometheus_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.trim().parse().ok())?
        })
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use super::*;

    #[test]
    fn signature_matches_githubs_documented_example() {
        // From GitHub's "Validating webhook deliveries" guide.
        assert_eq!(
            signature("It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn reads_prometheus_series() {
        let text = "# HELP x y\n# TYPE x gauge\n\
                    dispatch_hub_jobs{state=\"queued\"} 12\n\
                    dispatch_hub_jobs{state=\"accepted\"} 1988\n";
        assert_eq!(
            prometheus_value(text, "dispatch_hub_jobs{state=\"accepted\"}"),
            Some(1988.0)
        );
        assert_eq!(
            prometheus_value(text, "dispatch_hub_jobs{state=\"queued\"}"),
            Some(12.0)
        );
        assert_eq!(
            prometheus_value(text, "dispatch_hub_jobs{state=\"finished\"}"),
            None
        );
    }

    #[test]
    fn talks_to_a_real_loopback_server() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while !seen.ends_with(b"{}") {
                let n = conn.read(&mut buf).unwrap();
                seen.extend_from_slice(&buf[..n]);
            }
            conn.write_all(
                b"HTTP/1.1 202 Accepted\r\ncontent-length: 19\r\n\r\n{\"job_ids\":[\"j1\"]}\n",
            )
            .unwrap();
            String::from_utf8(seen).unwrap()
        });
        let sender = WebhookSender::new(addr, "s3cret", b"{}".to_vec());
        let before = unix_ns();
        let delivered = sender.send(7).unwrap();
        // Header names are case-insensitive; the client may send them in lower case.
        let request = server.join().unwrap().to_ascii_lowercase();
        assert_eq!(delivered.job_ids, ["j1"]);
        assert!(delivered.answered_ns >= before);
        assert!(request.starts_with("post /webhooks/github http/1.1\r\n"));
        assert!(request.contains("x-github-event: push\r\n"));
        assert!(request.contains(&format!(
            "x-hub-signature-256: {}\r\n",
            signature("s3cret", b"{}")
        )));
        assert!(request.contains("x-github-delivery: bench-"));
        assert!(request.contains("-7\r\n"));
    }
}
