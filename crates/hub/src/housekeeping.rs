//! Background passes over the store: retention (hourly, and once at start) keeps it bounded; the
//! "last seen" flush (once a minute, and at shutdown) writes when servers were seen.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::{blocking, now_ms, Store};

/// Time between retention passes.
pub(crate) const RETENTION_PERIOD: Duration = Duration::from_secs(3600);

/// Time between writes of "last seen" times: a server's pulls cost at most one write a minute.
pub(crate) const SEEN_PERIOD: Duration = Duration::from_secs(60);

/// Prunes what is older than `retention` now, then every [`RETENTION_PERIOD`]. A failed pass is
/// logged and tried again at the next tick.
pub(crate) async fn retention(store: Arc<Store>, retention: Duration, cancel: CancellationToken) {
    let mut ticks = tokio::time::interval(RETENTION_PERIOD);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticks.tick() => {}
        }
        match blocking(&store, move |s| s.prune(now_ms(), retention)).await {
            Ok(pruned) if pruned.is_empty() => {}
            Ok(pruned) => tracing::info!(
                jobs = pruned.jobs,
                deliveries = pruned.deliveries,
                payloads = pruned.payloads,
                held_approvals_and_cancels = pruned.aged,
                retention_days = retention.as_secs() / 86_400,
                "old finished jobs pruned"
            ),
            Err(e) => tracing::warn!(error = %dispatch_util::error_chain(&e),
                "retention pass failed; retrying at the next one"),
        }
    }
}

/// Writes the "last seen" times pulls and heartbeats noted, every [`SEEN_PERIOD`] and once more
/// when the hub stops.
pub(crate) async fn flush_seen(store: Arc<Store>, cancel: CancellationToken) {
    let start = tokio::time::Instant::now() + SEEN_PERIOD;
    let mut ticks = tokio::time::interval_at(start, SEEN_PERIOD);
    loop {
        let stopping = tokio::select! {
            _ = cancel.cancelled() => true,
            _ = ticks.tick() => false,
        };
        if let Err(e) = blocking(&store, |s| s.flush_seen()).await {
            tracing::warn!(error = %dispatch_util::error_chain(&e),
                "writing when servers were last seen failed; retrying at the next pass");
        }
        if let Err(e) = blocking(&store, |s| s.recount_shared()).await {
            tracing::warn!(error = %dispatch_util::error_chain(&e),
                "counting jobs for the gauges failed; retrying at the next pass");
        }
        if stopping {
            return;
        }
    }
}
