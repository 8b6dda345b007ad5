//! The pull loop and its burst pullers: each pull goes through one [`Puller::pull_once`], which
//! takes an intake slot, asks the cloud for a job and hands a job to the intake on its own task.
//! The main loop long-polls and owns the backoff; the burst pullers only overlap pulls while jobs
//! keep coming. When the cloud serves the `pull-batch` extension, the burst pullers, and the main
//! loop right after a job, ask for as many jobs as there are free slots
//! ([`Puller::pull_batch_once`]) and hand each answer to the batch intake; long-polls stay one-job
//! pulls, and a cloud that does not advertise the extension gets only one-job pulls.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use dispatch_license::{CloudError, MachineCredentials};
use dispatch_protocol::{PullBatchRequest, PullRequest, MAX_BATCH_JOBS};
use dispatch_util::now_ms;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::batch::process_batch;
use crate::intake::process_job;
use crate::shared::Shared;

/// Batches of the `pull-batch` extension taken in (or pulled) at once; the intake slots are
/// raised to this many batches.
const BATCHES_IN_FLIGHT: usize = 4;

/// What one pull came to.
enum Pulled {
    /// A job, now being taken in on its own task.
    Job,
    /// The queue was empty; the call took `held`.
    Empty { held: Duration },
    /// The call failed.
    Failed(CloudError),
    /// Cancellation came first (while waiting for a slot or for the answer).
    Cancelled,
}

/// One puller's handle on the shared intake slots, and the intakes it started.
struct Puller {
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    intakes: JoinSet<()>,
}

impl Puller {
    fn new(shared: Arc<Shared>, slots: Arc<Semaphore>) -> Self {
        Self {
            shared,
            slots,
            intakes: JoinSet::new(),
        }
    }

    /// One pull: waits for a free intake slot (so no job is claimed that cannot be taken in at
    /// once), asks for a job with `wait_seconds` of long-poll, counts the answer and starts the
    /// intake of a job.
    async fn pull_once(
        &mut self,
        creds: MachineCredentials,
        wait_seconds: u32,
        cancel: &CancellationToken,
    ) -> Pulled {
        while let Some(done) = self.intakes.try_join_next() {
            log_intake_panic(done);
        }
        let permit = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Pulled::Cancelled,
            permit = self.slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                // The semaphore is never closed.
                Err(_) => return Pulled::Cancelled,
            },
        };
        let request = PullRequest {
            license_id: creds.license_id.clone(),
            server_id: creds.server_id.clone(),
            heartbeat_secret: creds.heartbeat_secret.clone(),
            wait_seconds,
        };
        let started = Instant::now();
        let result = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Pulled::Cancelled,
            result = self.shared.client.pull_dispatch(&request) => result,
        };
        let stats = &self.shared.stats;
        match result {
            Ok(Some(job)) => {
                stats.record_pulled(now_ms());
                let pulled_at = Instant::now();
                let shared = self.shared.clone();
                self.intakes.spawn(async move {
                    process_job(&shared, job, &creds, pulled_at).await;
                    // The slot is free once the job is taken in.
                    drop(permit);
                });
                Pulled::Job
            }
            Ok(None) => {
                stats.record_pull_ok(now_ms());
                Pulled::Empty {
                    held: started.elapsed(),
                }
            }
            Err(error) => {
                stats.record_pull_error();
                Pulled::Failed(error)
            }
        }
    }

    /// One batched pull (wait 0): waits for the intake slots of a whole batch
    /// ([`WorkerConfig::pull_batch_size`](crate::WorkerConfig::pull_batch_size)), asks for that
    /// many jobs, gives back the slots the answer did not fill and takes the jobs in together.
    async fn pull_batch_once(
        &mut self,
        creds: MachineCredentials,
        cancel: &CancellationToken,
    ) -> Pulled {
        while let Some(done) = self.intakes.try_join_next() {
            log_intake_panic(done);
        }
        let want = self
            .shared
            .config
            .pull_batch_size
            .clamp(1, MAX_BATCH_JOBS as usize);
        if !self.shared.batch_slots_added.swap(true, Ordering::Relaxed) {
            // Several batches in flight: pulled while the others are taken in.
            let extra = (BATCHES_IN_FLIGHT * want)
                .saturating_sub(self.shared.config.intake_concurrency.max(1));
            self.slots.add_permits(extra);
        }
        // A whole batch's slots at once: pullers that each took the slots free at the moment
        // split every freed batch into small ones.
        let permits = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Pulled::Cancelled,
            permits = self.slots.clone().acquire_many_owned(want as u32) => match permits {
                Ok(permits) => permits,
                // The semaphore is never closed.
                Err(_) => return Pulled::Cancelled,
            },
        };
        let request = PullBatchRequest {
            license_id: creds.license_id.clone(),
            server_id: creds.server_id.clone(),
            heartbeat_secret: creds.heartbeat_secret.clone(),
            max_jobs: permits.num_permits() as u32,
            // The client lowers it to what it reads.
            max_bytes: u64::MAX,
        };
        let started = Instant::now();
        let result = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Pulled::Cancelled,
            result = self.shared.client.pull_dispatch_batch(&request) => result,
        };
        let stats = &self.shared.stats;
        match result {
            Ok(jobs) if jobs.is_empty() => {
                stats.record_pull_ok(now_ms());
                Pulled::Empty {
                    held: started.elapsed(),
                }
            }
            Ok(jobs) => {
                for _ in &jobs {
                    stats.record_pulled(now_ms());
                }
                let mut permits = permits;
                if let Some(unused) = permits.num_permits().checked_sub(jobs.len()) {
                    drop(permits.split(unused));
                }
                let pulled_at = Instant::now();
                let shared = self.shared.clone();
                self.intakes.spawn(async move {
                    process_batch(&shared, jobs, &creds, pulled_at).await;
                    // The slots are free once the jobs are taken in.
                    drop(permits);
                });
                Pulled::Job
            }
            Err(error) => {
                stats.record_pull_error();
                Pulled::Failed(error)
            }
        }
    }

    /// Waits for the intakes in progress (their accept call included): stopping one halfway
    /// would only leave work for the next start.
    async fn finish_intakes(mut self) {
        while let Some(done) = self.intakes.join_next().await {
            log_intake_panic(done);
        }
    }
}

pub(crate) async fn pull_loop(shared: Arc<Shared>, cancel: &CancellationToken) {
    let config = &shared.config;
    // Intakes run side by side (each job is still durable before its accept): the durable
    // writes of one job take tens of milliseconds, and the file system commits concurrent
    // fsyncs together.
    let slots = Arc::new(Semaphore::new(config.intake_concurrency.max(1)));
    let flowing = Arc::new(Notify::new());
    let mut bursts = JoinSet::new();
    for _ in 1..config.pull_concurrency.max(1) {
        let puller = Puller::new(shared.clone(), slots.clone());
        bursts.spawn(burst_puller(puller, flowing.clone(), cancel.clone()));
    }
    let mut puller = Puller::new(shared.clone(), slots);
    let mut backoff = Backoff::new(config.backoff_min, config.backoff_max);
    let mut idle_for_credentials = false;
    let wait_seconds = config.wait_seconds();
    let mut after_job = false;
    loop {
        if cancel.is_cancelled() {
            break;
        }
        let Some(creds) = shared.credentials.cloud_machine_credentials() else {
            if !idle_for_credentials {
                tracing::info!(
                    recheck = ?config.credentials_recheck,
                    "no machine credentials (no key-activated license): dispatch worker idle"
                );
                idle_for_credentials = true;
            }
            if sleep_or_cancel(cancel, config.credentials_recheck).await {
                break;
            }
            continue;
        };
        if idle_for_credentials {
            tracing::info!("machine credentials available: pulling dispatch jobs");
            idle_for_credentials = false;
        }
        // Right after a job, more are likely waiting: with the extension, ask for a batch
        // first (it answers at once) and long-poll only once one comes back empty.
        let batched =
            after_job && config.pull_batch_size > 1 && shared.client.supports_pull_batch();
        let pulled = if batched {
            puller.pull_batch_once(creds, cancel).await
        } else {
            puller.pull_once(creds, wait_seconds, cancel).await
        };
        after_job = matches!(pulled, Pulled::Job);
        let delay = match pulled {
            Pulled::Cancelled => break,
            Pulled::Job => {
                backoff.reset();
                // More may be waiting: let the burst pullers overlap their pulls with ours. With
                // the extension, a lone long-polled job only leads to one batched pull of ours:
                // a burst is what a batch that comes back with jobs shows (a job's dispatch
                // latency should not pay for four pulls that find nothing).
                let lone =
                    !batched && config.pull_batch_size > 1 && shared.client.supports_pull_batch();
                if !lone {
                    flowing.notify_waiters();
                }
                Duration::ZERO
            }
            Pulled::Empty { .. } if batched => Duration::ZERO,
            Pulled::Empty { held } => {
                backoff.reset();
                // A server that honoured `wait_seconds` held the call for about that long; one
                // that ignored it answered at once, and pulling again at once would be a busy
                // loop.
                if wait_seconds > 0 && held >= Duration::from_secs(u64::from(wait_seconds)) / 2 {
                    Duration::ZERO
                } else {
                    config.idle_delay
                }
            }
            Pulled::Failed(error) => {
                let retry_after = error
                    .retry_after
                    .filter(|_| matches!(error.status, Some(429 | 503)));
                let delay = backoff.next_delay(retry_after);
                tracing::warn!(%error, retry_in = ?delay, failures = backoff.failures(), "dispatch pull failed");
                delay
            }
        };
        if !delay.is_zero() && sleep_or_cancel(cancel, delay).await {
            break;
        }
    }
    puller.finish_intakes().await;
    while let Some(done) = bursts.join_next().await {
        log_intake_panic(done);
    }
    tracing::debug!("pull loop stopped");
}

/// An extra puller (see `WorkerConfig::pull_concurrency`): asleep until the main loop gets a job,
/// then pulls without long-polling until an answer is empty or fails. Backoff and long-polling
/// stay with the main loop, so an outage or an idle queue sees no extra requests from here.
async fn burst_puller(mut puller: Puller, flowing: Arc<Notify>, cancel: CancellationToken) {
    'wait: loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break 'wait,
            _ = flowing.notified() => {}
        }
        loop {
            let Some(creds) = puller.shared.credentials.cloud_machine_credentials() else {
                continue 'wait;
            };
            let batched = puller.shared.config.pull_batch_size > 1
                && puller.shared.client.supports_pull_batch();
            let pulled = if batched {
                puller.pull_batch_once(creds, &cancel).await
            } else {
                puller.pull_once(creds, 0, &cancel).await
            };
            match pulled {
                Pulled::Job => {}
                Pulled::Empty { .. } => continue 'wait,
                Pulled::Failed(error) => {
                    tracing::debug!(%error, "burst pull failed; leaving retries to the main pull loop");
                    continue 'wait;
                }
                Pulled::Cancelled => break 'wait,
            }
        }
    }
    puller.finish_intakes().await;
}

fn log_intake_panic(done: Result<(), tokio::task::JoinError>) {
    if let Err(error) = done {
        tracing::error!(%error, "job intake task failed");
    }
}

/// Sleeps `delay` unless `cancel` fires first; returns true when cancelled.
async fn sleep_or_cancel(cancel: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => true,
        _ = tokio::time::sleep(delay) => false,
    }
}
