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
    AcceptBatchRequest, AcceptBatchResponse, AcceptBatchResult, DispatchJob, PullBatchRequest,
    EXTENSIONS_HEADER, HUB_EXTENSIONS, MAX_BATCH_JOBS,
};

use crate::error::HubError;
use crate::handler::{authenticate, parse_body, ApiError, AppState};
use crate::metrics::PULLS;
use crate::store::{blocking, now_ms, Caller, Transition};
use crate::waiters::Wake;

/// Adds the [`EXTENSIONS_HEADER`] to an API answer: every extension the hub serves (this one
/// and `progress`).
pub(crate) async fn advertise(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(EXTENSIONS_HEADER, HeaderValue::from_static(HUB_EXTENSIONS));
    response
}

/// A claimed job and its encoding in the answer.
fn encode(job: DispatchJob) -> Result<(String, Vec<u8>), HubError> {
    let encoded = serde_json::to_vec(&job).map_err(|source| HubError::CorruptRecord {
        job_id: job.id.clone(),
        source,
    })?;
    Ok((job.id, encoded))
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

/// `POST /api/v1/github/dispatch/pull-batch`: claims up to `max_jobs` queued jobs, each as a pull
/// would, and answers them oldest first within `max_bytes` (a first job larger than that alone).
/// A claimed job that does not fit stays claimed without being sent: its lease runs out and it is
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
    // The first claim alone: an idle queue ends here, and a first job as large as the limit is
    // sent alone without claiming others that could not go with it.
    let first = blocking(&st.store, move |store| {
        if !store.has_claimable(&l, &s, now_ms())? {
            return Ok(None);
        }
        store
            .claim_next(&l, &s, now_ms(), lease_ms)?
            .map(encode)
            .transpose()
    })
    .await?;
    let Some(first) = first else {
        st.metrics.inc(PULLS, "batch_empty");
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let mut bytes = first.1.len() as u64 + 1;
    let mut jobs = vec![first];
    if bytes < max_bytes && max_jobs > 1 {
        // The others issued at once: the store's group commit runs them in one transaction,
        // where one after another each would wait for a commit of its own.
        let claims = (1..max_jobs).map(|_| {
            let (l, s) = (license_id.clone(), server_id.clone());
            blocking(&st.store, move |store| {
                store
                    .claim_next(&l, &s, now_ms(), lease_ms)?
                    .map(encode)
                    .transpose()
            })
        });
        let mut claimed: Vec<(String, Vec<u8>)> = Vec::new();
        for outcome in futures_util::future::join_all(claims).await {
            match outcome {
                Ok(Some(job)) => claimed.push(job),
                Ok(None) => {}
                // A failed claim is rolled back; the jobs claimed beside it are still sent.
                Err(e) => {
                    tracing::error!(error = %dispatch_util::error_chain(&e), "a claim of a batch failed")
                }
            }
        }
        // Job ids grow with time: the answer lists the oldest first.
        claimed.sort_by(|a, b| a.0.cmp(&b.0));
        for (job_id, encoded) in claimed {
            let size = encoded.len() as u64 + 1;
            if bytes + size > max_bytes {
                tracing::info!(job_id = %job_id, server_id = %server_id,
                    "job claimed but left out of a batch answer that would pass max_bytes; handed out again when its lease runs out");
                continue;
            }
            bytes += size;
            jobs.push((job_id, encoded));
        }
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
