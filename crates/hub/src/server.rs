//! The hub's HTTP/1.1 server: an accept loop of our own over hyper, so that every connection is
//! bounded. A connection must send its headers within the header timeout (hyper's clock also
//! runs while a keep-alive connection waits for its next request); at most
//! [`ServeLimits::max_connections`] are open at once, and one more is answered 503 and closed at
//! once instead of waiting in the listen backlog. A connection whose peer stops reading is closed
//! once its answer has waited the header timeout for the socket ([`write_deadline`]), and hyper's
//! buffers for it are capped at [`BUFFER`]. Bodies are bounded per route by [`crate::body`].
//!
//! Shutdown is graceful: on cancellation the loop stops accepting, idle connections close, and
//! the server ends when the requests in flight have been answered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::limits::ServeLimits;

mod write_deadline;
use write_deadline::WriteDeadline;

/// Cap on hyper's read and write buffers of one connection: a request head must fit (GitHub's
/// are a few KiB), bodies stream through it. hyper's default, about 400 KiB, let a client that
/// pipelines requests and never reads make each connection cost that much.
const BUFFER: usize = 64 * 1024;

/// File descriptors kept back from the connection cap for everything else the process opens: the
/// store's files, the GitHub client's connections, the runtime, standard streams.
const RESERVED_FILES: u64 = 128;

/// The answer to a connection beyond the cap, written without reading anything from it.
const FULL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\nconnection: close\r\n\
content-type: application/json\r\ncontent-length: 66\r\n\r\n\
{\"message\":\"the hub has too many open connections; retry shortly\"}";

/// At most one warning per this long for each kind of trouble, so a flood does not flood the log.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Raises the open-file limit, then serves `app` on `listener` in a task until `cancel`.
pub(crate) fn spawn(
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<Result<(), std::io::Error>> {
    let max_connections = connection_cap(limits.max_connections, raise_file_limit());
    tokio::spawn(serve(listener, app, limits, max_connections, cancel))
}

async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    max_connections: usize,
    cancel: CancellationToken,
) -> Result<(), std::io::Error> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(BUFFER);
    let http = Arc::new(http);
    let slots = Arc::new(Semaphore::new(max_connections));
    let connections = TaskTracker::new();
    let mut accept_trouble = Throttled::default();
    let mut full = Throttled::default();
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors, most likely: pause so the loop does not spin, and let
                // open connections finish to free some.
                if let Some(suppressed) = accept_trouble.due() {
                    tracing::warn!(error = %e, suppressed, "cannot accept connections; pausing");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if let Some(suppressed) = full.due() {
                tracing::warn!(
                    max_connections,
                    suppressed,
                    "connection limit reached; refusing new connections"
                );
            }
            refuse(stream).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        write_deadline::cap_send_buffer(&stream);
        let http = http.clone();
        let app = TowerToHyperService::new(app.clone());
        // The pages' brake on token guessing counts per client address.
        let service = hyper::service::service_fn(move |mut request| {
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            hyper::service::Service::call(&app, request)
        });
        let cancel = cancel.clone();
        connections.spawn(async move {
            let stream = WriteDeadline::new(stream, limits.header_timeout);
            let connection = http.serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                _ = cancel.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            // Timeouts and clients that go away are the normal course of things here.
            if let Err(e) = served {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Writes the 503 if the socket takes it at once, then closes.
async fn refuse(mut stream: TcpStream) {
    let _ = stream.try_write(FULL);
    let _ = stream.shutdown().await;
}

/// Errors that concern one connection, not the listener (as hyper's and axum's loops treat them).
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// Lets one warning through per [`WARN_EVERY`] and counts the ones it held back.
#[derive(Default)]
struct Throttled {
    last: Option<Instant>,
    held_back: u64,
}

impl Throttled {
    /// `Some(held back since the last one)` when a warning is due.
    fn due(&mut self) -> Option<u64> {
        if self.last.is_some_and(|t| t.elapsed() < WARN_EVERY) {
            self.held_back += 1;
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.held_back))
    }
}

/// The connection cap in force: the configured one, lowered to fit the open-file limit (`None`
/// when unknown) so that the cap, not `accept` failing with "too many open files", is what turns
/// connections away.
fn connection_cap(configured: usize, file_limit: Option<u64>) -> usize {
    let Some(limit) = file_limit else {
        return configured;
    };
    let fits = usize::try_from(limit.saturating_sub(RESERVED_FILES))
        .unwrap_or(usize::MAX)
        .max(1);
    if fits < configured {
        tracing::warn!(
            configured,
            file_limit = limit,
            max_connections = fits,
            "the open-file limit is too low for the connection cap; lowering the cap \
             (raise the hard limit, e.g. LimitNOFILE= or `ulimit -Hn`, see docs/security.md)"
        );
        fits
    } else {
        configured
    }
}

/// Raises the soft limit on open files to the hard limit (each connection is one file), and
/// returns the soft limit in force, `None` when it cannot be read.
#[cfg(unix)]
fn raise_file_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};

    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit");
            return None;
        }
    };
    // An unlimited hard limit is still capped by the kernel (`fs.nr_open` on Linux, `OPEN_MAX` on
    // macOS), so try values it commonly allows, largest first.
    let candidates = [hard, 1 << 20, 1 << 16, 10_240]
        .into_iter()
        .filter(|&c| c != RLIM_INFINITY && c <= hard && c > soft);
    for candidate in candidates {
        if setrlimit(Resource::RLIMIT_NOFILE, candidate, hard).is_ok() {
            tracing::info!(from = soft, to = candidate, "raised the open-file limit");
            return Some(candidate);
        }
    }
    if soft < hard {
        tracing::warn!(
            soft,
            hard,
            "cannot raise the open-file limit; connections are capped by it (see docs/security.md)"
        );
    } else {
        tracing::info!(limit = soft, "open-file limit already at its hard limit");
    }
    Some(soft)
}

#[cfg(not(unix))]
fn raise_file_limit() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_fits_under_the_file_limit() {
        assert_eq!(connection_cap(4096, None), 4096);
        assert_eq!(connection_cap(4096, Some(1 << 20)), 4096);
        assert_eq!(connection_cap(4096, Some(256)), 128);
        assert_eq!(connection_cap(4096, Some(100)), 1, "never zero");
    }

    #[test]
    fn the_full_answer_is_a_complete_response() {
        let text = std::str::from_utf8(FULL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        serde_json::from_str::<serde_json::Value>(body).unwrap();
    }

    #[test]
    fn warnings_are_throttled_and_count_what_they_held_back() {
        let mut t = Throttled::default();
        assert_eq!(t.due(), Some(0));
        assert_eq!(t.due(), None);
        assert_eq!(t.due(), None);
        t.last = Some(Instant::now() - WARN_EVERY);
        assert_eq!(t.due(), Some(2));
    }
}
