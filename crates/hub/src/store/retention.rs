//! Retention: what the store forgets, and how the disk space comes back.
//!
//! A pass deletes finished jobs whose finish is older than the cutoff, then the deliveries no job
//! references any more and that are older than the cutoff too (turned-away deliveries included:
//! they never made a job), then the payloads no job references, then the rows of [`AGED`] older
//! than the cutoff. It never deletes an unfinished
//! job, nor a job with a report still waiting to be sent (sent reports are deleted when sent).
//! Each batch is one write of its own, so webhooks and pulls get the writer between batches.
//! After a pass that deleted anything, `PRAGMA incremental_vacuum` hands the free pages back
//! and a WAL checkpoint truncates the files.

use std::time::Duration;

use super::sql::{args, Sql};
use super::Location;

use super::gauges::Tally;
use super::state::JobState;
use super::writer::{open_connection, Durability};
use super::Store;
use crate::error::HubError;

/// Most rows of one kind deleted by one write.
const BATCH: usize = 500;

/// Tables whose rows are kept only for a while, with the column that says when each came: fork
/// pull request events held back (approving one later finds nothing to dispatch), approvals (a
/// later event on an approved head needs a new one) and cancels that waited for an accept that
/// never came; the heads deliveries showed (a pull request quiet for that long has no latest head
/// known: a bare approve then asks for the SHA, a check run on a forgotten commit counts as fork
/// code) and the comments commands came in. A table that grows with traffic belongs here, or in
/// [`prune_batch`].
const AGED: [(&str, &str, &str); 6] = [
    ("held_forks", "received_ms", "repository, pr_number"),
    (
        "approvals",
        "approved_ms",
        "repository, pr_number, head_sha, binding_id",
    ),
    ("pending_cancels", "requested_ms", "job_id"),
    ("pr_heads", "recorded_ms", "repository, pr_number"),
    ("own_heads", "seen_ms", "repository, head_sha"),
    (
        "command_comments",
        "received_ms",
        "event, comment_id, body_sha256",
    ),
];

/// What a pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pruned {
    pub jobs: usize,
    pub deliveries: usize,
    pub payloads: usize,
    /// Rows of the [`AGED`] tables.
    pub aged: usize,
}

impl Pruned {
    pub fn is_empty(&self) -> bool {
        *self == Pruned::default()
    }

    fn add(&mut self, other: Pruned) {
        self.jobs += other.jobs;
        self.deliveries += other.deliveries;
        self.payloads += other.payloads;
        self.aged += other.aged;
    }
}

impl Store {
    /// Deletes what is older than `retention` at `now_ms` (see the module docs), then gives the
    /// space back to the file system.
    pub fn prune(&self, now_ms: i64, retention: Duration) -> Result<Pruned, HubError> {
        let cutoff =
            now_ms.saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        let mut total = Pruned::default();
        loop {
            let batch = self.write_counted(Durability::Full, move |tx, tally| {
                prune_batch(tx, cutoff, tally)
            })?;
            total.add(batch);
            if [batch.jobs, batch.deliveries, batch.payloads, batch.aged]
                .iter()
                .all(|n| *n < BATCH)
            {
                break;
            }
        }
        // PostgreSQL's autovacuum gives the space of deleted rows back on its own.
        if !total.is_empty() && matches!(self.location, Location::Sqlite(_)) {
            self.write(|tx| {
                // The pragma frees pages one step at a time: run it to the end.
                let mut stmt = tx
                    .prepare("PRAGMA incremental_vacuum")
                    .map_err(HubError::store("vacuum freed pages"))?;
                let mut rows = stmt
                    .query(args![])
                    .map_err(HubError::store("vacuum freed pages"))?;
                while rows
                    .next()
                    .map_err(HubError::store("vacuum freed pages"))?
                    .is_some()
                {}
                Ok(())
            })?;
            self.checkpoint()?;
        }
        Ok(total)
    }

    /// Copies the WAL into the database file and truncates both (the file shrinks only here). On
    /// a connection of its own: a checkpoint cannot run inside the writer's transaction. Readers
    /// still busy after the busy timeout leave it partial; the next one finishes the job.
    fn checkpoint(&self) -> Result<(), HubError> {
        let Location::Sqlite(path) = &self.location else {
            return Ok(());
        };
        let conn = open_connection(path)?;
        let (busy, _, _): (i64, i64, i64) = conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .map_err(HubError::store("checkpoint the WAL"))?;
        if busy != 0 {
            tracing::debug!("WAL checkpoint after pruning was partial; the next one finishes it");
        }
        Ok(())
    }
}

/// One batch of each kind of deletion.
fn prune_batch(tx: &dyn Sql, cutoff_ms: i64, tally: &mut Tally) -> Result<Pruned, HubError> {
    let limit = BATCH as i64;
    let jobs = tx
        .execute(
            "DELETE FROM jobs WHERE seq IN (
                 SELECT seq FROM jobs
                 WHERE state = ?1 AND updated_ms < ?2
                   AND NOT EXISTS (SELECT 1 FROM reports r WHERE r.job_id = jobs.id)
                 ORDER BY updated_ms LIMIT ?3)",
            args![JobState::Finished, cutoff_ms, limit],
        )
        .map_err(HubError::store("delete old finished jobs"))?;
    tally.removed(JobState::Finished, jobs);
    let deliveries = tx
        .execute(
            "DELETE FROM deliveries WHERE delivery_id IN (
                 SELECT delivery_id FROM deliveries d
                 WHERE d.received_ms < ?1
                   AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.delivery_id = d.delivery_id)
                 LIMIT ?2)",
            args![cutoff_ms, limit],
        )
        .map_err(HubError::store("delete old deliveries"))?;
    let payloads = tx
        .execute(
            "DELETE FROM payloads WHERE delivery_id IN (
                 SELECT delivery_id FROM payloads p
                 WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.delivery_id = p.delivery_id)
                 LIMIT ?1)",
            args![limit],
        )
        .map_err(HubError::store("delete unreferenced payloads"))?;
    let mut aged = 0;
    for (table, column, key) in AGED {
        aged += tx
            .execute(
                &format!(
                    "DELETE FROM {table} WHERE ({key}) IN (
                         SELECT {key} FROM {table} WHERE {column} < ?1 LIMIT ?2)"
                ),
                args![cutoff_ms, limit],
            )
            .map_err(HubError::store(
                "delete old held events, approvals and cancels",
            ))?;
    }
    Ok(Pruned {
        jobs,
        deliveries,
        payloads,
        aged,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use dispatch_protocol::DispatchJob;

    use super::*;
    use crate::matching::NewJob;
    use crate::store::writer::temp_database;
    use crate::store::{Caller, RawDelivery, Transition};

    const DAY: i64 = 24 * 3600 * 1000;
    /// When the old things happened.
    const T0: i64 = 1_000 * DAY;

    fn job(id: &str) -> NewJob {
        NewJob {
            job: DispatchJob {
                id: id.into(),
                dag_name: "d".into(),
                ..DispatchJob::default()
            },
            target_license: String::new(),
            target_server_id: String::new(),
            status_context: "dispatch/d".into(),
        }
    }

    fn deliver(s: &Store, delivery: &str, ids: &[&str], at: i64) {
        let raw = RawDelivery {
            payload: format!(
                "{{\"delivery\":\"{delivery}\",\"pad\":\"{}\"}}",
                "p".repeat(32 * 1024)
            ),
            headers: "{}".into(),
        };
        let jobs = ids.iter().map(|id| job(id)).collect();
        s.record_delivery(delivery, "push", jobs, raw, at).unwrap();
    }

    const ME: Caller<'static> = Caller {
        license_id: "l",
        server_id: "srv",
    };

    /// Claims, accepts and (unless `finish` is false) finishes every queued job at `at`; `report`
    /// leaves one report queued for each finished job.
    fn run_all(s: &Store, at: i64, finish: bool, report: bool) {
        while let Some(j) = s.claim_next("l", "srv", at, 60_000).unwrap() {
            assert_eq!(s.accept(&j.id, ME, "r", at).unwrap(), Transition::Done);
            if finish {
                let reports = move |_: &crate::store::FinishedJob| {
                    if report {
                        vec![("/x".to_owned(), "{}".to_owned())]
                    } else {
                        Vec::new()
                    }
                };
                s.finish(&j.id, ME, "succeeded", "", at, reports).unwrap();
            }
        }
    }

    fn count(path: &Path, sql: &str) -> i64 {
        let conn = open_connection(path).unwrap();
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// Size on disk of the database and its WAL.
    fn disk_bytes(path: &Path) -> u64 {
        let wal = path.with_file_name("hub.sqlite3-wal");
        std::fs::metadata(path).unwrap().len() + std::fs::metadata(wal).map_or(0, |m| m.len())
    }

    #[test]
    fn a_pass_forgets_old_finished_work_keeps_the_rest_and_shrinks_the_file() {
        let (_dir, path) = temp_database();
        let s = Store::open(&path).unwrap();
        // Old and finished: 150 deliveries of two jobs each (one payload apiece).
        for i in 0..150 {
            deliver(
                &s,
                &format!("old-{i}"),
                &[&format!("o{i}a"), &format!("o{i}b")],
                T0,
            );
        }
        run_all(&s, T0 + 1, true, false);
        // Old but finished with a report not sent yet; old and still running; old and queued.
        deliver(&s, "reported", &["rep"], T0);
        run_all(&s, T0 + 1, true, true);
        deliver(&s, "running", &["run"], T0);
        run_all(&s, T0 + 1, false, false);
        deliver(&s, "queued", &["que"], T0);
        // Old and turned away (no job); recent and finished.
        deliver(&s, "turned-away", &[], T0);
        deliver(&s, "recent", &["new"], T0 + 20 * DAY);
        let new = s.claim_next("l", "srv", T0 + 20 * DAY, 60_000).unwrap();
        assert_eq!(new.map(|j| j.id).as_deref(), Some("que"), "oldest first");
        let new = s
            .claim_next("l", "srv", T0 + 20 * DAY, 60_000)
            .unwrap()
            .unwrap();
        s.finish(&new.id, ME, "failed", "", T0 + 20 * DAY, |_| Vec::new())
            .unwrap();
        // `que` goes back to the queue when its lease runs out.
        assert_eq!(s.requeue_expired(T0 + 21 * DAY).unwrap(), 1);
        // Held fork events (an old and a recent one), an old approval, an old waiting cancel.
        let conn = open_connection(&path).unwrap();
        for (pr, at) in [(1, T0), (2, T0 + 20 * DAY)] {
            conn.execute(
                "INSERT INTO held_forks (repository, pr_number, head_sha, event, delivery_id,
                                         payload, headers, received_ms)
                 VALUES ('o/r', ?1, 'abc', 'pull_request', 'd', ?2, '{}', ?3)",
                rusqlite::params![pr, "h".repeat(64 * 1024), at],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO approvals (repository, pr_number, head_sha, binding_id,
                                    event_delivery_id, approved_by, delivery_id, approved_ms)
             VALUES ('o/r', 1, 'abc', 'b', 'd', 'octocat', 'd', ?1)",
            rusqlite::params![T0],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO pending_cancels VALUES ('gone', '{}', 'd', '{}', '{}', ?1)",
            rusqlite::params![T0],
        )
        .unwrap();
        drop(conn);
        s.checkpoint().unwrap();
        let before = disk_bytes(&path);

        let pruned = s
            .prune(T0 + 31 * DAY, Duration::from_millis(30 * DAY as u64))
            .unwrap();
        assert_eq!(
            pruned,
            Pruned {
                jobs: 300,
                deliveries: 151,
                payloads: 150,
                aged: 3,
            }
        );
        let after = disk_bytes(&path);
        assert!(
            after < before / 2,
            "the file shrinks: {before} bytes before, {after} after"
        );
        let mut left: Vec<String> = {
            let conn = open_connection(&path).unwrap();
            let mut stmt = conn.prepare("SELECT id || ':' || state FROM jobs").unwrap();
            let rows = stmt.query_map(rusqlite::params![], |r| r.get(0)).unwrap();
            rows.collect::<Result<_, _>>().unwrap()
        };
        left.sort();
        assert_eq!(
            left,
            ["new:finished", "que:queued", "rep:finished", "run:accepted"]
        );
        assert_eq!(count(&path, "SELECT COUNT(*) FROM payloads"), 4);
        assert_eq!(count(&path, "SELECT COUNT(*) FROM deliveries"), 4);
        assert_eq!(count(&path, "SELECT COUNT(*) FROM reports"), 1, "unsent");
        assert_eq!(
            count(&path, "SELECT pr_number FROM held_forks"),
            2,
            "the recent held event stays"
        );
        // The gauges followed the deletions, and the queued job still has its payload.
        let finished = s
            .job_counts()
            .into_iter()
            .find(|(st, _)| *st == JobState::Finished);
        assert_eq!(finished, Some((JobState::Finished, 2)));
        let que = s
            .claim_next("l", "srv", T0 + 31 * DAY, 60_000)
            .unwrap()
            .unwrap();
        assert!(que
            .payload
            .unwrap()
            .get()
            .contains("\"delivery\":\"queued\""));
        // Nothing more to do.
        assert!(s
            .prune(T0 + 31 * DAY, Duration::from_millis(30 * DAY as u64))
            .unwrap()
            .is_empty());
    }
}
