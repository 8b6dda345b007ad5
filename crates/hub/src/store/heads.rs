//! The `pr_heads` and `own_heads` tables: what deliveries showed about heads, whatever was decided
//! about them (`docs/security.md`, "Who may trigger").
//!
//! - `pr_heads`: the latest head of each pull request, fork or not, ordered by the events' own
//!   times (`pull_request.updated_at`), not by arrival: a delivery that comes late does not
//!   replace a newer head. A bare `approve` dispatches only this head, and a comment command on a
//!   pull request runs it.
//! - `own_heads`: commits the repository itself holds (a push's `after`, the head of a pull
//!   request from the repository itself). A `check_run` on any other commit that names no pull
//!   request of the repository counts as fork code.
//!
//! Repository names are stored lowercase: GitHub compares them case-insensitively.

use super::sql::{args, Optional, Sql};

use super::rows::lookup;
use crate::error::HubError;
use crate::trust::{PrHead, Sighting};

/// Records what `seen` shows, at `now_ms` (also the event time of a head whose event gave none).
pub(super) fn record(tx: &dyn Sql, seen: &Sighting, now_ms: i64) -> Result<(), HubError> {
    let repository = seen.repository.to_lowercase();
    if let Some(head) = &seen.pr_head {
        // Equal times: the later arrival wins (GitHub's times are whole seconds).
        tx.execute(
            "INSERT INTO pr_heads (repository, pr_number, head_sha, fork, event_ms, recorded_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (repository, pr_number) DO UPDATE SET
                 head_sha = excluded.head_sha, fork = excluded.fork,
                 event_ms = excluded.event_ms, recorded_ms = excluded.recorded_ms
             WHERE excluded.event_ms >= pr_heads.event_ms",
            args![
                repository,
                head.number,
                head.sha.to_ascii_lowercase(),
                head.fork,
                head.event_ms.unwrap_or(now_ms),
                now_ms
            ],
        )
        .map_err(HubError::store("record a pull request head"))?;
    }
    if let Some(sha) = &seen.own_sha {
        tx.execute(
            "INSERT INTO own_heads (repository, head_sha, seen_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (repository, head_sha) DO UPDATE SET seen_ms = excluded.seen_ms",
            args![repository, sha.to_ascii_lowercase(), now_ms],
        )
        .map_err(HubError::store("record a commit of the repository"))?;
    }
    Ok(())
}

/// The latest head recorded for pull request `number` of `repository`.
pub(super) fn latest(
    conn: &dyn Sql,
    repository: &str,
    number: i64,
) -> Result<Option<PrHead>, HubError> {
    conn.query_row(
        "SELECT head_sha, fork, event_ms FROM pr_heads WHERE repository = ?1 AND pr_number = ?2",
        args![repository.to_lowercase(), number],
        |r| {
            Ok(PrHead {
                number,
                sha: r.get(0)?,
                fork: r.get(1)?,
                event_ms: Some(r.get(2)?),
            })
        },
    )
    .optional()
    .map_err(HubError::store("look up a pull request head"))
}

/// Whether `sha` is known as a commit of `repository` itself.
pub(super) fn is_own(conn: &dyn Sql, repository: &str, sha: &str) -> Result<bool, HubError> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM own_heads WHERE repository = ?1 AND head_sha = ?2)",
        args![repository.to_lowercase(), sha.to_ascii_lowercase()],
        |r| r.get(0),
    )
    .map_err(HubError::store("look up a commit of the repository"))
}

/// The fork pull request whose latest recorded head is `sha` (0: none).
pub(super) fn fork_pr_with_head(
    conn: &dyn Sql,
    repository: &str,
    sha: &str,
) -> Result<i64, HubError> {
    let pr: Option<i64> = lookup(
        conn,
        "SELECT pr_number FROM pr_heads WHERE repository = ?1 AND head_sha = ?2 AND fork <> 0
         ORDER BY event_ms DESC LIMIT 1",
        args![repository.to_lowercase(), sha.to_ascii_lowercase()],
        "look up a fork head",
    )?;
    Ok(pr.unwrap_or(0))
}

/// The tables, in SQL both backends take (PostgreSQL after [`super::schema_pg::portable`]). A
/// schema step of both runs it: change them only by a new step.
pub(super) const TABLES: &str = "
CREATE TABLE pr_heads (
    repository TEXT NOT NULL,
    pr_number INTEGER NOT NULL,
    head_sha TEXT NOT NULL,
    fork INTEGER NOT NULL,
    event_ms INTEGER NOT NULL,
    recorded_ms INTEGER NOT NULL,
    PRIMARY KEY (repository, pr_number)
);
CREATE INDEX pr_heads_by_head ON pr_heads(repository, head_sha);
CREATE INDEX pr_heads_by_age ON pr_heads(recorded_ms);
CREATE TABLE own_heads (
    repository TEXT NOT NULL,
    head_sha TEXT NOT NULL,
    seen_ms INTEGER NOT NULL,
    PRIMARY KEY (repository, head_sha)
);
CREATE INDEX own_heads_by_age ON own_heads(seen_ms);
";

/// The table definitions (a schema step).
pub(super) fn create_tables(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    conn.execute_batch(TABLES)
}
