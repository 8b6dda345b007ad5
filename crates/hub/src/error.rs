//! The hub's error type.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::store::SqlError;

/// Everything that can go wrong while configuring or running the hub.
///
/// Config variants (`ReadConfig`, `ParseConfig`, `InvalidSetting`) name the file and the setting so a
/// binary can map them to exit code 2 ([`HubError::is_config`]).
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// A config or bindings file could not be read.
    #[error("failed to read `{path}`")]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// A config or bindings file is not valid TOML or has an unknown or mistyped field.
    #[error("invalid config file `{path}`: {message}")]
    ParseConfig {
        /// The file.
        path: PathBuf,
        /// Line, column, key and reason, never the file's text: `toml`'s own message quotes the
        /// offending line, which may hold the webhook secret or a license key.
        message: String,
    },
    /// A setting has a value the hub cannot use.
    #[error("invalid setting `{setting}` in {origin}: {reason}")]
    InvalidSetting {
        /// Where the setting came from (a file path or "hub config").
        origin: String,
        /// The setting, e.g. `binding[2].branch_pattern`.
        setting: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The data directory or a file in it could not be created or read.
    #[error("failed to access `{path}`")]
    Io {
        /// The path.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The signing key file exists but does not hold an Ed25519 key.
    #[error("signing key file `{path}` is not a PKCS#8 PEM Ed25519 private key")]
    KeyFormat {
        /// The key file.
        path: PathBuf,
    },
    /// The SQLite store failed.
    #[error("hub store failed while trying to {action}")]
    Store {
        /// What the hub was doing.
        action: &'static str,
        /// The database's error.
        #[source]
        source: SqlError,
    },
    /// The group commit that held this write failed; nothing of it was stored.
    #[error("hub store commit failed")]
    Commit {
        /// The database's error, shared by every write of the group.
        #[source]
        source: std::sync::Arc<SqlError>,
    },
    /// The database was written by a newer hub: its schema has steps this hub does not know.
    #[error(
        "hub store schema version {version} is newer than this hub knows ({known}); run the newer hub or restore a backup"
    )]
    StoreTooNew {
        /// `PRAGMA user_version` of the database.
        version: i64,
        /// The last version this hub knows.
        known: i64,
    },
    /// The database's schema is older than this hub's, and the command would not change it
    /// (the replicas running on it may be of the older release).
    #[error(
        "hub store schema version {version} is older than this hub's ({known}); run `hub migrate` with this release first (replicas of the older release then refuse the store: upgrade them together)"
    )]
    StoreNeedsMigration {
        /// The database's schema version.
        version: i64,
        /// The last version this hub knows.
        known: i64,
    },
    /// The database file is damaged (found by the start-up check or by SQLite itself).
    #[error(
        "hub store `{path}` is damaged ({detail}); restore it from a backup, or move it away (with its -wal and -shm files) to start with an empty store"
    )]
    CorruptStore {
        /// The database file.
        path: PathBuf,
        /// What SQLite found.
        detail: String,
    },
    /// A command that works on an existing store found none.
    #[error("no hub store at `{path}` (is the data directory the hub's?)")]
    NoStore {
        /// Where the database was expected.
        path: PathBuf,
    },
    /// No activation of this server is recorded.
    #[error("no server `{server_id}` has activated on this hub (see `hub servers list`)")]
    UnknownServer {
        /// The server id asked for.
        server_id: String,
    },
    /// A schema step failed; the database stays at the version before it.
    #[error("failed to update the hub store schema to version {version} ({step})")]
    Migrate {
        /// What the step does.
        step: &'static str,
        /// The version it leads to.
        version: i64,
        /// The database's error.
        #[source]
        source: SqlError,
    },
    /// TLS to PostgreSQL could not be set up.
    #[error("cannot set up TLS to PostgreSQL: {reason}")]
    PgTls {
        /// What rustls said.
        reason: String,
    },
    /// The store's writer thread has stopped.
    #[error("hub store is closed")]
    StoreClosed,
    /// A stored record could not be decoded (the database was edited or is corrupt).
    #[error("stored record for job `{job_id}` is corrupt")]
    CorruptRecord {
        /// The job id.
        job_id: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A queued job's delivery has no stored payload (the database was edited or is corrupt).
    #[error("stored payload of job `{job_id}` is missing")]
    MissingPayload {
        /// The job id.
        job_id: String,
    },
    /// A hub task (a blocking store call or the server) panicked or was cancelled.
    #[error("a hub task ended abnormally")]
    Task(#[source] tokio::task::JoinError),
    /// The listen address could not be bound.
    #[error("failed to listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("hub server failed")]
    Serve(#[source] std::io::Error),
    /// The HTTP client for GitHub could not be built.
    #[error("failed to build the github http client")]
    HttpClient(#[source] reqwest::Error),
    /// The GitHub App's private key file could not be read or holds no RSA key.
    #[error("the GitHub App settings cannot be used")]
    GithubApp(#[source] crate::github::GithubError),
}

impl HubError {
    /// True for errors caused by configuration (a binary exits with code 2 for these).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            HubError::ReadConfig { .. }
                | HubError::ParseConfig { .. }
                | HubError::InvalidSetting { .. }
                | HubError::KeyFormat { .. }
                | HubError::GithubApp(_)
        )
    }

    pub(crate) fn setting(
        origin: impl Into<String>,
        setting: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        HubError::InvalidSetting {
            origin: origin.into(),
            setting: setting.into(),
            reason: reason.into(),
        }
    }

    /// A TOML error in the file at `path` whose text is `text`, without quoting the text.
    pub(crate) fn parse_config(path: &std::path::Path, text: &str, err: &toml::de::Error) -> Self {
        HubError::ParseConfig {
            path: path.to_owned(),
            message: dispatch_util::describe_parse_error(text, err.message(), err.span()),
        }
    }

    /// Whether this is the store's database being out of reach (a PostgreSQL server that went
    /// away): callers answer 503 and the store reconnects on its own.
    pub fn is_store_unavailable(&self) -> bool {
        match self {
            HubError::Store { source, .. } => source.is_unavailable(),
            HubError::Commit { source } => source.is_unavailable(),
            _ => false,
        }
    }

    pub(crate) fn store<E: Into<SqlError>>(action: &'static str) -> impl FnOnce(E) -> HubError {
        move |source| HubError::Store {
            action,
            source: source.into(),
        }
    }
}
