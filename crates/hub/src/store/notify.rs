//! Announcements between hub processes that share one PostgreSQL store: "these jobs can be
//! claimed now". A replica that stores a job (or puts a lapsed claim back in the queue) wakes its
//! own waiting pulls, then announces the jobs with `NOTIFY`; every other replica [`Listener`]
//! hears it and wakes one of its waiting pulls that may take each job, so a job stored through
//! replica A reaches a scheduler waiting on replica B at once. On SQLite there is one process and
//! nothing is announced.
//!
//! An announcement lost (a listener reconnecting) only delays a job until the lease sweep's
//! look for jobs nobody took while pulls wait.

use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;

use super::pg_conn::PgTarget;
use super::sql::{args, Sql};
use super::waiting::JobTarget;
use super::writer::Durability;
use super::{Location, Store};
use crate::error::HubError;

/// The PostgreSQL channel the announcements go over.
const CHANNEL: &str = "dispatch_jobs";

/// Bytes of one announcement at most (PostgreSQL's limit is 8,000).
const MAX_PAYLOAD: usize = 7_000;

/// How long a listener waits before connecting again after its connection broke.
const RECONNECT: Duration = Duration::from_secs(1);

/// The announcements of `targets` from hub process `origin`: each a line `origin`, then one
/// line per job (`job id`, license, server, tab-separated), cut to fit [`MAX_PAYLOAD`].
fn payloads(origin: u64, targets: &[JobTarget]) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = origin.to_string();
    for t in targets {
        let line = format!("\n{}\t{}\t{}", t.job_id, t.license, t.server);
        if current.len() + line.len() > MAX_PAYLOAD {
            out.push(std::mem::replace(&mut current, origin.to_string()));
        }
        current.push_str(&line);
    }
    if current.contains('\n') {
        out.push(current);
    }
    out
}

/// The sender and jobs of an announcement; None for text that is not one.
fn parse(payload: &str) -> Option<(u64, Vec<JobTarget>)> {
    let mut lines = payload.split('\n');
    let origin = lines.next()?.parse().ok()?;
    let targets = lines
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let (job_id, license, server) = (fields.next()?, fields.next()?, fields.next()?);
            Some(JobTarget {
                job_id: job_id.to_owned(),
                license: license.to_owned(),
                server: server.to_owned(),
            })
        })
        .collect();
    Some((origin, targets))
}

impl Store {
    /// Announces to the other hub processes on this store that `targets` can be claimed.
    pub fn announce(&self, targets: Vec<JobTarget>) -> Result<(), HubError> {
        if targets.is_empty() || matches!(self.location, Location::Sqlite(_)) {
            return Ok(());
        }
        let payloads = payloads(self.origin, &targets);
        // An announcement lost in a crash costs a delay, not a job: no fsync of its own.
        self.writer
            .write(Durability::Revocable, move |db: &dyn Sql| {
                for payload in &payloads {
                    db.execute("SELECT pg_notify(?1, ?2)", args![CHANNEL, payload])
                        .map_err(HubError::store("announce claimable jobs"))?;
                }
                Ok(())
            })
    }

    /// The listener for other processes' announcements; None on SQLite.
    pub fn listener(&self) -> Option<Listener> {
        match &self.location {
            Location::Sqlite(_) => None,
            Location::Postgres(cfg) => Some(Listener {
                cfg: (**cfg).clone(),
                origin: self.origin,
            }),
        }
    }
}

/// Hears the announcements of the other hub processes on a PostgreSQL store.
pub(crate) struct Listener {
    cfg: PgTarget,
    origin: u64,
}

impl Listener {
    /// Listens until `stopped` says so (looked at every second), handing each announcement of
    /// another process to `deliver`; a broken connection is opened again after [`RECONNECT`].
    /// Blocks: run it on a thread of its own.
    pub fn run(self, stopped: impl Fn() -> bool, mut deliver: impl FnMut(Vec<JobTarget>)) {
        while !stopped() {
            if let Err(e) = self.listen(&stopped, &mut deliver) {
                tracing::warn!(error = %dispatch_util::error_chain(&e),
                    "listening for other hub replicas' jobs failed; connecting again");
                std::thread::sleep(RECONNECT);
            }
        }
    }

    fn listen(
        &self,
        stopped: &impl Fn() -> bool,
        deliver: &mut impl FnMut(Vec<JobTarget>),
    ) -> Result<(), HubError> {
        let mut conn = super::pg_conn::PgConn::connect(&self.cfg)?;
        conn.client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .map_err(HubError::store("listen for other replicas' jobs"))?;
        while !stopped() {
            {
                let mut notifications = conn.client.notifications();
                let mut heard = notifications.timeout_iter(Duration::from_secs(1));
                while let Some(n) = heard
                    .next()
                    .map_err(HubError::store("hear other replicas' jobs"))?
                {
                    match parse(n.payload()) {
                        Some((origin, targets)) if origin != self.origin => deliver(targets),
                        Some(_) => {}
                        None => tracing::debug!("ignored an announcement that is not one of ours"),
                    }
                }
            }
            if conn.client.is_closed() {
                return Err(HubError::StoreClosed);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(i: usize) -> JobTarget {
        JobTarget {
            job_id: format!("job-{i:05}"),
            license: "lic".into(),
            server: String::new(),
        }
    }

    #[test]
    fn announcements_round_trip_and_are_cut_to_fit() {
        let targets: Vec<JobTarget> = (0..1000).map(target).collect();
        let cut = payloads(42, &targets);
        assert!(cut.len() > 1);
        let mut back = Vec::new();
        for p in &cut {
            assert!(p.len() <= MAX_PAYLOAD, "{}", p.len());
            let (origin, mut t) = parse(p).unwrap();
            assert_eq!(origin, 42);
            back.append(&mut t);
        }
        assert_eq!(back, targets);
        assert!(payloads(1, &[]).is_empty());
        assert_eq!(parse("not a number\na\tb\tc"), None);
    }

    /// Two hub processes on one store: what one announces, the other hears, and not itself. On
    /// SQLite (one process) nothing is announced and nothing listens.
    #[test]
    fn another_process_on_the_store_hears_the_jobs_announced() {
        let (_held, location) = crate::store::testing::test_location();
        let a = Store::open_at(&location).unwrap();
        let b = Store::open_at(&location).unwrap();
        let Some(listener) = b.listener() else {
            assert!(a.listener().is_none());
            a.announce(vec![target(1)]).unwrap();
            return;
        };
        let own = a.listener().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let mut threads = Vec::new();
        for (name, l) in [("b", listener), ("a", own)] {
            let (stop, tx) = (stop.clone(), tx.clone());
            threads.push(std::thread::spawn(move || {
                l.run(
                    || stop.load(std::sync::atomic::Ordering::Relaxed),
                    |t| tx.send((name, t)).unwrap(),
                );
            }));
        }
        // The listeners connect on their own threads: announce until one is heard.
        let heard = (0..100).find_map(|_| {
            a.announce(vec![target(7)]).unwrap();
            rx.recv_timeout(Duration::from_millis(100)).ok()
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(heard, Some(("b", vec![target(7)])));
        for t in threads {
            t.join().unwrap();
        }
        while let Ok((name, _)) = rx.try_recv() {
            assert_eq!(name, "b", "a process hears no announcement of its own");
        }
    }
}
