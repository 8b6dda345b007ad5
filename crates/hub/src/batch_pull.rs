//! The `pull-batch` extension (`docs/protocol.md`, "Extensions"): a pull that claims up to
//! [`MAX_BATCH_JOBS`] jobs in one answer and an accept of several jobs in one call, and the
//! [`EXTENSIONS_HEADER`] every API answer carries to say the hub serves them.
//!
//! Each job of a batch is claimed and accepted by the same store calls as a single pull or accept
//! (same leases, same transitions, same durability); a batch saves the HTTP round trips, the
//! credential checks and, for accepts issued together, the fsyncs, which the store's group commit
//! shares among them.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use dispatch_protocol::{
    AcceptBatchRequest, AcceptBatchResponse, AcceptBatchResult, PullBatchRequest,
    EXTENSIONS_HEADER, MAX_BATCH_JOBS, PULL_BATCH,
};

use crate::api::{authenticate, parse_body, ApiError, AppState};
use crate::error::HubError;
use crate::metrics::PULLS;
use crate::store::{blocking, now_ms, Caller, Transition};
use crate::waiters::Wake;

/// Adds the [`EXTENSIONS_HEADER`] to an API answer.
pub(crate) async fn advertise(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(EXTENSIONS_HEADER, HeaderValue::from_static(PULL_BATCH));
    response
}

fn check_count(count: usize) -> Result<(), ApiError> {
    if count == 0 || count > MAX_BATCH_JOBS as usize {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("a batch names 1 to {MAX_BATCH_JOBS} jobs"),
        ));
    }
    Ok(())
}

/// `POST /api/v1/github/dispatch/pull-batch`: claims queued jobs one after another, as a pull
/// would, until `max_jobs` are claimed, none is left, or the next one would take the answer past
/// `max_bytes`. That last job stays claimed without being sent: its lease runs out and it is
/// handed out again, first in line, as any claim whose answer was lost. Never waits.
pub(crate) async fn pull_batch(
    State(st): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: PullBatchRequest = parse_body(&body)?;
    drop(body);
    if let Err(e) = authenticate(&st, &req.license_id, &req.server_id, &req.heartbeat_secret).await
    {
        st.metrics.inc(PULLS, "unauthorized");
        return Err(e);
    }
    check_count(req.max_jobs as usize)?;
    let lease_ms = st.cfg.lease.as_millis() as i64;
    let PullBatchRequest {
        license_id,
        server_id,
        max_jobs,
        max_bytes,
        ..
    } = req;
    let (l, s) = (license_id.clone(), server_id.clone());
    let (jobs, left_over) = blocking(&st.store, move |store| {
        let mut jobs: Vec<(String, Vec<u8>)> = Vec::new();
        let mut bytes = 0u64;
        if !store.has_claimable(&l, &s, now_ms())? {
            return Ok((jobs, None));
        }
        while jobs.len() < max_jobs as usize {
            let Some(job) = store.claim_next(&l, &s, now_ms(), lease_ms)? else {
                break;
            };
            let encoded = serde_json::to_vec(&job).map_err(|source| HubError::CorruptRecord {
                job_id: job.id.clone(),
                source,
            })?;
            // Brackets and commas of the answer.
            let size = encoded.len() as u64 + 1;
            if !jobs.is_empty() && bytes + size > max_bytes {
                return Ok((jobs, Some(job.id)));
            }
            bytes += size;
            jobs.push((job.id, encoded));
        }
        Ok((jobs, None))
    })
    .await?;
    if let Some(job_id) = left_over {
        tracing::info!(job_id = %job_id, server_id = %server_id,
            "job claimed but left out of a batch answer that would pass max_bytes; handed out again when its lease runs out");
    }
    if jobs.is_empty() {
        st.metrics.inc(PULLS, "batch_empty");
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    st.metrics.inc(PULLS, "batch");
    let mut answer = Vec::with_capacity(jobs.iter().map(|(_, j)| j.len() + 1).sum::<usize>() + 10);
    answer.extend_from_slice(b"{\"jobs\":[");
    for (n, (job_id, encoded)) in jobs.iter().enumerate() {
        if n > 0 {
            answer.push(b',');
        }
        answer.extend_from_slice(encoded);
        tracing::info!(job_id = %job_id, server_id = %server_id, "job claimed in a batch");
    }
    answer.extend_from_slice(b"]}");
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        answer,
    )
        .into_response())
}

/// `POST /api/v1/github/dispatch/accept-batch`: each job's accept as its single accept, all
/// issued at once so that the store commits them together; answered once every one is durable.
pub(crate) async fn accept_batch(
    State(st): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Json<AcceptBatchResponse>, ApiError> {
    let req: AcceptBatchRequest = parse_body(&body)?;
    drop(body);
    authenticate(&st, &req.license_id, &req.server_id, &req.secret).await?;
    check_count(req.jobs.len())?;
    let accepts = req.jobs.iter().map(|item| {
        let (job_id, dag_run_id) = (item.job_id.clone(), item.dag_run_id.clone());
        let (license_id, server_id) = (req.license_id.clone(), req.server_id.clone());
        blocking(&st.store, move |s| {
            s.accept(
                &job_id,
                Caller {
                    license_id: &license_id,
                    server_id: &server_id,
                },
                &dag_run_id,
                now_ms(),
            )
        })
    });
    let outcomes = futures_util::future::join_all(accepts).await;
    let mut done = false;
    let results = req
        .jobs
        .iter()
        .zip(outcomes)
        .map(|(item, outcome)| {
            let (status, message) = match outcome {
                Ok(Transition::Done) => {
                    done = true;
                    (StatusCode::NO_CONTENT, String::new())
                }
                Ok(Transition::Repeated) => (StatusCode::NO_CONTENT, String::new()),
                Ok(Transition::NotFound) => (
                    StatusCode::NOT_FOUND,
                    format!("job `{}` not found", item.job_id),
                ),
                Ok(Transition::Conflict(why)) => (StatusCode::CONFLICT, why),
                Err(e) => {
                    tracing::error!(job_id = %item.job_id, error = %dispatch_util::error_chain(&e), "accept in a batch failed");
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal hub error".to_owned(),
                    )
                }
            };
            AcceptBatchResult {
                job_id: item.job_id.clone(),
                status: status.as_u16(),
                message,
            }
        })
        .collect();
    if done {
        // As for a single accept: a cancel waiting for one of these jobs may be released (for
        // this server's next pull), and each accepted job is reported.
        st.waiters
            .wake([Wake::unnamed(&req.license_id, &req.server_id)]);
        st.report_wake.notify_one();
    }
    Ok(Json(AcceptBatchResponse { results }))
}
