//! The `activations` table: one row per license and server, holding the hash of the machine secret
//! handed out on activate.

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::HubError;

/// One server's activation of a license.
pub(crate) struct Activation {
    pub license_id: String,
    pub server_id: String,
    /// The name the scheduler gave its machine, for operators.
    pub machine_name: String,
    /// Hex SHA-256 of the machine secret handed out; the secret itself is never stored.
    pub secret_sha256: String,
}

/// Records an activation, replacing an earlier one of the same server.
pub(super) fn upsert(conn: &Connection, a: &Activation, now_ms: i64) -> Result<(), HubError> {
    conn.execute(
        "INSERT INTO activations (license_id, server_id, machine_name, secret_sha256, activated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (license_id, server_id) DO UPDATE SET
             machine_name = excluded.machine_name, secret_sha256 = excluded.secret_sha256,
             activated_ms = excluded.activated_ms",
        params![
            a.license_id,
            a.server_id,
            a.machine_name,
            a.secret_sha256,
            now_ms
        ],
    )
    .map_err(HubError::store("record an activation"))?;
    Ok(())
}

/// The stored secret hash of an activation.
pub(super) fn secret(
    conn: &Connection,
    license_id: &str,
    server_id: &str,
) -> Result<Option<String>, HubError> {
    conn.query_row(
        "SELECT secret_sha256 FROM activations WHERE license_id = ?1 AND server_id = ?2",
        [license_id, server_id],
        |r| r.get(0),
    )
    .optional()
    .map_err(HubError::store("look up an activation"))
}
