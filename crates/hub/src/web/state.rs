//! What every page handler shares: the hub's state, the pages' own read connection to the store
//! and the browser sessions.

use std::sync::Arc;

use dispatch_protocol::Secret;
use tokio::sync::Semaphore;

use super::guard::LoginGuard;
use super::sessions::Sessions;
use crate::error::HubError;
use crate::handler::AppState;
use crate::store::sql::Sql;
use crate::store::Reader;

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
    reader: Reader,
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
    /// The pages' state over the hub's state, reading the store through `reader`.
    pub(crate) fn open(app: Arc<AppState>, reader: Reader) -> Web {
        let token = app.cfg.ui_token.clone().filter(|t| !t.is_empty());
        let github_web = super::links::github_web(&app.cfg.github.api_url);
        let secure_cookies = app
            .cfg
            .public_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"));
        Web {
            app,
            reader,
            sessions: Sessions::default(),
            guard: LoginGuard::default(),
            token,
            github_web,
            secure_cookies,
            tails: Arc::new(Semaphore::new(MAX_TAILS)),
            whole_logs: Arc::new(Semaphore::new(MAX_WHOLE_LOGS)),
        }
    }

    /// Runs `f` over the read connection on the blocking pool.
    pub(crate) async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&dyn Sql) -> Result<T, HubError> + Send + 'static,
    ) -> Result<T, HubError> {
        let web = self.clone();
        tokio::task::spawn_blocking(move || web.reader.read(f))
            .await
            .map_err(HubError::Task)?
    }
}
