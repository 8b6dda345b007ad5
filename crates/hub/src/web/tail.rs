//! `GET /jobs/{id}/events`: the live tail of a running job's page, as server-sent events. The
//! page's script (`tail.js`) opens it with where each log on the page ends (`s=<stream>:<offset>:<step>`,
//! repeated); the hub then sends what follows and every change, reading the store again each time
//! the job's watch ([`crate::store::Store::progress_changes`]) wakes it:
//!
//! - `log`: `{step, stream, offset, next, text}`, the text of one step stream from `offset` to
//!   `next` (bytes of the stream);
//! - `step`: `{name, status, exit_code, duration}`, sent for every step at first and then when it
//!   changes;
//! - `job`: `{state, status, summary}`, at first and when it changes;
//! - `end`: the job is finished and every log read; the hub closes the stream.
//!
//! The script appends text with DOM text nodes, never as HTML. A page that lost the stream opens a
//! new one from where its logs end, so nothing is shown twice.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use dispatch_protocol::LogStream;
use serde_json::json;
use tokio::sync::mpsc;

use super::layout;
use super::queries;
use super::state::Web;
use super::steps::{step_duration, READ_BYTES};
use crate::error::HubError;
use crate::store::{job_log, job_steps, now_ms, JobState};

/// Without a change for this long the store is read again anyway (a missed wake-up costs at
/// most this), and a comment line finds out whether the browser is still there.
const IDLE: Duration = Duration::from_secs(15);

/// Where the page's logs end: (step, stream) → offset.
type Offsets = HashMap<(String, LogStream), u64>;

fn parse_offsets(query: Option<&str>) -> Offsets {
    let mut offsets = Offsets::new();
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if name != "s" {
            continue;
        }
        let mut parts = value.splitn(3, ':');
        let (Some(stream), Some(offset), Some(step)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let stream = match stream {
            "stdout" => LogStream::Stdout,
            "stderr" => LogStream::Stderr,
            _ => continue,
        };
        if let Ok(offset) = offset.parse() {
            offsets.insert((step.to_owned(), stream), offset);
        }
    }
    offsets
}

pub(crate) async fn events(
    State(web): State<Arc<Web>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let Ok(permit) = web.tails.clone().try_acquire_owned() else {
        return layout::message(
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many live tails",
            "Too many pages follow running jobs right now; reload later.",
        );
    };
    let offsets = parse_offsets(query.as_deref());
    let (tx, mut rx) = mpsc::channel::<Event>(16);
    tokio::spawn(async move {
        let _permit = permit;
        if let Err(e) = follow(&web, &id, offsets, &tx).await {
            tracing::warn!(job_id = %id, error = %dispatch_util::error_chain(&e), "live tail ended");
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|event| event.map(Ok::<_, Infallible>))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(IDLE))
        .into_response()
}

/// What was last sent of a step, to send it again only when it changed.
type StepSent = (String, Option<i32>, i64, i64);

/// Sends the job's news to `tx` until it is finished and read, the browser leaves (a send
/// fails) or the hub stops.
async fn follow(
    web: &Arc<Web>,
    id: &str,
    mut offsets: Offsets,
    tx: &mpsc::Sender<Event>,
) -> Result<(), HubError> {
    let mut steps_sent: HashMap<String, StepSent> = HashMap::new();
    let mut job_sent: Option<(String, String, String)> = None;
    loop {
        // Watch before reading, so that a change stored during the read still wakes us.
        let mut changes = web.app.store.progress_changes(id);
        let key = id.to_owned();
        let Some(job) = web.read(move |conn| queries::job_state(conn, &key)).await? else {
            return Ok(());
        };
        let key = id.to_owned();
        let steps = web.read(move |conn| job_steps(conn, &key)).await?;
        let now = now_ms();
        for s in &steps {
            let sent = (s.status.clone(), s.exit_code, s.started_ms, s.finished_ms);
            // A running step's duration grows, so it goes again; a step not started yet only
            // when it changes.
            let running = s.started_ms > 0 && s.finished_ms == 0;
            if steps_sent.get(&s.name) != Some(&sent) || running {
                let data = json!({
                    "name": s.name, "status": s.status, "exit_code": s.exit_code,
                    "duration": step_duration(s, now),
                });
                if !send(tx, "step", data).await {
                    return Ok(());
                }
                steps_sent.insert(s.name.clone(), sent);
            }
        }
        for s in &steps {
            for stream in LogStream::ALL {
                let at = offsets.entry((s.name.clone(), stream)).or_insert(0);
                while *at < s.log_bytes(stream) {
                    let (key, step, from) = (id.to_owned(), s.name.clone(), *at);
                    let slice = web
                        .read(move |conn| job_log(conn, &key, &step, stream, from, READ_BYTES))
                        .await?;
                    if slice.text.is_empty() {
                        break;
                    }
                    let data = json!({
                        "step": s.name, "stream": stream.as_str(), "offset": from,
                        "next": slice.next_offset, "text": slice.text,
                    });
                    if !send(tx, "log", data).await {
                        return Ok(());
                    }
                    *at = slice.next_offset;
                }
            }
        }
        let finished = job.0 == JobState::Finished.as_str();
        if job_sent.as_ref() != Some(&job) {
            let status = if finished && !job.1.is_empty() {
                &job.1
            } else {
                &job.0
            };
            let data = json!({ "state": job.0, "status": status, "summary": job.2 });
            if !send(tx, "job", data).await {
                return Ok(());
            }
            job_sent = Some(job);
        }
        if finished {
            send(tx, "end", json!({})).await;
            return Ok(());
        }
        tokio::select! {
            _ = web.app.cancel.cancelled() => return Ok(()),
            _ = tx.closed() => return Ok(()),
            _ = changes.changed() => {}
            _ = tokio::time::sleep(IDLE) => {}
        }
    }
}

/// Sends one event; false when the browser is gone.
async fn send(tx: &mpsc::Sender<Event>, name: &str, data: serde_json::Value) -> bool {
    tx.send(Event::default().event(name).data(data.to_string()))
        .await
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_come_from_the_query_and_bad_ones_are_left_out() {
        let offsets = parse_offsets(Some(
            "s=stdout%3A12%3Abuild%3Aall&s=stderr:3:test&s=stdin:1:x&s=stdout:no:y&x=1&s=stdout:4",
        ));
        assert_eq!(offsets.len(), 2);
        assert_eq!(offsets[&("build:all".to_owned(), LogStream::Stdout)], 12);
        assert_eq!(offsets[&("test".to_owned(), LogStream::Stderr)], 3);
        assert!(parse_offsets(None).is_empty());
    }
}
