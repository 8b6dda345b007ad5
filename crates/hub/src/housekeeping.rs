//! Background passes over the store that keep it bounded: retention (hourly, and once at start).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::{blocking, now_ms, Store};

/// Time between retention passes.
pub(crate) const RETENTION_PERIOD: Duration = Duration::from_secs(3600);

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
                retention_days = retention.as_secs() / 86_400,
                "old finished jobs pruned"
            ),
            Err(e) => tracing::warn!(error = %dispatch_util::error_chain(&e),
                "retention pass failed; retrying at the next one"),
        }
    }
}
