//! Sorting GitHub's answers into what the reporter does next. The reasons never quote a response
//! body or a request header: GitHub echoes requests in some error bodies.

use reqwest::header::HeaderMap;

use super::rate_limit::limited_until;

/// The REST API version the hub's requests are written for.
pub(crate) const API_VERSION: &str = "2022-11-28";

/// Why a GitHub call did not succeed, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CallError {
    /// Worth trying again after the usual backoff (5xx, 408, a transport error, ...).
    Retry(String),
    /// GitHub asked this installation (or token) to wait until `until_ms` (Unix ms).
    RateLimited {
        /// When calls may resume.
        until_ms: i64,
        /// What GitHub answered.
        why: String,
    },
    /// Repeating the same call will not help (a 404, a 422, ...).
    Permanent(String),
}

#[cfg(test)]
impl CallError {
    /// The reason, for logs and the report's `last_error`.
    pub fn reason(&self) -> &str {
        match self {
            CallError::Retry(why) | CallError::Permanent(why) => why,
            CallError::RateLimited { why, .. } => why,
        }
    }
}

/// What a non-2xx answer means. `what` names the call ("create a check run", ...).
pub(crate) fn classify(status: u16, headers: &HeaderMap, now_ms: i64, what: &str) -> CallError {
    let why = format!("github answered {status} to `{what}`");
    if let Some(until_ms) = limited_until(status, headers, now_ms) {
        return CallError::RateLimited { until_ms, why };
    }
    // A 403 that is not a rate limit is usually a missing permission, which an admin may grant;
    // it is retried with backoff (as the token path always did) rather than dropped at once.
    if status >= 500 || matches!(status, 401 | 403 | 408 | 429) {
        CallError::Retry(why)
    } else {
        CallError::Permanent(why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        let h = HeaderMap::new();
        let retry = |s| matches!(classify(s, &h, 0, "x"), CallError::Retry(_));
        assert!(retry(500) && retry(502) && retry(403) && retry(408) && retry(401));
        assert!(matches!(classify(404, &h, 0, "x"), CallError::Permanent(_)));
        assert!(matches!(classify(422, &h, 0, "x"), CallError::Permanent(_)));
        assert!(matches!(
            classify(429, &h, 0, "x"),
            CallError::RateLimited {
                until_ms: 60_000,
                ..
            }
        ));
        assert_eq!(
            classify(404, &h, 0, "create a check run").reason(),
            "github answered 404 to `create a check run`"
        );
    }
}
