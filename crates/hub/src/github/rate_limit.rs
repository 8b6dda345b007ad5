//! Reading GitHub's "slow down" answers. GitHub limits each installation (and each token) on its
//! own, so a limit hit while reporting for one installation holds back only that installation.
//!
//! As GitHub documents it: a `403` or `429` with `Retry-After` means wait that long; with
//! `x-ratelimit-remaining: 0`, wait until `x-ratelimit-reset` (Unix seconds); a `429` with neither
//! (a secondary limit) means wait at least a minute.

use reqwest::header::HeaderMap;

/// How long to wait after a secondary rate limit that names no time.
pub(crate) const SECONDARY_LIMIT_WAIT_MS: i64 = 60_000;

/// Longest wait a rate-limit answer may impose, so a wild `Retry-After` cannot stall reporting for
/// days (GitHub's primary limits reset every hour).
pub(crate) const MAX_WAIT_MS: i64 = 3_600_000;

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// When the installation may be called again, if this answer is a rate limit; Unix ms.
pub(crate) fn limited_until(status: u16, headers: &HeaderMap, now_ms: i64) -> Option<i64> {
    if status != 403 && status != 429 {
        return None;
    }
    let until = if let Some(after) = header(headers, "retry-after") {
        match after.parse::<i64>() {
            Ok(secs) => now_ms + secs.max(0) * 1000,
            Err(_) => {
                let at = httpdate::parse_http_date(after).ok()?;
                let ms = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis();
                i64::try_from(ms).ok()?
            }
        }
    } else if header(headers, "x-ratelimit-remaining") == Some("0") {
        let reset: i64 = header(headers, "x-ratelimit-reset")?.parse().ok()?;
        // A second more: the reset time is rounded down to whole seconds.
        reset.saturating_mul(1000) + 1000
    } else if status == 429 {
        now_ms + SECONDARY_LIMIT_WAIT_MS
    } else {
        // A 403 without any of these is a permission answer, not a limit.
        return None;
    };
    Some(until.clamp(now_ms, now_ms + MAX_WAIT_MS))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn limit_answers() {
        let now = 1_000_000_000_000;
        let cases: Vec<(u16, HeaderMap, Option<i64>)> = vec![
            (403, headers(&[("retry-after", "30")]), Some(now + 30_000)),
            (429, headers(&[("retry-after", "5")]), Some(now + 5_000)),
            (
                403,
                headers(&[("retry-after", "Sun, 09 Sep 2001 01:47:00 GMT")]),
                Some(1_000_000_020_000),
            ),
            (
                403,
                headers(&[
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", "1000000100"),
                ]),
                Some(1_000_000_101_000),
            ),
            (
                403,
                headers(&[
                    ("x-ratelimit-remaining", "12"),
                    ("x-ratelimit-reset", "1000000100"),
                ]),
                None,
            ),
            (429, headers(&[]), Some(now + SECONDARY_LIMIT_WAIT_MS)),
            (403, headers(&[]), None),
            (500, headers(&[("retry-after", "30")]), None),
            (
                403,
                headers(&[("retry-after", "999999")]),
                Some(now + MAX_WAIT_MS),
            ),
            // A reset already past still waits no less than nothing.
            (
                403,
                headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "5")]),
                Some(now),
            ),
        ];
        for (i, (status, h, want)) in cases.into_iter().enumerate() {
            assert_eq!(limited_until(status, &h, now), want, "case {i}");
        }
    }
}
