//! Stores for the store's own tests, on the backend the test run asks for: SQLite in a temporary
//! directory, or with `DISPATCH_TEST_STORE=postgres` a fresh PostgreSQL database on the server
//! of `DISPATCH_TEST_POSTGRES_URL` (`cargo xtask ci` runs the hub's tests both ways).

use super::{Location, Store};

/// Keeps a test store's files or database until the test ends.
pub(crate) struct Held {
    _dir: tempfile::TempDir,
    _db: Option<dispatch_test_support::PgDatabase>,
}

/// Whether this test run puts portable store tests on PostgreSQL.
pub(crate) fn on_postgres() -> bool {
    std::env::var("DISPATCH_TEST_STORE").is_ok_and(|v| v == "postgres")
}

/// Where a new test store lives, and what keeps it.
pub(crate) fn test_location() -> (Held, Location) {
    let dir = tempfile::tempdir().unwrap();
    if on_postgres() {
        let db = dispatch_test_support::postgres_database()
            .expect("DISPATCH_TEST_STORE=postgres needs DISPATCH_TEST_POSTGRES_URL");
        let location = Location::postgres(db.url()).unwrap();
        let held = Held {
            _dir: dir,
            _db: Some(db),
        };
        return (held, location);
    }
    let location = Location::Sqlite(dir.path().join(super::DB_FILE));
    (
        Held {
            _dir: dir,
            _db: None,
        },
        location,
    )
}

/// A new, empty store on the backend of this test run.
pub(crate) fn test_store() -> (Held, Store) {
    let (held, location) = test_location();
    let store = Store::open_at(&location).unwrap();
    (held, store)
}
