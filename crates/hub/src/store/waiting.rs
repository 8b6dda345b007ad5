//! What the hub needs to wake waiting pulls (`crate::waiters`): which license and server may take
//! the jobs that just became claimable. Read-only, on the read connection: looking never queues
//! behind writes.

use super::sql::{args, Row, Sql, SqlError};

use super::jobs::MAX_CLAIMS;
use super::state::JobState;
use super::Store;
use crate::error::HubError;

/// A claimable job and who may take it, as the claim query reads the target columns (empty: any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JobTarget {
    pub job_id: String,
    pub license: String,
    pub server: String,
}

/// Jobs of a claim whose lease had run out at `now_ms`, as the lease sweep will find them.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Lapsed {
    /// Some lease has run out: the sweep has work (requeue, or reject after too many claims).
    pub any: bool,
    /// The ones that go back to the queue.
    pub requeued: Vec<JobTarget>,
}

fn target(r: &Row) -> Result<JobTarget, SqlError> {
    Ok(JobTarget {
        job_id: r.get(0)?,
        license: r.get(1)?,
        server: r.get(2)?,
    })
}

/// The targets of those of `job_ids` that are queued.
fn queued_targets(conn: &dyn Sql, job_ids: &[String]) -> Result<Vec<JobTarget>, HubError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, target_license, target_server_id FROM jobs WHERE id = ?1 AND state = ?2",
        )
        .map_err(HubError::store("look up the targets of stored jobs"))?;
    let mut out = Vec::with_capacity(job_ids.len());
    for id in job_ids {
        let mut rows = stmt
            .query_map(args![id, JobState::Queued], target)
            .map_err(HubError::store("look up the targets of stored jobs"))?;
        if let Some(row) = rows.next() {
            out.push(row.map_err(HubError::store("read the target of a stored job"))?);
        }
    }
    Ok(out)
}

fn lapsed(conn: &dyn Sql, now_ms: i64) -> Result<Lapsed, HubError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, target_license, target_server_id, claims FROM jobs
             WHERE state = ?1 AND lease_expires_ms <= ?2",
        )
        .map_err(HubError::store("look for claims whose lease ran out"))?;
    let rows = stmt
        .query_map(args![JobState::Claimed, now_ms], |r| {
            Ok((target(r)?, r.get::<i64>(3)?))
        })
        .map_err(HubError::store("look for claims whose lease ran out"))?;
    let mut out = Lapsed::default();
    for row in rows {
        let (job, claims) = row.map_err(HubError::store("read a claim whose lease ran out"))?;
        out.any = true;
        if claims < MAX_CLAIMS {
            out.requeued.push(job);
        }
    }
    Ok(out)
}

/// Up to `limit` distinct targets of queued jobs unchanged since before `before_ms`.
fn stale_targets(conn: &dyn Sql, before_ms: i64, limit: i64) -> Result<Vec<JobTarget>, HubError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT DISTINCT '', target_license, target_server_id FROM jobs
             WHERE state = ?1 AND updated_ms < ?2 LIMIT ?3",
        )
        .map_err(HubError::store("look for queued jobs nobody took"))?;
    let rows = stmt
        .query_map(args![JobState::Queued, before_ms, limit], target)
        .map_err(HubError::store("look for queued jobs nobody took"))?;
    rows.collect::<Result<_, _>>()
        .map_err(HubError::store("read queued jobs nobody took"))
}

impl Store {
    /// Who may take each of `job_ids` that is queued (the others are left out).
    pub fn queued_targets(&self, job_ids: &[String]) -> Result<Vec<JobTarget>, HubError> {
        self.read(|db| queued_targets(db, job_ids))
    }

    /// The claims whose lease has run out at `now_ms`, and who may take those that go back to the
    /// queue.
    pub fn lapsed_claims(&self, now_ms: i64) -> Result<Lapsed, HubError> {
        self.read(|db| lapsed(db, now_ms))
    }

    /// Who may take the queued jobs that have waited since before `before_ms` (at most `limit`
    /// distinct targets; the job ids are left empty).
    pub fn stale_targets(&self, before_ms: i64, limit: i64) -> Result<Vec<JobTarget>, HubError> {
        self.read(|db| stale_targets(db, before_ms, limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matching::NewJob;
    use crate::store::RawDelivery;

    fn job(id: &str, license: &str) -> NewJob {
        NewJob {
            job: dispatch_protocol::DispatchJob {
                id: id.into(),
                ..Default::default()
            },
            target_license: license.into(),
            target_server_id: String::new(),
            status_context: "ctx".into(),
        }
    }

    fn raw() -> RawDelivery {
        RawDelivery {
            payload: "{}".into(),
            headers: "{}".into(),
        }
    }

    #[test]
    fn targets_of_queued_jobs_lapsed_claims_and_stale_jobs() {
        let (_held, s) = crate::store::testing::test_store();
        s.record_delivery(
            "d1",
            "push",
            vec![job("j1", "a"), job("j2", "")],
            raw(),
            1_000,
        )
        .unwrap();
        let ids = ["j1", "j2", "nope"].map(String::from);
        let targets = s.queued_targets(&ids).unwrap();
        assert_eq!(
            targets,
            vec![
                JobTarget {
                    job_id: "j1".into(),
                    license: "a".into(),
                    server: String::new(),
                },
                JobTarget {
                    job_id: "j2".into(),
                    license: String::new(),
                    server: String::new(),
                },
            ]
        );
        assert_eq!(s.stale_targets(1_000, 10).unwrap(), vec![]);
        assert_eq!(s.stale_targets(1_001, 10).unwrap().len(), 2);

        let claimed = s.claim_next("a", "srv", 2_000, 100).unwrap().unwrap();
        assert_eq!(claimed.id, "j1");
        assert_eq!(s.queued_targets(&ids).unwrap().len(), 1);
        assert_eq!(s.lapsed_claims(2_099).unwrap(), Lapsed::default());
        let lapsed = s.lapsed_claims(2_100).unwrap();
        assert!(lapsed.any);
        assert_eq!(lapsed.requeued, vec![targets[0].clone()]);
    }
}
