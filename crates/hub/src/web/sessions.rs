//! Browser sessions of the web pages: random ids handed out as a cookie by `GET /login`, kept in
//! memory only by their SHA-256 (a restart logs everyone out, which costs a click on the login
//! link; a stolen copy of the hub's memory or store holds no usable cookie).

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// How long a session lasts from its login.
pub(crate) const SESSION_TTL_MS: i64 = 7 * 24 * 3600 * 1000;

/// Sessions kept at most; a login past it drops the one that would expire first, so a script
/// that logs in in a loop cannot grow the hub's memory.
const MAX_SESSIONS: usize = 10_000;

/// The live sessions, by the digest of their id, with their expiry (ms since the Unix epoch).
#[derive(Default)]
pub(crate) struct Sessions {
    live: Mutex<HashMap<[u8; 32], i64>>,
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// Starts a session at `now_ms`; returns its id (64 hex digits from the OS's random source).
    pub(crate) fn start(&self, now_ms: i64) -> String {
        let id = dispatch_util::hex(&rand::random::<[u8; 32]>());
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.retain(|_, expires| *expires > now_ms);
        if live.len() >= MAX_SESSIONS {
            if let Some(first) = live.iter().min_by_key(|(_, e)| **e).map(|(k, _)| *k) {
                live.remove(&first);
            }
        }
        live.insert(digest(&id), now_ms + SESSION_TTL_MS);
        id
    }

    /// Whether `id` names a session that has not expired at `now_ms`.
    pub(crate) fn valid(&self, id: &str, now_ms: i64) -> bool {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.get(&digest(id)).is_some_and(|e| *e > now_ms)
    }

    /// Ends the session `id`, if there is one.
    pub(crate) fn end(&self, id: &str) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.remove(&digest(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_lives_until_it_expires_or_ends() {
        let sessions = Sessions::default();
        let id = sessions.start(1_000);
        assert_eq!(id.len(), 64);
        assert!(sessions.valid(&id, 1_001));
        assert!(!sessions.valid(&id, 1_000 + SESSION_TTL_MS));
        assert!(!sessions.valid("not-a-session", 1_001));
        let other = sessions.start(1_000);
        assert_ne!(id, other);
        sessions.end(&other);
        assert!(!sessions.valid(&other, 1_001));
    }

    #[test]
    fn logins_past_the_cap_drop_the_oldest_session() {
        let sessions = Sessions::default();
        let first = sessions.start(0);
        for i in 1..MAX_SESSIONS as i64 {
            sessions.start(i);
        }
        assert!(sessions.valid(&first, 1));
        let last = sessions.start(MAX_SESSIONS as i64);
        assert!(!sessions.valid(&first, 1), "the soonest to expire went");
        assert!(sessions.valid(&last, 1));
        assert_eq!(sessions.live.lock().unwrap().len(), MAX_SESSIONS);
    }
}
