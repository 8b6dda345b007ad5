//! The `activations` table: one row per license and server, holding the hash of the machine secret
//! handed out on activate.

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::HubError;

/// Records an activation, replacing an earlier one of the same server.
pub(super) fn upsert(
    conn: &Connection,
    license_id: &str,
    server_id: &str,
    machine_name: &str,
    secret_sha256: &str,
    now_ms: i64,
) -> Result<(), HubError> {
    conn.execute(
        "INSERT INTO activations (license_id, server_id, machine_name, secret_sha256, activated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (license_id, server_id) DO UPDATE SET
             machine_name = excluded.machine_name, secret_sha256 = excluded.secret_sha256,
             activated_ms = excluded.activated_ms",
        params![license_id, server_id, machine_name, secret_sha256, now_ms],
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
