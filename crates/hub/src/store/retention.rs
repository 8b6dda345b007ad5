//! Retention: what the store forgets, and how the disk space comes back.
//!
//! A pass deletes finished jobs whose finish is older than the cutoff, then the deliveries no job
//! references any more and that are older than the cutoff too (turned-away deliveries included:
//! they never made a job), then the payloads no job references. It never deletes an unfinished
//! job, nor a job with a report still waiting to be sent (sent reports are deleted when sent).
//! Each batch is one write of its own, so webhooks and pulls get the writer between batches.
//! After a pass that deleted anything, `PRAGMA incremental_vacuum` hands the free pages back
//! and a WAL checkpoint truncates the files.

use std::time::Duration;

use rusqlite::{params, Connection};

use super::gauges::Tally;
use super::state::JobState;
use super::writer::{open_connection, Durability};
use super::Store;
use crate::error::HubError;

/// Most rows of one kind deleted by one write.
const BATCH: usize = 500;

/// What a pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pruned {
    pub jobs: usize,
    pub deliveries: usize,
    pub payloads: usize,
}

impl Pruned {
    pub fn is_empty(&self) -> bool {
        *self == Pruned::default()
    }

    fn add(&mut self, other: Pruned) {
        self.jobs += other.jobs;
        self.deliveries += other.deliveries;
        self.payloads += other.payloads;
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
            if batch.jobs < BATCH && batch.deliveries < BATCH && batch.payloads < BATCH {
                break;
            }
        }
        if !total.is_empty() {
            self.write(|tx| {
                // The pragma frees pages one step at a time: run it to the end.
                let mut stmt = tx
                    .prepare("PRAGMA incremental_vacuum")
                    .map_err(HubError::store("vacuum freed pages"))?;
                let mut rows = stmt
                    .query([])
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
        let path = self.read().path().map(std::path::PathBuf::from);
        let Some(path) = path else { return Ok(()) };
        let conn = open_connection(&path)?;
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
fn prune_batch(tx: &Connection, cutoff_ms: i64, tally: &mut Tally) -> Result<Pruned, HubError> {
    let limit = BATCH as i64;
    let jobs = tx
        .execute(
            "DELETE FROM jobs WHERE seq IN (
                 SELECT seq FROM jobs
                 WHERE state = ?1 AND updated_ms < ?2
                   AND NOT EXISTS (SELECT 1 FROM reports r WHERE r.job_id = jobs.id)
                 ORDER BY updated_ms LIMIT ?3)",
            params![JobState::Finished, cutoff_ms, limit],
        )
        .map_err(HubError::store("delete old finished jobs"))?;
    tally.removed(JobState::Finished, jobs);
    let deliveries = tx
        .execute(
            "DELETE FROM deliveries WHERE rowid IN (
                 SELECT rowid FROM deliveries d
                 WHERE d.received_ms < ?1
                   AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.delivery_id = d.delivery_id)
                 LIMIT ?2)",
            params![cutoff_ms, limit],
        )
        .map_err(HubError::store("delete old deliveries"))?;
    let payloads = tx
        .execute(
            "DELETE FROM payloads WHERE rowid IN (
                 SELECT rowid FROM payloads p
                 WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.delivery_id = p.delivery_id)
                 LIMIT ?1)",
            params![limit],
        )
        .map_err(HubError::store("delete unreferenced payloads"))?;
    Ok(Pruned {
        jobs,
        deliveries,
        payloads,
    })
}
