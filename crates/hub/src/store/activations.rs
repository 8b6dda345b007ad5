//! The `activations` table: one row per license and server, holding the hash of the machine secret
//! handed out on activate, when the server activated and was last seen, whether it was revoked,
//! and the version the scheduler last said it runs. The rules that read these rows (expiry, revocation, one machine per server id) are in
//! `crate::activation`; this file stores and finds them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::sql::{args, Optional, Sql};

use super::writer::Durability;
use super::Store;
use crate::error::HubError;

/// One server's activation of a license, as activate records it.
pub(crate) struct Activation {
    pub license_id: String,
    pub server_id: String,
    /// The name the scheduler gave its machine, for operators.
    pub machine_name: String,
    /// Hex SHA-256 of the machine secret handed out; the secret itself is never stored.
    pub secret_sha256: String,
    /// The `client_version` of the request (untrusted text; empty when not given).
    pub client_version: String,
}

/// Bytes of a `client_version` kept: a version, not a document. A longer one is cut (at a
/// character boundary) rather than refused, since the version is only shown to operators and a
/// scheduler must not fail to activate over it.
pub(crate) const MAX_CLIENT_VERSION_BYTES: usize = 64;

fn kept_version(version: &str) -> &str {
    let mut end = version.len().min(MAX_CLIENT_VERSION_BYTES);
    while !version.is_char_boundary(end) {
        end -= 1;
    }
    &version[..end]
}

/// What an authentication needs to know of a stored activation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredActivation {
    pub secret_sha256: String,
    /// When the server activated or was last seen, whichever is later.
    pub seen_ms: i64,
    /// When it was revoked; 0 if it was not.
    pub revoked_ms: i64,
}

/// What activate did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activated {
    /// Recorded: a new activation, or the same machine again (its secret replaced).
    Done,
    /// Refused: the server id is held by a live activation with another machine name.
    OtherMachine,
}

/// One activation as `hub servers list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// The server id (a UUID).
    pub server_id: String,
    /// The machine name the server gave when it activated (untrusted text).
    pub machine_name: String,
    /// The license it activated.
    pub license_id: String,
    /// When it activated (ms since the Unix epoch).
    pub activated_ms: i64,
    /// When it last pulled or heartbeated (ms since the Unix epoch; at most a minute behind).
    pub last_seen_ms: i64,
    /// When it was revoked, if it was.
    pub revoked_ms: Option<i64>,
}

/// "Last seen" times noted by pulls and heartbeats and not written yet: a pull must not cost a
/// write, so they are written together by [`Store::flush_seen`] (once a minute).
#[derive(Debug, Default)]
pub(crate) struct Seen(Mutex<HashMap<(String, String), i64>>);

impl Seen {
    fn note(&self, license_id: &str, server_id: &str, now_ms: i64) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(&(license_id.to_owned(), server_id.to_owned())) {
            Some(seen) => *seen = (*seen).max(now_ms),
            None => {
                map.insert((license_id.to_owned(), server_id.to_owned()), now_ms);
            }
        }
    }

    fn take(&self) -> HashMap<(String, String), i64> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Store {
    /// Records an activation unless the server id is held by a live activation (not revoked,
    /// seen within `expiry`) of another machine name; the same machine again gets a new secret.
    pub fn activate(
        &self,
        activation: Activation,
        now_ms: i64,
        expiry: Duration,
    ) -> Result<Activated, HubError> {
        let expiry_ms = i64::try_from(expiry.as_millis()).unwrap_or(i64::MAX);
        self.write(move |tx| activate(tx, &activation, now_ms, expiry_ms))
    }

    /// The stored activation of this license and server, read now (never cached, so a revocation
    /// made by another process counts at the next call).
    pub fn activation(
        &self,
        license_id: &str,
        server_id: &str,
    ) -> Result<Option<StoredActivation>, HubError> {
        self.read(|db| {
            db.query_row(
                "SELECT secret_sha256,
                        CASE WHEN activated_ms > last_seen_ms THEN activated_ms ELSE last_seen_ms END,
                        revoked_ms
                 FROM activations WHERE license_id = ?1 AND server_id = ?2",
                args![license_id, server_id],
                |r| {
                    Ok(StoredActivation {
                        secret_sha256: r.get(0)?,
                        seen_ms: r.get(1)?,
                        revoked_ms: r.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(HubError::store("look up an activation"))
        })
    }

    /// Records the version a server gave on heartbeat, if it gave one and it differs from the
    /// stored one (a scheduler upgraded in place heartbeats with its new version). Returns whether
    /// it changed.
    pub fn note_version(
        &self,
        license_id: &str,
        server_id: &str,
        version: &str,
    ) -> Result<bool, HubError> {
        let version = kept_version(version);
        if version.is_empty() {
            return Ok(false);
        }
        let (license_id, server_id, version) = (
            license_id.to_owned(),
            server_id.to_owned(),
            version.to_owned(),
        );
        // Like "last seen", only shown to operators: no fsync of its own.
        self.writer.write(Durability::Revocable, move |tx| {
            tx.execute(
                "UPDATE activations SET client_version = ?3
                 WHERE license_id = ?1 AND server_id = ?2 AND client_version <> ?3",
                args![license_id, server_id, version],
            )
            .map(|changed| changed > 0)
            .map_err(HubError::store("record a server's version"))
        })
    }

    /// Notes that a server was seen now (in memory; see [`Seen`]).
    pub fn note_seen(&self, license_id: &str, server_id: &str, now_ms: i64) {
        self.seen.note(license_id, server_id, now_ms);
    }

    /// Writes the noted "last seen" times; returns how many activations it touched.
    pub fn flush_seen(&self) -> Result<usize, HubError> {
        let seen = self.seen.take();
        if seen.is_empty() {
            return Ok(0);
        }
        // A lost update only makes a server look a minute older: no fsync of its own.
        self.writer.write(Durability::Revocable, move |tx| {
            let mut stmt = tx
                .prepare_cached(
                    "UPDATE activations
                     SET last_seen_ms = CASE WHEN last_seen_ms > ?3 THEN last_seen_ms ELSE ?3 END
                     WHERE license_id = ?1 AND server_id = ?2",
                )
                .map_err(HubError::store("note when servers were seen"))?;
            let mut touched = 0;
            for ((license_id, server_id), at) in &seen {
                touched += stmt
                    .execute(args![license_id, server_id, at])
                    .map_err(HubError::store("note when servers were seen"))?;
            }
            Ok(touched)
        })
    }

    /// Every activation, most recently seen first.
    pub fn servers(&self) -> Result<Vec<ServerInfo>, HubError> {
        self.read(|db| servers(db))
    }

    /// Revokes every activation of `server_id` not revoked yet; returns how many activations the
    /// server has (0: unknown server) and how many this call revoked.
    pub fn revoke_server(&self, server_id: &str, now_ms: i64) -> Result<(usize, usize), HubError> {
        let server_id = server_id.to_owned();
        self.write(move |tx| {
            let known: i64 = tx
                .query_row(
                    "SELECT COUNT(*) FROM activations WHERE server_id = ?1",
                    args![&server_id],
                    |r| r.get(0),
                )
                .map_err(HubError::store("look up a server"))?;
            let revoked = tx
                .execute(
                    "UPDATE activations SET revoked_ms = ?2 WHERE server_id = ?1 AND revoked_ms = 0",
                    args![server_id, now_ms.max(1)],
                )
                .map_err(HubError::store("revoke a server"))?;
            Ok((usize::try_from(known).unwrap_or(0), revoked))
        })
    }
}

fn activate(
    tx: &dyn Sql,
    a: &Activation,
    now_ms: i64,
    expiry_ms: i64,
) -> Result<Activated, HubError> {
    let held_elsewhere: bool = tx
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM activations
                 WHERE server_id = ?1 AND machine_name <> ?2 AND revoked_ms = 0
                   AND CASE WHEN activated_ms > last_seen_ms THEN activated_ms
                            ELSE last_seen_ms END > ?3)",
            args![
                a.server_id,
                a.machine_name,
                now_ms.saturating_sub(expiry_ms)
            ],
            |r| r.get(0),
        )
        .map_err(HubError::store("look up a server's activations"))?;
    if held_elsewhere {
        return Ok(Activated::OtherMachine);
    }
    tx.execute(
        "INSERT INTO activations (license_id, server_id, machine_name, secret_sha256, activated_ms,
                                  last_seen_ms, revoked_ms, client_version)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5, 0, ?6)
         ON CONFLICT (license_id, server_id) DO UPDATE SET
             machine_name = excluded.machine_name, secret_sha256 = excluded.secret_sha256,
             activated_ms = excluded.activated_ms, last_seen_ms = excluded.last_seen_ms,
             revoked_ms = 0, client_version = excluded.client_version",
        args![
            a.license_id,
            a.server_id,
            a.machine_name,
            a.secret_sha256,
            now_ms,
            kept_version(&a.client_version)
        ],
    )
    .map_err(HubError::store("record an activation"))?;
    Ok(Activated::Done)
}

/// Every activated server, most recently seen first (the `servers` list of [`Store::servers`]),
/// over any connection: the web pages read through their own.
pub(crate) fn servers(conn: &dyn Sql) -> Result<Vec<ServerInfo>, HubError> {
    let mut stmt = conn
        .prepare(
            "SELECT server_id, machine_name, license_id, activated_ms,
                    CASE WHEN activated_ms > last_seen_ms THEN activated_ms
                         ELSE last_seen_ms END AS seen_ms,
                    revoked_ms
             FROM activations ORDER BY seen_ms DESC, server_id",
        )
        .map_err(HubError::store("list servers"))?;
    let rows = stmt
        .query_map(args![], |r| {
            let revoked_ms: i64 = r.get(5)?;
            Ok(ServerInfo {
                server_id: r.get(0)?,
                machine_name: r.get(1)?,
                license_id: r.get(2)?,
                activated_ms: r.get(3)?,
                last_seen_ms: r.get(4)?,
                revoked_ms: (revoked_ms != 0).then_some(revoked_ms),
            })
        })
        .map_err(HubError::store("list servers"))?;
    rows.collect::<Result<_, _>>()
        .map_err(HubError::store("list servers"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 24 * 3600 * 1000;
    const EXPIRY: Duration = Duration::from_secs(30 * 24 * 3600);

    fn act(license: &str, server: &str, machine: &str, secret: &str) -> Activation {
        Activation {
            license_id: license.into(),
            server_id: server.into(),
            machine_name: machine.into(),
            secret_sha256: secret.into(),
            client_version: String::new(),
        }
    }

    fn version(s: &Store, server: &str) -> String {
        s.db(|db| {
            db.query_row(
                "SELECT client_version FROM activations WHERE server_id = ?1",
                args![server],
                |r| r.get(0),
            )
        })
        .unwrap()
    }

    #[test]
    fn the_version_is_kept_at_activation_and_refreshed_by_heartbeats() {
        let (_held, s) = crate::store::testing::test_store();
        let with_version = |v: &str| Activation {
            client_version: v.into(),
            ..act("l", "s1", "box", "h")
        };
        s.activate(with_version("1.0.0"), 100, EXPIRY).unwrap();
        assert_eq!(version(&s, "s1"), "1.0.0");
        assert!(s.note_version("l", "s1", "1.1.0").unwrap());
        assert_eq!(version(&s, "s1"), "1.1.0");
        assert!(!s.note_version("l", "s1", "1.1.0").unwrap(), "the same");
        assert!(!s.note_version("l", "s1", "").unwrap(), "none given");
        assert_eq!(version(&s, "s1"), "1.1.0");
        assert!(!s.note_version("l", "unknown", "2.0.0").unwrap());
        // Activating again replaces it, even with none.
        s.activate(with_version(""), 200, EXPIRY).unwrap();
        assert_eq!(version(&s, "s1"), "");
        // A long one is cut at a character boundary.
        let long = format!("1{}", "é".repeat(40));
        s.activate(with_version(&long), 300, EXPIRY).unwrap();
        let kept = version(&s, "s1");
        assert!(long.starts_with(&kept), "{kept}");
        assert_eq!(kept.len(), MAX_CLIENT_VERSION_BYTES - 1, "{kept}");
    }

    #[test]
    fn a_server_id_stays_with_its_machine_until_revoked_or_expired() {
        let (_held, s) = crate::store::testing::test_store();
        let t0 = 1000 * DAY;
        assert_eq!(
            s.activate(act("l", "s1", "box", "h1"), t0, EXPIRY).unwrap(),
            Activated::Done
        );
        // The same machine again: a new secret.
        assert_eq!(
            s.activate(act("l", "s1", "box", "h2"), t0 + 1, EXPIRY)
                .unwrap(),
            Activated::Done
        );
        // Another machine, even under another license: refused, nothing changes.
        for license in ["l", "m"] {
            let other = act(license, "s1", "intruder", "h3");
            assert_eq!(
                s.activate(other, t0 + 2, EXPIRY).unwrap(),
                Activated::OtherMachine
            );
        }
        let stored = s.activation("l", "s1").unwrap().unwrap();
        assert_eq!(
            (stored.secret_sha256.as_str(), stored.revoked_ms),
            ("h2", 0)
        );
        assert_eq!(s.activation("m", "s1").unwrap(), None);
        // Revoked: the id is free again, and activating clears the revocation.
        assert_eq!(s.revoke_server("s1", t0 + 3).unwrap(), (1, 1));
        assert_eq!(
            s.revoke_server("s1", t0 + 4).unwrap(),
            (1, 0),
            "already revoked"
        );
        assert_eq!(s.activation("l", "s1").unwrap().unwrap().revoked_ms, t0 + 3);
        assert_eq!(s.revoke_server("nobody", t0).unwrap(), (0, 0));
        assert_eq!(
            s.activate(act("l", "s1", "new-box", "h4"), t0 + 5, EXPIRY)
                .unwrap(),
            Activated::Done
        );
        assert_eq!(s.activation("l", "s1").unwrap().unwrap().revoked_ms, 0);
        // Not seen for longer than the expiry: free too.
        let later = t0 + 5 + 31 * DAY;
        assert_eq!(
            s.activate(act("l", "s1", "third-box", "h5"), later, EXPIRY)
                .unwrap(),
            Activated::Done
        );
    }

    #[test]
    fn seen_times_are_kept_in_memory_and_written_together() {
        let (_held, s) = crate::store::testing::test_store();
        s.activate(act("l", "s1", "box", "h"), 100, EXPIRY).unwrap();
        s.note_seen("l", "s1", 500);
        s.note_seen("l", "s1", 400);
        s.note_seen("l", "unknown", 500);
        assert_eq!(
            s.activation("l", "s1").unwrap().unwrap().seen_ms,
            100,
            "not written yet"
        );
        assert_eq!(s.flush_seen().unwrap(), 1);
        assert_eq!(
            s.activation("l", "s1").unwrap().unwrap().seen_ms,
            500,
            "the latest"
        );
        assert_eq!(s.flush_seen().unwrap(), 0, "nothing new");
        let listed = s.servers().unwrap();
        assert_eq!(
            listed,
            [ServerInfo {
                server_id: "s1".into(),
                machine_name: "box".into(),
                license_id: "l".into(),
                activated_ms: 100,
                last_seen_ms: 500,
                revoked_ms: None,
            }]
        );
    }
}
