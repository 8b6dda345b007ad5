//! The `hub_keys` table (PostgreSQL only): the token signing key every replica shares. Schedulers
//! hold tokens one replica signed and present them to any other, so all must verify with one key;
//! on SQLite the key stays a file in the data directory (`crate::keys`).

use super::sql::{args, Sql};
use super::Store;
use crate::error::HubError;

impl Store {
    /// The shared key stored under `name`, storing `candidate` first when there is none: the
    /// first replica to start stores its key, and every other one (also one starting at the same
    /// moment) reads that one.
    pub fn shared_key(&self, name: &str, candidate: &str) -> Result<String, HubError> {
        let (name, candidate) = (name.to_owned(), candidate.to_owned());
        self.write(move |db: &dyn Sql| {
            db.execute(
                "INSERT INTO hub_keys (name, pem) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
                args![name, candidate],
            )
            .map_err(HubError::store("store the shared signing key"))?;
            db.query_row(
                "SELECT pem FROM hub_keys WHERE name = ?1",
                args![name],
                |r| r.get(0),
            )
            .map_err(HubError::store("read the shared signing key"))
        })
    }
}
