//! Request bodies read in a bounded way, before a handler sees them.
//!
//! [`buffer`] is a route middleware: it reads the whole body within the route's size cap and the
//! body timeout, holding a share of one [`BodyBudget`] for every byte, and hands the handler a
//! body that is already in memory. What it refuses, it refuses with `Connection: close`: the
//! client is cut off instead of left streaming into a connection nobody reads.
//!
//! A declared `Content-Length` is checked (size cap, budget) before any byte of the body is read,
//! but never trusted alone: the bytes are counted as they arrive, and a body without a length
//! reserves its share of the budget as it grows.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody as _};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt as _;

use crate::limits::ServeLimits;

/// The bytes of request bodies the hub may hold at once, shared by every connection.
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
    #[cfg(test)]
    fn used(&self) -> usize {
        *self.used.lock().unwrap_or_else(|p| p.into_inner())
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

/// The rules every bounded route shares: one budget, one timeout.
pub(crate) struct BodyRules {
    budget: Arc<BodyBudget>,
    timeout: Duration,
}

impl BodyRules {
    pub(crate) fn new(limits: &ServeLimits) -> Arc<BodyRules> {
        Arc::new(BodyRules {
            budget: BodyBudget::new(limits.body_budget),
            timeout: limits.body_timeout,
        })
    }

    /// The state of [`buffer`] for a route whose bodies may hold at most `max` bytes.
    pub(crate) fn route(self: &Arc<Self>, max: usize) -> Bounded {
        Bounded {
            rules: self.clone(),
            max,
        }
    }
}

/// [`buffer`]'s state: the shared rules and this route's size cap.
#[derive(Clone)]
pub(crate) struct Bounded {
    rules: Arc<BodyRules>,
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
    /// The client broke the body off, or it was malformed (400).
    Broken,
}

impl BodyRefusal {
    fn status(self) -> StatusCode {
        match self {
            BodyRefusal::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BodyRefusal::Busy => StatusCode::SERVICE_UNAVAILABLE,
            BodyRefusal::TimedOut => StatusCode::REQUEST_TIMEOUT,
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

/// Route middleware: reads the body within the route's cap, the budget and the timeout, then
/// runs the handler with the body in memory. The budget share is held until the handler is done,
/// since the handler still holds the bytes.
pub(crate) async fn buffer(State(route): State<Bounded>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    match read(&route, body).await {
        Ok((bytes, reservation)) => {
            let response = next
                .run(Request::from_parts(parts, Body::from(bytes)))
                .await;
            drop(reservation);
            response
        }
        Err(refusal) => {
            tracing::debug!(?refusal, path = %parts.uri.path(), "request body refused");
            refusal.into_response()
        }
    }
}

async fn read(route: &Bounded, body: Body) -> Result<(Bytes, Reservation), BodyRefusal> {
    let too_large = BodyRefusal::TooLarge { max: route.max };
    // hyper gives the exact size from `Content-Length` and enforces it as the framing.
    let declared = body
        .size_hint()
        .exact()
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    if declared.is_some_and(|n| n > route.max) {
        return Err(too_large);
    }
    let mut reservation = route
        .rules
        .budget
        .reserve(declared.unwrap_or(0))
        .ok_or(BodyRefusal::Busy)?;
    // Capacity is only address space until written, and the budget already counts it.
    let mut bytes: Vec<u8> = Vec::with_capacity(declared.unwrap_or(0));
    let mut chunks = body.into_data_stream();
    let reading = async {
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|_| BodyRefusal::Broken)?;
            let total = bytes.len().saturating_add(chunk.len());
            if total > route.max {
                return Err(too_large);
            }
            if total > reservation.bytes && !reservation.grow(total - reservation.bytes) {
                return Err(BodyRefusal::Busy);
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(())
    };
    tokio::time::timeout(route.rules.timeout, reading)
        .await
        .map_err(|_| BodyRefusal::TimedOut)??;
    Ok((Bytes::from(bytes), reservation))
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

    fn route(budget: usize, max: usize) -> Bounded {
        BodyRules::new(&ServeLimits {
            body_budget: budget,
            body_timeout: Duration::from_secs(5),
            ..ServeLimits::default()
        })
        .route(max)
    }

    fn chunked(parts: &[&'static [u8]]) -> Body {
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        Body::from_stream(futures_util::stream::iter(chunks))
    }

    #[tokio::test]
    async fn reads_what_fits_and_holds_its_share_until_dropped() {
        let route = route(64, 10);
        let (bytes, held) = read(&route, chunked(&[b"abc", b"defg"])).await.unwrap();
        assert_eq!(&bytes[..], b"abcdefg");
        assert_eq!(route.rules.budget.used(), 7);
        drop(held);
        assert_eq!(route.rules.budget.used(), 0);
        let (bytes, _held) = read(&route, Body::from("0123456789")).await.unwrap();
        assert_eq!(bytes.len(), 10);
    }

    #[tokio::test]
    async fn refuses_bodies_past_the_cap_or_the_budget() {
        let route = route(12, 10);
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
        let (_, held) = read(&route, Body::from("0123456")).await.unwrap();
        assert_eq!(
            read(&route, Body::from("01234567")).await.err(),
            Some(BodyRefusal::Busy),
            "declared length over what is left"
        );
        assert_eq!(
            read(&route, chunked(&[b"0123", b"4567"])).await.err(),
            Some(BodyRefusal::Busy),
            "an unannounced body reserves as it grows"
        );
        assert_eq!(route.rules.budget.used(), 7, "refused reads hold nothing");
        drop(held);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_times_out() {
        let route = route(64, 10);
        let stalled =
            futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"ab"))])
                .chain(futures_util::stream::pending());
        let refusal = read(&route, Body::from_stream(stalled)).await.err();
        assert_eq!(refusal, Some(BodyRefusal::TimedOut));
        assert_eq!(route.rules.budget.used(), 0);
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
