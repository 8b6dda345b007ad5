//! The scheduler's side of the cloud: the HTTP client for the license and dispatch endpoints
//! (`docs/protocol.md`) and the license manager that turns a license key into machine credentials.
//!
//! Main types: [`CloudClient`] (configured by [`ClientConfig`], failing with [`CloudError`]),
//! [`LicenseManager`] (configured by [`LicenseConfig`]) which implements [`CredentialSource`] and
//! hands out [`MachineCredentials`]. The wire types, tokens and [`Secret`]
//! come from `dispatch-protocol`.
//!
//! Not for: DAGs, queues or runs, nor reading env vars or flags (the binary builds the configs),
//! nor anything the hub needs (it depends on `dispatch-protocol`, not on this crate).

mod client;
mod files;
mod manager;

pub use client::{
    decode_pulled_job, ClientConfig, CloudClient, CloudError, CloudErrorKind,
    DEFAULT_REQUEST_TIMEOUT, MAX_BATCH_RESPONSE_BYTES, MAX_ERROR_MESSAGE_CHARS, MAX_RESPONSE_BYTES,
};
use dispatch_protocol::Secret;
pub use files::FileError;
pub use manager::{
    ActivationOutcome, ActivationRecord, HeartbeatOutcome, LicenseConfig, LicenseError,
    LicenseManager, DEFAULT_ACTIVATION_RETRY, DEFAULT_HEARTBEAT_INTERVAL,
};

/// What a scheduler presents on every dispatch call: license id (token `jti`), server id and
/// heartbeat secret. They exist only for a key-activated license.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineCredentials {
    /// License id (`jti` of the token).
    pub license_id: String,
    /// This scheduler's server id.
    pub server_id: String,
    /// Heartbeat secret from activation.
    pub heartbeat_secret: Secret,
}

/// Anything that can tell the worker its current machine credentials. The license manager is the
/// real one; the answer may change over time (credentials appear after activation, vanish when
/// the license is revoked), so callers ask again on every pass.
pub trait CredentialSource: Send + Sync + 'static {
    /// The current credentials, or `None` when there is no key-activated license.
    fn cloud_machine_credentials(&self) -> Option<MachineCredentials>;

    /// Every credential value this source holds (license key, heartbeat secret, token), for masking
    /// in anything that leaves the machine, such as uploaded step logs. By default the
    /// heartbeat secret of [`CredentialSource::cloud_machine_credentials`].
    fn credential_values(&self) -> Vec<Secret> {
        self.cloud_machine_credentials()
            .map(|c| vec![c.heartbeat_secret])
            .unwrap_or_default()
    }
}
