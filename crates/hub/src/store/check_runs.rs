//! The `check_runs` table: the GitHub check run of each job reported through the App, so that
//! every later update goes to the same check run, also after a restart.
//!
//! Durable first: before the reporter asks GitHub to create a check run it marks the row
//! `create_started`; when GitHub answers it records the id. A row marked but without an id means
//! the hub stopped (or the answer was lost) in between: the reporter then looks the check run up
//! by its `external_id` before creating one, so a job never gets two.

use super::sql::{args, Optional, Sql};
use dispatch_protocol::DispatchJob;

use super::reports::Reports;
use super::rows::{self, decode_job, Delivery, DeliveryOutcome, RawDelivery};
use super::writer::Durability;
use super::Store;
use crate::error::HubError;
use crate::matching::NewJob;

/// A stored job and the delivery it came from, for running it again.
pub(crate) struct Original {
    pub job: DispatchJob,
    /// Under which key its delivery's payload is stored.
    pub payload_key: String,
    /// That delivery's body and headers (`None` when retention has pruned them).
    pub raw: Option<RawDelivery>,
}

/// A job to store again for a re-run: the new job and the stored delivery it carries.
pub(crate) struct Rerun {
    pub job: NewJob,
    pub payload_key: String,
    pub raw: RawDelivery,
}

/// A job's check run as far as the hub knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CheckRunRow {
    /// GitHub's id; 0 until GitHub has answered a create.
    pub check_run_id: i64,
    /// A create was sent (its answer may have been lost).
    pub create_started: bool,
}

/// The schema step that adds the table (see `schema.rs`).
pub(super) fn create_table(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "
CREATE TABLE IF NOT EXISTS check_runs (
    job_id TEXT PRIMARY KEY,
    repository TEXT NOT NULL,
    head_sha TEXT NOT NULL,
    check_run_id INTEGER NOT NULL DEFAULT 0,
    create_started INTEGER NOT NULL DEFAULT 0,
    updated_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS check_runs_by_sha ON check_runs(repository, head_sha);
",
    )
}

/// The row of `job_id`, if a report ever touched it.
pub(super) fn get(conn: &dyn Sql, job_id: &str) -> Result<Option<CheckRunRow>, HubError> {
    conn.query_row(
        "SELECT check_run_id, create_started FROM check_runs WHERE job_id = ?1",
        args![job_id],
        |r| {
            Ok(CheckRunRow {
                check_run_id: r.get(0)?,
                create_started: r.get(1)?,
            })
        },
    )
    .optional()
    .map_err(HubError::store("read a check run"))
}

/// What a report records of a job's check run.
pub(super) struct Mark {
    pub job_id: String,
    pub repository: String,
    pub head_sha: String,
    /// GitHub's id; 0 while the create is only about to be sent.
    pub check_run_id: i64,
}

/// Records that a create for the job is about to be sent (`check_run_id` 0), or GitHub's id for
/// its check run. A create is marked started either way; a later 0 keeps an id already recorded.
pub(super) fn upsert(conn: &dyn Sql, mark: &Mark, now_ms: i64) -> Result<(), HubError> {
    let Mark {
        job_id,
        repository,
        head_sha,
        check_run_id,
    } = mark;
    conn.execute(
        "INSERT INTO check_runs (job_id, repository, head_sha, check_run_id, create_started, updated_ms)
         VALUES (?1, ?2, ?3, ?4, 1, ?5)
         ON CONFLICT (job_id) DO UPDATE SET
             check_run_id = CASE ?4 WHEN 0 THEN check_runs.check_run_id ELSE ?4 END,
             create_started = 1, updated_ms = ?5",
        args![job_id, repository.to_ascii_lowercase(), head_sha, check_run_id, now_ms],
    )
    .map_err(HubError::store("record a check run"))?;
    Ok(())
}

/// The jobs with a check run on `head_sha` of `repository` (a check suite), oldest first.
pub(super) fn jobs_on_sha(
    conn: &dyn Sql,
    repository: &str,
    head_sha: &str,
) -> Result<Vec<String>, HubError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT job_id FROM check_runs WHERE repository = ?1 AND head_sha = ?2
             ORDER BY updated_ms, job_id",
        )
        .map_err(HubError::store("list a suite's check runs"))?;
    let rows = stmt
        .query_map(args![repository.to_ascii_lowercase(), head_sha], |r| {
            r.get(0)
        })
        .map_err(HubError::store("list a suite's check runs"))?;
    rows.collect::<Result<_, _>>()
        .map_err(HubError::store("list a suite's check runs"))
}

/// The installation named by the delivery of `job_id` (0 when none was, or the job is gone).
fn installation_of(conn: &dyn Sql, job_id: &str) -> Result<i64, HubError> {
    let sql = "SELECT job_json FROM jobs WHERE id = ?1";
    let job_json: Option<String> = rows::lookup(conn, sql, args![job_id], "read a job")?;
    match job_json {
        Some(text) => Ok(decode_job(&text)?.installation_id),
        None => Ok(0),
    }
}

fn original(conn: &dyn Sql, job_id: &str) -> Result<Option<Original>, HubError> {
    let row: Option<(String, String)> = conn
        .query_row(
            "SELECT job_json, delivery_id FROM jobs WHERE id = ?1",
            args![job_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(HubError::store("read a job"))?;
    let Some((job_json, payload_key)) = row else {
        return Ok(None);
    };
    let raw = conn
        .query_row(
            "SELECT payload, headers FROM payloads WHERE delivery_id = ?1",
            args![&payload_key],
            |r| {
                Ok(RawDelivery {
                    payload: r.get(0)?,
                    headers: r.get(1)?,
                })
            },
        )
        .optional()
        .map_err(HubError::store("read a payload"))?;
    Ok(Some(Original {
        job: decode_job(&job_json)?,
        payload_key,
        raw,
    }))
}

impl Store {
    /// The check run of `job_id`, if a report ever touched it.
    pub fn check_run(&self, job_id: &str) -> Result<Option<CheckRunRow>, HubError> {
        self.read(|db| get(db, job_id))
    }

    /// Marks (durably) that a create of `job_id`'s check run is about to be sent.
    pub fn check_run_create_started(
        &self,
        job_id: &str,
        repository: &str,
        head_sha: &str,
        now_ms: i64,
    ) -> Result<(), HubError> {
        // GitHub has given no id yet: 0 stands for none.
        self.check_run_created(job_id, repository, head_sha, 0, now_ms)
    }

    /// Records GitHub's id of `job_id`'s check run.
    pub fn check_run_created(
        &self,
        job_id: &str,
        repository: &str,
        head_sha: &str,
        check_run_id: i64,
        now_ms: i64,
    ) -> Result<(), HubError> {
        let mark = Mark {
            job_id: job_id.to_owned(),
            repository: repository.to_owned(),
            head_sha: head_sha.to_owned(),
            check_run_id,
        };
        self.write(move |conn| upsert(conn, &mark, now_ms))
    }

    /// The jobs with a check run on `head_sha` of `repository`, oldest first.
    pub fn check_run_jobs_on(
        &self,
        repository: &str,
        head_sha: &str,
    ) -> Result<Vec<String>, HubError> {
        self.read(|db| jobs_on_sha(db, repository, head_sha))
    }

    /// The job `job_id` and its delivery, to run it again.
    pub fn original_event(&self, job_id: &str) -> Result<Option<Original>, HubError> {
        self.read(|db| original(db, job_id))
    }

    /// Stores the jobs of a re-run requested by `delivery` (a `check_run` or `check_suite`
    /// delivery), each carrying the payload of the event it runs again; a redelivery returns the
    /// jobs of the first.
    pub fn rerun(
        &self,
        delivery: Delivery,
        reruns: Vec<Rerun>,
        now_ms: i64,
        reports: Reports,
    ) -> Result<DeliveryOutcome, HubError> {
        self.write_counted(Durability::Full, move |tx, tally| {
            if let Some(dup) = rows::redelivery(tx, &delivery.id)? {
                return Ok(dup);
            }
            let mut job_ids = Vec::with_capacity(reruns.len());
            for r in &reruns {
                rows::insert_payload(tx, &r.payload_key, &r.raw)?;
                rows::insert_job(tx, &r.job, &r.payload_key, &r.raw, now_ms, &reports, tally)?;
                job_ids.push(r.job.job.id.clone());
            }
            rows::insert_delivery(tx, &delivery, &job_ids, now_ms)?;
            Ok(DeliveryOutcome {
                job_ids,
                duplicate: false,
            })
        })
    }

    /// The installation the delivery of `job_id` named (0: none, or the job is gone).
    pub fn job_installation(&self, job_id: &str) -> Result<i64, HubError> {
        self.read(|db| installation_of(db, job_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(job_id: &str, repository: &str, head_sha: &str, check_run_id: i64) -> Mark {
        Mark {
            job_id: job_id.into(),
            repository: repository.into(),
            head_sha: head_sha.into(),
            check_run_id,
        }
    }

    #[test]
    fn create_marks_then_ids_survive_and_suites_list_their_jobs() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        create_table(&conn).unwrap();
        create_table(&conn).unwrap();
        assert_eq!(get(&conn, "j1").unwrap(), None);
        upsert(&conn, &mark("j1", "O/R", "abc", 0), 1).unwrap();
        assert_eq!(
            get(&conn, "j1").unwrap(),
            Some(CheckRunRow {
                check_run_id: 0,
                create_started: true
            })
        );
        upsert(&conn, &mark("j1", "O/R", "abc", 99), 2).unwrap();
        upsert(&conn, &mark("j2", "o/r", "abc", 100), 3).unwrap();
        upsert(&conn, &mark("j3", "o/r", "def", 101), 4).unwrap();
        assert_eq!(get(&conn, "j1").unwrap().unwrap().check_run_id, 99);
        assert_eq!(jobs_on_sha(&conn, "o/R", "abc").unwrap(), vec!["j1", "j2"]);
        // A create started again (a retry after a crash) keeps the id GitHub gave.
        upsert(&conn, &mark("j1", "O/R", "abc", 0), 5).unwrap();
        assert_eq!(get(&conn, "j1").unwrap().unwrap().check_run_id, 99);
    }
}
