//! What every API handler shares: the router's state, the error answer, body parsing and the
//! machine-credential check. Below `api` (the routes) and `batch_pull` (the batched calls), so
//! neither imports the other.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use dispatch_protocol::{AcceptRequest, FinishRequest, Secret};
use ed25519_dalek::SigningKey;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::activation::{self, Standing};
use crate::config::{HubConfig, LicenseKey};
use crate::error::HubError;
use crate::metrics::Metrics;
use crate::store::{blocking, now_ms, Store};
use crate::waiters::Waiters;

/// The state every handler gets.
pub(crate) struct AppState {
    pub cfg: HubConfig,
    pub store: Arc<Store>,
    pub signing_key: SigningKey,
    pub waiters: Arc<Waiters>,
    pub report_wake: Arc<Notify>,
    pub metrics: Arc<Metrics>,
    pub cancel: CancellationToken,
}

/// An error answer: status plus a JSON `{"message": ...}` body safe to show the caller.
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn unauthorized() -> Self {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unknown license, server or secret",
        )
    }
}

impl From<HubError> for ApiError {
    fn from(e: HubError) -> Self {
        if e.is_store_unavailable() {
            tracing::warn!(error = %dispatch_util::error_chain(&e), "store out of reach; answered 503");
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the hub's store is out of reach; retry shortly",
            );
        }
        tracing::error!(error = %dispatch_util::error_chain(&e), "request failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal hub error")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "message": self.message })),
        )
            .into_response()
    }
}

pub(crate) fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid request body: {e}"),
        )
    })
}

pub(crate) fn find_license<'a>(licenses: &'a [LicenseKey], id: &str) -> Option<&'a LicenseKey> {
    licenses.iter().find(|l| l.id == id)
}

/// A 400 naming the field unless `server_id` is a server id ([`activation::is_server_id`]).
pub(crate) fn require_server_id(server_id: &str) -> Result<(), ApiError> {
    if activation::is_server_id(server_id) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            activation::SERVER_ID_RULE,
        ))
    }
}

/// Checks machine credentials against the recorded activation, read from the store on every
/// call (a revocation by `hub servers revoke` counts at once), and notes the server as seen.
/// A revoked activation is answered with `revoked`: 410 for a heartbeat (the scheduler's word
/// for "revoked"), 401 for the dispatch calls.
pub(crate) async fn check_activation(
    st: &AppState,
    license_id: &str,
    server_id: &str,
    secret: &Secret,
    revoked: StatusCode,
) -> Result<(), ApiError> {
    require_server_id(server_id)?;
    let (l, s) = (license_id.to_owned(), server_id.to_owned());
    let stored = blocking(&st.store, move |store| store.activation(&l, &s)).await?;
    let now = now_ms();
    match activation::standing(stored.as_ref(), secret, now, st.cfg.activation_expiry) {
        Standing::Active => {
            st.store.note_seen(license_id, server_id, now);
            Ok(())
        }
        Standing::Unknown => Err(ApiError::unauthorized()),
        Standing::Revoked => Err(ApiError::new(
            revoked,
            "this server's activation was revoked on the hub; activate again",
        )),
        Standing::Expired => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            format!(
                "this server's activation expired (not seen for {} days); activate again",
                st.cfg.activation_expiry.as_secs() / 86_400
            ),
        )),
    }
}

/// Machine credentials for the dispatch endpoints: a live activation of a license that is
/// still configured.
pub(crate) async fn authenticate(
    st: &AppState,
    license_id: &str,
    server_id: &str,
    secret: &Secret,
) -> Result<(), ApiError> {
    check_activation(st, license_id, server_id, secret, StatusCode::UNAUTHORIZED).await?;
    if find_license(&st.cfg.licenses, license_id).is_none() {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "license is no longer valid",
        ));
    }
    Ok(())
}

/// A call that carries machine credentials in its body.
pub(crate) trait MachineCall {
    /// The license id, server id and secret the call presents.
    fn credentials(&self) -> (&str, &str, &Secret);
}

impl MachineCall for AcceptRequest {
    fn credentials(&self) -> (&str, &str, &Secret) {
        (&self.license_id, &self.server_id, &self.secret)
    }
}

impl MachineCall for FinishRequest {
    fn credentials(&self) -> (&str, &str, &Secret) {
        (&self.license_id, &self.server_id, &self.secret)
    }
}

/// The body of a call about one job, parsed (a 400 when it does not), from a server whose
/// machine credentials pass [`authenticate`] (checked after the parse, as the body carries them).
pub(crate) struct Authenticated<T>(pub T);

impl<T> FromRequest<Arc<AppState>> for Authenticated<T>
where
    T: DeserializeOwned + MachineCall + Send + Sync,
{
    type Rejection = Response;

    async fn from_request(req: Request, st: &Arc<AppState>) -> Result<Self, Response> {
        let body = Bytes::from_request(req, st)
            .await
            .map_err(IntoResponse::into_response)?;
        let call: T = parse_body(&body).map_err(IntoResponse::into_response)?;
        let (license_id, server_id, secret) = call.credentials();
        authenticate(st, license_id, server_id, secret)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Authenticated(call))
    }
}
