//! A minimal blocking HTTP/1.1 client for loopback, and signed GitHub webhook deliveries.
//!
//! Hand-written over `TcpStream` because the bench needs the instant the first response byte
//! arrives (the "202 received by the sender" of SPEC §10), one request per connection, and no
//! async runtime in xtask.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};

/// An answer, with the wall-clock time its first byte was read.
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
    /// Nanoseconds since the Unix epoch, comparable with `date +%s%N` in a step.
    pub(crate) first_byte_ns: u128,
}

pub(crate) fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Sends one request with `Connection: close` and reads the whole answer.
pub(crate) fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> anyhow::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("failed to connect to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut message = head.into_bytes();
    message.extend_from_slice(body);
    stream
        .write_all(&message)
        .with_context(|| format!("failed to send {method} {path} to {addr}"))?;

    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let mut first_byte_ns = None;
    loop {
        let n = stream
            .read(&mut buf)
            .with_context(|| format!("failed to read the answer to {method} {path}"))?;
        if n == 0 {
            break;
        }
        first_byte_ns.get_or_insert_with(unix_ns);
        raw.extend_from_slice(&buf[..n]);
    }
    let (status, body) = parse_response(&raw)
        .with_context(|| format!("malformed answer to {method} {path} from {addr}"))?;
    Ok(Response {
        status,
        body,
        first_byte_ns: first_byte_ns.unwrap_or_else(unix_ns),
    })
}

/// Splits a complete HTTP/1.1 response into status and (de-chunked) body.
fn parse_response(raw: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers")?;
    let head = std::str::from_utf8(&raw[..end]).context("headers are not utf-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .with_context(|| format!("bad status line `{status_line}`"))?;
    let chunked = lines.any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("transfer-encoding")
                && value.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = &raw[end + 4..];
    if chunked {
        Ok((status, dechunk(body)?))
    } else {
        Ok((status, body.to_vec()))
    }
}

fn dechunk(mut body: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunk size line not terminated")?;
        let size_text = std::str::from_utf8(&body[..line_end]).context("chunk size not utf-8")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("bad chunk size `{size_text}`"))?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size + 2 {
            bail!("chunk of {size} bytes is cut short");
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
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
            Duration::from_secs(30),
        )?;
        let text = String::from_utf8_lossy(&response.body);
        if response.status != 202 {
            bail!(
                "hub answered delivery `{delivery}` with {} (expected 202): {}",
                response.status,
                text.trim()
            );
        }
        let answer: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("hub answer to `{delivery}` is not json: {text}"))?;
        let job_ids: Vec<String> = answer["job_ids"]
            .as_array()
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| id.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if job_ids.is_empty() {
            bail!("hub accepted delivery `{delivery}` without a job: {text}");
        }
        Ok(Delivered {
            job_ids,
            answered_ns: response.first_byte_ns,
        })
    }
}

/// `GET path`, expecting 200; returns the body as text.
pub(crate) fn get_text(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let response = request(addr, "GET", path, &[], &[], Duration::from_secs(10))?;
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
    fn parses_plain_and_chunked_responses() {
        let plain = b"HTTP/1.1 202 Accepted\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(parse_response(plain).unwrap(), (202, b"hello".to_vec()));
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked).unwrap(),
            (200, b"hello world".to_vec())
        );
    }

    #[test]
    fn rejects_malformed_responses() {
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nz\r\n").is_err()
        );
        assert!(parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nabc\r\n"
        )
        .is_err());
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
        let request = server.join().unwrap();
        assert_eq!(delivered.job_ids, ["j1"]);
        assert!(delivered.answered_ns >= before);
        assert!(request.starts_with("POST /webhooks/github HTTP/1.1\r\n"));
        assert!(request.contains("X-GitHub-Event: push\r\n"));
        assert!(request.contains(&format!(
            "X-Hub-Signature-256: {}\r\n",
            signature("s3cret", b"{}")
        )));
        assert!(request.contains("X-GitHub-Delivery: bench-"));
        assert!(request.contains("-7\r\n"));
    }
}
