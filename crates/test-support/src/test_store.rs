//! Which backend a test run puts the hub's store on: SQLite unless [`TEST_STORE_VAR`] says
//! `postgres`, so the same tests run once on each (`cargo xtask ci` runs them both ways).

use crate::pg_database::{postgres_database, PgDatabase, POSTGRES_URL_VAR};

/// The environment variable choosing the store backend of a test run: unset, empty or `sqlite`
/// for SQLite, `postgres` for a fresh database per store on the server of [`POSTGRES_URL_VAR`].
pub const TEST_STORE_VAR: &str = "DISPATCH_TEST_STORE";

/// A fresh PostgreSQL database for one test's store when [`TEST_STORE_VAR`] is `postgres`, or
/// `None` when the run is on SQLite. The caller keeps the value for as long as the store is used
/// (a restarted hub reuses it); the database is dropped with it.
///
/// Panics when the variable holds another value, or when it asks for PostgreSQL and there is no
/// server: a run that asked for PostgreSQL must not quietly test SQLite instead.
pub fn test_store_database() -> Option<PgDatabase> {
    let backend = std::env::var(TEST_STORE_VAR).unwrap_or_default();
    match backend.as_str() {
        "" | "sqlite" => None,
        "postgres" => Some(postgres_database().unwrap_or_else(|| {
            panic!("{TEST_STORE_VAR}=postgres needs a server: set {POSTGRES_URL_VAR}")
        })),
        other => panic!("{TEST_STORE_VAR}={other:?}: expected `sqlite` or `postgres`"),
    }
}
