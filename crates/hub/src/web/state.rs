//! What every page handler shares: the hub's state, the pages' own read connection to the store
//! and the browser sessions.

use std::path::Path;
use std::sync::{Arc, Mutex};

use dispatch_protocol::Secret;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::Semaphore;

use super::guard::LoginGuard;
use super::sessions::Sessions;
use crate::error::HubError;
use crate::handler::AppState;

/// Live tails open at once, over every browser; one more is answered 503. Each holds a task and a
/// watch on the store, so their number is bounded like the hub's connections are.
pub(crate) const MAX_TAILS: usize = 256;

/// Whole-log answers built at once, over every browser; one more is answered 503. Each may hold
/// a job's whole log cap in memory.
pub(crate) const MAX_WHOLE_LOGS: usize = 4;

/// The state of the page routes.
pub(crate) struct Web {
    /// The hub's handler state (its config, store, metrics).
    pub app: Arc<AppState>,
    /// The pages read through a connection of their own, opened read-only: a slow page never
    /// holds the connection the cloud API reads through, and cannot write.
    reader: Mutex<Connection>,
    /// Logged-in browsers.
    pub sessions: Sessions,
    /// Wrong tokens per client address.
    pub guard: LoginGuard,
    /// `ui_token`; None: the pages are disabled.
    pub token: Option<Secret>,
    /// GitHub's web address (`links::github_web` of the API address).
    pub github_web: String,
    /// Session cookies carry `Secure` when the hub is reached over https.
    pub secure_cookies: bool,
    /// One permit per live tail open ([`MAX_TAILS`]).
    pub tails: Arc<Semaphore>,
    /// One permit per whole-log answer being built ([`MAX_WHOLE_LOGS`]).
    pub whole_logs: Arc<Semaphore>,
}

impl Web {
    /// The pages' state over the hub's state; opens the read connection to the store at `db`.
    pub(crate) fn open(app: Arc<AppState>, db: &Path) -> Result<Web, HubError> {
        let reader = Connection::open_with_flags(
            db,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(HubError::store("open the web pages' read connection"))?;
        reader
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(HubError::store("set the busy timeout"))?;
        let token = app.cfg.ui_token.clone().filter(|t| !t.is_empty());
        let github_web = super::links::github_web(&app.cfg.github.api_url);
        let secure_cookies = app
            .cfg
            .public_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"));
        Ok(Web {
            app,
            reader: Mutex::new(reader),
            sessions: Sessions::default(),
            guard: LoginGuard::default(),
            token,
            github_web,
            secure_cookies,
            tails: Arc::new(Semaphore::new(MAX_TAILS)),
            whole_logs: Arc::new(Semaphore::new(MAX_WHOLE_LOGS)),
        })
    }

    /// Runs `f` over the read connection on the blocking pool.
    pub(crate) async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Connection) -> Result<T, HubError> + Send + 'static,
    ) -> Result<T, HubError> {
        let web = self.clone();
        tokio::task::spawn_blocking(move || {
            let conn = web.reader.lock().unwrap_or_else(|p| p.into_inner());
            f(&conn)
        })
        .await
        .map_err(HubError::Task)?
    }
}
