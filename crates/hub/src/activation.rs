//! Servers and their activations: the rules, and the `hub servers` commands' library side.
//!
//! - A server id is a UUID in canonical form (lowercase, hyphenated; any version but nil), the
//!   form the scheduler writes to its `server_id` file. Anything else is refused (400) before it
//!   reaches the store or a log line.
//! - A server id stays with the machine that activated it: activating it again with another
//!   `machine_name` is refused (409) while that activation is live; the same machine may
//!   activate again (its secret is replaced). A revoked or expired activation frees the id.
//! - `hub servers revoke <server-id>` revokes every activation of a server at once: the store is
//!   read on every authentication (no cache), so a hub that is running refuses the server's next
//!   call (401; a heartbeat gets 410, which the scheduler reads as "revoked").
//! - An activation not seen (pull, heartbeat, accept or finish) for `activation_expiry` expires:
//!   the server's calls get 401 until it activates again, which the scheduler does by itself.
//!   "Seen" is noted in memory and written once a minute, never once per pull.

use std::time::Duration;

use dispatch_protocol::Secret;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::HubConfig;
use crate::error::HubError;
use crate::store::{now_ms, Location, ServerInfo, Store, StoredActivation};

/// Longest `machine_name` accepted: a host name, not a document.
pub(crate) const MAX_MACHINE_NAME_BYTES: usize = 255;

/// Why a server id is refused, for the 400 answer.
pub(crate) const SERVER_ID_RULE: &str =
    "server_id must be a UUID in canonical form (lowercase, hyphenated, like 0190a000-0000-7000-8000-000000000001)";

/// Whether `id` is a server id: a non-nil UUID written the one canonical way, so one machine
/// cannot appear under two spellings.
pub(crate) fn is_server_id(id: &str) -> bool {
    id.len() == 36
        && uuid::Uuid::try_parse(id).is_ok_and(|u| !u.is_nil() && u.hyphenated().to_string() == id)
}

/// Hex SHA-256 of a machine secret, as the store keeps it.
pub(crate) fn secret_hash(secret: &Secret) -> String {
    dispatch_util::hex(&Sha256::digest(secret.expose().as_bytes()))
}

/// Where a presented machine credential stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Standing {
    /// A live activation with this secret.
    Active,
    /// No such activation, or another secret: nothing more is said.
    Unknown,
    /// The right secret of a revoked activation.
    Revoked,
    /// The right secret of an activation not seen for longer than the expiry.
    Expired,
}

/// Judges credentials against the stored activation. Revocation and expiry are told only to a
/// caller who holds the secret.
pub(crate) fn standing(
    stored: Option<&StoredActivation>,
    secret: &Secret,
    now_ms: i64,
    expiry: Duration,
) -> Standing {
    let Some(stored) = stored else {
        return Standing::Unknown;
    };
    let presented = secret_hash(secret);
    if !bool::from(stored.secret_sha256.as_bytes().ct_eq(presented.as_bytes())) {
        return Standing::Unknown;
    }
    let expiry_ms = i64::try_from(expiry.as_millis()).unwrap_or(i64::MAX);
    if stored.revoked_ms != 0 {
        Standing::Revoked
    } else if stored.seen_ms <= now_ms.saturating_sub(expiry_ms) {
        Standing::Expired
    } else {
        Standing::Active
    }
}

/// Opens the store of the hub whose data directory is `data_dir`, which must exist (a command
/// pointed at the wrong directory must not make an empty store there). With `store_url`, the
/// PostgreSQL database it names.
fn open_existing(cfg: &HubConfig) -> Result<Store, HubError> {
    let location = crate::store_location(cfg)?;
    if let Location::Sqlite(path) = &location {
        if !path.is_file() {
            return Err(HubError::NoStore { path: path.clone() });
        }
    }
    Store::open_at(&location)
}

/// Every activation in the hub's store (`data_dir`, or `store_url`), most recently seen first.
/// Safe while the hub runs.
pub fn list_servers(cfg: &HubConfig) -> Result<Vec<ServerInfo>, HubError> {
    open_existing(cfg)?.servers()
}

/// Revokes every activation of `server_id` in the hub's store (safe while the hub runs; it
/// refuses the server's next call). Returns how many activations this revoked (0 when all were
/// revoked already); an unknown server is an error.
pub fn revoke_server(cfg: &HubConfig, server_id: &str) -> Result<usize, HubError> {
    if !is_server_id(server_id) {
        return Err(HubError::setting(
            "the command line",
            "server-id",
            format!("{server_id:?} is not a server id (a lowercase hyphenated UUID)"),
        ));
    }
    let store = open_existing(cfg)?;
    match store.revoke_server(server_id, now_ms())? {
        (0, _) => Err(HubError::UnknownServer {
            server_id: server_id.to_owned(),
        }),
        (_, revoked) => Ok(revoked),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_ids_are_canonical_uuids() {
        for good in [
            "0190a000-0000-7000-8000-000000000001",
            "67e55044-10b1-426f-9247-bb680e5fe0c8",
            "00000000-0000-0000-0000-000000000001",
        ] {
            assert!(is_server_id(good), "{good}");
        }
        for bad in [
            "",
            "srv-1",
            "00000000-0000-0000-0000-000000000000",
            "67E55044-10B1-426F-9247-BB680E5FE0C8",
            "67e5504410b1426f9247bb680e5fe0c8",
            "{67e55044-10b1-426f-9247-bb680e5fe0c8}",
            "urn:uuid:67e55044-10b1-426f-9247-bb680e5fe0c8",
            " 67e55044-10b1-426f-9247-bb680e5fe0c8",
            "67e55044-10b1-426f-9247-bb680e5fe0c8\n",
            "67e55044-10b1-426f-9247-bb680e5fe0cg",
        ] {
            assert!(!is_server_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn standing_tells_revocation_and_expiry_only_to_the_secret_holder() {
        const DAY: i64 = 24 * 3600 * 1000;
        let expiry = Duration::from_secs(30 * 24 * 3600);
        let secret = Secret::new("s");
        let stored = |seen_ms, revoked_ms| StoredActivation {
            secret_sha256: secret_hash(&secret),
            seen_ms,
            revoked_ms,
        };
        let now = 100 * DAY;
        let cases = [
            (Some(stored(now - DAY, 0)), "s", Standing::Active),
            (Some(stored(now - 30 * DAY + 1, 0)), "s", Standing::Active),
            (Some(stored(now - 30 * DAY, 0)), "s", Standing::Expired),
            (Some(stored(now, now)), "s", Standing::Revoked),
            (Some(stored(now, now)), "wrong", Standing::Unknown),
            (Some(stored(now - 40 * DAY, 0)), "wrong", Standing::Unknown),
            (None, "s", Standing::Unknown),
        ];
        for (stored, presented, want) in cases {
            let got = standing(stored.as_ref(), &Secret::new(presented), now, expiry);
            assert_eq!(got, want, "{stored:?} {presented}");
        }
    }
}
