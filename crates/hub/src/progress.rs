//! The `progress` extension (`docs/protocol.md`, "Extension: progress and logs"):
//! `POST /api/v1/github/dispatch/{id}/progress`, by which the scheduler running a job sends
//! when its run started, its steps' states and their logs. Authenticated like accept and finish:
//! machine credentials, and the job must be claimed or accepted by (or finished by) that
//! server. The store keeps it ([`crate::store`]'s `progress` file), cuts each job's log at the
//! cap ([`HubConfig::job_log_cap`](crate::HubConfig::job_log_cap)), and wakes whoever watches
//! the job.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use dispatch_protocol::{
    ProgressRequest, MAX_CHUNKS_PER_CALL, MAX_PROGRESS_DATA_BYTES, MAX_STEPS_PER_CALL,
    MAX_STEP_NAME_BYTES, STEP_STATUS_WORDS,
};

use crate::handler::{authenticate, parse_body, ApiError, AppState};
use crate::store::{blocking, now_ms, Progress, Recorded};

/// How far past the hub's clock a reported time may lie: schedulers' clocks drift, but a time
/// further ahead is not a time (and the pages could not show it).
const MAX_CLOCK_AHEAD_MS: u64 = 24 * 60 * 60 * 1000;

/// A 400 naming what is wrong with the request's content; `now_ms` bounds its times.
fn check(req: &ProgressRequest, now_ms: u64) -> Result<(), ApiError> {
    let bad = |message: String| Err(ApiError::new(StatusCode::BAD_REQUEST, message));
    if req.steps.len() > MAX_STEPS_PER_CALL || req.logs.len() > MAX_CHUNKS_PER_CALL {
        return bad(format!(
            "a progress call names at most {MAX_STEPS_PER_CALL} steps and {MAX_CHUNKS_PER_CALL} log chunks"
        ));
    }
    let latest = now_ms.saturating_add(MAX_CLOCK_AHEAD_MS);
    let times = req
        .steps
        .iter()
        .flat_map(|s| [s.started_ms, s.finished_ms])
        .chain([req.run_started_ms]);
    if let Some(t) = times.into_iter().find(|&t| t > latest) {
        return bad(format!(
            "time {t} lies more than a day past the hub's clock ({now_ms} ms since the epoch)"
        ));
    }
    if let Some(step) = req
        .steps
        .iter()
        .find(|s| s.finished_ms > 0 && s.finished_ms < s.started_ms)
    {
        return bad(format!(
            "step `{}` finished ({}) before it started ({})",
            step.name, step.finished_ms, step.started_ms
        ));
    }
    let names = req
        .steps
        .iter()
        .map(|s| &s.name)
        .chain(req.logs.iter().map(|c| &c.step));
    for name in names {
        if name.is_empty() || name.len() > MAX_STEP_NAME_BYTES {
            return bad(format!(
                "a step name is 1 to {MAX_STEP_NAME_BYTES} bytes long"
            ));
        }
    }
    if let Some(step) = req
        .steps
        .iter()
        .find(|s| !STEP_STATUS_WORDS.contains(&s.status.as_str()))
    {
        return bad(format!(
            "unknown step status `{}` (expected one of {})",
            step.status,
            STEP_STATUS_WORDS.join(", ")
        ));
    }
    let data: usize = req.logs.iter().map(|c| c.data.len()).sum();
    if data > MAX_PROGRESS_DATA_BYTES {
        return bad(format!(
            "a progress call carries at most {MAX_PROGRESS_DATA_BYTES} bytes of log text, not {data}"
        ));
    }
    Ok(())
}

/// `POST /api/v1/github/dispatch/{id}/progress`: stores the call's steps and log chunks and
/// answers `200` with an acknowledgement per chunk; `404` for a job that is not there (or bound
/// to another license), `409` for one this server does not hold.
pub(crate) async fn progress(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: ProgressRequest = parse_body(&body)?;
    drop(body);
    authenticate(&st, &req.license_id, &req.server_id, &req.secret).await?;
    let now = now_ms();
    check(&req, u64::try_from(now).unwrap_or(0))?;
    let progress = Progress {
        license_id: req.license_id,
        server_id: req.server_id,
        run_started_ms: req.run_started_ms,
        steps: req.steps,
        logs: req.logs,
    };
    let cap = st.cfg.job_log_cap;
    let recorded = blocking(&st.store, move |store| {
        store.record_progress(&id, progress, cap, now)
    })
    .await?;
    match recorded {
        Recorded::Stored(answer) => Ok(Json(answer).into_response()),
        Recorded::NotFound => Err(ApiError::new(StatusCode::NOT_FOUND, "no such job")),
        Recorded::Conflict(message) => Err(ApiError::new(StatusCode::CONFLICT, message)),
        Recorded::Refused(message) => Err(ApiError::new(StatusCode::BAD_REQUEST, message)),
    }
}
