//! Request bodies read in a bounded way, before a handler sees them.
//!
//! [`buffer`] is a route middleware: it reads the whole body within the route's size cap, the
//! body timeout and the minimum rate, holding a share of its route group's [`BodyBudget`] for
//! every byte of buffer, and hands the handler a body that is already in memory. What it refuses,
//! it refuses with `Connection: close`: the client is cut off instead of left streaming into a
//! connection nobody reads.
//!
//! A declared `Content-Length` is checked before any byte of the body is read (over the cap:
//! 413; more than the budget has left: 503), but it takes nothing from the budget: a client that
//! declares 25 MiB and sends nothing holds nothing. The budget is charged as the buffer grows,
//! for the buffer's exact capacity, and given back when the handler has dropped the last
//! reference to the bytes. Webhooks and the scheduler API have separate budgets, so floods on one
//! route group cannot turn the other away.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody as _};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt as _;
use tokio::time::Instant;

use crate::limits::{ServeLimits, API_BODY_BUDGET, BODY_RATE_WINDOW, MIN_BODY_BYTES_PER_WINDOW};

/// The bytes of request bodies one route group may hold at once, shared by every connection.
pub(crate) struct BodyBudget {
    cap: usize,
    used: Mutex<usize>,
}

/// A share of the [`BodyBudget`], given back when dropped.
pub(crate) struct Reservation {
    budget: Arc<BodyBudget>,
    bytes: usize,
}

impl BodyBudget {
    pub(crate) fn new(cap: usize) -> Arc<BodyBudget> {
        Arc::new(BodyBudget {
            cap,
            used: Mutex::new(0),
        })
    }

    /// `bytes` of the budget, or `None` when less than that is left.
    pub(crate) fn reserve(self: &Arc<Self>, bytes: usize) -> Option<Reservation> {
        let mut reservation = Reservation {
            budget: self.clone(),
            bytes: 0,
        };
        reservation.grow(bytes).then_some(reservation)
    }

    /// Bytes held now.
    fn used(&self) -> usize {
        *self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes not held now.
    fn free(&self) -> usize {
        self.cap.saturating_sub(self.used())
    }
}

impl Reservation {
    /// Takes `more` bytes of the budget for this reservation; false (and nothing taken) when less
    /// than that is left.
    fn grow(&mut self, more: usize) -> bool {
        let mut used = self.budget.used.lock().unwrap_or_else(|p| p.into_inner());
        match used.checked_add(more) {
            Some(total) if total <= self.budget.cap => {
                *used = total;
                self.bytes += more;
                true
            }
            _ => false,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut used = self.budget.used.lock().unwrap_or_else(|p| p.into_inner());
        *used = used.saturating_sub(self.bytes);
    }
}

/// The rules bounded routes share: a budget per route group, one timeout.
pub(crate) struct BodyRules {
    webhooks: Arc<BodyBudget>,
    api: Arc<BodyBudget>,
    timeout: Duration,
}

impl BodyRules {
    pub(crate) fn new(limits: &ServeLimits) -> Arc<BodyRules> {
        Arc::new(BodyRules {
            webhooks: BodyBudget::new(limits.body_budget),
            api: BodyBudget::new(API_BODY_BUDGET),
            timeout: limits.body_timeout,
        })
    }

    /// The state of [`buffer`] for the webhook route, whose bodies may hold at most `max` bytes.
    pub(crate) fn webhook(&self, max: usize) -> Bounded {
        self.route(&self.webhooks, max)
    }

    /// The state of [`buffer`] for a scheduler API route, whose bodies may hold at most `max`
    /// bytes.
    pub(crate) fn api(&self, max: usize) -> Bounded {
        self.route(&self.api, max)
    }

    fn route(&self, budget: &Arc<BodyBudget>, max: usize) -> Bounded {
        Bounded {
            budget: budget.clone(),
            timeout: self.timeout,
            max,
        }
    }
}

/// [`buffer`]'s state: the route group's budget, the timeout and this route's size cap.
#[derive(Clone)]
pub(crate) struct Bounded {
    budget: Arc<BodyBudget>,
    timeout: Duration,
    max: usize,
}

/// Why a body was not read to its end. A refused response carries it as an extension, so an outer
/// layer can count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyRefusal {
    /// Declared or found larger than the route's cap (413).
    TooLarge {
        /// The cap.
        max: usize,
    },
    /// The body budget cannot hold it now (503, `Retry-After: 1`).
    Busy,
    /// Not all sent within the body timeout (408).
    TimedOut,
    /// Less than [`MIN_BODY_BYTES_PER_WINDOW`] arrived in a [`BODY_RATE_WINDOW`] (408).
    TooSlow,
    /// The client broke the body off, or it was malformed (400).
    Broken,
}

impl BodyRefusal {
    fn status(self) -> StatusCode {
        match self {
            BodyRefusal::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BodyRefusal::Busy => StatusCode::SERVICE_UNAVAILABLE,
            BodyRefusal::TimedOut | BodyRefusal::TooSlow => StatusCode::REQUEST_TIMEOUT,
            BodyRefusal::Broken => StatusCode::BAD_REQUEST,
        }
    }

    fn message(self) -> String {
        match self {
            BodyRefusal::TooLarge { max } => {
                format!("request body is larger than the {max} bytes this endpoint takes")
            }
            BodyRefusal::Busy => {
                "the hub is holding as many request bodies as it may; retry shortly".to_owned()
            }
            BodyRefusal::TimedOut => "request body was not sent in time".to_owned(),
            BodyRefusal::TooSlow => format!(
                "request body arrived slower than {} bytes in {} seconds",
                MIN_BODY_BYTES_PER_WINDOW,
                BODY_RATE_WINDOW.as_secs()
            ),
            BodyRefusal::Broken => "request body could not be read".to_owned(),
        }
    }
}

impl IntoResponse for BodyRefusal {
    fn into_response(self) -> Response {
        let mut response = closing_answer(self.status(), &self.message());
        if self == BodyRefusal::Busy {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response.extensions_mut().insert(self);
        response
    }
}

/// An error answer (`{"message": ...}`, the shape of every hub error) that also closes the
/// connection, for refusals made before the request body was read.
pub(crate) fn closing_answer(status: StatusCode, message: &str) -> Response {
    let mut response = (status, Json(serde_json::json!({ "message": message }))).into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Route middleware: reads the body within the route's cap, the budget, the timeout and the
/// minimum rate, then runs the handler with the body in memory. The budget share goes with the
/// bytes: it is given back when the last reference to them is dropped (a long-poll that drops
/// its request body does not hold its share while it waits).
pub(crate) async fn buffer(State(route): State<Bounded>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    match read(&route, body).await {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(refusal) => {
            tracing::debug!(?refusal, path = %parts.uri.path(), "request body refused");
            refusal.into_response()
        }
    }
}

/// The smallest buffer a body gets once its first bytes arrive (less if it declared less).
const FIRST_CAPACITY: usize = 8 * 1024;

/// A body's bytes as they arrive, in a buffer whose capacity is exactly its share of the budget.
struct Held {
    bytes: Vec<u8>,
    share: Reservation,
}

impl Held {
    /// Appends `chunk`, growing the buffer when it is full to the next power of two (so less
    /// than twice the bytes), but never past `limit`, the declared length or the route's cap.
    /// Growing by a factor keeps the copies few; `reserve_exact` keeps the capacity what the
    /// budget was charged.
    fn push(&mut self, chunk: &[u8], limit: usize) -> Result<(), BodyRefusal> {
        let needed = self.bytes.len().saturating_add(chunk.len());
        if needed > self.share.bytes {
            let capacity = needed
                .checked_next_power_of_two()
                .unwrap_or(needed)
                .max(FIRST_CAPACITY)
                .min(limit)
                .max(needed);
            if !self.share.grow(capacity - self.share.bytes) {
                return Err(BodyRefusal::Busy);
            }
            self.bytes.reserve_exact(capacity - self.bytes.len());
        }
        self.bytes.extend_from_slice(chunk);
        Ok(())
    }
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

async fn read(route: &Bounded, body: Body) -> Result<Bytes, BodyRefusal> {
    let too_large = BodyRefusal::TooLarge { max: route.max };
    // hyper gives the exact size from `Content-Length` and enforces it as the framing.
    let declared = body
        .size_hint()
        .exact()
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    if declared.is_some_and(|n| n > route.max) {
        return Err(too_large);
    }
    // Refused at once when it could not fit now, but nothing is taken on the client's word.
    if declared.is_some_and(|n| n > route.budget.free()) {
        return Err(BodyRefusal::Busy);
    }
    let limit = declared.unwrap_or(route.max);
    let mut held = Held {
        bytes: Vec::new(),
        share: route.budget.reserve(0).ok_or(BodyRefusal::Busy)?,
    };
    let mut chunks = body.into_data_stream();
    let started = Instant::now();
    let give_up = started + route.timeout;
    let mut window_ends = started + BODY_RATE_WINDOW;
    let mut in_window = 0usize;
    loop {
        if Instant::now() >= window_ends {
            if in_window < MIN_BODY_BYTES_PER_WINDOW {
                return Err(BodyRefusal::TooSlow);
            }
            in_window = 0;
            window_ends += BODY_RATE_WINDOW;
        }
        let next = match tokio::time::timeout_at(window_ends.min(give_up), chunks.next()).await {
            Ok(next) => next,
            Err(_) if Instant::now() >= give_up => return Err(BodyRefusal::TimedOut),
            Err(_) => continue,
        };
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|_| BodyRefusal::Broken)?;
        if held.bytes.len().saturating_add(chunk.len()) > route.max {
            return Err(too_large);
        }
        held.push(&chunk, limit)?;
        in_window = in_window.saturating_add(chunk.len());
    }
    Ok(Bytes::from_owner(held))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_reservations_grow_and_give_back() {
        let budget = BodyBudget::new(100);
        let mut a = budget.reserve(60).unwrap();
        assert!(budget.reserve(41).is_none(), "would go past the cap");
        assert!(!a.grow(41));
        assert!(a.grow(40));
        assert_eq!(budget.used(), 100);
        assert!(budget.reserve(1).is_none());
        drop(a);
        assert_eq!(budget.used(), 0);
        let b = budget.reserve(100).unwrap();
        assert!(budget.reserve(usize::MAX).is_none(), "no overflow");
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    fn route(budget: usize, max: usize, timeout: Duration) -> Bounded {
        BodyRules::new(&ServeLimits {
            body_budget: budget,
            body_timeout: timeout,
            ..ServeLimits::default()
        })
        .webhook(max)
    }

    fn chunked(parts: &[&'static [u8]]) -> Body {
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        Body::from_stream(futures_util::stream::iter(chunks))
    }

    /// A body that declares `len` bytes, sends `chunks`, then ends (`ends`) or stalls.
    struct Declared {
        len: u64,
        chunks: std::collections::VecDeque<Bytes>,
        ends: bool,
    }

    impl hyper::body::Body for Declared {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
            match self.chunks.pop_front() {
                Some(chunk) => std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(chunk)))),
                None if self.ends => std::task::Poll::Ready(None),
                None => std::task::Poll::Pending,
            }
        }

        fn size_hint(&self) -> hyper::body::SizeHint {
            hyper::body::SizeHint::with_exact(self.len)
        }
    }

    fn declared(len: u64, chunks: Vec<Bytes>, ends: bool) -> Body {
        Body::new(Declared {
            len,
            chunks: chunks.into(),
            ends,
        })
    }

    #[tokio::test]
    async fn reads_what_fits_and_holds_its_share_until_the_bytes_are_dropped() {
        let route = route(64, 10, Duration::from_secs(30));
        let bytes = read(&route, chunked(&[b"abc", b"defg"])).await.unwrap();
        assert_eq!(&bytes[..], b"abcdefg");
        assert_eq!(route.budget.used(), 10, "no length: a buffer of the cap");
        let part = bytes.slice(1..3);
        drop(bytes);
        assert_eq!(route.budget.used(), 10, "a slice still holds the bytes");
        drop(part);
        assert_eq!(route.budget.used(), 0);
        let bytes = read(&route, Body::from("012345678")).await.unwrap();
        assert_eq!(bytes.len(), 9);
        assert_eq!(route.budget.used(), 9, "a declared length: exactly that");
    }

    #[tokio::test]
    async fn the_buffer_grows_by_doubling_but_never_past_the_declared_length() {
        let chunk = Bytes::from(vec![7u8; 5000]);
        let route = route(1 << 20, 1 << 20, Duration::from_secs(30));
        let bytes = read(&route, declared(50_000, vec![chunk.clone(); 10], true))
            .await
            .unwrap();
        assert_eq!(bytes.len(), 50_000);
        assert_eq!(
            route.budget.used(),
            50_000,
            "8, 16, 32 KiB, then exactly 50,000"
        );
        drop(bytes);
        let unannounced = Body::from_stream(futures_util::stream::iter(
            (0..10).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
        ));
        let _bytes = read(&route, unannounced).await.unwrap();
        assert_eq!(route.budget.used(), 64 * 1024, "no length: a power of two");
    }

    #[tokio::test]
    async fn refuses_bodies_past_the_cap_or_the_budget() {
        let route = route(12, 10, Duration::from_secs(30));
        assert_eq!(
            read(&route, Body::from("01234567890")).await.err(),
            Some(BodyRefusal::TooLarge { max: 10 }),
            "declared length over the cap"
        );
        assert_eq!(
            read(&route, chunked(&[b"012345", b"67890"])).await.err(),
            Some(BodyRefusal::TooLarge { max: 10 }),
            "counted length over the cap"
        );
        let held = read(&route, Body::from("0123456")).await.unwrap();
        assert_eq!(
            read(&route, Body::from("01234567")).await.err(),
            Some(BodyRefusal::Busy),
            "declared length over what is left"
        );
        assert_eq!(
            read(&route, chunked(&[b"0123", b"4567"])).await.err(),
            Some(BodyRefusal::Busy),
            "an unannounced body takes its share as it grows"
        );
        assert_eq!(route.budget.used(), 7, "refused reads hold nothing");
        drop(held);
    }

    #[tokio::test(start_paused = true)]
    async fn a_declared_length_takes_nothing_until_its_bytes_arrive() {
        let route = route(100, 100, Duration::from_secs(30));
        let stalled = tokio::spawn({
            let route = route.clone();
            async move { read(&route, declared(100, vec![], false)).await.err() }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(route.budget.used(), 0);
        let other = read(&route, Body::from(vec![b'x'; 60])).await.unwrap();
        assert_eq!(other.len(), 60, "the whole budget was still there");
        drop(other);
        assert_eq!(stalled.await.unwrap(), Some(BodyRefusal::TooSlow));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_times_out() {
        let route = route(64, 10, Duration::from_secs(3));
        let stalled =
            futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"ab"))])
                .chain(futures_util::stream::pending());
        let refusal = read(&route, Body::from_stream(stalled)).await.err();
        assert_eq!(refusal, Some(BodyRefusal::TimedOut));
        assert_eq!(route.budget.used(), 0);
    }

    /// A body of `chunks` chunks of `size` bytes, one every `every`.
    fn dripping(size: usize, every: Duration, chunks: usize) -> Body {
        let stream = futures_util::stream::unfold(0, move |n| async move {
            if n == chunks {
                return None;
            }
            tokio::time::sleep(every).await;
            Some((
                Ok::<_, std::io::Error>(Bytes::from(vec![b'd'; size])),
                n + 1,
            ))
        });
        Body::from_stream(stream)
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_slower_than_the_minimum_rate_is_cut_after_a_window() {
        let route = route(1 << 20, 1 << 20, Duration::from_secs(600));
        let started = Instant::now();
        let slow = read(&route, dripping(1024, Duration::from_secs(1), 100)).await;
        assert_eq!(slow.err(), Some(BodyRefusal::TooSlow));
        assert_eq!(started.elapsed(), BODY_RATE_WINDOW);
        assert_eq!(route.budget.used(), 0);

        // Just fast enough, for longer than several windows.
        let per_second = MIN_BODY_BYTES_PER_WINDOW / BODY_RATE_WINDOW.as_secs() as usize;
        let steady = read(&route, dripping(per_second, Duration::from_secs(1), 17)).await;
        assert_eq!(steady.unwrap().len(), per_second * 17);
    }

    #[test]
    fn refusals_close_the_connection_and_busy_says_when_to_retry() {
        let busy = BodyRefusal::Busy.into_response();
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(busy.headers()[header::RETRY_AFTER], "1");
        assert_eq!(busy.headers()[header::CONNECTION], "close");
        assert_eq!(
            busy.extensions().get::<BodyRefusal>(),
            Some(&BodyRefusal::Busy)
        );
        let slow = BodyRefusal::TimedOut.into_response();
        assert_eq!(slow.status(), StatusCode::REQUEST_TIMEOUT);
        assert!(slow.headers().get(header::RETRY_AFTER).is_none());
    }
}
