//! The start-up check: a damaged database is found when the hub starts (`PRAGMA quick_check`),
//! not later by a request that happens to read the damaged page, and the error says which file
//! and what to do.

use std::path::Path;

use rusqlite::{Connection, ErrorCode};

use crate::error::HubError;

/// Problems reported at most: the first few say enough.
const MAX_PROBLEMS: i64 = 5;

/// Runs `PRAGMA quick_check` (the structure of every page and index, in one read of the file).
pub(super) fn check(conn: &Connection, path: &Path) -> Result<(), HubError> {
    let problems: Vec<String> = conn
        .prepare(&format!("PRAGMA quick_check({MAX_PROBLEMS})"))
        .and_then(|mut stmt| {
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            rows.collect()
        })
        .map_err(HubError::store("check the database"))?;
    if problems.len() == 1 && problems[0] == "ok" {
        return Ok(());
    }
    // One line for the error: SQLite puts several findings in a row, under a header line.
    let detail = problems
        .iter()
        .flat_map(|p| p.lines())
        .filter(|line| !line.starts_with("***"))
        .collect::<Vec<_>>()
        .join("; ");
    Err(HubError::CorruptStore {
        path: path.to_owned(),
        detail,
    })
}

/// `err` as [`HubError::CorruptStore`] when SQLite found the file damaged or not a database at
/// all (that can happen before the check gets to run); any other error unchanged.
pub(super) fn name_damage(path: &Path, err: HubError) -> HubError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = cause {
        let sqlite = e.downcast_ref::<rusqlite::Error>().or_else(|| {
            e.downcast_ref::<super::SqlError>()
                .and_then(super::SqlError::sqlite)
        });
        if let Some(rusqlite::Error::SqliteFailure(failure, _)) = sqlite {
            if matches!(
                failure.code,
                ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase
            ) {
                return HubError::CorruptStore {
                    path: path.to_owned(),
                    detail: dispatch_util::error_chain(&err),
                };
            }
        }
        cause = e.source();
    }
    err
}
