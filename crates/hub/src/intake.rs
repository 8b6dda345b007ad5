//! The webhook route's checks around its body: [`gate`] refuses, from the headers alone and before
//! a byte of the body is read, a delivery that cannot be valid (no signature, event or delivery
//! header; a content type GitHub does not send); [`payload_text`] takes the JSON out of a body
//! whose signature has been checked, as GitHub sends it in either content type.

use std::borrow::Cow;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use crate::body::{closing_answer, BodyRefusal};
use crate::metrics::{Metrics, WEBHOOKS};

/// How a delivery's body is encoded (the webhook's "Content type" setting on GitHub).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// `application/json`: the body is the payload.
    Json,
    /// `application/x-www-form-urlencoded`: the payload is the `payload` field.
    Form,
}

const FORM: &str = "application/x-www-form-urlencoded";

/// The encoding named by `Content-Type`. A delivery without one is read as JSON, as the hub did
/// before it looked at the header; `Err` holds the media type it does not take.
pub(crate) fn encoding(headers: &HeaderMap) -> Result<Encoding, String> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(Encoding::Json);
    };
    let text = value.to_str().unwrap_or_default();
    // Parameters (`; charset=utf-8`) do not change how the body is read.
    let media = text.split(';').next().unwrap_or_default().trim();
    if media.eq_ignore_ascii_case("application/json") {
        Ok(Encoding::Json)
    } else if media.eq_ignore_ascii_case(FORM) {
        Ok(Encoding::Form)
    } else {
        Err(media.chars().take(100).collect())
    }
}

fn present(headers: &HeaderMap, name: &str) -> bool {
    headers
        .get(name)
        .is_some_and(|v| !v.as_bytes().iter().all(u8::is_ascii_whitespace))
}

/// Why a delivery is refused from its headers alone: status, metrics label, message.
fn refusal(headers: &HeaderMap) -> Option<(StatusCode, &'static str, String)> {
    if !present(headers, "x-hub-signature-256") {
        return Some((
            StatusCode::UNAUTHORIZED,
            "bad_signature",
            "missing x-hub-signature-256 header".to_owned(),
        ));
    }
    let missing = |name: &str| {
        Some((
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("missing {name} header"),
        ))
    };
    if !present(headers, "x-github-event") {
        return missing("x-github-event");
    }
    // A ping is answered without being stored, so it needs no delivery id to deduplicate on.
    let ping = headers.get("x-github-event").is_some_and(|v| v == "ping");
    if !ping && !present(headers, "x-github-delivery") {
        return missing("x-github-delivery");
    }
    if let Err(media) = encoding(headers) {
        return Some((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "content type `{media}` is not taken; set the webhook's content type to \
                 application/json or {FORM}"
            ),
        ));
    }
    None
}

/// Route middleware in front of [`crate::body::buffer`] on the webhook route: refuses from the
/// headers, and counts the deliveries the body reader refuses (the handler counts the rest).
pub(crate) async fn gate(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some((status, label, message)) = refusal(request.headers()) {
        metrics.inc(WEBHOOKS, label);
        return closing_answer(status, &message);
    }
    let response = next.run(request).await;
    if let Some(refusal) = response.extensions().get::<BodyRefusal>() {
        let label = match refusal {
            BodyRefusal::TooLarge { .. } => "too_large",
            BodyRefusal::Busy => "busy",
            BodyRefusal::TimedOut => "timeout",
            BodyRefusal::TooSlow => "too_slow",
            BodyRefusal::Broken => "bad_request",
        };
        metrics.inc(WEBHOOKS, label);
    }
    response
}

/// The JSON text of a delivery: the body itself, or the `payload` field of a form-encoded body.
/// Call it only after the signature over the raw body has been checked.
pub(crate) fn payload_text<'a>(
    headers: &HeaderMap,
    body: &'a [u8],
) -> Result<Cow<'a, str>, &'static str> {
    match encoding(headers) {
        Ok(Encoding::Json) | Err(_) => std::str::from_utf8(body)
            .map(Cow::Borrowed)
            .map_err(|_| "body is not utf-8"),
        Ok(Encoding::Form) => {
            if std::str::from_utf8(body).is_err() {
                return Err("form body is not utf-8");
            }
            form_urlencoded::parse(body)
                .find(|(name, _)| name == "payload")
                .map(|(_, value)| Cow::Owned(value.into_owned()))
                .ok_or("form-encoded body has no `payload` field")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    const SIGNED: [(&str, &str); 3] = [
        ("x-hub-signature-256", "sha256=00"),
        ("x-github-event", "push"),
        ("x-github-delivery", "d1"),
    ];

    #[test]
    fn content_types_map_to_encodings() {
        let cases = [
            (Some("application/json"), Ok(Encoding::Json)),
            (Some("Application/JSON; charset=utf-8"), Ok(Encoding::Json)),
            (None, Ok(Encoding::Json)),
            (Some(FORM), Ok(Encoding::Form)),
            (
                Some("application/x-www-form-urlencoded;charset=UTF-8"),
                Ok(Encoding::Form),
            ),
            (Some("text/plain"), Err("text/plain".to_owned())),
            (Some(""), Err(String::new())),
        ];
        for (content_type, expected) in cases {
            let mut map = HeaderMap::new();
            if let Some(ct) = content_type {
                map.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            }
            assert_eq!(encoding(&map), expected, "{content_type:?}");
        }
    }

    #[test]
    fn headers_alone_refuse_what_cannot_be_valid() {
        assert_eq!(refusal(&headers(&SIGNED)), None);
        let status = |pairs: &[(&'static str, &'static str)]| refusal(&headers(pairs)).map(|r| r.0);
        assert_eq!(status(&SIGNED[1..]), Some(StatusCode::UNAUTHORIZED));
        assert_eq!(
            status(&[("x-hub-signature-256", " "), SIGNED[1], SIGNED[2]]),
            Some(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(
            status(&[SIGNED[0], SIGNED[2]]),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(status(&SIGNED[..2]), Some(StatusCode::BAD_REQUEST));
        assert_eq!(
            status(&[SIGNED[0], ("x-github-event", "ping")]),
            None,
            "a ping needs no delivery id"
        );
        let mut typed = SIGNED.to_vec();
        typed.push(("content-type", "text/xml"));
        let (code, label, message) = refusal(&headers(&typed)).unwrap();
        assert_eq!(
            (code, label),
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
        );
        assert!(
            message.contains("`text/xml`") && message.contains(FORM),
            "{message}"
        );
    }

    #[test]
    fn form_bodies_yield_their_payload_field() {
        let form = headers(&[("content-type", FORM)]);
        let body = b"payload=%7B%22a%22%3A%22b+c%26d%22%7D&other=1";
        assert_eq!(payload_text(&form, body).unwrap(), r#"{"a":"b c&d"}"#);
        assert!(payload_text(&form, b"other=1").is_err());
        assert!(payload_text(&form, b"payload=\xff").is_err());
        let json = headers(&[("content-type", "application/json")]);
        assert!(matches!(
            payload_text(&json, b"{\"x\":1}"),
            Ok(Cow::Borrowed("{\"x\":1}"))
        ));
        assert!(payload_text(&json, b"\xff").is_err());
    }
}
