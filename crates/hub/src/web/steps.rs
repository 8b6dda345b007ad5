//! A job's steps and logs as the `progress` extension brought them to the hub: the step table
//! and the log of each step stream on the job page, and the whole text of one stream
//! (`GET /jobs/{id}/log?step=…&stream=…`). A job whose scheduler does not send progress has
//! none, and its page says so.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use dispatch_protocol::LogStream;
use maud::{html, Markup};
use serde::Deserialize;

use super::layout;
use super::links;
use super::state::Web;
use crate::error::HubError;
use crate::store::sql::Sql;

use crate::store::{job_log, job_progress, job_steps, JobProgress, LogSlice, StepRow};

/// Bytes of each step stream the job page shows (its end); the whole text is one link away.
pub(crate) const SHOWN_BYTES: u64 = 256 * 1024;

/// Bytes of a stream read in one go by the whole-log answer and the live tail.
pub(crate) const READ_BYTES: usize = 64 * 1024;

/// One step stream's log on the page.
pub(crate) struct LogView {
    pub step: String,
    pub stream: LogStream,
    /// Where the text shown starts (bytes before it are left out).
    pub from: u64,
    pub slice: LogSlice,
}

/// What the job page shows of a job's run.
pub(crate) struct StepsView {
    pub progress: Option<JobProgress>,
    pub steps: Vec<StepRow>,
    pub logs: Vec<LogView>,
}

/// Reads the run of `job_id`: its progress, steps and the end of every stream that has text.
pub(crate) fn read(conn: &dyn Sql, job_id: &str) -> Result<StepsView, HubError> {
    let progress = job_progress(conn, job_id)?;
    let steps = job_steps(conn, job_id)?;
    let mut logs = Vec::new();
    for step in &steps {
        for stream in LogStream::ALL {
            let held = step.log_bytes(stream);
            if held == 0 {
                continue;
            }
            let from = held.saturating_sub(SHOWN_BYTES);
            let slice = job_log(conn, job_id, &step.name, stream, from, SHOWN_BYTES as usize)?;
            logs.push(LogView {
                step: step.name.clone(),
                stream,
                from,
                slice,
            });
        }
    }
    Ok(StepsView {
        progress,
        steps,
        logs,
    })
}

/// How long a step ran, or has been running at `now_ms`.
pub(crate) fn step_duration(step: &StepRow, now_ms: i64) -> String {
    match (step.started_ms, step.finished_ms) {
        (0, _) => String::new(),
        (start, 0) => links::duration(now_ms.saturating_sub(start)),
        (start, end) => links::duration(end.saturating_sub(start)),
    }
}

/// The step table; each row names its step in `data-step` for the live tail.
pub(crate) fn table(view: &StepsView, now_ms: i64) -> Markup {
    html! {
        table #steps {
            thead { tr { th { "Step" } th { "Status" } th { "Duration" } th { "Exit code" } } }
            tbody {
                @for s in &view.steps {
                    tr data-step=(s.name) {
                        td { (s.name) }
                        td.step-status { span class={ "status status-" (s.status) } { (s.status) } }
                        td.step-duration { (step_duration(s, now_ms)) }
                        td.step-exit { @if let Some(code) = s.exit_code { (code) } }
                    }
                }
            }
        }
    }
}

/// The address of the whole text of one step stream.
pub(crate) fn log_url(job_id: &str, step: &str, stream: LogStream) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("step", step);
    q.append_pair("stream", stream.as_str());
    format!("/jobs/{job_id}/log?{}", q.finish())
}

/// Each step stream's log, in a `pre` the live tail appends to (`data-offset`: where its text
/// ends, in bytes of the stream).
pub(crate) fn logs(job_id: &str, view: &StepsView) -> Markup {
    html! {
        div #logs {
            @for log in &view.logs {
                section.log {
                    h3 { (log.step) " " span.muted { (log.stream.as_str()) } }
                    @if log.from > 0 {
                        p.muted { "The first " (log.from) " bytes are not shown: " a href=(log_url(job_id, &log.step, log.stream)) { "the whole log" } "." }
                    }
                    pre.log data-step=(log.step) data-stream=(log.stream.as_str()) data-offset=(log.slice.next_offset) { (log.slice.text) }
                }
            }
        }
        @if view.progress.is_some_and(|p| p.truncated) {
            p.status.status-failed { "The log was cut at the job's cap: the scheduler sent no more." }
        }
    }
}

/// The query of the whole-log answer.
#[derive(Debug, Deserialize)]
pub(crate) struct LogQuery {
    step: String,
    stream: LogStream,
}

/// `GET /jobs/{id}/log?step=…&stream=…`: the whole text the hub holds of one step stream, as
/// plain text, read through the pages' connection; at most
/// [`MAX_WHOLE_LOGS`](super::state::MAX_WHOLE_LOGS) at once.
pub(crate) async fn whole_log(
    State(web): State<Arc<Web>>,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Response {
    let Ok(_permit) = web.whole_logs.clone().try_acquire_owned() else {
        return layout::message(
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many log downloads",
            "Too many whole logs are being read right now; try again in a moment.",
        );
    };
    let read = web
        .read(move |conn| {
            let mut text = String::new();
            let mut at = 0;
            loop {
                let slice = job_log(conn, &id, &q.step, q.stream, at, READ_BYTES)?;
                if slice.text.is_empty() {
                    return Ok(text);
                }
                text.push_str(&slice.text);
                at = slice.next_offset;
            }
        })
        .await;
    match read {
        Ok(text) => {
            let mut response = (StatusCode::OK, text).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            response
        }
        Err(e) => layout::internal(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_from_times_far_apart_does_not_overflow() {
        let step = |started_ms, finished_ms| StepRow {
            name: "s".into(),
            position: 0,
            status: "failed".into(),
            exit_code: None,
            started_ms,
            finished_ms,
            stdout_bytes: 0,
            stderr_bytes: 0,
            stdout_complete: false,
            stderr_complete: false,
        };
        assert_eq!(step_duration(&step(5, i64::MIN), 0), "-");
        assert_eq!(
            step_duration(&step(i64::MIN + 1, 0), i64::MAX),
            links::duration(i64::MAX)
        );
        assert_eq!(step_duration(&step(1_000, 2_000), 0), "1.0 s");
    }
}
