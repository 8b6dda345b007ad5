//! Stores for the store's own tests, on the backend the test run asks for: SQLite in a temporary
//! directory, or with `DISPATCH_TEST_STORE=postgres` a fresh PostgreSQL database on the server
//! of `DISPATCH_TEST_POSTGRES_URL` (`cargo xtask ci` runs the hub's tests both ways).

use dispatch_protocol::DispatchJob;

use super::rows::DeliveryOutcome;
use super::{Location, RawDelivery, Store};
use crate::matching::NewJob;

/// Keeps a test store's files or database until the test ends.
pub(crate) struct Held {
    _dir: tempfile::TempDir,
    _db: Option<dispatch_test_support::PgDatabase>,
}

/// Where a new test store lives, and what keeps it.
pub(crate) fn test_location() -> (Held, Location) {
    let dir = tempfile::tempdir().unwrap();
    let db = dispatch_test_support::test_store_database();
    let location = match &db {
        Some(db) => Location::postgres(db.url()).unwrap(),
        None => Location::Sqlite(dir.path().join(super::DB_FILE)),
    };
    let held = Held { _dir: dir, _db: db };
    (held, location)
}

/// A new, empty store on the backend of this test run.
pub(crate) fn test_store() -> (Held, Store) {
    let (held, location) = test_location();
    let store = Store::open_at(&location).unwrap();
    (held, store)
}

/// A job `id` of DAG `d` for `license` (empty: any license).
pub(crate) fn new_job(id: &str, license: &str) -> NewJob {
    NewJob {
        job: DispatchJob {
            id: id.into(),
            dag_name: "d".into(),
            ..DispatchJob::default()
        },
        target_license: license.into(),
        target_server_id: String::new(),
        status_context: "dispatch/d".into(),
    }
}

/// Stores `jobs` as the delivery `delivery` of a push whose payload is `{"a": 1}`, at time 1.
pub(crate) fn add(store: &Store, delivery: &str, jobs: &[NewJob]) -> DeliveryOutcome {
    let raw = RawDelivery {
        payload: "{\"a\": 1}".into(),
        headers: "{}".into(),
    };
    store
        .record_delivery(delivery, "push", jobs.to_vec(), raw, 1)
        .unwrap()
}
