//! A brake on guessing the `ui_token`: each client address may get it wrong
//! [`MAX_FAILURES`] times per [`WINDOW_MS`]; past that, its login attempts and bearer requests
//! are answered 429 without looking at the token until the window ends. A right token is never
//! delayed while the address is under the limit, so a guesser elsewhere locks nobody out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Wrong tokens one address may send per window.
pub(crate) const MAX_FAILURES: u32 = 10;

/// The window of [`MAX_FAILURES`], in ms.
pub(crate) const WINDOW_MS: i64 = 60_000;

/// Addresses tracked at once. When that many are in their window, a new one is refused too:
/// the table stays small however many addresses a guesser has.
const MAX_ADDRESSES: usize = 10_000;

/// Failed attempts per client address: (failures, when its window started).
#[derive(Default)]
pub(crate) struct LoginGuard(Mutex<HashMap<IpAddr, (u32, i64)>>);

impl LoginGuard {
    /// Whether `peer` may try a token now.
    pub(crate) fn allows(&self, peer: IpAddr, now_ms: i64) -> bool {
        let failures = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match failures.get(&peer) {
            Some(&(count, since)) if now_ms.saturating_sub(since) < WINDOW_MS => {
                count < MAX_FAILURES
            }
            Some(_) => true,
            None => {
                failures.len() < MAX_ADDRESSES
                    || failures
                        .values()
                        .any(|(_, since)| now_ms.saturating_sub(*since) >= WINDOW_MS)
            }
        }
    }

    /// Notes a wrong token from `peer`.
    pub(crate) fn failed(&self, peer: IpAddr, now_ms: i64) {
        let mut failures = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if failures.len() >= MAX_ADDRESSES && !failures.contains_key(&peer) {
            failures.retain(|_, (_, since)| now_ms.saturating_sub(*since) < WINDOW_MS);
            if failures.len() >= MAX_ADDRESSES {
                return;
            }
        }
        let entry = failures.entry(peer).or_insert((0, now_ms));
        if now_ms.saturating_sub(entry.1) >= WINDOW_MS {
            *entry = (0, now_ms);
        }
        entry.0 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_stopped_after_its_failures_until_the_window_ends() {
        let guard = LoginGuard::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "::1".parse().unwrap());
        for _ in 0..MAX_FAILURES {
            assert!(guard.allows(a, 100));
            guard.failed(a, 100);
        }
        assert!(!guard.allows(a, 100));
        assert!(!guard.allows(a, 99 + WINDOW_MS));
        assert!(guard.allows(b, 100), "another address is not affected");
        assert!(guard.allows(a, 100 + WINDOW_MS));
        guard.failed(a, 100 + WINDOW_MS);
        assert!(
            guard.allows(a, 100 + WINDOW_MS),
            "a new window counts from 0"
        );
    }
}
