//! History retention: finished runs older than their DAG's `hist_retention_days` are removed
//! together with their logs, so a scheduler's disk does not fill up with years of history.
//!
//! One pass ([`prune_finished_runs`]) looks at the latest attempt of every run. A run goes when
//! all of these hold:
//! - its status is final ([`crate::RunStatus::is_final`]): a queued or running run is never
//!   touched;
//! - it finished (`finished_at`, else `started_at`, else `queued_at`) more than its retention
//!   before `now_ms`; a run without any of these times is kept, since its age is unknown;
//! - the caller does not hold it (the scheduler holds every run whose dispatch job its tracker
//!   still owns: that job's final status has not been reported yet).
//!
//! The retention of a run is its DAG's `hist_retention_days` as the DAG file says it now (so a
//! changed setting applies to old runs too, as in Dagu), else as the run's DAG snapshot says it,
//! else the caller's default. `0` keeps no finished run past the next pass.
//!
//! Order, so that a crash never strands anything: the run's log directory
//! (`<log_dir>/<dag>/<run_id>/`) is removed first, then the run record. A crash in between leaves
//! a record without logs, which the next pass removes; the other order could leave logs that no
//! record points to any more.

use std::collections::HashMap;
use std::io;

use crate::{Attempt, StoreError, Stores};

use super::fsutil::io_err;

/// Days a finished run is kept when neither the scheduler's settings nor its DAG say otherwise
/// (Dagu's default for `hist_retention_days`).
pub const DEFAULT_HIST_RETENTION_DAYS: u64 = 30;

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// What one [`prune_finished_runs`] pass did.
#[derive(Debug, Default)]
pub struct PruneReport {
    /// Runs removed with their logs, as `(dag, run_id)`.
    pub removed: Vec<(String, String)>,
    /// Finished runs old enough to go that were kept because the caller holds them.
    pub held: usize,
    /// Runs whose removal failed; the next pass tries again.
    pub failed: Vec<(String, String, StoreError)>,
}

/// Removes every finished run older than its retention, with its logs (rules in the module
/// docs). `default_days` applies to DAGs that set no `hist_retention_days`; `now_ms` is the
/// current time in Unix milliseconds (passed in so that tests choose it); `held(dag, run_id)`
/// returning true keeps a run whatever its age.
///
/// Fails only when the runs cannot be listed; a run that cannot be removed is reported in
/// [`PruneReport::failed`] and the pass goes on with the others.
pub fn prune_finished_runs(
    stores: &Stores,
    default_days: u64,
    now_ms: u64,
    held: &dyn Fn(&str, &str) -> bool,
) -> Result<PruneReport, StoreError> {
    let current = current_retention(stores);
    let mut report = PruneReport::default();
    for attempt in stores.runs.list_attempts()? {
        let record = &attempt.record;
        if !record.status.is_final() {
            continue;
        }
        let Some(ended) = record
            .finished_at
            .or(record.started_at)
            .or(record.queued_at)
        else {
            continue;
        };
        let days = current
            .get(&record.dag_name)
            .copied()
            .flatten()
            .or(attempt.dag.hist_retention_days)
            .unwrap_or(default_days);
        if now_ms.saturating_sub(ended) <= days.saturating_mul(DAY_MS) {
            continue;
        }
        if held(&record.dag_name, &record.run_id) {
            report.held += 1;
            continue;
        }
        match remove_with_logs(stores, &attempt) {
            Ok(()) => report
                .removed
                .push((record.dag_name.clone(), record.run_id.clone())),
            Err(e) => report
                .failed
                .push((record.dag_name.clone(), record.run_id.clone(), e)),
        }
    }
    Ok(report)
}

/// `hist_retention_days` of each DAG file that loads, by DAG name (`None`: the DAG sets none).
/// A directory that cannot be listed leaves the runs to their snapshots.
fn current_retention(stores: &Stores) -> HashMap<String, Option<u64>> {
    match stores.dags.list() {
        Ok(dags) => dags
            .into_iter()
            .flatten()
            .map(|dag| (dag.name, dag.hist_retention_days))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the DAG files; retention follows each run's DAG snapshot");
            HashMap::new()
        }
    }
}

fn remove_with_logs(stores: &Stores, attempt: &Attempt) -> Result<(), StoreError> {
    let record = &attempt.record;
    // Names are checked before they become a path (the store checked them when it wrote the
    // run, but a record file is still input).
    crate::validate_dag_name(&record.dag_name)?;
    crate::validate_run_id(&record.run_id)?;
    let logs = stores.log_dir.join(&record.dag_name).join(&record.run_id);
    match std::fs::remove_dir_all(&logs) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("remove", &logs)(e)),
    }
    stores.runs.remove_run(&record.dag_name, &record.run_id)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{Dag, FileStoreConfig, RunRecord, RunStatus};

    const NOW: u64 = 1_000 * DAY_MS;

    fn stores(root: &Path) -> Stores {
        Stores::open_files(FileStoreConfig::in_home(root)).unwrap()
    }

    fn dag(s: &Stores, root: &Path, name: &str) -> Dag {
        dag_with(s, root, name, "")
    }

    /// The DAG `name` with `top` (top-level keys) before its one step.
    fn dag_with(s: &Stores, root: &Path, name: &str, top: &str) -> Dag {
        std::fs::write(
            root.join("dags").join(format!("{name}.yaml")),
            format!("{top}steps:\n  - name: a\n    command: 'true'\n"),
        )
        .unwrap();
        s.dags.load(name).unwrap()
    }

    /// Stores in a fresh directory with the DAG `build` (keep the directory for the test).
    fn build() -> (tempfile::TempDir, Stores, Dag) {
        let tmp = tempfile::tempdir().unwrap();
        let s = stores(tmp.path());
        let d = dag(&s, tmp.path(), "build");
        (tmp, s, d)
    }

    /// A run of `dag` with `status` that finished `age_days` before [`NOW`], with a log file.
    fn run(s: &Stores, dag: &Dag, run_id: &str, status: RunStatus, age_days: u64) {
        let logs = s.log_dir.join(&dag.name).join(run_id).join("a1");
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::write(logs.join("a.out"), "hello\n").unwrap();
        let ended = NOW - age_days * DAY_MS;
        let record = RunRecord {
            dag_name: dag.name.clone(),
            run_id: run_id.into(),
            attempt_id: "a1".into(),
            status,
            trigger: "webhook".into(),
            params: String::new(),
            queued_at: Some(ended - 1000),
            started_at: Some(ended - 500),
            finished_at: status.is_final().then_some(ended),
            log_file: logs.join("run.log"),
            error: None,
            steps: vec![],
            pid: None,
        };
        s.runs.create_attempt(dag, &record).unwrap();
    }

    fn exists(s: &Stores, dag: &str, run_id: &str) -> bool {
        let found = s.runs.find_attempt(dag, run_id).is_ok();
        let logs = s.log_dir.join(dag).join(run_id).is_dir();
        assert_eq!(found, logs, "{dag}/{run_id}: record and logs go together");
        found
    }

    fn never_held(_: &str, _: &str) -> bool {
        false
    }

    #[test]
    fn removes_old_finished_runs_with_their_logs_only() {
        let (_tmp, s, d) = build();
        let cases = [
            ("old-ok", RunStatus::Succeeded, 31, false),
            ("old-failed", RunStatus::Failed, 45, false),
            ("old-aborted", RunStatus::Aborted, 400, false),
            ("old-partial", RunStatus::PartiallySucceeded, 31, false),
            ("young", RunStatus::Succeeded, 29, true),
            ("exactly-30", RunStatus::Succeeded, 30, true),
            ("old-running", RunStatus::Running, 90, true),
            ("old-queued", RunStatus::Queued, 90, true),
        ];
        for (id, status, age, _) in cases {
            run(&s, &d, id, status, age);
        }
        let report = prune_finished_runs(&s, 30, NOW, &never_held).unwrap();
        for (id, _, _, kept) in cases {
            assert_eq!(exists(&s, "build", id), kept, "{id}");
        }
        assert_eq!(report.removed.len(), 4);
        assert_eq!(report.held, 0);
        assert!(report.failed.is_empty());
        // Idempotent: nothing more to do.
        let again = prune_finished_runs(&s, 30, NOW, &never_held).unwrap();
        assert!(again.removed.is_empty());
    }

    #[test]
    fn held_runs_are_kept_whatever_their_age() {
        let (_tmp, s, d) = build();
        run(&s, &d, "tracked", RunStatus::Succeeded, 100);
        run(&s, &d, "reported", RunStatus::Succeeded, 100);
        let held = |dag: &str, run_id: &str| dag == "build" && run_id == "tracked";
        let report = prune_finished_runs(&s, 30, NOW, &held).unwrap();
        assert_eq!(report.held, 1);
        assert_eq!(report.removed, vec![("build".into(), "reported".into())]);
        assert!(exists(&s, "build", "tracked"));
        // Once the caller lets go (the job was reported), the next pass removes it.
        prune_finished_runs(&s, 30, NOW, &never_held).unwrap();
        assert!(!exists(&s, "build", "tracked"));
    }

    #[test]
    fn the_clock_decides_when_a_run_is_old_enough() {
        let (_tmp, s, d) = build();
        run(&s, &d, "r", RunStatus::Succeeded, 0);
        let day = |n: u64| NOW + n * DAY_MS;
        prune_finished_runs(&s, 7, day(7), &never_held).unwrap();
        assert!(
            exists(&s, "build", "r"),
            "exactly 7 days is not older than 7 days"
        );
        prune_finished_runs(&s, 7, day(7) + 1, &never_held).unwrap();
        assert!(!exists(&s, "build", "r"));
    }

    #[test]
    fn zero_days_keeps_no_finished_run() {
        let (_tmp, s, d) = build();
        run(&s, &d, "done", RunStatus::Succeeded, 0);
        run(&s, &d, "going", RunStatus::Running, 0);
        prune_finished_runs(&s, 0, NOW + 1, &never_held).unwrap();
        assert!(!exists(&s, "build", "done"));
        assert!(exists(&s, "build", "going"));
    }

    #[test]
    fn a_run_without_times_is_kept_and_a_missing_log_dir_is_fine() {
        let (_tmp, s, d) = build();
        let mut record = RunRecord {
            dag_name: "build".into(),
            run_id: "timeless".into(),
            attempt_id: "a1".into(),
            status: RunStatus::Failed,
            trigger: "webhook".into(),
            params: String::new(),
            queued_at: None,
            started_at: None,
            finished_at: None,
            log_file: "/nonexistent/run.log".into(),
            error: None,
            steps: vec![],
            pid: None,
        };
        s.runs.create_attempt(&d, &record).unwrap();
        record.run_id = "no-logs".into();
        record.finished_at = Some(1);
        s.runs.create_attempt(&d, &record).unwrap();
        let report = prune_finished_runs(&s, 30, NOW, &never_held).unwrap();
        assert_eq!(report.removed, vec![("build".into(), "no-logs".into())]);
        assert!(s.runs.find_attempt("build", "timeless").is_ok());
    }

    #[test]
    fn a_dag_sets_its_own_retention_and_its_current_file_wins() {
        let tmp = tempfile::tempdir().unwrap();
        let s = stores(tmp.path());
        let weekly = dag_with(&s, tmp.path(), "weekly", "hist_retention_days: 7\n");
        let keep = dag_with(&s, tmp.path(), "keep", "hist_retention_days: 365\n");
        let plain = dag(&s, tmp.path(), "plain");
        assert_eq!(weekly.hist_retention_days, Some(7));
        run(&s, &weekly, "w8", RunStatus::Succeeded, 8);
        run(&s, &weekly, "w6", RunStatus::Succeeded, 6);
        run(&s, &keep, "k100", RunStatus::Failed, 100);
        run(&s, &plain, "p31", RunStatus::Succeeded, 31);
        prune_finished_runs(&s, 30, NOW, &never_held).unwrap();
        assert!(!exists(&s, "weekly", "w8"));
        assert!(exists(&s, "weekly", "w6"));
        assert!(exists(&s, "keep", "k100"));
        assert!(!exists(&s, "plain", "p31"));

        // The file now says 1 day: its old runs follow the new setting, not their snapshot.
        dag_with(&s, tmp.path(), "weekly", "hist_retention_days: 1\n");
        prune_finished_runs(&s, 30, NOW, &never_held).unwrap();
        assert!(!exists(&s, "weekly", "w6"));
        // A DAG whose file is gone keeps the retention of its snapshot.
        std::fs::remove_file(tmp.path().join("dags/keep.yaml")).unwrap();
        prune_finished_runs(&s, 30, NOW, &never_held).unwrap();
        assert!(exists(&s, "keep", "k100"));
    }
}
