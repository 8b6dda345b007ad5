//! The HTTP surface: GitHub webhook intake, the cloud API (licenses and dispatch jobs, as
//! `docs/protocol.md` describes them), health and metrics.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{from_fn_with_state, map_response};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dispatch_protocol::token::Claims;
use dispatch_protocol::{
    AcceptRequest, ActivateRequest, ActivateResponse, DispatchJob, FinishRequest, HeartbeatRequest,
    HeartbeatResponse, PullRequest, Secret, ACCEPT_BATCH_PATH, PULL_BATCH_PATH,
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::activation;
use crate::batch_pull;
use crate::body::{self, BodyRules};
use crate::config::LicenseKey;
use crate::error::HubError;
use crate::gate;
use crate::handler::{
    authenticate, check_activation, find_license, parse_body, require_server_id, ApiError,
    AppState, Authenticated,
};
use crate::intake;
use crate::limits::API_BODY_LIMIT;
use crate::metrics::{FINISHES, PULLS, WAKEUPS, WEBHOOKS};
use crate::progress;
use crate::store::{blocking, now_ms, Activated, Activation, Caller, RawDelivery, Transition};
use crate::trust::Outcome;
use crate::waiters::{self, Wake};
use dispatch_protocol::webhook_signature as signature;
use dispatch_util::hex;

pub use crate::limits::WEBHOOK_BODY_LIMIT;

/// Longest long-poll a pull may ask for.
pub const MAX_WAIT_SECONDS: u32 = 60;

/// Headers copied into a job's `headers`; never the signature.
const KEPT_HEADERS: [&str; 7] = [
    "x-github-event",
    "x-github-delivery",
    "x-github-hook-id",
    "x-github-hook-installation-target-id",
    "x-github-hook-installation-target-type",
    "content-type",
    "user-agent",
];

/// Every body is read by [`body::buffer`] before its handler runs (the webhook's only after
/// [`intake::gate`] has looked at the headers), so handlers get bodies already in memory.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    let bodies = BodyRules::new(&state.cfg.limits);
    let api = Router::new()
        .route("/api/v1/licenses/activate", post(activate))
        .route("/api/v1/licenses/heartbeat", post(heartbeat))
        .route("/api/v1/github/dispatch/pull", post(pull))
        .route("/api/v1/github/dispatch/{id}/accept", post(accept))
        .route("/api/v1/github/dispatch/{id}/finish", post(finish))
        .route(PULL_BATCH_PATH, post(batch_pull::pull_batch))
        .route(ACCEPT_BATCH_PATH, post(batch_pull::accept_batch))
        .route(
            "/api/v1/github/dispatch/{id}/progress",
            post(progress::progress),
        )
        .route_layer(from_fn_with_state(bodies.api(API_BODY_LIMIT), body::buffer))
        .layer(map_response(batch_pull::advertise));
    Router::new()
        .route(
            "/webhooks/github",
            post(webhook)
                .layer(DefaultBodyLimit::max(WEBHOOK_BODY_LIMIT))
                .route_layer(from_fn_with_state(
                    bodies.webhook(WEBHOOK_BODY_LIMIT),
                    body::buffer,
                ))
                .route_layer(from_fn_with_state(state.metrics.clone(), intake::gate)),
        )
        .merge(api)
        .route("/healthz", get(|| async { "ok" }))
        .route(
            crate::github::manifest::CREATED_PATH,
            get(crate::github::convert::created_page),
        )
        .route("/metrics", get(metrics))
        .with_state(state)
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

fn headers_json(headers: &HeaderMap) -> String {
    let mut map = serde_json::Map::new();
    for name in KEPT_HEADERS {
        let values: Vec<serde_json::Value> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(|v| serde_json::Value::String(v.to_owned()))
            .collect();
        if !values.is_empty() {
            map.insert(name.to_owned(), serde_json::Value::Array(values));
        }
    }
    serde_json::Value::Object(map).to_string()
}

async fn webhook(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let outcome = webhook_inner(&st, &headers, body).await;
    let label = match &outcome {
        Ok((_, label, _)) => *label,
        Err((label, _)) => label,
    };
    st.metrics.inc(WEBHOOKS, label);
    match outcome {
        Ok((status, _, body)) => (status, Json(body)).into_response(),
        Err((_, e)) => e.into_response(),
    }
}

type WebhookOutcome =
    Result<(StatusCode, &'static str, serde_json::Value), (&'static str, ApiError)>;

async fn webhook_inner(
    st: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> WebhookOutcome {
    let body = body.map_err(|rej| {
        let status = rej.status();
        let label = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "too_large"
        } else {
            "bad_request"
        };
        (label, ApiError::new(status, rej.body_text()))
    })?;
    if !signature::verify(
        &st.cfg.webhook_secret,
        headers
            .get("x-hub-signature-256")
            .and_then(|v| v.to_str().ok()),
        &body,
    ) {
        return Err((
            "bad_signature",
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or invalid x-hub-signature-256",
            ),
        ));
    }
    let bad = |msg: &str| ("bad_request", ApiError::new(StatusCode::BAD_REQUEST, msg));
    let event = header_str(headers, "x-github-event");
    if event.is_empty() {
        return Err(bad("missing x-github-event header"));
    }
    if event == "ping" {
        return Ok((
            StatusCode::OK,
            "ping",
            serde_json::json!({ "message": "pong" }),
        ));
    }
    let delivery_id = header_str(headers, "x-github-delivery");
    if delivery_id.is_empty() {
        return Err(bad("missing x-github-delivery header"));
    }
    let text = intake::payload_text(headers, &body).map_err(bad)?;
    let payload: serde_json::Value =
        serde_json::from_str(&text).map_err(|_| bad("body is not valid json"))?;
    let raw = RawDelivery {
        payload: text.trim().to_owned(),
        headers: headers_json(headers),
    };
    let taken = gate::take(&st.store, &st.cfg, event, delivery_id, raw, &payload)
        .await
        .map_err(|e| ("error", ApiError::from(e)))?;
    let count = taken.job_ids.len();
    let duplicate = taken.outcome == Outcome::Duplicate;
    if !duplicate && count > 0 {
        waiters::wake_stored(&st.store, &st.waiters, taken.job_ids.clone()).await;
    }
    if taken.outcome == Outcome::Accepted {
        // The delivery may have queued reports: a command's answer, a too-large job's status.
        st.report_wake.notify_one();
    }
    // Event, delivery id and reason come from the request (`?`: logged escaped).
    tracing::info!(
        event = ?event,
        delivery = ?delivery_id,
        jobs = count,
        outcome = taken.outcome.as_str(),
        reason = ?taken.reason,
        "webhook received"
    );
    // A delivery turned away is still answered 200: GitHub must not retry it.
    let status = if count > 0 {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let mut answer = serde_json::json!({
        "job_ids": taken.job_ids,
        "outcome": taken.outcome.as_str(),
    });
    if duplicate {
        answer["duplicate"] = serde_json::Value::Bool(true);
    }
    if !taken.reason.is_empty() {
        answer["reason"] = serde_json::Value::String(taken.reason);
    }
    Ok((status, taken.outcome.as_str(), answer))
}

fn issue_token(st: &AppState, license: &LicenseKey) -> Result<Secret, ApiError> {
    let now = now_ms() / 1000;
    let claims = Claims {
        jti: license.id.clone(),
        exp: now + st.cfg.token_ttl.as_secs() as i64,
        nbf: Some(now),
        iat: Some(now),
        plan: license.plan.clone(),
        features: license.features.clone(),
        grace_days: Some(dispatch_protocol::token::DEFAULT_GRACE_DAYS),
    };
    dispatch_protocol::token::sign(&claims, &st.signing_key)
        .map(Secret::new)
        .map_err(|e| {
            tracing::error!(error = %dispatch_util::error_chain(&e), "cannot sign a license token");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot issue a license token",
            )
        })
}

async fn activate(
    State(st): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Json<ActivateResponse>, ApiError> {
    let req: ActivateRequest = parse_body(&body)?;
    // Compare against every key so the time taken does not reveal which one matched, and compare
    // SHA-256 hashes (all 32 bytes) so it does not reveal a key's length either: `ct_eq` on the
    // raw keys returns at once when the lengths differ.
    let presented = Sha256::digest(req.key.expose().as_bytes());
    let mut found: Option<&LicenseKey> = None;
    for license in &st.cfg.licenses {
        let key = Sha256::digest(license.key.expose().as_bytes());
        let equal: bool = key.ct_eq(&presented).into();
        if equal && !license.key.is_empty() {
            found = Some(license);
        }
    }
    let Some(license) = found else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid license key",
        ));
    };
    require_server_id(&req.server_id)?;
    if req.machine_name.len() > activation::MAX_MACHINE_NAME_BYTES {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "machine_name must be at most {} bytes",
                activation::MAX_MACHINE_NAME_BYTES
            ),
        ));
    }
    let secret = Secret::new(hex(&rand::random::<[u8; 32]>()));
    let record = Activation {
        license_id: license.id.clone(),
        server_id: req.server_id.clone(),
        machine_name: req.machine_name.clone(),
        secret_sha256: activation::secret_hash(&secret),
        client_version: req.client_version.clone(),
    };
    let expiry = st.cfg.activation_expiry;
    let outcome = blocking(&st.store, move |s| s.activate(record, now_ms(), expiry)).await?;
    if outcome == Activated::OtherMachine {
        tracing::warn!(license_id = ?license.id, server_id = ?req.server_id, machine = ?req.machine_name,
            "activation refused: the server id belongs to another machine");
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "server `{}` is activated by another machine; give this machine its own server id, \
                 or revoke the server on the hub first (`hub servers revoke {}`)",
                req.server_id, req.server_id
            ),
        ));
    }
    tracing::info!(license_id = ?license.id, server_id = ?req.server_id, machine = ?req.machine_name, "license activated");
    Ok(Json(ActivateResponse {
        token: issue_token(&st, license)?,
        heartbeat_secret: secret,
    }))
}

async fn heartbeat(
    State(st): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    let req: HeartbeatRequest = parse_body(&body)?;
    check_activation(
        &st,
        &req.license_id,
        &req.server_id,
        &req.heartbeat_secret,
        StatusCode::GONE,
    )
    .await?;
    let Some(license) = find_license(&st.cfg.licenses, &req.license_id) else {
        return Err(ApiError::new(StatusCode::GONE, "license has been revoked"));
    };
    if !req.client_version.is_empty() {
        // The version is only shown to operators: failing to store it must not cost the
        // scheduler its token.
        let (l, s, v) = (
            req.license_id.clone(),
            req.server_id.clone(),
            req.client_version,
        );
        if let Err(e) = blocking(&st.store, move |store| store.note_version(&l, &s, &v)).await {
            tracing::warn!(server_id = ?req.server_id, error = %dispatch_util::error_chain(&e),
                "could not record the server's version");
        }
    }
    Ok(Json(HeartbeatResponse {
        token: issue_token(&st, license)?,
    }))
}

async fn pull(State(st): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let PullRequest {
        license_id,
        server_id,
        heartbeat_secret,
        wait_seconds,
    } = parse_body(&body)?;
    // Thousands of pulls may wait at once: a waiting pull keeps only what it still needs (the
    // future's layout too: no value lives across the wait that the wait does not use).
    drop(body);
    if let Err(e) = authenticate(&st, &license_id, &server_id, &heartbeat_secret).await {
        st.metrics.inc(PULLS, "unauthorized");
        return Err(e);
    }
    drop(heartbeat_secret);
    let wait = Duration::from_secs(wait_seconds.min(MAX_WAIT_SECONDS).into());
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    // Queued before the first claim attempt, so a job stored in between still wakes this pull
    // (or another); dropped when the pull answers, passing on a wake it did not use.
    let mut waiter = st.waiters.join(&license_id, &server_id);
    loop {
        waiter.attempting();
        if let Some(job) = claim(&st, &license_id, &server_id).await? {
            if let Some(woken) = waiter.took(&job.id) {
                st.metrics.inc(WAKEUPS, woken.as_str());
            }
            drop(waiter);
            st.metrics.inc(PULLS, "job");
            tracing::info!(job_id = %job.id, server_id = %server_id, dag = %job.dag_name, "job claimed");
            return Ok((StatusCode::OK, Json(job)).into_response());
        }
        if let Some(woken) = waiter.found_nothing() {
            st.metrics.inc(WAKEUPS, woken.as_str());
        }
        if wait.is_zero() {
            break;
        }
        // Nothing polls while waiting: a job that this pull may take wakes it, and a job stored
        // before it joined was seen by its first attempt, so the deadline needs no last look.
        tokio::select! {
            _ = waiter.woken() => {}
            _ = &mut deadline => break,
            _ = st.cancel.cancelled() => break,
        }
    }
    st.metrics.inc(PULLS, "empty");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// One claim attempt of a pull: the oldest job this license and server may take, if any. Looks
/// first on the read connection, so a fruitless attempt never queues behind writes.
async fn claim(
    st: &AppState,
    license_id: &str,
    server_id: &str,
) -> Result<Option<DispatchJob>, HubError> {
    let (l, s) = (license_id.to_owned(), server_id.to_owned());
    let lease_ms = st.cfg.lease.as_millis() as i64;
    blocking(&st.store, move |store| {
        if store.has_claimable(&l, &s, now_ms())? {
            store.claim_next(&l, &s, now_ms(), lease_ms)
        } else {
            Ok(None)
        }
    })
    .await
}

fn transition_response(t: Transition, job_id: &str) -> Result<StatusCode, ApiError> {
    match t {
        Transition::Done | Transition::Repeated => Ok(StatusCode::NO_CONTENT),
        Transition::NotFound => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("job `{job_id}` not found"),
        )),
        Transition::Conflict(why) => Err(ApiError::new(StatusCode::CONFLICT, why)),
    }
}

async fn accept(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    Authenticated(req): Authenticated<AcceptRequest>,
) -> Result<StatusCode, ApiError> {
    let job_id = id.clone();
    let wake = Wake::unnamed(&req.license_id, &req.server_id);
    let t = blocking(&st.store, move |s| {
        s.accept(
            &job_id,
            Caller {
                license_id: &req.license_id,
                server_id: &req.server_id,
            },
            &req.dag_run_id,
            now_ms(),
        )
    })
    .await?;
    if t == Transition::Done {
        // The accept may have released a cancel that waited for it (targeted at this server);
        // if that server's next pull is already waiting, it looks again.
        st.waiters.wake([wake]);
        // And it is reported ("running on <machine>").
        st.report_wake.notify_one();
    }
    transition_response(t, &id)
}

async fn finish(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    Authenticated(req): Authenticated<FinishRequest>,
) -> Result<StatusCode, ApiError> {
    if !dispatch_protocol::RESULT_STATUS_WORDS.contains(&req.result_status.as_str()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("unknown result_status `{}`", req.result_status),
        ));
    }
    let reports = crate::lifecycle::job_reports(&st.cfg);
    let (job_id, log_id, state) = (id.clone(), id.clone(), st.clone());
    let (status, summary) = (req.result_status.clone(), req.result_summary.clone());
    // The commit and the work that must follow it (waking the reporter, counting, logging) run in
    // their own task: a scheduler that hangs up mid-call must not cut off the part after the commit.
    let finishing = tokio::spawn(async move {
        let t = blocking(&state.store, move |s| {
            s.finish(
                &job_id,
                Caller {
                    license_id: &req.license_id,
                    server_id: &req.server_id,
                },
                &req.result_status,
                &req.result_summary,
                now_ms(),
                move |job| reports.finished(job, &status, &summary),
            )
        })
        .await?;
        let outcome = match &t {
            Transition::Done => "done",
            Transition::Repeated => "repeated",
            Transition::NotFound => "not_found",
            Transition::Conflict(_) => "conflict",
        };
        state.metrics.inc(FINISHES, outcome);
        if t == Transition::Done {
            state.report_wake.notify_one();
            tracing::info!(job_id = %log_id, "job finished");
        }
        Ok::<_, HubError>(t)
    });
    let t = finishing.await.map_err(HubError::Task)??;
    transition_response(t, &id)
}

async fn metrics(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let authorization = headers
        .get(axum::http::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if !crate::metrics::scrape_allowed(st.cfg.metrics_token.as_ref(), authorization) {
        let mut answer = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "metrics need `Authorization: Bearer <metrics_token>`",
        )
        .into_response();
        answer.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer"),
        );
        return Ok(answer);
    }
    let jobs = st.store.job_counts();
    let mut page = st.metrics.render(&jobs);
    page.push_str(&crate::metrics::waiting_gauge(st.waiters.joined()));
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        page,
    )
        .into_response())
}
