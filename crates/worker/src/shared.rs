//! The state both loops share, and the small helpers every file above uses on it: the busy
//! marks that keep the loops off each other's jobs, the per-job retry schedule, the report
//! loop's targets and wake-up, the untracked finishes still to send, the uploads settled and
//! the uploader's targets, and blocking IO off the async threads. Imports nothing else of this crate but its config, stats, error and backoff.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dispatch_dag::Stores;
use dispatch_executor::ExecutorHandle;
use dispatch_license::{CloudClient, CloudError, CredentialSource};
use dispatch_tracker::Tracker;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::config::{WorkerConfig, WorkerDeps};
use crate::error::WorkerError;
use crate::stats::WorkerStats;

/// State both loops use.
pub(crate) struct Shared {
    pub(crate) config: WorkerConfig,
    pub(crate) client: CloudClient,
    pub(crate) credentials: Arc<dyn CredentialSource>,
    pub(crate) tracker: Arc<Tracker>,
    pub(crate) stores: Stores,
    pub(crate) executor: ExecutorHandle,
    pub(crate) stats: Arc<WorkerStats>,
    /// Jobs one loop is working on right now; the other keeps its hands off them. The flag
    /// says the report loop came for the job meanwhile and must come back (see
    /// [`Shared::try_busy_or_revisit`]).
    busy: Mutex<BusyMarks>,
    /// Per-job retry schedule of accept/finish calls, so one failing job waits alone.
    retries: Mutex<HashMap<String, Retry>>,
    /// Finish calls for jobs that are not tracked (rejections, cancel results) still to send.
    pub(crate) untracked_finishes: Mutex<HashMap<String, UntrackedFinish>>,
    /// Jobs the report loop should look at on its next pass (besides its periodic full pass).
    report_targets: Mutex<HashSet<String>>,
    /// Asks the report loop for a pass now.
    pub(crate) report_wake: Notify,
    /// Set once the intake slots have been raised for batched pulls.
    pub(crate) batch_slots_added: AtomicBool,
    /// Jobs whose log upload has settled (see [`Shared::upload_settled`]).
    uploads_settled: Mutex<HashSet<String>>,
    /// Jobs whose logs the report loop waits for, for the uploader's next pass.
    upload_targets: Mutex<HashSet<String>>,
    /// Asks the progress uploader for a pass now.
    pub(crate) upload_wake: Notify,
}

struct Retry {
    backoff: Backoff,
    not_before: Instant,
}

/// A finish to send for a job the tracker does not hold.
#[derive(Debug, Clone)]
pub(crate) struct UntrackedFinish {
    pub(crate) status: &'static str,
    pub(crate) summary: String,
    pub(crate) attempts: u32,
}

/// Marks a job busy until dropped.
pub(crate) struct BusyGuard<'a> {
    shared: &'a Shared,
    job_id: String,
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        let revisit = self.shared.busy().release(&self.job_id);
        if revisit {
            self.shared.wake_report(&self.job_id);
        }
    }
}

/// The busy jobs, each with whether the report loop came for it meanwhile.
#[derive(Debug, Default)]
struct BusyMarks(HashMap<String, bool>);

impl BusyMarks {
    /// Marks `job_id` busy; false when it already was (then `revisit` is remembered).
    fn mark(&mut self, job_id: &str, revisit: bool) -> bool {
        if let Some(flag) = self.0.get_mut(job_id) {
            *flag |= revisit;
            return false;
        }
        self.0.insert(job_id.to_owned(), false);
        true
    }

    /// Lets go of `job_id`; true when the report loop is to come back for it.
    fn release(&mut self, job_id: &str) -> bool {
        self.0.remove(job_id).unwrap_or(false)
    }
}

impl Shared {
    /// Fresh state over `deps`: nothing busy, no retries, no targets.
    pub(crate) fn new(config: WorkerConfig, deps: WorkerDeps) -> Self {
        let WorkerDeps {
            client,
            credentials,
            tracker,
            stores,
            executor,
        } = deps;
        Self {
            config,
            client,
            credentials,
            tracker,
            stores,
            executor,
            stats: Arc::new(WorkerStats::default()),
            busy: Mutex::new(BusyMarks::default()),
            retries: Mutex::new(HashMap::new()),
            untracked_finishes: Mutex::new(HashMap::new()),
            report_targets: Mutex::new(HashSet::new()),
            report_wake: Notify::new(),
            batch_slots_added: AtomicBool::new(false),
            uploads_settled: Mutex::new(HashSet::new()),
            upload_targets: Mutex::new(HashSet::new()),
            upload_wake: Notify::new(),
        }
    }

    fn busy(&self) -> MutexGuard<'_, BusyMarks> {
        lock(&self.busy)
    }

    /// Marks `job_id` busy unless it already is.
    pub(crate) fn try_busy(&self, job_id: &str) -> Option<BusyGuard<'_>> {
        self.mark_busy(job_id, false)
    }

    /// [`Shared::try_busy`] for the report loop: when the job is busy, its holder points the
    /// report loop at it again as it lets go. A run that ends while its job is still being taken
    /// in is then reported at once, without the intake waking the report loop for every job.
    pub(crate) fn try_busy_or_revisit(&self, job_id: &str) -> Option<BusyGuard<'_>> {
        self.mark_busy(job_id, true)
    }

    fn mark_busy(&self, job_id: &str, revisit: bool) -> Option<BusyGuard<'_>> {
        self.busy().mark(job_id, revisit).then(|| BusyGuard {
            shared: self,
            job_id: job_id.to_owned(),
        })
    }

    /// Marks `job_id` busy, waiting for the other loop to let go of it first.
    pub(crate) async fn busy_wait(&self, job_id: &str) -> BusyGuard<'_> {
        loop {
            if let Some(guard) = self.try_busy(job_id) {
                return guard;
            }
            // Contention is rare (a job pulled again while its report is in progress) and
            // short, so a poll keeps this simple.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Is a retry of `job_id` due (or none scheduled)?
    pub(crate) fn retry_due(&self, job_id: &str, now: Instant) -> bool {
        lock(&self.retries)
            .get(job_id)
            .is_none_or(|r| r.not_before <= now)
    }

    /// Schedules the next attempt for `job_id` after a failed call; returns the delay.
    pub(crate) fn schedule_retry(&self, job_id: &str, error: Option<&CloudError>) -> Duration {
        let retry_after = error
            .filter(|e| matches!(e.status, Some(429 | 503)))
            .and_then(|e| e.retry_after);
        let mut retries = lock(&self.retries);
        let retry = retries.entry(job_id.to_owned()).or_insert_with(|| Retry {
            backoff: Backoff::new(self.config.backoff_min, self.config.backoff_max),
            not_before: Instant::now(),
        });
        let delay = retry.backoff.next_delay(retry_after);
        retry.not_before = Instant::now() + delay;
        delay
    }

    /// Ids of the jobs whose retry is due.
    pub(crate) fn due_retries(&self, now: Instant) -> Vec<String> {
        lock(&self.retries)
            .iter()
            .filter(|(_, r)| r.not_before <= now)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Keeps only the retry schedules whose job id passes `keep`.
    pub(crate) fn retain_retries(&self, keep: impl Fn(&str) -> bool) {
        lock(&self.retries).retain(|id, _| keep(id));
    }

    /// Asks the report loop to look at `job_id` soon.
    pub(crate) fn add_report_target(&self, job_id: String) {
        lock(&self.report_targets).insert(job_id);
    }

    /// Points the report loop at `job_id` and wakes it.
    pub(crate) fn wake_report(&self, job_id: &str) {
        self.add_report_target(job_id.to_owned());
        self.report_wake.notify_one();
    }

    /// The jobs pointed at since the last call.
    pub(crate) fn take_report_targets(&self) -> HashSet<String> {
        std::mem::take(&mut *lock(&self.report_targets))
    }

    /// Forgets the retry schedule of `job_id` (after a success).
    pub(crate) fn clear_retry(&self, job_id: &str) {
        lock(&self.retries).remove(job_id);
    }

    /// The earliest scheduled retry, if any.
    pub(crate) fn next_retry(&self) -> Option<Instant> {
        lock(&self.retries).values().map(|r| r.not_before).min()
    }

    /// Whether the finish of `job_id` may be sent as far as its logs go: the cloud takes no
    /// progress, or the uploader has settled the job's upload (everything acknowledged, refused
    /// by the hub, or given up). With the extension the logs reach the hub before the final
    /// status, and the tracker entry, by which the uploader finds the job after a restart,
    /// stays until they have. Before the cloud's first answer it is not known whether it takes
    /// progress, so nothing is settled (the finish could not go then anyway).
    pub(crate) fn upload_settled(&self, job_id: &str) -> bool {
        self.client.has_answered()
            && (!self.client.supports_progress() || self.upload_is_settled(job_id))
    }

    /// Records that the upload of `job_id` has settled and points the report loop at it.
    pub(crate) fn settle_upload(&self, job_id: &str) {
        lock(&self.uploads_settled).insert(job_id.to_owned());
        self.wake_report(job_id);
    }

    /// Whether the uploader has settled the upload of `job_id` (whatever the cloud serves).
    pub(crate) fn upload_is_settled(&self, job_id: &str) -> bool {
        lock(&self.uploads_settled).contains(job_id)
    }

    /// Forgets that the upload of `job_id` settled: the job is no longer tracked.
    pub(crate) fn forget_upload(&self, job_id: &str) {
        lock(&self.uploads_settled).remove(job_id);
    }

    /// Points the uploader at `job_id`, whose finish waits for its logs, and wakes it.
    pub(crate) fn request_upload(&self, job_id: &str) {
        lock(&self.upload_targets).insert(job_id.to_owned());
        self.upload_wake.notify_one();
    }

    /// The jobs pointed at since the last call.
    pub(crate) fn take_upload_targets(&self) -> HashSet<String> {
        std::mem::take(&mut *lock(&self.upload_targets))
    }

    /// Runs file IO off the async threads.
    pub(crate) async fn blocking<T, F>(what: &'static str, f: F) -> Result<T, WorkerError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|source| WorkerError::Blocking { what, source })
    }
}

/// Locks a mutex, ignoring poisoning: the maps guarded here stay consistent across a panic
/// (each update is a single insert or remove).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_loop_coming_for_a_busy_job_is_remembered_until_it_is_let_go() {
        let mut marks = BusyMarks::default();
        assert!(marks.mark("a", false));
        assert!(!marks.mark("a", false), "busy already");
        assert!(!marks.release("a"), "nobody came for it");
        assert!(marks.mark("a", false));
        assert!(!marks.mark("a", true));
        assert!(
            !marks.mark("a", false),
            "a later plain try keeps the request"
        );
        assert!(marks.release("a"));
        assert!(!marks.release("a"), "once");
        assert!(
            marks.mark("a", true),
            "free again: marked, nothing to remember"
        );
        assert!(!marks.release("a"));
    }
}
