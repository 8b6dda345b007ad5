//! Hostile traffic: a standalone `hub` while 1,000 connections stall in the middle of their request
//! line, 40 send the head of an unsigned 25 MiB webhook upload and stall, 40 send the head of a
//! 25 MiB upload with a forged signature and the first bytes of its body and stall, and 100
//! pipeline `GET /healthz` through a 1 KiB receive buffer and never read an answer. Over the
//! window the hub's RSS is sampled, `/healthz`, a pull and a signed webhook are timed one after
//! another, and each hostile connection's close is timed from when it started. The hub must stay
//! small, keep answering, close every stalled request line and every connection that does not
//! read within its header timeout (+1 s), and cut every stalled forged upload within its
//! minimum-rate window (+1 s).

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::http::{self, WebhookSender};
use super::procs;
use super::stats::percentile;
use super::system::StandaloneHub;
use super::{Context, Metric, Target};

const STALLED_HEADERS: usize = 1_000;
const STALLED_UPLOADS: usize = 40;
const FORGED_UPLOADS: usize = 40;
const PIPELINERS: usize = 100;
/// The hub's default, passed explicitly so the figure below follows it.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The hub's minimum-rate window (`dispatch_hub::limits::BODY_RATE_WINDOW`): a body that brings
/// less than 20 KiB in it is cut.
const RATE_WINDOW: Duration = Duration::from_secs(5);
/// What a pipelining connection sends, again and again.
const PIPELINED: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: hub\r\n\r\n";
/// Requests a pipelining connection sends at once, as fast as the hub takes them: their answers
/// are several times what the hub's send buffer and the client's receive buffer hold together.
const PIPELINED_BURST: usize = 5_000;
const SLACK: Duration = Duration::from_secs(1);
/// Long enough to cover the stall and the moment the hub closes every stalled connection at once.
const WINDOW: Duration = Duration::from_secs(12);
/// Pause between rounds of the three probes: the probes show the hub answering; they are not a
/// load of their own.
const PACE: Duration = Duration::from_millis(20);
/// Files the bench itself needs open: the hostile connections, the probes' connections, slack.
const FILES_NEEDED: u64 =
    (STALLED_HEADERS + STALLED_UPLOADS + FORGED_UPLOADS + PIPELINERS) as u64 + 256;

const RSS_MIB: f64 = 150.0;
const P99_MS: f64 = 100.0;

pub(crate) fn targets() -> Vec<Metric> {
    vec![
        Metric::promised("hostile_hub_rss_peak_mib", "MiB", Target::Below(RSS_MIB)),
        Metric::promised(
            "hostile_stalled_closed_max_s",
            "s",
            Target::AtMost((HEADER_TIMEOUT + SLACK).as_secs_f64()),
        ),
        Metric::promised(
            "hostile_pipelined_closed_max_s",
            "s",
            Target::AtMost((HEADER_TIMEOUT + SLACK).as_secs_f64()),
        ),
        Metric::promised(
            "hostile_forged_uploads_closed_max_s",
            "s",
            Target::AtMost((RATE_WINDOW + SLACK).as_secs_f64()),
        ),
        Metric::promised("hostile_healthz_p99_ms", "ms", Target::Below(P99_MS)),
        Metric::promised("hostile_pull_p99_ms", "ms", Target::Below(P99_MS)),
        Metric::promised("hostile_webhook_p99_ms", "ms", Target::Below(P99_MS)),
    ]
}

/// What a hostile connection does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Stalls in the middle of its request line.
    RequestLine,
    /// Sends the head of an unsigned 25 MiB webhook upload and stalls.
    Unsigned,
    /// Sends the head of a 25 MiB webhook upload with a forged signature, the first bytes of the
    /// body, and stalls.
    Forged,
    /// Pipelines requests and never reads.
    Pipelining,
}

/// One hostile connection, watched until the hub closes it.
struct Stalled {
    stream: TcpStream,
    kind: Kind,
    stalled_at: Instant,
    answer: Vec<u8>,
    closed_after: Option<Duration>,
    /// Bytes of requests a pipelining connection has sent.
    sent: usize,
}

/// What the window showed.
#[derive(Debug, Default)]
struct Observed {
    rss_before_kib: u64,
    rss_peak_kib: u64,
    healthz_ms: Vec<f64>,
    pull_ms: Vec<f64>,
    webhook_ms: Vec<f64>,
    /// Close delays of the stalled request lines; `None` for one still open at the end.
    header_closes: Vec<Option<Duration>>,
    upload_closes: Vec<Option<Duration>>,
    forged_closes: Vec<Option<Duration>>,
    pipelined_closes: Vec<Option<Duration>>,
    /// Unsigned uploads the hub answered with 401 before closing.
    uploads_refused: usize,
    /// Forged uploads the hub answered with 408 before closing.
    forged_cut: usize,
}

pub(crate) fn run(context: &Context) -> anyhow::Result<Vec<Metric>> {
    raise_own_file_limit(FILES_NEEDED)?;
    let header_timeout = HEADER_TIMEOUT.as_secs().to_string();
    let mut hub = StandaloneHub::start_with(
        context,
        &context.work,
        &["--header-timeout", &header_timeout],
    )?;
    let server_id = format!(
        "{:08x}-0000-4000-8000-{:012x}",
        std::process::id(),
        http::unix_ns() & 0xffff_ffff_ffff
    );
    let pull_body = hub.activate(&server_id)?;
    let sender = hub.sender()?;
    // One round before the stall, so connections and caches are warm as they would be.
    probe_round(hub.addr, &pull_body, &sender, 0)?;
    let observed = observe(&mut hub, &pull_body, &sender)?;
    Ok(rows(&observed))
}

/// Opens the stalled connections, then probes and watches until the window has passed and every
/// stalled connection is closed (or well past its timeout).
fn observe(
    hub: &mut StandaloneHub,
    pull_body: &[u8],
    sender: &WebhookSender,
) -> anyhow::Result<Observed> {
    let pid = hub.process.pid();
    let mut observed = Observed {
        rss_before_kib: procs::rss_kib(pid)?,
        ..Observed::default()
    };
    observed.rss_peak_kib = observed.rss_before_kib;
    let mut stalled = open_stalled(hub.addr)?;
    let opened = Instant::now();
    let give_up = opened + HEADER_TIMEOUT + SLACK * 5;
    let mut round = 1;
    loop {
        hub.process.check_alive()?;
        observed.rss_peak_kib = observed.rss_peak_kib.max(procs::rss_kib(pid)?);
        watch(&mut stalled);
        let in_window = opened.elapsed() < WINDOW;
        if in_window {
            let (healthz, pull, webhook) = probe_round(hub.addr, pull_body, sender, round)?;
            observed.healthz_ms.push(healthz);
            observed.pull_ms.push(pull);
            observed.webhook_ms.push(webhook);
            round += 1;
        }
        let all_closed = stalled.iter().all(|s| s.closed_after.is_some());
        if (!in_window && all_closed) || Instant::now() >= give_up {
            break;
        }
        std::thread::sleep(PACE);
    }
    for s in &stalled {
        match s.kind {
            Kind::RequestLine => observed.header_closes.push(s.closed_after),
            Kind::Unsigned => {
                observed.upload_closes.push(s.closed_after);
                if s.answer.starts_with(b"HTTP/1.1 401") {
                    observed.uploads_refused += 1;
                }
            }
            Kind::Forged => {
                observed.forged_closes.push(s.closed_after);
                if s.answer.starts_with(b"HTTP/1.1 408") {
                    observed.forged_cut += 1;
                }
            }
            Kind::Pipelining => observed.pipelined_closes.push(s.closed_after),
        }
    }
    Ok(observed)
}

fn open_stalled(addr: SocketAddr) -> anyhow::Result<Vec<Stalled>> {
    let upload_head = |signature: &str| {
        format!(
            "POST /webhooks/github HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: hostile\r\n{signature}\r\n",
            25 * 1024 * 1024
        )
    };
    let unsigned = upload_head("");
    let forged = upload_head(&format!(
        "X-Hub-Signature-256: sha256={}\r\n",
        "0".repeat(64)
    )) + "{\"pad\":\"";
    let kinds = std::iter::repeat_n(Kind::RequestLine, STALLED_HEADERS)
        .chain(std::iter::repeat_n(Kind::Unsigned, STALLED_UPLOADS))
        .chain(std::iter::repeat_n(Kind::Forged, FORGED_UPLOADS))
        .chain(std::iter::repeat_n(Kind::Pipelining, PIPELINERS));
    let mut stalled =
        Vec::with_capacity(STALLED_HEADERS + STALLED_UPLOADS + FORGED_UPLOADS + PIPELINERS);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("failed to start a runtime to connect")?;
    for (n, kind) in kinds.enumerate() {
        let mut stream = match kind {
            Kind::Pipelining => connect_not_reading(addr, &runtime),
            _ => TcpStream::connect(addr).map_err(anyhow::Error::from),
        }
        .with_context(|| format!("failed to open hostile connection {n}"))?;
        let bytes: &[u8] = match kind {
            Kind::RequestLine => b"GET /healthz HT",
            Kind::Unsigned => unsigned.as_bytes(),
            Kind::Forged => forged.as_bytes(),
            Kind::Pipelining => b"",
        };
        stream
            .write_all(bytes)
            .with_context(|| format!("failed to write on hostile connection {n}"))?;
        stream.set_nonblocking(true)?;
        stalled.push(Stalled {
            stream,
            kind,
            stalled_at: Instant::now(),
            answer: Vec::new(),
            closed_after: None,
            sent: 0,
        });
    }
    Ok(stalled)
}

/// A connection whose receive buffer is as small as the kernel allows, so the hub's answers back
/// up after a few of them (as the review's attack did).
fn connect_not_reading(
    addr: SocketAddr,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(1024)?;
    let stream = runtime.block_on(socket.connect(addr))?;
    Ok(stream.into_std()?)
}

/// Reads whatever the hub sent on each open stalled connection, and pipelines more requests on
/// each pipelining one (which never reads); end of stream, a reset or a failed write is the hub
/// closing it.
fn watch(stalled: &mut [Stalled]) {
    let mut buf = [0u8; 1024];
    for s in stalled.iter_mut().filter(|s| s.closed_after.is_none()) {
        if s.kind == Kind::Pipelining {
            pipeline(s);
            continue;
        }
        loop {
            match s.stream.read(&mut buf) {
                Ok(0) => {
                    s.closed_after = Some(s.stalled_at.elapsed());
                    break;
                }
                Ok(n) => s.answer.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    s.closed_after = Some(s.stalled_at.elapsed());
                    break;
                }
            }
        }
    }
}

/// Writes the rest of a pipelining connection's burst as far as the socket takes it, and one
/// more byte of requests on each pass after it; a reset from the hub (seen as the socket's error
/// or a failed write) is the hub closing it.
fn pipeline(s: &mut Stalled) {
    if matches!(s.stream.take_error(), Ok(Some(_)) | Err(_)) {
        s.closed_after = Some(s.stalled_at.elapsed());
        return;
    }
    let burst = PIPELINED.len() * PIPELINED_BURST;
    let mut budget = burst.saturating_sub(s.sent).max(1);
    while budget > 0 {
        let at = s.sent % PIPELINED.len();
        let end = PIPELINED.len().min(at + budget);
        match s.stream.write(&PIPELINED[at..end]) {
            Ok(n) => {
                // Its clock starts with its first request, not with its connection.
                if s.sent == 0 {
                    s.stalled_at = Instant::now();
                }
                s.sent += n;
                budget -= n;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => {
                s.closed_after = Some(s.stalled_at.elapsed());
                return;
            }
        }
    }
}

/// `/healthz`, a pull and a signed webhook, each timed in milliseconds.
fn probe_round(
    addr: SocketAddr,
    pull_body: &[u8],
    sender: &WebhookSender,
    round: usize,
) -> anyhow::Result<(f64, f64, f64)> {
    let started = Instant::now();
    let health = http::request(addr, "GET", "/healthz", &[], &[])?;
    let healthz = ms(started);
    if health.status != 200 {
        bail!("/healthz answered {}", health.status);
    }
    let started = Instant::now();
    let pull = http::request(
        addr,
        "POST",
        "/api/v1/github/dispatch/pull",
        &[("Content-Type", "application/json")],
        pull_body,
    )?;
    let pulled = ms(started);
    if !matches!(pull.status, 200 | 204) {
        bail!(
            "pull answered {}: {}",
            pull.status,
            String::from_utf8_lossy(&pull.body).trim()
        );
    }
    let started = Instant::now();
    sender.send(round)?;
    Ok((healthz, pulled, ms(started)))
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// Raises this process's soft limit on open files to at least `needed` (up to the hard limit).
fn raise_own_file_limit(needed: u64) -> anyhow::Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};

    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).context("failed to read the open-file limit")?;
    if soft >= needed {
        return Ok(());
    }
    if hard < needed {
        bail!(
            "the open-file hard limit is {hard}; this group needs {needed} (raise it, e.g. \
             `ulimit -Hn {needed}` as root)"
        );
    }
    setrlimit(Resource::RLIMIT_NOFILE, needed, hard)
        .with_context(|| format!("failed to raise the open-file limit to {needed}"))
}

fn rows(o: &Observed) -> Vec<Metric> {
    let [rss, stalled, pipelined, forged, healthz, pull, webhook]: [Metric; 7] = targets()
        .try_into()
        .unwrap_or_else(|_| unreachable!("seven targets"));
    let mib = |kib: u64| kib as f64 / 1024.0;
    let p = |samples: &[f64], q: f64| percentile(samples, q).unwrap_or(f64::NAN);
    // A connection still open at the end counts as not closed in time.
    let slowest_close = |closes: &[Option<Duration>]| {
        closes
            .iter()
            .map(|c| c.map_or(f64::INFINITY, |d| d.as_secs_f64()))
            .fold(0.0, f64::max)
    };
    let still_open = o
        .header_closes
        .iter()
        .chain(&o.upload_closes)
        .chain(&o.forged_closes)
        .chain(&o.pipelined_closes)
        .filter(|c| c.is_none())
        .count();
    let probe_note = |samples: &[f64]| {
        format!(
            "{} samples over {}s; p50 {:.2} ms",
            samples.len(),
            WINDOW.as_secs(),
            p(samples, 50.0)
        )
    };
    vec![
        rss.measured(mib(o.rss_peak_kib)).with_note(format!(
            "max VmRSS of the hub; {:.1} MiB before the stall",
            mib(o.rss_before_kib)
        )),
        stalled
            .measured(slowest_close(&o.header_closes))
            .with_note(format!(
                "slowest close of {STALLED_HEADERS} stalled request lines (header timeout {}s); \
                 {still_open} connections still open at the end",
                HEADER_TIMEOUT.as_secs()
            )),
        Metric::info(
            "hostile_uploads_closed_max_s",
            slowest_close(&o.upload_closes),
            "s",
        )
        .with_note(format!(
            "{} of {STALLED_UPLOADS} unsigned 25 MiB upload heads answered 401 and closed",
            o.uploads_refused
        )),
        pipelined
            .measured(slowest_close(&o.pipelined_closes))
            .with_note(format!(
                "slowest close of {PIPELINERS} connections pipelining GET /healthz through a 1 KiB \
                 receive buffer and never reading, from their first request (header timeout {}s)",
                HEADER_TIMEOUT.as_secs()
            )),
        forged
            .measured(slowest_close(&o.forged_closes))
            .with_note(format!(
                "{} of {FORGED_UPLOADS} forged-signature 25 MiB uploads stalled after 8 bytes \
                 answered 408 (minimum rate, {}s window) and closed",
                o.forged_cut,
                RATE_WINDOW.as_secs()
            )),
        healthz
            .measured(p(&o.healthz_ms, 99.0))
            .with_note(probe_note(&o.healthz_ms)),
        pull.measured(p(&o.pull_ms, 99.0))
            .with_note(probe_note(&o.pull_ms)),
        webhook
            .measured(p(&o.webhook_ms, 99.0))
            .with_note(probe_note(&o.webhook_ms)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_carry_the_targets_and_count_open_connections_as_too_slow() {
        let observed = Observed {
            rss_before_kib: 20 * 1024,
            rss_peak_kib: 40 * 1024,
            healthz_ms: vec![1.0, 2.0, 3.0],
            pull_ms: vec![1.0; 3],
            webhook_ms: vec![150.0; 3],
            header_closes: vec![Some(Duration::from_secs(10)), None],
            upload_closes: vec![Some(Duration::from_millis(5))],
            forged_closes: vec![Some(Duration::from_secs(5))],
            pipelined_closes: vec![Some(Duration::from_secs(12))],
            uploads_refused: 1,
            forged_cut: 1,
        };
        let rows = rows(&observed);
        let row = |name: &str| rows.iter().find(|r| r.name == name).unwrap();
        assert_eq!(row("hostile_hub_rss_peak_mib").value, Some(40.0));
        assert_eq!(row("hostile_hub_rss_peak_mib").pass(), Some(true));
        assert_eq!(
            row("hostile_stalled_closed_max_s").pass(),
            Some(false),
            "a connection never closed"
        );
        assert!(row("hostile_stalled_closed_max_s")
            .note
            .as_deref()
            .unwrap()
            .contains("1 connections still open"));
        assert_eq!(row("hostile_healthz_p99_ms").value, Some(3.0));
        assert_eq!(row("hostile_webhook_p99_ms").pass(), Some(false));
        assert_eq!(row("hostile_uploads_closed_max_s").value, Some(0.005));
        assert_eq!(
            row("hostile_forged_uploads_closed_max_s").pass(),
            Some(true)
        );
        assert_eq!(
            row("hostile_pipelined_closed_max_s").pass(),
            Some(false),
            "closed later than the header timeout and its slack"
        );
        for target in targets() {
            assert!(
                rows.iter().any(|r| r.name == target.name),
                "{}",
                target.name
            );
        }
    }

    #[test]
    fn watching_sees_an_answer_and_the_close() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut stalled = open_stalled_one(addr);
        let (mut server_side, _) = listener.accept().unwrap();
        watch(std::slice::from_mut(&mut stalled));
        assert!(stalled.closed_after.is_none(), "still open");
        server_side
            .write_all(b"HTTP/1.1 401 Unauthorized\r\n\r\n")
            .unwrap();
        drop(server_side);
        wait_until_closed(&mut stalled, |s| watch(std::slice::from_mut(s)));
        assert!(stalled.answer.starts_with(b"HTTP/1.1 401"));
    }

    #[test]
    fn a_pipelining_connection_sees_the_close() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let stream = connect_not_reading(listener.local_addr().unwrap(), &runtime).unwrap();
        stream.set_nonblocking(true).unwrap();
        let (server_side, _) = listener.accept().unwrap();
        let mut s = Stalled {
            stream,
            kind: Kind::Pipelining,
            stalled_at: Instant::now(),
            answer: Vec::new(),
            closed_after: None,
            sent: 0,
        };
        pipeline(&mut s);
        assert!(s.closed_after.is_none(), "the socket is full, not closed");
        // Closed with requests unread: the peer resets the connection.
        drop(server_side);
        wait_until_closed(&mut s, pipeline);
    }

    /// Runs `step` on `s` until it has seen the connection close (20 s at most).
    fn wait_until_closed(s: &mut Stalled, mut step: impl FnMut(&mut Stalled)) {
        procs::wait_for(
            "the close to be seen",
            Duration::from_secs(20),
            Duration::from_millis(10),
            || Ok(()),
            || {
                step(s);
                s.closed_after
            },
        )
        .unwrap();
    }

    fn open_stalled_one(addr: SocketAddr) -> Stalled {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nonblocking(true).unwrap();
        Stalled {
            stream,
            kind: Kind::Unsigned,
            stalled_at: Instant::now(),
            answer: Vec::new(),
            closed_after: None,
            sent: 0,
        }
    }
}
