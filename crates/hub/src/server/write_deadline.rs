//! A connection's stream with a deadline on writing: when the peer stops reading, the hub's
//! answer cannot leave, and hyper would wait for the socket forever (its own timers only run
//! while it reads a request head). [`WriteDeadline`] fails the write instead, which ends the
//! connection.
//!
//! The deadline runs only while output is waiting for the socket: it starts when a write finds
//! the socket full, and stops when the peer has taken everything the hub had to write, or at
//! least [`PROGRESS`] bytes of it. A handler that is still working on its answer (a long-poll
//! waits up to a minute) writes nothing, so no deadline runs for it.
//!
//! The deadline can only start once the socket is full, so [`cap_send_buffer`] keeps the kernel
//! from growing a connection's send buffer to megabytes first: a client that never reads would
//! otherwise take that much memory, and seconds of answers, before the clock even started.

use std::future::Future as _;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Bytes the peer must take within one deadline when it does not take all the output at once: a
/// peer that reads a byte now and then does not keep its connection open for ever.
pub(crate) const PROGRESS: usize = 16 * 1024;

/// The send buffer each connection asks the kernel for (Linux doubles it, for its own
/// bookkeeping). Hub answers are small: a pull is at most 1 MiB, which leaves in four round trips;
/// a pull batch, as large as its caller allows, takes more, at the same pace.
const SEND_BUFFER: usize = 128 * 1024;

/// Caps `stream`'s kernel send buffer at [`SEND_BUFFER`]; left as it is when the system refuses.
#[cfg(unix)]
pub(crate) fn cap_send_buffer(stream: &tokio::net::TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt::SndBuf};

    if let Err(e) = setsockopt(stream, SndBuf, &SEND_BUFFER) {
        tracing::debug!(error = %e, "cannot cap the send buffer of a connection");
    }
}

#[cfg(not(unix))]
pub(crate) fn cap_send_buffer(_: &tokio::net::TcpStream) {}

/// `S`, whose writes fail with [`io::ErrorKind::TimedOut`] once output has waited `limit`
/// without the peer taking it.
pub(crate) struct WriteDeadline<S> {
    inner: S,
    limit: Duration,
    /// Allocated the first time the socket is found full, then reused.
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether the timer is running: output is waiting.
    waiting: bool,
    /// Bytes written since the timer started.
    taken: usize,
}

impl<S> WriteDeadline<S> {
    pub(crate) fn new(inner: S, limit: Duration) -> Self {
        WriteDeadline {
            inner,
            limit,
            timer: None,
            waiting: false,
            taken: 0,
        }
    }

    /// Counts a write that took `written` of the `offered` bytes.
    fn wrote(&mut self, written: usize, offered: usize) {
        if !self.waiting {
            return;
        }
        self.taken = self.taken.saturating_add(written);
        if written >= offered || self.taken >= PROGRESS {
            self.waiting = false;
        }
    }

    /// The socket is full: starts the timer if it is not running, and fails once it has run out.
    fn full<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let limit = self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if !self.waiting {
            timer.as_mut().reset(Instant::now() + limit);
            self.waiting = true;
            self.taken = 0;
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the peer took no output for {} s; closing",
                    limit.as_secs_f64()
                ),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                self.wrote(n, buf.len());
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.full(cx),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                let offered = bufs.iter().map(|b| b.len()).sum();
                self.wrote(n, offered);
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.full(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    const LIMIT: Duration = Duration::from_secs(10);

    /// A pipe whose far end holds at most `room` unread bytes.
    fn pipe(
        room: usize,
    ) -> (
        WriteDeadline<tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
    ) {
        let (near, far) = tokio::io::duplex(room);
        (WriteDeadline::new(near, LIMIT), far)
    }

    async fn read_some(far: &mut tokio::io::DuplexStream, n: usize) {
        use tokio::io::AsyncReadExt as _;
        let mut buf = vec![0u8; n];
        far.read_exact(&mut buf).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn output_nobody_reads_fails_after_the_limit() {
        let (mut near, _far) = pipe(64);
        let started = Instant::now();
        let err = near.write_all(&[0u8; 1000]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= LIMIT && started.elapsed() < LIMIT * 2);
    }

    #[tokio::test(start_paused = true)]
    async fn no_output_means_no_deadline() {
        let (mut near, mut far) = pipe(64);
        // A handler thinking for longer than the limit, then answering.
        tokio::time::sleep(LIMIT * 6).await;
        near.write_all(b"answer").await.unwrap();
        read_some(&mut far, 6).await;
        // A socket found full once, then drained, leaves no deadline behind.
        let writer = tokio::spawn(async move {
            near.write_all(&[1u8; 100]).await.unwrap();
            near
        });
        tokio::time::sleep(LIMIT / 2).await;
        read_some(&mut far, 100).await;
        let mut near = writer.await.unwrap();
        tokio::time::sleep(LIMIT * 6).await;
        near.write_all(b"later").await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_keeps_taking_enough_keeps_the_connection() {
        let (mut near, mut far) = pipe(1024);
        let total = PROGRESS * 4;
        let writer = tokio::spawn(async move { near.write_all(&vec![2u8; total]).await });
        // Each deadline sees at least PROGRESS bytes taken, though the output never drains.
        for _ in 0..total / 1024 {
            tokio::time::sleep(LIMIT / 20).await;
            read_some(&mut far, 1024).await;
        }
        writer.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_takes_a_trickle_is_cut() {
        let (mut near, mut far) = pipe(1024);
        let writer = tokio::spawn(async move { near.write_all(&vec![3u8; PROGRESS * 4]).await });
        // A byte now and then frees room, but less than PROGRESS per deadline.
        let reader = tokio::spawn(async move {
            loop {
                tokio::time::sleep(LIMIT / 4).await;
                use tokio::io::AsyncReadExt as _;
                let mut byte = [0u8; 100];
                if far.read(&mut byte).await.unwrap_or(0) == 0 {
                    return;
                }
            }
        });
        let err = writer.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        reader.abort();
    }
}
