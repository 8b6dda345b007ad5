//! The license manager (`docs/protocol.md`, License tokens): server id, activation, token checks, heartbeat, and the
//! machine credentials the worker asks for.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use dispatch_protocol::token::{self, Claims, TokenError};
use dispatch_protocol::{ActivateRequest, HeartbeatRequest, Secret};

use crate::files::{self, FileError};
use crate::{CloudClient, CloudError, CredentialSource, MachineCredentials};

/// Heartbeat period when none is configured.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);

/// Pause between activation attempts while a key has no activation.
pub const DEFAULT_ACTIVATION_RETRY: Duration = Duration::from_secs(60);

const SERVER_ID_FILE: &str = "server_id";
const ACTIVATION_FILE: &str = "activation.json";

/// What the license manager needs.
#[derive(Debug, Clone)]
pub struct LicenseConfig {
    /// Data directory; the manager's files live under `<data_dir>/license/`.
    pub data_dir: PathBuf,
    /// License key; without one there are no machine credentials.
    pub license_key: Option<Secret>,
    /// Ed25519 key that signs tokens. Without it tokens are read unverified.
    pub public_key: Option<VerifyingKey>,
    /// Sent on activation (usually the hostname).
    pub machine_name: String,
    /// Sent on activation and heartbeat; omitted when empty.
    pub client_version: String,
    /// Time between heartbeats.
    pub heartbeat_interval: Duration,
    /// Time between activation attempts while a key is not activated.
    pub activation_retry: Duration,
}

impl LicenseConfig {
    /// A config with default intervals, no key and no public key.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            license_key: None,
            public_key: None,
            machine_name: String::new(),
            client_version: String::new(),
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            activation_retry: DEFAULT_ACTIVATION_RETRY,
        }
    }
}

/// A local problem that keeps the license manager from starting. Network failures are not
/// errors: they leave the manager "not activated".
#[derive(Debug, thiserror::Error)]
pub enum LicenseError {
    /// A file or directory under `<data>/license/` could not be read, written or removed.
    #[error("license storage")]
    Storage(#[from] FileError),
}

/// The on-disk activation record (`<data>/license/activation.json`, mode 0600).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivationRecord {
    /// The license token.
    pub token: Secret,
    /// Secret for heartbeat and dispatch calls.
    pub heartbeat_secret: Secret,
    /// The key this activation belongs to.
    pub license_key: Secret,
    /// The server id it was made for.
    pub server_id: String,
}

/// What a heartbeat pass did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeartbeatOutcome {
    /// No activation to heartbeat.
    Skipped,
    /// A new token was verified and stored.
    Refreshed,
    /// The cached token stays (the call failed or the new token did not verify).
    Kept {
        /// Why, without secrets.
        reason: String,
    },
    /// The cloud revoked or refused the license (410/401); it was removed.
    Cleared {
        /// The HTTP status.
        status: u16,
        /// The cloud's message.
        reason: String,
    },
}

/// What an activation attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActivationOutcome {
    /// No license key is configured.
    NoKey,
    /// A license is already active; nothing was done.
    AlreadyActive,
    /// The cloud activated the key; the record was stored.
    Activated,
    /// The cloud could not be reached (or failed) and the cached activation of this key is used.
    Cached {
        /// Why the cloud call failed.
        reason: String,
    },
    /// No usable license.
    Failed {
        /// Why, without secrets.
        reason: String,
    },
}

#[derive(Debug, Clone)]
struct Active {
    heartbeat_secret: Secret,
    /// The token text, for [`CredentialSource::credential_values`] only.
    token: Secret,
    claims: Claims,
    /// Where it came from, for the summary.
    source: &'static str,
}

#[derive(Debug, Default)]
struct State {
    active: Option<Active>,
    /// Why there is no active license (for the summary), without secrets.
    inactive_reason: String,
}

/// Owns this scheduler's license: server id, activation, token refresh by heartbeat.
///
/// Start with [`LicenseManager::start`], then drive with [`LicenseManager::run`]; ask for
/// credentials through [`CredentialSource`].
pub struct LicenseManager {
    cfg: LicenseConfig,
    client: CloudClient,
    dir: PathBuf,
    server_id: String,
    state: Mutex<State>,
    unverified_noted: AtomicBool,
}

impl std::fmt::Debug for LicenseManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LicenseManager")
            .field("server_id", &self.server_id)
            .field("status", &self.status_summary())
            .finish_non_exhaustive()
    }
}

impl LicenseManager {
    /// Loads or creates the server id and, with a key, activates (falling back to the cached
    /// activation of the same key when the cloud is unreachable). Fails only on local storage
    /// problems.
    pub async fn start(cfg: LicenseConfig, client: CloudClient) -> Result<Arc<Self>, LicenseError> {
        let dir = cfg.data_dir.join("license");
        files::create_private_dir(&dir)?;
        let server_id = load_or_create_server_id(&dir)?;
        let manager = Arc::new(Self {
            cfg,
            client,
            dir,
            server_id,
            state: Mutex::new(State::default()),
            unverified_noted: AtomicBool::new(false),
        });
        if manager.cfg.public_key.is_none() && manager.has_key() {
            manager.note_unverified();
        }
        let outcome = manager.activate_now().await?;
        tracing::debug!(?outcome, "license start");
        Ok(manager)
    }

    /// This scheduler's server id (UUID).
    pub fn server_id(&self) -> &str {
        &self.server_id
    }

    /// Claims of the active license, if any.
    pub fn claims(&self) -> Option<Claims> {
        self.lock().active.as_ref().map(|a| a.claims.clone())
    }

    /// One line for logs: server id, license id, plan, expiry or why there is none. No secrets.
    pub fn status_summary(&self) -> String {
        let state = self.lock();
        match &state.active {
            Some(a) => {
                let validity = match token::check_times(&a.claims, now_unix()) {
                    Ok(false) => "valid".to_owned(),
                    Ok(true) => format!("expired, in grace until unix {}", a.claims.grace_end()),
                    Err(e) => format!("unusable: {e}"),
                };
                format!(
                    "license {} (plan `{}`, {}, {}, exp unix {}), server id {}",
                    a.claims.jti, a.claims.plan, a.source, validity, a.claims.exp, self.server_id
                )
            }
            None if !self.has_key() => {
                format!("no license key configured, server id {}", self.server_id)
            }
            None => format!(
                "license not active ({}), server id {}",
                if state.inactive_reason.is_empty() {
                    "not activated yet"
                } else {
                    &state.inactive_reason
                },
                self.server_id
            ),
        }
    }

    /// Heartbeats at once, then every `heartbeat_interval`; while a key has no activation,
    /// retries activation every `activation_retry`. Returns when `cancel` fires.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut next_heartbeat = Instant::now();
        let mut next_activation = Instant::now() + self.cfg.activation_retry;
        loop {
            let active = self.lock().active.is_some();
            if !active && !self.has_key() {
                // Nothing can ever change without a key: wait for shutdown only.
                cancel.cancelled().await;
                return;
            }
            let deadline = if active {
                next_heartbeat
            } else {
                next_activation
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(deadline) => {}
            }
            if active {
                let outcome = self.heartbeat_now().await;
                tracing::debug!(?outcome, "license heartbeat pass");
                next_heartbeat = Instant::now() + self.cfg.heartbeat_interval;
                next_activation = Instant::now() + self.cfg.activation_retry;
            } else {
                match self.activate_now().await {
                    Ok(ActivationOutcome::Activated | ActivationOutcome::Cached { .. }) => {
                        // Fresh activation: the next heartbeat is one interval away.
                        next_heartbeat = Instant::now() + self.cfg.heartbeat_interval;
                    }
                    Ok(outcome) => tracing::debug!(?outcome, "license activation pass"),
                    Err(error) => {
                        tracing::error!(error = %error, "license activation pass failed on local storage")
                    }
                }
                next_activation = Instant::now() + self.cfg.activation_retry;
            }
        }
    }

    /// One heartbeat: 410/401 clear the license, a success stores the new token, anything else
    /// keeps the cached one.
    pub async fn heartbeat_now(&self) -> HeartbeatOutcome {
        let Some(active) = self.lock().active.clone() else {
            return HeartbeatOutcome::Skipped;
        };
        let req = HeartbeatRequest {
            license_id: active.claims.jti.clone(),
            server_id: self.server_id.clone(),
            heartbeat_secret: active.heartbeat_secret.clone(),
            client_version: self.cfg.client_version.clone(),
        };
        match self.client.heartbeat(&req).await {
            Ok(resp) => {
                let claims = match self.check_token(&resp.token) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(license_id = %active.claims.jti, error = %e,
                            "heartbeat returned a token that does not verify; keeping the cached token");
                        return HeartbeatOutcome::Kept {
                            reason: format!("new token rejected: {e}"),
                        };
                    }
                };
                // A valid signature is not enough: the token must be for the license this
                // machine holds, or a hub could move it onto another license unnoticed.
                if claims.jti != active.claims.jti {
                    tracing::error!(license_id = %active.claims.jti, token_license_id = ?claims.jti,
                        "heartbeat returned a token for another license; keeping the cached token");
                    return HeartbeatOutcome::Kept {
                        reason: format!(
                            "new token is for license {:?}, not {:?}",
                            claims.jti, active.claims.jti
                        ),
                    };
                }
                let record = ActivationRecord {
                    token: resp.token.clone(),
                    heartbeat_secret: active.heartbeat_secret.clone(),
                    license_key: self.cfg.license_key.clone().unwrap_or_default(),
                    server_id: self.server_id.clone(),
                };
                if let Err(e) = self.store_record(&record) {
                    // The token is still good in memory; the next heartbeat tries to persist again.
                    tracing::error!(error = %e, "failed to persist refreshed license token");
                }
                tracing::info!(license_id = %claims.jti, exp = claims.exp, "license heartbeat ok");
                self.lock().active = Some(Active {
                    heartbeat_secret: active.heartbeat_secret,
                    token: resp.token,
                    claims,
                    source: "heartbeat",
                });
                HeartbeatOutcome::Refreshed
            }
            Err(e) if matches!(e.status, Some(401 | 410)) => {
                let status = e.status.unwrap_or_default();
                let why = if status == 410 {
                    "revoked"
                } else {
                    "unauthorized"
                };
                tracing::error!(license_id = %active.claims.jti, status, message = %e.message,
                    "license {why} by the cloud; clearing it, dispatch stops");
                self.clear(format!("{why} by the cloud ({status}): {}", e.message));
                HeartbeatOutcome::Cleared {
                    status,
                    reason: e.message,
                }
            }
            Err(e) => {
                tracing::warn!(license_id = %active.claims.jti, error = %e,
                    "license heartbeat failed; keeping the cached token");
                HeartbeatOutcome::Kept {
                    reason: e.to_string(),
                }
            }
        }
    }

    /// One activation attempt (no-op when active or without key). Errors only on local storage
    /// problems.
    pub async fn activate_now(&self) -> Result<ActivationOutcome, LicenseError> {
        let Some(key) = self.cfg.license_key.clone().filter(|k| !k.is_empty()) else {
            return Ok(ActivationOutcome::NoKey);
        };
        if self.lock().active.is_some() {
            return Ok(ActivationOutcome::AlreadyActive);
        }
        let req = ActivateRequest {
            key: key.clone(),
            server_id: self.server_id.clone(),
            machine_name: self.cfg.machine_name.clone(),
            client_version: self.cfg.client_version.clone(),
        };
        let error = match self.client.activate(&req).await {
            Ok(resp) => {
                return Ok(match self.check_token(&resp.token) {
                    Ok(claims) => {
                        let record = ActivationRecord {
                            token: resp.token.clone(),
                            heartbeat_secret: resp.heartbeat_secret.clone(),
                            license_key: key,
                            server_id: self.server_id.clone(),
                        };
                        self.store_record(&record)?;
                        tracing::info!(license_id = %claims.jti, plan = %claims.plan,
                            exp = claims.exp, server_id = %self.server_id, "license activated");
                        self.set_active(Active {
                            heartbeat_secret: resp.heartbeat_secret,
                            token: resp.token,
                            claims,
                            source: "activated",
                        });
                        ActivationOutcome::Activated
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "activation returned a token that does not verify; no license");
                        self.set_inactive(format!("activation token rejected: {e}"));
                        ActivationOutcome::Failed {
                            reason: format!("token rejected: {e}"),
                        }
                    }
                });
            }
            Err(e) => e,
        };
        if matches!(error.status, Some(401 | 410)) {
            // A definite no from the cloud: a cached activation of this key is no longer valid.
            tracing::error!(status = error.status, message = %error.message,
                "license key refused by the cloud; no license");
            self.remove_record()?;
            self.set_inactive(format!("key refused: {error}"));
            return Ok(ActivationOutcome::Failed {
                reason: error.to_string(),
            });
        }
        self.offline_fallback(&key, &error)
    }

    fn offline_fallback(
        &self,
        key: &Secret,
        error: &CloudError,
    ) -> Result<ActivationOutcome, LicenseError> {
        let record = match self.load_record()? {
            Some(r) if &r.license_key == key && r.server_id == self.server_id => r,
            Some(_) => {
                tracing::warn!(error = %error,
                    "license activation failed and the cached activation is for another key or server id");
                self.set_inactive(format!("activation failed: {error}"));
                return Ok(ActivationOutcome::Failed {
                    reason: error.to_string(),
                });
            }
            None => {
                tracing::warn!(error = %error, "license activation failed; no cached activation");
                self.set_inactive(format!("activation failed: {error}"));
                return Ok(ActivationOutcome::Failed {
                    reason: error.to_string(),
                });
            }
        };
        match self.check_token(&record.token) {
            Ok(claims) => {
                tracing::warn!(license_id = %claims.jti, error = %error,
                    "license activation failed; using the cached activation (offline start)");
                self.set_active(Active {
                    heartbeat_secret: record.heartbeat_secret,
                    token: record.token,
                    claims,
                    source: "cached",
                });
                Ok(ActivationOutcome::Cached {
                    reason: error.to_string(),
                })
            }
            Err(e) => {
                tracing::error!(error = %e, cloud_error = %error,
                    "license activation failed and the cached token does not verify; no license");
                self.set_inactive(format!("activation failed and cached token rejected: {e}"));
                Ok(ActivationOutcome::Failed {
                    reason: format!("cached token rejected: {e}"),
                })
            }
        }
    }

    /// Verifies (or, without a public key, just decodes) a token and checks its times.
    fn check_token(&self, token: &Secret) -> Result<Claims, TokenError> {
        let now = now_unix();
        let (claims, in_grace) = match &self.cfg.public_key {
            Some(key) => {
                let v = token::verify(token.expose(), key, now)?;
                (v.claims, v.expired_in_grace)
            }
            None => {
                self.note_unverified();
                let claims = token::decode_unverified(token.expose())?;
                let in_grace = token::check_times(&claims, now)?;
                (claims, in_grace)
            }
        };
        if in_grace {
            tracing::warn!(license_id = %claims.jti, exp = claims.exp,
                grace_end = claims.grace_end(), "license token expired; running on its grace period");
        }
        Ok(claims)
    }

    fn note_unverified(&self) {
        if !self.unverified_noted.swap(true, Ordering::Relaxed) {
            tracing::info!("no license public key configured: license tokens are read without verifying their signature");
        }
    }

    fn clear(&self, reason: String) {
        if let Err(e) = self.remove_record() {
            tracing::error!(error = %e, "failed to remove the cleared activation record");
        }
        self.set_inactive(reason);
    }

    fn set_active(&self, active: Active) {
        let mut state = self.lock();
        state.active = Some(active);
        state.inactive_reason.clear();
    }

    fn set_inactive(&self, reason: String) {
        let mut state = self.lock();
        state.active = None;
        state.inactive_reason = reason;
    }

    fn has_key(&self) -> bool {
        self.cfg.license_key.as_ref().is_some_and(|k| !k.is_empty())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is plain data replaced whole; a panic elsewhere cannot leave it half-written.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record_path(&self) -> PathBuf {
        self.dir.join(ACTIVATION_FILE)
    }

    fn store_record(&self, record: &ActivationRecord) -> Result<(), LicenseError> {
        let mut bytes = serde_json::to_vec_pretty(record).map_err(|e| {
            FileError::io(
                "encode",
                self.record_path(),
                std::io::Error::other(e.to_string()),
            )
        })?;
        bytes.push(b'\n');
        files::write_atomic(&self.record_path(), &bytes, 0o600)?;
        Ok(())
    }

    fn load_record(&self) -> Result<Option<ActivationRecord>, LicenseError> {
        let path = self.record_path();
        let Some(bytes) = files::read_optional(&path)? else {
            return Ok(None);
        };
        match serde_json::from_slice::<ActivationRecord>(&bytes) {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                // Only the position: serde may quote values, and this file holds secrets.
                tracing::warn!(path = %path.display(), line = e.line(), column = e.column(),
                    "ignoring unreadable activation record");
                Ok(None)
            }
        }
    }

    fn remove_record(&self) -> Result<(), LicenseError> {
        files::remove_if_exists(&self.record_path())?;
        Ok(())
    }
}

impl CredentialSource for LicenseManager {
    fn cloud_machine_credentials(&self) -> Option<MachineCredentials> {
        if !self.has_key() {
            return None;
        }
        let state = self.lock();
        let active = state.active.as_ref()?;
        // Checked on every call: a token passes out of its grace period without any event.
        token::check_times(&active.claims, now_unix()).ok()?;
        Some(MachineCredentials {
            license_id: active.claims.jti.clone(),
            server_id: self.server_id.clone(),
            heartbeat_secret: active.heartbeat_secret.clone(),
        })
    }

    fn credential_values(&self) -> Vec<Secret> {
        let mut values: Vec<Secret> = self.cfg.license_key.iter().cloned().collect();
        if let Some(active) = &self.lock().active {
            values.push(active.heartbeat_secret.clone());
            values.push(active.token.clone());
        }
        values
    }
}

/// Reads the server id, creating it (exclusive create) when absent and replacing it atomically
/// when empty or not a UUID.
fn load_or_create_server_id(dir: &Path) -> Result<String, LicenseError> {
    let path = dir.join(SERVER_ID_FILE);
    // Two rounds: if another process wins the exclusive create, read what it wrote.
    for _ in 0..2 {
        match files::read_optional(&path)? {
            Some(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                match uuid::Uuid::parse_str(text.trim()) {
                    Ok(id) if !id.is_nil() => return Ok(id.hyphenated().to_string()),
                    _ => {
                        let id = uuid::Uuid::now_v7().hyphenated().to_string();
                        tracing::warn!(path = %path.display(), new_server_id = %id,
                            "server id file is empty or invalid; replacing it");
                        files::write_atomic(&path, format!("{id}\n").as_bytes(), 0o644)?;
                        return Ok(id);
                    }
                }
            }
            None => {
                let id = uuid::Uuid::now_v7().hyphenated().to_string();
                if files::create_exclusive(&path, format!("{id}\n").as_bytes(), 0o644)? {
                    tracing::info!(server_id = %id, "created server id");
                    return Ok(id);
                }
            }
        }
    }
    Err(FileError::io(
        "create",
        path,
        std::io::Error::other("server id file keeps changing"),
    )
    .into())
}

fn now_unix() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}
