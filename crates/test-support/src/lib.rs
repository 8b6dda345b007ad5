//! Helpers shared by the crates' tests; used only as a dev-dependency (the layering check
//! enforces it).
//!
//! [`capture_logs`] installs a global tracing subscriber writing into a [`LogBuffer`], so a test
//! can assert that no secret reaches the logs.

use std::sync::{Arc, Mutex, OnceLock};

/// Everything the capturing subscriber wrote.
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    /// The captured text so far.
    pub fn contents(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Installs (once per test binary) a global subscriber with `filter` (an `EnvFilter` directive)
/// writing to the returned buffer. Global, not `set_default`: tracing caches per-callsite
/// interest, and with tests on several threads a thread-local subscriber can miss events whose
/// callsite another thread registered first. Other tests' logs land in the same buffer, which only
/// widens what a leak check covers. Later calls return the same buffer and ignore `filter`.
pub fn capture_logs(filter: &str) -> LogBuffer {
    static LOGS: OnceLock<LogBuffer> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = LogBuffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(buffer.clone())
            .with_ansi(false)
            .finish();
        // Another subscriber already installed would make the capture silently empty.
        if let Err(e) = tracing::subscriber::set_global_default(subscriber) {
            panic!("capture_logs: a global subscriber is already installed: {e}");
        }
        buffer
    })
    .clone()
}
