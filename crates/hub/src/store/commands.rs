//! The `command_comments` table: which delivery first brought each comment that holds a command.
//! A comment command runs once per comment (`docs/security.md`, "Who may trigger"): the
//! delivery id, by which redeliveries are recognised, is not covered by the signature, so a
//! captured delivery sent again under a new id would otherwise run its command (an old
//! `approve`, say) again. A comment is known by its id and the hash of its text: GitHub creates
//! it once with both, and a replayed delivery carries both unchanged.

use super::sql::{args, Sql};

use super::gauges::Tally;
use super::reports;
use super::rows::{self, Delivery, DeliveryOutcome};
use super::writer::Durability;
use super::Store;
use crate::error::HubError;
use crate::trust::CommandComment;

/// The note recorded with a command's delivery, and the GitHub calls (path, body) that answer
/// the command.
type Answer = (String, Vec<(String, String)>);

impl Store {
    /// Carries out a comment command in one transaction: `run` does what the command asks and
    /// returns its result with the ids of the jobs it made; `answer` gives what is recorded and
    /// sent back for that result. A redelivery changes nothing and gives no result.
    pub(super) fn run_command<T: Send + 'static>(
        &self,
        mut delivery: Delivery,
        now_ms: i64,
        run: impl FnOnce(&dyn Sql, &Delivery, &mut Tally) -> Result<(T, Vec<String>), HubError>
            + Send
            + 'static,
        answer: impl FnOnce(&T) -> Answer + Send + 'static,
    ) -> Result<(DeliveryOutcome, Option<T>), HubError> {
        self.write_counted(Durability::Full, move |tx, tally| {
            if let Some(dup) = rows::redelivery(tx, &delivery.id)? {
                return Ok((dup, None));
            }
            let (result, job_ids) = run(tx, &delivery, tally)?;
            let (note, calls) = answer(&result);
            for (path, body) in calls {
                reports::queue(tx, &delivery.id, &path, &body, now_ms)?;
            }
            delivery.reason = note;
            rows::insert_delivery(tx, &delivery, &job_ids, now_ms)?;
            let outcome = DeliveryOutcome {
                job_ids,
                duplicate: false,
            };
            Ok((outcome, Some(result)))
        })
    }

    /// The delivery that first brought `comment`: `delivery_id` itself when none did before (it
    /// is recorded as the first), or the earlier one.
    pub fn first_delivery_of_comment(
        &self,
        comment: CommandComment,
        delivery_id: &str,
        now_ms: i64,
    ) -> Result<String, HubError> {
        let delivery_id = delivery_id.to_owned();
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO command_comments
                     (event, comment_id, body_sha256, delivery_id, received_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
                args![
                    comment.event,
                    comment.comment_id,
                    comment.body_sha256,
                    delivery_id,
                    now_ms
                ],
            )
            .map_err(HubError::store("record a command's comment"))?;
            tx.query_row(
                "SELECT delivery_id FROM command_comments
                 WHERE event = ?1 AND comment_id = ?2 AND body_sha256 = ?3",
                args![comment.event, comment.comment_id, comment.body_sha256],
                |r| r.get(0),
            )
            .map_err(HubError::store("look up a command's comment"))
        })
    }
}

/// The table, in SQL both backends take (PostgreSQL after [`super::schema_pg::portable`]). A
/// schema step of both runs it: change it only by a new step.
pub(super) const TABLES: &str = "
CREATE TABLE command_comments (
    event TEXT NOT NULL,
    comment_id INTEGER NOT NULL,
    body_sha256 TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    received_ms INTEGER NOT NULL,
    PRIMARY KEY (event, comment_id, body_sha256)
);
CREATE INDEX command_comments_by_age ON command_comments(received_ms);
";

/// The table definition (a schema step).
pub(super) fn create_table(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    conn.execute_batch(TABLES)
}
