//! SIGINT/SIGTERM: the first cancels the shared token (graceful shutdown); a second
//! exits at once. That is safe because every component writes durably before it acts, so the
//! next start picks up where this one stopped.

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// Exit code when a second signal cuts the graceful shutdown short.
pub(crate) const FORCED_EXIT_CODE: i32 = 1;

/// Installs the handlers now (so a signal that arrives during start-up is not lost) and spawns
/// the task that watches them.
pub(crate) fn install(cancel: CancellationToken) -> std::io::Result<()> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        let name = next_signal(&mut int, &mut term).await;
        tracing::info!(
            signal = name,
            "shutting down gracefully; send the signal again to stop at once"
        );
        cancel.cancel();
        let name = next_signal(&mut int, &mut term).await;
        tracing::warn!(
            signal = name,
            "second signal: stopping now; unfinished jobs stay tracked for the next start"
        );
        std::process::exit(FORCED_EXIT_CODE);
    });
    Ok(())
}

/// Waits for the next SIGINT or SIGTERM and names it.
async fn next_signal(int: &mut Signal, term: &mut Signal) -> &'static str {
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}
