//! The job states, one word each in the `jobs.state` column and in a pulled job's `status`.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

/// Where a job stands: `queued` → `claimed` (by one server, for a lease; back to `queued` when the
/// lease runs out unaccepted) → `accepted` → `finished`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum JobState {
    /// Waiting for a scheduler to pull it.
    Queued,
    /// Handed to one server, which has until its lease runs out to accept it.
    Claimed,
    /// Taken by the server that claimed it; it runs there until finished.
    Accepted,
    /// Done, with a result status (possibly `rejected` by the hub itself).
    Finished,
}

impl JobState {
    /// Every state, in the order a job goes through them.
    pub const ALL: [JobState; 4] = [
        JobState::Queued,
        JobState::Claimed,
        JobState::Accepted,
        JobState::Finished,
    ];

    /// The stored word.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Claimed => "claimed",
            JobState::Accepted => "accepted",
            JobState::Finished => "finished",
        }
    }
}

/// A stored state word that is none of the four job states (`queued`, `claimed`, `accepted`,
/// `finished`): the database was edited by hand or by a newer hub.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown job state `{word}` (expected queued, claimed, accepted or finished)")]
pub struct UnknownJobState {
    /// The word found.
    pub word: String,
}

impl std::str::FromStr for JobState {
    type Err = UnknownJobState;

    fn from_str(word: &str) -> Result<JobState, UnknownJobState> {
        JobState::ALL
            .into_iter()
            .find(|s| s.as_str() == word)
            .ok_or_else(|| UnknownJobState {
                word: word.to_owned(),
            })
    }
}

impl ToSql for JobState {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

// The one place a stored word becomes a state: an unknown word is a read error naming the word,
// which the caller's `HubError::Store` carries as its cause.
impl FromSql for JobState {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<JobState> {
        value
            .as_str()?
            .parse()
            .map_err(|e: UnknownJobState| FromSqlError::Other(Box::new(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_unknown_words_are_errors() {
        for state in JobState::ALL {
            assert_eq!(state.as_str().parse::<JobState>(), Ok(state));
        }
        for word in ["", "Queued", "running", "finished "] {
            let err = word.parse::<JobState>().unwrap_err();
            assert_eq!(err.word, word);
            assert!(err.to_string().contains(&format!("`{word}`")), "{err}");
        }
    }

    #[test]
    fn sql_reads_refuse_an_unknown_word_without_panicking() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let read = |word: &str| conn.query_row("SELECT ?1", [word], |r| r.get::<_, JobState>(0));
        assert_eq!(read("accepted").unwrap(), JobState::Accepted);
        let err = read("lost").unwrap_err();
        let chain = dispatch_util::error_chain(&err);
        assert!(chain.contains("unknown job state `lost`"), "{chain}");
        let stored: String = conn
            .query_row("SELECT ?1", [JobState::Claimed], |r| r.get(0))
            .unwrap();
        assert_eq!(stored, "claimed");
    }
}
