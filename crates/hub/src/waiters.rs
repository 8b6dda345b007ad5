//! Long-polling pulls that wait for a job, and the wake-ups that reach them.
//!
//! A stored job wakes one waiting pull that may take it, not all of them: with 10,000 schedulers
//! waiting, waking every one to look in the store for a single job costs 10,000 store reads and
//! delays the one that gets it by as many. So each waiting pull sits in a first-in-first-out
//! queue of its license, and each [`Wake`] (one per job that became claimable: stored, or back
//! in the queue after its lease ran out) goes to the pull that has waited longest among those
//! that may take the job: its license's queue for a job bound to a license, every license's
//! queue for a job any license may take, and only the one server's pulls for a job targeted at a
//! server (a cancel). A job's wake never reaches a pull that may not take it, so a job for
//! license B reaches a waiting B pull even with A pulls queued in front.
//!
//! The rules that keep a wake from being lost:
//! - A pull joins its queue *before* its claim attempt ([`Waiters::join`]), so a job stored while
//!   it looks in the store still finds it queued; a wake that comes during the attempt is kept
//!   for the next round.
//! - A wake is used up by an attempt that began after it came: one that finds nothing (the job
//!   went to another pull) or takes the job it was for. A pull that takes a different job (an
//!   older one), or leaves (deadline, client gone, shutdown) holding a wake it has not tried,
//!   passes the wake on to the next pull that may take that job.
//! - A wake that finds no waiting pull is dropped: the job waits in the store, and the next pull
//!   finds it in its first attempt.
//!
//! - A job nobody took although pulls that may take it wait (a claim put back by a claim
//!   attempt rather than by the lease sweep, say) gets a wake from the lease sweep: [`sweep`].
//!
//! Between a pull's wake-ups nothing polls: it waits on its wake and one timer (its deadline).
//! Not here: the claim itself (the pull handler), HTTP.

use std::collections::{BTreeMap, HashMap};
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::time::Duration;

use crate::error::HubError;
use crate::store::{blocking, now_ms, JobTarget, Store};

/// Distinct targets of forgotten jobs woken for in one sweep; the woken pulls pass their wake on
/// while they find jobs, so the rest follow.
const STALE_TARGETS: i64 = 64;

/// Wakes a waiting pull for each of the just-stored `job_ids` that is queued. A failed lookup is
/// logged, not returned: the jobs are stored, and the next pull finds them.
pub(crate) async fn wake_stored(store: &Arc<Store>, waiters: &Waiters, job_ids: Vec<String>) {
    match blocking(store, move |s| s.queued_targets(&job_ids)).await {
        Ok(targets) => {
            waiters.wake(targets.iter().map(Wake::from));
            announce(store, targets).await;
        }
        Err(e) => tracing::warn!(error = %dispatch_util::error_chain(&e),
            "cannot tell waiting pulls about stored jobs; they find them when they pull again"),
    }
}

/// Tells the other hub processes on the store (replicas on PostgreSQL) about jobs that can be
/// claimed, for their waiting pulls. A failure is logged: their lease sweeps find the jobs later.
async fn announce(store: &Arc<Store>, targets: Vec<JobTarget>) {
    if let Err(e) = blocking(store, move |s| s.announce(targets)).await {
        tracing::warn!(error = %dispatch_util::error_chain(&e),
            "cannot tell other hub replicas about claimable jobs; their sweeps find them");
    }
}

/// Hears the other hub processes' announcements (PostgreSQL) on a thread of its own until
/// `cancel`, waking a waiting pull here for each job announced.
pub(crate) fn listen_to_replicas(
    store: &Store,
    waiters: Arc<Waiters>,
    cancel: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let Some(listener) = store.listener() else {
        return Ok(());
    };
    std::thread::Builder::new()
        .name("hub-replica-listener".into())
        .spawn(move || {
            listener.run(
                || cancel.is_cancelled(),
                |targets| waiters.wake(targets.iter().map(Wake::from)),
            );
        })
        .map(drop)
}

/// The lease sweep's pass: claims whose lease has run out go back to the queue (or are finished
/// as `rejected` after too many claims), and a waiting pull is woken for each job put back; then,
/// while pulls wait, a pull is woken for each kind of queued job that has sat unchanged for two
/// sweep `period`s (a missed wake). Returns how many jobs changed; when no lease has run out it
/// writes nothing.
pub(crate) async fn sweep(
    store: &Arc<Store>,
    waiters: &Waiters,
    period: Duration,
) -> Result<usize, HubError> {
    let now = now_ms();
    let lapsed = blocking(store, move |s| s.lapsed_claims(now)).await?;
    let mut changed = 0;
    if lapsed.any {
        changed = blocking(store, move |s| s.requeue_expired(now)).await?;
        waiters.wake(lapsed.requeued.iter().map(Wake::from));
        announce(store, lapsed.requeued).await;
    }
    if waiters.joined() > 0 {
        let stale = i64::try_from(period.as_millis().saturating_mul(2)).unwrap_or(i64::MAX);
        let before = now.saturating_sub(stale);
        let stale = blocking(store, move |s| s.stale_targets(before, STALE_TARGETS)).await?;
        waiters.wake(stale.iter().map(|t| Wake::unnamed(&t.license, &t.server)));
    }
    Ok(changed)
}

/// A job that became claimable, as a wake-up for one waiting pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Wake {
    /// The job, when known: a pull that takes exactly this job has used the wake up.
    job_id: Option<Box<str>>,
    /// The license that may take it; empty: any license.
    license: Box<str>,
    /// The one server that may take it; empty: any server of the license.
    server: Box<str>,
}

impl Wake {
    /// A wake for job `job_id`, bound to `license` and `server` as the store keeps a job's
    /// target (empty: any).
    pub(crate) fn job(job_id: &str, license: &str, server: &str) -> Wake {
        Wake {
            job_id: Some(job_id.into()),
            license: license.into(),
            server: server.into(),
        }
    }

    /// A wake for some job the waker cannot name, bound as [`Wake::job`]'s.
    pub(crate) fn unnamed(license: &str, server: &str) -> Wake {
        Wake {
            job_id: None,
            license: license.into(),
            server: server.into(),
        }
    }
}

impl From<&JobTarget> for Wake {
    fn from(t: &JobTarget) -> Wake {
        Wake::job(&t.job_id, &t.license, &t.server)
    }
}

/// What became of a wake a pull held when its claim attempt ended; counted on `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WakeOutcome {
    /// The pull took a job.
    Job,
    /// The pull found nothing: another pull had taken the job.
    Nothing,
}

impl WakeOutcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            WakeOutcome::Job => "job",
            WakeOutcome::Nothing => "nothing",
        }
    }
}

/// The waiting pulls of every license. Shared by the pull handler (join, wait) and whoever stores
/// jobs or puts them back in the queue (wake).
#[derive(Default)]
pub(crate) struct Waiters {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Hands out queue positions; a larger one joined later.
    next: u64,
    /// Queued pulls per license, by queue position: the first entry has waited longest.
    queues: HashMap<Arc<str>, BTreeMap<u64, Arc<Slot>>>,
    /// License and queue position of each server's queued pulls (as a rule one), so that a job
    /// for one server finds its pull without a walk over thousands.
    servers: HashMap<Arc<str>, Vec<(Arc<str>, u64)>>,
    /// Pulls joined and not yet gone, queued or woken.
    joined: usize,
}

/// One waiting pull as the queues hold it.
struct Slot {
    server: Arc<str>,
    state: Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    /// Its queue position while queued; `None` once a wake has taken it out of the queue.
    position: Option<u64>,
    /// A wake that came and that no attempt has started with yet.
    wake: Option<Wake>,
    /// Whom to tell when a wake comes.
    waker: Option<Waker>,
}

impl Slot {
    fn state(&self) -> MutexGuard<'_, SlotState> {
        // Nothing here can panic while the lock is held; a poisoned lock still holds sound data.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Waiters {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a pull of `server_id` under `license_id`, at the back. Join before the first claim
    /// attempt: a job stored from then on wakes this pull or another.
    pub(crate) fn join(self: &Arc<Self>, license_id: &str, server_id: &str) -> Waiter {
        let slot = Arc::new(Slot {
            server: server_id.into(),
            state: Mutex::new(SlotState::default()),
        });
        let mut inner = self.lock();
        let license = match inner.queues.get_key_value(license_id) {
            Some((key, _)) => key.clone(),
            None => Arc::from(license_id),
        };
        inner.joined += 1;
        inner.enqueue(&license, &slot);
        Waiter {
            waiters: self.clone(),
            license,
            slot,
            held: None,
        }
    }

    /// Wakes one waiting pull for each of `wakes` (see the module docs for which one).
    pub(crate) fn wake(&self, wakes: impl IntoIterator<Item = Wake>) {
        let mut wakers = Vec::new();
        {
            let mut inner = self.lock();
            for wake in wakes {
                wakers.extend(inner.hand_over(wake));
            }
        }
        // Woken outside the lock: a waker may run the woken task's poll on this thread.
        for waker in wakers {
            waker.wake();
        }
    }

    /// Pulls joined and not yet gone.
    pub(crate) fn joined(&self) -> usize {
        self.lock().joined
    }
}

impl Inner {
    fn enqueue(&mut self, license: &Arc<str>, slot: &Arc<Slot>) {
        let position = self.next;
        self.next += 1;
        slot.state().position = Some(position);
        self.queues
            .entry(license.clone())
            .or_default()
            .insert(position, slot.clone());
        self.servers
            .entry(slot.server.clone())
            .or_default()
            .push((license.clone(), position));
    }

    /// Takes the pull at `position` out of `license`'s queue and the server index.
    fn dequeue(&mut self, license: &str, position: u64) -> Option<Arc<Slot>> {
        let queue = self.queues.get_mut(license)?;
        let slot = queue.remove(&position)?;
        if queue.is_empty() {
            self.queues.remove(license);
        }
        if let Some(positions) = self.servers.get_mut(&slot.server) {
            positions.retain(|(_, p)| *p != position);
            if positions.is_empty() {
                self.servers.remove(&slot.server);
            }
        }
        Some(slot)
    }

    /// Gives `wake` to the longest-waiting queued pull that may take its job, taking that pull
    /// out of its queue; returns the waker to call. `None` when no such pull waits.
    fn hand_over(&mut self, wake: Wake) -> Option<Waker> {
        let (license, position) = self.pick(&wake)?;
        let slot = self.dequeue(&license, position)?;
        let mut state = slot.state();
        state.position = None;
        state.wake = Some(wake);
        state.waker.take()
    }

    /// The license queue and position of the pull [`Inner::hand_over`] gives `wake` to.
    fn pick(&self, wake: &Wake) -> Option<(Arc<str>, u64)> {
        let may_take = |license: &str| wake.license.is_empty() || license == &*wake.license;
        if wake.server.is_empty() {
            self.queues
                .iter()
                .filter(|(license, _)| may_take(license))
                .filter_map(|(license, queue)| {
                    let (&position, _) = queue.first_key_value()?;
                    Some((license.clone(), position))
                })
                .min_by_key(|(_, position)| *position)
        } else {
            self.servers
                .get(&*wake.server)?
                .iter()
                .filter(|(license, _)| may_take(license))
                .min_by_key(|(_, position)| *position)
                .cloned()
        }
    }
}

/// A pull's place among the waiters, from before its first claim attempt until it answers.
/// Dropping it leaves the queue and passes on any wake it has not used.
pub(crate) struct Waiter {
    waiters: Arc<Waiters>,
    license: Arc<str>,
    slot: Arc<Slot>,
    /// The wake the current claim attempt started with.
    held: Option<Wake>,
}

impl Waiter {
    /// Call right before each claim attempt: takes the wake that came (the attempt will look for
    /// its job) and, if the wake took this pull out of its queue, queues it again at the back.
    pub(crate) fn attempting(&mut self) {
        let mut inner = self.waiters.lock();
        let mut state = self.slot.state();
        if let Some(wake) = state.wake.take() {
            // A wake the previous attempt left unused is passed on, not dropped.
            if let Some(unused) = self.held.replace(wake) {
                drop(state);
                let waker = inner.hand_over(unused);
                state = self.slot.state();
                if let Some(waker) = waker {
                    waker.wake();
                }
            }
        }
        if state.position.is_none() {
            drop(state);
            inner.enqueue(&self.license, &self.slot);
        }
    }

    /// The claim attempt found nothing: the wake it started with (if any) is used up, since its
    /// job has gone to another pull. Returns what became of that wake.
    pub(crate) fn found_nothing(&mut self) -> Option<WakeOutcome> {
        self.held.take().map(|_| WakeOutcome::Nothing)
    }

    /// The claim attempt took `job_id`: the wake it started with is used up if it was for that
    /// job; any other is passed on when the waiter is dropped (the pull answers now). Returns
    /// what became of that wake.
    pub(crate) fn took(&mut self, job_id: &str) -> Option<WakeOutcome> {
        let held = self.held.as_ref()?;
        if held.job_id.as_deref() == Some(job_id) {
            self.held = None;
        }
        Some(WakeOutcome::Job)
    }

    /// Resolves once a wake has come since the last [`Waiter::attempting`]; at once if one came
    /// during the attempt.
    pub(crate) async fn woken(&self) {
        poll_fn(|cx| {
            let mut state = self.slot.state();
            if state.wake.is_some() {
                return Poll::Ready(());
            }
            match &mut state.waker {
                Some(waker) => waker.clone_from(cx.waker()),
                None => state.waker = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut wakers = Vec::new();
        {
            let mut inner = self.waiters.lock();
            let (position, unused) = {
                let mut state = self.slot.state();
                state.waker = None;
                (state.position.take(), state.wake.take())
            };
            if let Some(position) = position {
                inner.dequeue(&self.license, position);
            }
            inner.joined -= 1;
            for wake in unused.into_iter().chain(self.held.take()) {
                wakers.extend(inner.hand_over(wake));
            }
        }
        for waker in wakers {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt as _;

    fn is_woken(w: &Waiter) -> bool {
        w.woken().now_or_never().is_some()
    }

    /// Which of `ws` are woken, in order.
    fn woken<const N: usize>(ws: [&Waiter; N]) -> [bool; N] {
        ws.map(is_woken)
    }

    /// Waiters for `who` (license, server), joined in that order, each having made its first
    /// attempt and found nothing: asleep in their queues.
    fn asleep<const N: usize>(who: [(&str, &str); N]) -> (Arc<Waiters>, [Waiter; N]) {
        let waiters = Arc::new(Waiters::default());
        let asleep = who.map(|(license, server)| {
            let mut w = waiters.join(license, server);
            w.attempting();
            assert_eq!(w.found_nothing(), None);
            assert!(!is_woken(&w));
            w
        });
        (waiters, asleep)
    }

    #[test]
    fn one_job_wakes_the_longest_waiting_pull_only() {
        let (waiters, [first, second, third]) = asleep([("a", "s1"), ("a", "s2"), ("a", "s3")]);
        waiters.wake([Wake::job("j1", "a", "")]);
        assert_eq!(woken([&first, &second, &third]), [true, false, false]);
        waiters.wake([Wake::job("j2", "a", ""), Wake::job("j3", "", "")]);
        assert_eq!(woken([&second, &third]), [true, true]);
    }

    #[test]
    fn a_job_reaches_only_pulls_that_may_take_it() {
        let (waiters, [a1, a2, b]) = asleep([("a", "s1"), ("a", "s2"), ("b", "s3")]);
        waiters.wake([Wake::job("for-b", "b", "")]);
        assert_eq!(woken([&a1, &a2, &b]), [false, false, true]);
        // A job for one server skips the pulls of the license's other servers.
        waiters.wake([Wake::job("cancel", "a", "s2")]);
        assert_eq!(woken([&a1, &a2]), [false, true]);
        // No pull of license c waits: the wake is dropped, the job waits in the store.
        waiters.wake([Wake::job("for-c", "c", "")]);
        assert!(!is_woken(&a1));
    }

    #[test]
    fn any_license_goes_to_the_longest_waiting_of_all() {
        let (waiters, [b, a]) = asleep([("b", "s1"), ("a", "s2")]);
        waiters.wake([Wake::job("j", "", "")]);
        assert_eq!(woken([&b, &a]), [true, false]);
    }

    #[test]
    fn a_pull_that_leaves_with_an_untried_wake_passes_it_on() {
        let (waiters, [first, second]) = asleep([("a", "s1"), ("a", "s2")]);
        waiters.wake([Wake::job("j", "a", "")]);
        assert!(is_woken(&first));
        drop(first);
        assert!(is_woken(&second));
        assert_eq!(waiters.joined(), 1);
    }

    #[test]
    fn taking_another_job_passes_the_wake_on_and_taking_its_job_uses_it_up() {
        let (waiters, [mut first, mut second, third]) =
            asleep([("a", "s1"), ("a", "s2"), ("a", "s3")]);
        waiters.wake([Wake::job("new", "a", "")]);
        first.attempting();
        // It took an older job, not the one it was woken for.
        assert_eq!(first.took("older"), Some(WakeOutcome::Job));
        drop(first);
        assert!(is_woken(&second));
        second.attempting();
        assert_eq!(second.took("new"), Some(WakeOutcome::Job));
        drop(second);
        assert!(!is_woken(&third));
    }

    #[test]
    fn a_wake_during_the_attempt_is_kept_for_the_next_round() {
        let waiters = Arc::new(Waiters::default());
        let mut w = waiters.join("a", "s1");
        w.attempting();
        // Stored while the attempt looked in the store: the attempt may have missed it.
        waiters.wake([Wake::job("j", "a", "")]);
        assert_eq!(w.found_nothing(), None);
        assert!(is_woken(&w));
        w.attempting();
        assert_eq!(w.took("j"), Some(WakeOutcome::Job));
    }

    #[test]
    fn a_pull_that_found_nothing_queues_again_at_the_back() {
        let (waiters, [mut first, second]) = asleep([("a", "s1"), ("a", "s2")]);
        waiters.wake([Wake::job("j", "a", "")]);
        first.attempting();
        assert_eq!(first.found_nothing(), Some(WakeOutcome::Nothing));
        assert!(!is_woken(&first));
        waiters.wake([Wake::job("k", "a", "")]);
        assert_eq!(woken([&first, &second]), [false, true]);
    }

    #[test]
    fn leaving_empties_the_queues() {
        let (waiters, pulls) = asleep([("a", "s1"), ("b", "s2")]);
        drop(pulls);
        assert_eq!(waiters.joined(), 0);
        let inner = waiters.lock();
        assert!(inner.queues.is_empty() && inner.servers.is_empty());
    }

    #[tokio::test]
    async fn a_sleeping_pull_is_woken_by_a_wake_from_another_task() {
        let (waiters, [w]) = asleep([("a", "s1")]);
        let waker = {
            let waiters = waiters.clone();
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                waiters.wake([Wake::job("j", "a", "")]);
            })
        };
        w.woken().await;
        waker.await.unwrap();
    }
}
