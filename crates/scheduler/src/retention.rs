//! The history-retention loop of `scheduler start`: a pass at start, then one an hour, each
//! removing the finished runs older than their retention with their logs
//! ([`dispatch_dag::prune_finished_runs`] has the rules). A run whose dispatch job the tracker
//! still holds is kept: its final status has not been reported yet, and the report reads it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use dispatch_dag::{prune_finished_runs, PruneReport, Stores};
use dispatch_tracker::Tracker;
use tokio_util::sync::CancellationToken;

/// Time between passes. Runs are kept for days, so an hour late costs nothing, and a pass
/// reads every run record.
pub(crate) const INTERVAL: Duration = Duration::from_secs(60 * 60);

/// What a pass needs.
#[derive(Clone)]
pub(crate) struct Retention {
    pub(crate) stores: Stores,
    pub(crate) tracker: Arc<Tracker>,
    /// Days for DAGs without `hist_retention_days`.
    pub(crate) default_days: u64,
}

impl Retention {
    /// Passes until `cancel` fires. A failed pass is logged and the next one tries again.
    pub(crate) async fn run(self, interval: Duration, cancel: CancellationToken) {
        loop {
            let this = self.clone();
            match tokio::task::spawn_blocking(move || this.pass(dispatch_util::now_ms())).await {
                Ok(Ok(report)) => log(&report),
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "history retention pass failed; retrying at the next one")
                }
                Err(err) => tracing::error!(error = %err, "history retention pass panicked"),
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }

    /// One pass at `now_ms`. The tracker is read first: a run can only be removed once no
    /// tracked job names it.
    pub(crate) fn pass(&self, now_ms: u64) -> Result<PruneReport, PassError> {
        let held: HashSet<(String, String)> = self
            .tracker
            .list()
            .map_err(PassError::Tracker)?
            .into_iter()
            .map(|job| (job.dag_name, job.dag_run_id))
            .collect();
        let is_held = |dag: &str, run_id: &str| held.contains(&(dag.to_owned(), run_id.to_owned()));
        prune_finished_runs(&self.stores, self.default_days, now_ms, &is_held)
            .map_err(PassError::Runs)
    }
}

/// Why a retention pass removed nothing.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PassError {
    /// Without the tracked jobs, no run is known to be safe to remove.
    #[error("cannot list the tracked jobs")]
    Tracker(#[source] dispatch_tracker::TrackerError),
    /// The run store cannot be listed.
    #[error("cannot list the runs")]
    Runs(#[source] dispatch_dag::StoreError),
}

fn log(report: &PruneReport) {
    if !report.removed.is_empty() || report.held > 0 {
        tracing::info!(
            removed = report.removed.len(),
            kept_for_report = report.held,
            "history retention: removed finished runs older than their retention"
        );
    }
    for (dag, run_id, err) in &report.failed {
        tracing::warn!(dag = %dag, run_id = %run_id, error = %dispatch_util::error_chain(err),
            "history retention: failed to remove a run; retrying at the next pass");
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use dispatch_dag::{FileStoreConfig, RunRecord, RunStatus};
    use dispatch_tracker::{Phase, TrackedJob};

    use super::*;

    const DAY_MS: u64 = 24 * 60 * 60 * 1000;

    fn retention(root: &Path) -> Retention {
        let stores = Stores::open_files(FileStoreConfig {
            dags_dir: root.join("dags"),
            data_dir: root.join("data"),
            log_dir: root.join("logs"),
        })
        .unwrap();
        std::fs::write(
            root.join("dags/build.yaml"),
            "steps:\n  - name: a\n    command: 'true'\n",
        )
        .unwrap();
        Retention {
            stores,
            tracker: Arc::new(Tracker::open(&root.join("data/tracker")).unwrap()),
            default_days: 30,
        }
    }

    /// A succeeded run of `build` that finished at `finished_ms`.
    fn finished_run(r: &Retention, run_id: &str, finished_ms: u64) {
        let dag = r.stores.dags.load("build").unwrap();
        let record = RunRecord {
            dag_name: "build".into(),
            run_id: run_id.into(),
            attempt_id: "a1".into(),
            status: RunStatus::Succeeded,
            trigger: "webhook".into(),
            params: String::new(),
            queued_at: Some(finished_ms),
            started_at: Some(finished_ms),
            finished_at: Some(finished_ms),
            log_file: r
                .stores
                .log_dir
                .join("build")
                .join(run_id)
                .join("a1/run.log"),
            error: None,
            steps: vec![],
            pid: None,
        };
        r.stores.runs.create_attempt(&dag, &record).unwrap();
    }

    fn track(r: &Retention, job_id: &str, run_id: &str) {
        r.tracker
            .upsert(TrackedJob {
                job_id: job_id.into(),
                dag_name: "build".into(),
                dag_run_id: run_id.into(),
                phase: Phase::Accepted,
                repository: "o/r".into(),
                pr_number: 0,
                issue_number: 0,
                updated_at_ms: 0,
            })
            .unwrap();
    }

    fn has_run(r: &Retention, run_id: &str) -> bool {
        r.stores.runs.find_attempt("build", run_id).is_ok()
    }

    #[test]
    fn a_tracked_run_is_kept_until_its_job_is_gone() {
        let tmp = tempfile::tempdir().unwrap();
        let r = retention(tmp.path());
        let now = 100 * DAY_MS;
        finished_run(&r, "reported", now - 40 * DAY_MS);
        finished_run(&r, "unreported", now - 40 * DAY_MS);
        finished_run(&r, "recent", now - DAY_MS);
        track(&r, "job-1", "unreported");

        let report = r.pass(now).unwrap();
        assert_eq!(report.removed, vec![("build".into(), "reported".into())]);
        assert_eq!(report.held, 1);
        assert!(has_run(&r, "unreported") && has_run(&r, "recent"));

        r.tracker.delete("job-1").unwrap();
        r.pass(now).unwrap();
        assert!(!has_run(&r, "unreported"));
        assert!(has_run(&r, "recent"));
    }

    #[tokio::test(start_paused = true)]
    async fn passes_at_start_then_every_interval_until_cancelled() {
        let tmp = tempfile::tempdir().unwrap();
        let r = retention(tmp.path());
        let now = dispatch_util::now_ms();
        finished_run(&r, "first", now - 31 * DAY_MS);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(r.clone().run(INTERVAL, cancel.clone()));
        wait_until(|| !has_run(&r, "first")).await;

        finished_run(&r, "second", now - 31 * DAY_MS);
        tokio::time::sleep(INTERVAL / 2).await;
        assert!(has_run(&r, "second"), "no pass before the interval");
        tokio::time::sleep(INTERVAL).await;
        wait_until(|| !has_run(&r, "second")).await;

        cancel.cancel();
        task.await.unwrap();
    }

    /// Yields (and lets the paused clock move in small steps) until `done` holds: the pass
    /// runs on a blocking thread the paused clock does not wait for.
    async fn wait_until(done: impl Fn() -> bool) {
        for _ in 0..2000 {
            if done() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
            tokio::task::yield_now().await;
        }
        panic!("condition not reached");
    }
}
