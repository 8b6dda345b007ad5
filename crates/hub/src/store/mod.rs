//! The hub's SQLite store: jobs with their lease state, deliveries (for redelivery dedupe),
//! activations and pending GitHub reports.
//!
//! Synchronous on purpose, called from the blocking pool through [`blocking`]. All writes go
//! through one writer thread with group commit ([`writer`]); every write runs inside a
//! `BEGIN IMMEDIATE` transaction, so a job is claimed by exactly one caller even with several hub
//! processes sharing the file. WAL mode with `synchronous = FULL`: an answer is sent only after its
//! write is fsynced — except lease claims, committed without their own fsync (see
//! [`Store::claim_next`]).
//!
//! One file per job: [`schema`] (the tables and their versioned changes: add a schema change
//! there), [`integrity`] (the start-up check), [`state`] (the job states), [`gauges`] (jobs per
//! state, kept as they change), [`writer`] (the group commit thread), [`reports`] (GitHub calls
//! queued with the step they report), [`rows`] (the delivery and job rows every writer stores),
//! [`cancels`], [`jobs`] (claims, accept, finish), [`activations`], [`retention`] (what is
//! pruned), [`waiting`] (who may take the jobs that became claimable, read-only, for waking
//! waiting pulls), [`progress`] (steps and logs of the `progress` extension, and the watch
//! that wakes a job's readers). The table files import only downwards: `reports` ← `rows` ←
//! `cancels` ← `jobs`
//! (`approvals` and `check_runs` build on `rows` and `reports` too). Each table's rules live in
//! its file as functions over a connection; this file opens the database and gives them one face,
//! though most table files add their own `impl Store` methods next to their SQL.
//! A delivery's payload and headers are stored once (table `payloads`), whatever number of jobs
//! it made.

mod activations;
mod approvals;
mod backend;
mod cancels;
mod check_runs;
mod commands;
mod gauges;
mod heads;
mod integrity;
mod jobs;
mod notify;
mod pg_conn;
mod progress;
mod reports;
mod retention;
mod rows;
mod schema;
mod schema_pg;
mod shared_key;
pub(crate) mod sql;
mod state;
#[cfg(test)]
pub(crate) mod testing;
mod waiting;
mod writer;

use std::path::Path;
use std::sync::{Arc, Mutex};

use dispatch_protocol::DispatchJob;

use crate::error::HubError;
#[cfg(test)]
use crate::matching::NewJob;
pub(crate) use backend::{Location, Reader};
use gauges::{JobGauges, Tally};
use sql::Sql;
use writer::{open_connection, Durability, Writer};

pub(crate) use activations::servers;
pub use activations::ServerInfo;
pub(crate) use activations::{Activated, Activation, StoredActivation};
pub(crate) use approvals::{Approval, HeldEvent};
pub(crate) use cancels::CancelOutcome;
pub(crate) use check_runs::Rerun;
pub(crate) use jobs::Transition;
pub(crate) use progress::{job_log, job_progress, job_steps, Progress, Recorded};
pub use progress::{JobProgress, LogSlice, ProgressChanges, StepRow};
pub(crate) use reports::{
    AcceptedJob, FinishedJob, NewReport, NoReports, PendingReport, Reports, ReportsFor,
};
#[cfg(test)]
use rows::DeliveryOutcome;
pub(crate) use rows::{Caller, Delivery, RawDelivery};
pub use sql::SqlError;
pub(crate) use state::JobState;
pub use state::UnknownJobState;
pub(crate) use waiting::JobTarget;

/// File name of the SQLite database under the data directory.
pub const DB_FILE: &str = "hub.sqlite3";

/// Wall-clock milliseconds since the Unix epoch, as the store keeps times (SQLite integers are
/// signed). Leases and report times are stored in it, so they keep their meaning across restarts.
pub(crate) fn now_ms() -> i64 {
    i64::try_from(dispatch_util::now_ms()).unwrap_or(i64::MAX)
}

/// Runs a store call on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    store: &Arc<Store>,
    f: impl FnOnce(&Store) -> Result<T, HubError> + Send + 'static,
) -> Result<T, HubError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(HubError::Task)?
}

/// The store: the writer thread for every write, plus a read connection for lookups, and the
/// job gauges.
pub(crate) struct Store {
    writer: Writer,
    reader: Reader,
    /// Where the data is, for readers of their own ([`Store::open_reader`]).
    location: Location,
    gauges: JobGauges,
    seen: activations::Seen,
    /// Builds the GitHub reports of the steps the store takes on its own (accept, a claim given
    /// up after too many tries); nothing until [`Store::report_with`].
    reports: Mutex<Reports>,
    /// Wakes the watchers of a job's progress ([`Store::progress_changes`]).
    progress: progress::Watch,
    /// This process's mark on its announcements to other hub processes ([`notify`]).
    origin: u64,
}

/// Superseded reports one claim drops at most before it gives up for this pass (the next pass
/// goes on).
const CLAIM_TRIES: usize = 16;

impl Store {
    /// Opens (or creates, 0600) the database, checks it for damage, brings its schema up to
    /// date and counts the jobs for the gauges.
    pub fn open(path: &Path) -> Result<Store, HubError> {
        Store::open_checked(path).map_err(|e| integrity::name_damage(path, e))
    }

    /// Opens the store at `location`: a SQLite file as [`Store::open`], or a PostgreSQL
    /// database, whose schema is brought up to date (replicas starting together take turns).
    pub fn open_at(location: &Location) -> Result<Store, HubError> {
        match location {
            Location::Sqlite(path) => Store::open(path),
            Location::Postgres(cfg) => Store::open_postgres(cfg),
        }
    }

    fn open_postgres(cfg: &pg_conn::PgTarget) -> Result<Store, HubError> {
        let mut conn = pg_conn::PgConn::connect(cfg)?;
        schema_pg::migrate(&mut conn.client)?;
        let reader = Reader::open(&Location::Postgres(Box::new(cfg.clone())))?;
        let gauges = JobGauges::starting_at(&reader.read(jobs::counts)?);
        Ok(Store {
            writer: Writer::start_postgres(conn, cfg.clone())?,
            reader,
            location: Location::Postgres(Box::new(cfg.clone())),
            gauges,
            seen: activations::Seen::default(),
            reports: Mutex::new(Arc::new(NoReports)),
            progress: progress::Watch::default(),
            origin: rand::random(),
        })
    }

    /// Opens the store at `location` for a command that must not change the schema under
    /// running replicas (`hub print-public-key`): an empty PostgreSQL database is set up, one at
    /// this hub's version opened, an older one refused ([`HubError::StoreNeedsMigration`]).
    pub fn open_without_migrating(location: &Location) -> Result<Store, HubError> {
        if let Location::Postgres(cfg) = location {
            let found = schema_pg::version_now(&mut pg_conn::PgConn::connect(cfg)?.client)?;
            let known = schema_pg::known();
            if found != 0 && found < known {
                return Err(HubError::StoreNeedsMigration {
                    version: found,
                    known,
                });
            }
        }
        Store::open_at(location)
    }

    /// Brings the schema at `location` up to date and returns (`hub migrate`).
    pub fn migrate_only(location: &Location) -> Result<(), HubError> {
        match location {
            Location::Sqlite(path) => Store::open(path).map(drop),
            Location::Postgres(cfg) => {
                let mut conn = pg_conn::PgConn::connect(cfg)?;
                schema_pg::migrate(&mut conn.client)
            }
        }
    }

    fn open_checked(path: &Path) -> Result<Store, HubError> {
        crate::files::create_private(path)?;
        let mut conn = open_connection(path)?;
        integrity::check(&conn, path)?;
        schema::migrate(&mut conn)?;
        let reader = open_connection(path)?;
        let gauges = JobGauges::starting_at(&jobs::counts(&reader)?);
        // SQLite gives the WAL and shared-memory files the database's mode; ones left by an
        // older release may still be readable by others.
        for suffix in ["", "-wal", "-shm"] {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            crate::files::tighten(Path::new(&name))?;
        }
        Ok(Store {
            writer: Writer::start(conn, path)?,
            reader: Reader::sqlite(reader),
            location: Location::Sqlite(path.to_owned()),
            gauges,
            seen: activations::Seen::default(),
            reports: Mutex::new(Arc::new(NoReports)),
            progress: progress::Watch::default(),
            origin: rand::random(),
        })
    }

    /// Reports the steps the store takes on its own through `reports` from now on.
    pub fn report_with(&self, reports: Reports) {
        *self.reports.lock().unwrap_or_else(|p| p.into_inner()) = reports;
    }

    fn reports(&self) -> Reports {
        self.reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Runs `f` in the writer's next group commit and waits until it is durable.
    fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Sql) -> Result<T, HubError> + Send + 'static,
    ) -> Result<T, HubError> {
        self.writer.write(Durability::Full, f)
    }

    /// [`Store::write`] for writes that insert, delete or move jobs: what `f` records in its
    /// [`Tally`] reaches the gauges once the write has committed.
    fn write_counted<T: Send + 'static>(
        &self,
        durability: Durability,
        f: impl FnOnce(&dyn Sql, &mut Tally) -> Result<T, HubError> + Send + 'static,
    ) -> Result<T, HubError> {
        let (value, tally) = self.writer.write(durability, move |conn| {
            let mut tally = Tally::default();
            f(conn, &mut tally).map(|value| (value, tally))
        })?;
        self.gauges.apply(&tally);
        Ok(value)
    }

    /// Runs `f` over the store's read connection.
    fn read<T>(&self, f: impl FnOnce(&dyn Sql) -> Result<T, HubError>) -> Result<T, HubError> {
        self.reader.read(f)
    }

    /// Runs `f` over the store's read connection, for tests that look at rows directly.
    #[cfg(test)]
    pub(crate) fn db<T>(&self, f: impl FnOnce(&dyn Sql) -> T) -> T {
        let mut out = None;
        let _ = self.reader.read(|db| {
            out = Some(f(db));
            Ok(())
        });
        out.expect("the read connection ran the test's closure")
    }

    /// A read connection of its own (the web pages'), opened read-only where the database can.
    pub fn open_reader(&self) -> Result<Reader, HubError> {
        Reader::open(&self.location)
    }

    /// Stores the jobs of an accepted delivery, or returns the original job ids of a
    /// redelivery; the hub itself records deliveries through [`Store::record_gated`].
    #[cfg(test)]
    pub fn record_delivery(
        &self,
        delivery_id: &str,
        event: &str,
        jobs: Vec<NewJob>,
        raw: RawDelivery,
        now_ms: i64,
    ) -> Result<DeliveryOutcome, HubError> {
        let delivery = Delivery {
            id: delivery_id.to_owned(),
            event: event.to_owned(),
            raw,
            outcome: crate::trust::Outcome::Accepted,
            reason: String::new(),
        };
        self.record_gated(delivery, jobs, None, now_ms, Arc::new(NoReports))
    }

    /// Puts claims whose lease ran out back in the queue (or finishes them as `rejected` after
    /// [`jobs::MAX_CLAIMS`]); returns how many jobs changed.
    pub fn requeue_expired(&self, now_ms: i64) -> Result<usize, HubError> {
        let reports = self.reports();
        self.write_counted(Durability::Revocable, move |conn, tally| {
            jobs::expire_claims(conn, now_ms, &reports, tally)
        })
    }

    /// Claims the oldest queued job this license may take, for `lease_ms`.
    ///
    /// The claim is not fsynced on its own: the protocol already treats a claim as revocable.
    /// Losing one in a power cut of the hub's machine puts the job back in the queue, exactly as if
    /// its lease had run out; an accept (always durable) of a claim that was lost is refused like
    /// one that expired. This takes an fsync off every pull, the one call a scheduler makes
    /// strictly one after another.
    pub fn claim_next(
        &self,
        license_id: &str,
        server_id: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<DispatchJob>, HubError> {
        let (license_id, server_id) = (license_id.to_owned(), server_id.to_owned());
        let reports = self.reports();
        self.write_counted(Durability::Revocable, move |tx, tally| {
            jobs::claim_next(
                tx,
                &license_id,
                &server_id,
                now_ms,
                lease_ms,
                &reports,
                tally,
            )
        })
    }

    /// Whether a claim attempt for this license could succeed now. Read-only, so idle pulls never
    /// queue behind writes.
    pub fn has_claimable(
        &self,
        license_id: &str,
        server_id: &str,
        now_ms: i64,
    ) -> Result<bool, HubError> {
        self.read(|db| jobs::has_claimable(db, license_id, server_id, now_ms))
    }

    /// Accept: claimed (or queued again after its lease ran out) → accepted by this server.
    pub fn accept(
        &self,
        job_id: &str,
        caller: Caller<'_>,
        dag_run_id: &str,
        now_ms: i64,
    ) -> Result<Transition, HubError> {
        let (job_id, license_id, server_id, dag_run_id) = (
            job_id.to_owned(),
            caller.license_id.to_owned(),
            caller.server_id.to_owned(),
            dag_run_id.to_owned(),
        );
        let reports = self.reports();
        let watched = job_id.clone();
        let transition = self.write_counted(Durability::Full, move |tx, tally| {
            let caller = Caller {
                license_id: &license_id,
                server_id: &server_id,
            };
            jobs::accept(tx, &job_id, caller, &dag_run_id, now_ms, &reports, tally)
        })?;
        self.progress.changed(&watched);
        Ok(transition)
    }

    /// Finish: claimed or accepted by this server → finished, and the reports `reports` builds are
    /// queued in the same transaction (durable before the caller hears "done").
    pub fn finish(
        &self,
        job_id: &str,
        caller: Caller<'_>,
        result_status: &str,
        result_summary: &str,
        now_ms: i64,
        reports: impl FnOnce(&FinishedJob) -> Vec<(String, String)> + Send + 'static,
    ) -> Result<Transition, HubError> {
        let (job_id, license_id, server_id, result_status, result_summary) = (
            job_id.to_owned(),
            caller.license_id.to_owned(),
            caller.server_id.to_owned(),
            result_status.to_owned(),
            result_summary.to_owned(),
        );
        let watched = job_id.clone();
        let transition = self.write_counted(Durability::Full, move |tx, tally| {
            let caller = Caller {
                license_id: &license_id,
                server_id: &server_id,
            };
            jobs::finish(
                tx,
                &job_id,
                caller,
                &result_status,
                &result_summary,
                now_ms,
                reports,
                tally,
            )
        })?;
        self.progress.changed(&watched);
        Ok(transition)
    }

    /// Number of jobs per state, every state in [`JobState::ALL`] order, from the gauges: no
    /// query.
    pub fn job_counts(&self) -> Vec<(JobState, i64)> {
        self.gauges.snapshot()
    }

    /// On PostgreSQL, counts the jobs per state again for the gauges: other replicas change them
    /// too. Nothing on SQLite, where this process sees every change.
    pub fn recount_shared(&self) -> Result<(), HubError> {
        if let Location::Postgres(_) = self.location {
            let counts = self.read(jobs::counts)?;
            self.gauges.reset(&counts);
        }
        Ok(())
    }

    /// Reports due at `now_ms`, oldest first.
    #[cfg(test)]
    pub fn due_reports(&self, now_ms: i64, limit: i64) -> Result<Vec<PendingReport>, HubError> {
        self.read(|db| reports::due(db, now_ms, limit))
    }

    /// Takes the oldest report due at `now_ms` for this hub to send: it is not due again for
    /// `hold_ms`, so other hub processes on the same store (replicas) leave it alone while this
    /// one sends it. A hub that dies while sending leaves it to be sent again after the hold.
    /// A pending report whose job's final report is queued behind it (its last send failed, or
    /// its sender died) is dropped instead of sent.
    pub fn claim_due_report(
        &self,
        now_ms: i64,
        hold_ms: i64,
    ) -> Result<Option<PendingReport>, HubError> {
        // Synced like any write: a claim lost in a crash of the database would let another
        // replica send the job's final report before this one's pending report arrives.
        self.writer.write(Durability::Full, move |tx| {
            for _ in 0..CLAIM_TRIES {
                let Some(report) = reports::due(tx, now_ms, 1)?.into_iter().next() else {
                    return Ok(None);
                };
                if reports::drop_if_superseded(tx, report.id)? {
                    continue;
                }
                reports::hold(tx, report.id, now_ms.saturating_add(hold_ms))?;
                return Ok(Some(report));
            }
            Ok(None)
        })
    }

    /// When the next report is due, if any.
    pub fn next_report_due(&self) -> Result<Option<i64>, HubError> {
        self.read(|db| reports::next_due(db))
    }

    pub fn delete_report(&self, id: i64) -> Result<(), HubError> {
        self.write(move |conn| reports::delete(conn, id))
    }

    pub fn reschedule_report(
        &self,
        id: i64,
        attempts: i64,
        next_ms: i64,
        error: &str,
    ) -> Result<(), HubError> {
        let error = error.to_owned();
        self.write(move |conn| reports::reschedule(conn, id, attempts, next_ms, &error))
    }

    /// A job's state and result, for tests.
    #[cfg(test)]
    fn job_state(&self, job_id: &str) -> Result<Option<(JobState, String)>, HubError> {
        self.read(|db| jobs::state_of(db, job_id))
    }
}

#[cfg(test)]
mod tests {
    use super::jobs::MAX_CLAIMS;
    use super::*;

    fn who<'a>(license_id: &'a str, server_id: &'a str) -> Caller<'a> {
        Caller {
            license_id,
            server_id,
        }
    }

    use testing::{add, new_job};

    fn store() -> (testing::Held, Store) {
        testing::test_store()
    }

    #[test]
    fn concurrent_claims_through_the_writer_hand_out_each_job_once() {
        let (_d, s) = store();
        let jobs: Vec<NewJob> = (0..40).map(|i| new_job(&format!("j{i}"), "")).collect();
        add(&s, "d", &jobs);
        let s = Arc::new(s);
        let handles: Vec<_> = (0..6)
            .map(|k| {
                let s = s.clone();
                std::thread::spawn(move || {
                    let server = format!("srv{k}");
                    let mut got = Vec::new();
                    while let Some(j) = s.claim_next("l", &server, 0, 60_000).unwrap() {
                        got.push(j.id);
                    }
                    got
                })
            })
            .collect();
        let mut all: Vec<String> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort();
        let mut want: Vec<String> = jobs.iter().map(|j| j.job.id.clone()).collect();
        want.sort();
        assert_eq!(all, want);
    }

    #[test]
    fn redelivery_returns_original_ids() {
        let (_d, s) = store();
        let first = add(&s, "d1", &[new_job("j1", "")]);
        let again = add(&s, "d1", &[new_job("j2", "")]);
        assert!(!first.duplicate && again.duplicate);
        assert_eq!(again.job_ids, vec!["j1".to_owned()]);
        assert_eq!(s.job_state("j2").unwrap(), None);
    }

    #[test]
    fn claim_respects_license_and_lease() {
        let (_d, s) = store();
        assert!(!s.has_claimable("lic-a", "srv", 0).unwrap());
        add(&s, "d1", &[new_job("j1", "lic-b"), new_job("j2", "")]);
        assert!(s.has_claimable("lic-a", "srv", 1000).unwrap());
        let job = s.claim_next("lic-a", "srv", 1000, 50).unwrap().unwrap();
        assert_eq!((job.id.as_str(), job.license_id.as_str()), ("j2", "lic-a"));
        assert_eq!(job.status, "claimed");
        assert_eq!(job.payload.unwrap().get(), "{\"a\": 1}");
        assert!(s.claim_next("lic-a", "srv2", 1049, 50).unwrap().is_none());
        assert!(!s.has_claimable("lic-a", "srv", 1049).unwrap());
        assert!(s.has_claimable("lic-a", "srv", 1050).unwrap());
        let again = s.claim_next("lic-a", "srv2", 1050, 50).unwrap().unwrap();
        assert_eq!(
            (again.id.as_str(), again.claimed_by.as_str()),
            ("j2", "srv2")
        );
        assert_eq!(
            s.claim_next("lic-b", "srv3", 1050, 50).unwrap().unwrap().id,
            "j1"
        );
    }

    #[test]
    fn a_job_nobody_accepts_is_rejected_after_max_claims() {
        let (_d, s) = store();
        add(&s, "d1", &[new_job("j1", "")]);
        for i in 0..MAX_CLAIMS {
            let job = s.claim_next("l", "a", i * 100, 50).unwrap();
            assert_eq!(job.map(|j| j.id).as_deref(), Some("j1"), "claim {i}");
        }
        assert!(s
            .claim_next("l", "a", MAX_CLAIMS * 100, 50)
            .unwrap()
            .is_none());
        assert_eq!(
            s.job_state("j1").unwrap(),
            Some((JobState::Finished, "rejected".into()))
        );
    }

    /// A store holding job `j1`, claimed by server `a` of license `l` at 0 for `lease_ms`.
    fn claimed(lease_ms: i64) -> (testing::Held, Store) {
        let (d, s) = store();
        add(&s, "d1", &[new_job("j1", "")]);
        s.claim_next("l", "a", 0, lease_ms).unwrap().unwrap();
        (d, s)
    }

    /// Any conflict, whatever its reason.
    const CONFLICT: Transition = Transition::Conflict(String::new());

    /// `t`, with a conflict's reason left out so that outcomes compare alone.
    fn outcome(t: Transition) -> Transition {
        match t {
            Transition::Conflict(_) => CONFLICT,
            other => other,
        }
    }

    #[test]
    fn last_claimant_may_accept_after_its_lease_ran_out_but_nobody_else() {
        let (_d, s) = claimed(10);
        assert_eq!(s.requeue_expired(10).unwrap(), 1);
        for (server, want) in [("b", CONFLICT), ("a", Transition::Done)] {
            let got = s.accept("j1", who("l", server), "r", 11).unwrap();
            assert_eq!(outcome(got), want, "accept by {server}");
        }
        assert!(s.claim_next("l", "b", 20, 10).unwrap().is_none());
    }

    #[test]
    fn accept_and_finish_rules() {
        let (_d, s) = claimed(60_000);
        let accepts = [
            ("nope", "a", "r", 1, Transition::NotFound),
            ("j1", "b", "r", 1, CONFLICT),
            ("j1", "a", "j1", 1, Transition::Done),
            ("j1", "a", "j1", 2, Transition::Repeated),
        ];
        for (n, (job, server, run, at, want)) in accepts.into_iter().enumerate() {
            let got = s.accept(job, who("l", server), run, at).unwrap();
            assert_eq!(outcome(got), want, "accept {n}");
        }
        let finishes = [
            ("b", "succeeded", "", 3, CONFLICT),
            ("a", "succeeded", "ok", 3, Transition::Done),
            ("a", "succeeded", "ok", 4, Transition::Repeated),
            ("a", "failed", "", 5, CONFLICT),
        ];
        for (n, (server, status, summary, at, want)) in finishes.into_iter().enumerate() {
            let no_reports = |_: &FinishedJob| Vec::new();
            let got = s
                .finish("j1", who("l", server), status, summary, at, no_reports)
                .unwrap();
            assert_eq!(outcome(got), want, "finish {n}");
        }
        assert_eq!(
            s.job_state("j1").unwrap(),
            Some((JobState::Finished, "succeeded".into()))
        );
    }

    #[test]
    fn reports_are_queued_with_finish() {
        let (_d, s) = claimed(60_000);
        s.finish("j1", who("l", "a"), "failed", "", 10, |j| {
            vec![(format!("/x/{}", j.job.dag_name), "{}".into())]
        })
        .unwrap();
        let due = s.due_reports(10, 10).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].path, "/x/d");
        s.reschedule_report(due[0].id, 1, 500, "boom").unwrap();
        assert!(s.due_reports(499, 10).unwrap().is_empty());
        assert_eq!(s.next_report_due().unwrap(), Some(500));
        s.delete_report(due[0].id).unwrap();
        assert_eq!(s.next_report_due().unwrap(), None);
    }

    /// Two processes on one store, as two replicas: B stores the job's end while A sends its
    /// pending report; the final goes only after A is done. A pending report whose sender died
    /// is dropped at the next claim once the final is behind it.
    #[test]
    fn replicas_send_a_jobs_pending_report_before_its_final_one() {
        let (_held, location) = testing::test_location();
        let a = Store::open_at(&location).unwrap();
        let b = Store::open_at(&location).unwrap();
        let pending = |job: &'static str| {
            move |conn: &dyn Sql| {
                let report = reports::NewReport {
                    path: format!("/{job}/pending"),
                    body: "{}".into(),
                    supersedable: true,
                };
                reports::queue_report(conn, job, &report, 0)
            }
        };
        let end = |job: &'static str, now: i64| {
            move |conn: &dyn Sql| {
                reports::queue_final(conn, job, vec![(format!("/{job}/final"), "{}".into())], now)
            }
        };
        a.write(pending("j")).unwrap();
        let sending = a.claim_due_report(0, 120_000).unwrap().unwrap();
        assert_eq!(sending.path, "/j/pending");
        b.write(end("j", 10)).unwrap();
        assert!(
            b.claim_due_report(10, 120_000).unwrap().is_none(),
            "the final waits"
        );
        a.delete_report(sending.id).unwrap();
        assert_eq!(
            b.claim_due_report(20, 120_000).unwrap().unwrap().path,
            "/j/final"
        );

        a.write(pending("k")).unwrap();
        assert_eq!(
            a.claim_due_report(0, 1_000).unwrap().unwrap().path,
            "/k/pending"
        );
        b.write(end("k", 500)).unwrap();
        // A died while sending; after its hold B drops the pending report and sends the final.
        let next = b.claim_due_report(2_000, 120_000).unwrap().unwrap();
        assert_eq!(next.path, "/k/final");
        assert!(b.claim_due_report(2_000, 120_000).unwrap().is_none());
    }

    /// A PostgreSQL store whose schema is behind this hub's is refused, and left as it was.
    #[test]
    fn opening_without_migrating_refuses_an_older_schema_and_leaves_it() {
        let Some(db) = dispatch_test_support::postgres_database() else {
            return;
        };
        let location = Location::postgres(db.url()).unwrap();
        // An empty database is set up.
        drop(Store::open_without_migrating(&location).unwrap());
        let Location::Postgres(target) = &location else {
            unreachable!("a postgres URL")
        };
        let mut conn = pg_conn::PgConn::connect(target).unwrap();
        let known = schema_pg::known();
        conn.client
            .execute("DELETE FROM dispatch_schema WHERE version = $1", &[&known])
            .unwrap();
        let err = Store::open_without_migrating(&location).err().unwrap();
        assert!(
            matches!(err, HubError::StoreNeedsMigration { version, .. } if version == known - 1),
            "{err}"
        );
        assert_eq!(schema_pg::version_now(&mut conn.client).unwrap(), known - 1);
    }

    #[test]
    fn an_unknown_stored_state_is_an_error_naming_the_word() {
        let (_held, location) = testing::test_location();
        let s = Store::open_at(&location).unwrap();
        add(&s, "d1", &[new_job("j1", "")]);
        // Another program (or a newer hub) wrote a state this hub does not know.
        s.write(|db| {
            db.execute(
                "UPDATE jobs SET state = 'paused' WHERE id = 'j1'",
                sql::args![],
            )
            .map_err(HubError::store("edit by hand"))
        })
        .unwrap();
        let err = s.accept("j1", who("l", "a"), "r", 1).unwrap_err();
        assert!(matches!(err, HubError::Store { .. }), "{err}");
        drop(s);
        // Counting the gauges at start reads every state word.
        let err = Store::open_at(&location).err().unwrap();
        let chain = dispatch_util::error_chain(&err);
        assert!(chain.contains("unknown job state `paused`"), "{chain}");
    }

    /// The gauges against a real count, after every kind of change.
    #[test]
    fn gauges_follow_every_transition_without_counting_rows() {
        let (_d, s) = store();
        let check = |s: &Store, when: &str| {
            let mut counted = s.db(|db| jobs::counts(db)).unwrap();
            for state in JobState::ALL {
                if !counted.iter().any(|(st, _)| *st == state) {
                    counted.push((state, 0));
                }
            }
            counted.sort();
            let mut kept = s.job_counts();
            kept.sort();
            assert_eq!(kept, counted, "after {when}");
        };
        let big = RawDelivery {
            payload: format!("\"{}\"", "x".repeat(rows::MAX_JOB_ANSWER_BYTES)),
            headers: "{}".into(),
        };
        s.record_delivery("big", "push", vec![new_job("too-big", "")], big, 1)
            .unwrap();
        check(&s, "a job rejected at intake");
        let four: Vec<NewJob> = (0..4).map(|i| new_job(&format!("j{i}"), "")).collect();
        add(&s, "d1", &four);
        add(&s, "d1", &four);
        check(&s, "a delivery and its redelivery");
        s.claim_next("l", "a", 0, 10).unwrap().unwrap();
        s.claim_next("l", "a", 0, 10).unwrap().unwrap();
        check(&s, "claims");
        s.accept("j0", who("l", "a"), "r", 1).unwrap();
        s.accept("j0", who("l", "a"), "r", 1).unwrap();
        check(&s, "an accept, repeated");
        s.requeue_expired(10).unwrap();
        check(&s, "a requeue");
        s.finish("j0", who("l", "a"), "failed", "", 11, |_| Vec::new())
            .unwrap();
        s.finish("j0", who("l", "a"), "failed", "", 11, |_| Vec::new())
            .unwrap();
        check(&s, "a finish, repeated");
        for i in 0..MAX_CLAIMS {
            s.claim_next("l", "b", 100 + i * 100, 50).unwrap();
        }
        s.requeue_expired(10_000).unwrap();
        check(&s, "claims nobody accepted");
        let failed = s.accept("no-such-job", who("l", "a"), "r", 1).unwrap();
        assert_eq!(failed, Transition::NotFound);
        check(&s, "an accept that changed nothing");
    }
}
