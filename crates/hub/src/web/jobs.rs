//! `GET /jobs`: every job, newest first, narrowed by repository, DAG and status with a plain GET
//! form, one page of [`queries::PAGE`] at a time.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use dispatch_protocol::RESULT_STATUS_WORDS;
use maud::{html, Markup};
use serde::Deserialize;

use super::layout::{self, Nav};
use super::links;
use super::queries::{self, JobFilter, JobRow};
use super::state::Web;
use crate::bindings::Binding;
use crate::store::JobState;

/// The query string of the jobs page (what its filter form and "older" link send).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct JobsQuery {
    #[serde(default)]
    repository: String,
    #[serde(default)]
    dag: String,
    #[serde(default)]
    status: String,
    before: Option<i64>,
}

pub(crate) async fn jobs_page(State(web): State<Arc<Web>>, Query(q): Query<JobsQuery>) -> Response {
    let filter = JobFilter {
        repository: q.repository.trim().to_owned(),
        dag: q.dag.trim().to_owned(),
        status: q.status.trim().to_owned(),
        before: q.before,
    };
    let f = filter.clone();
    let (rows, more) = match web.read(move |conn| queries::jobs(conn, &f)).await {
        Ok(found) => found,
        Err(e) => return layout::internal(&e),
    };
    layout::answer(StatusCode::OK, render(&web, &filter, &rows, more))
}

/// The values `field` takes in `bindings`, sorted, each once (a filter's choices).
fn distinct<'a>(
    bindings: &'a [Binding],
    field: impl Fn(&'a Binding) -> &'a String,
) -> Vec<&'a str> {
    let mut values: Vec<&str> = bindings.iter().map(|b| field(b).as_str()).collect();
    values.sort_unstable();
    values.dedup();
    values
}

/// The page for `rows` (at most [`queries::PAGE`]); `more`: an older page exists.
pub(crate) fn render(web: &Web, filter: &JobFilter, rows: &[JobRow], more: bool) -> Markup {
    let bindings = &web.app.cfg.bindings;
    let repositories = distinct(bindings, |b| &b.repository);
    let dags = distinct(bindings, |b| &b.dag);
    let next = rows.last().filter(|_| more).map(|last| {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (name, value) in [
            ("repository", &filter.repository),
            ("dag", &filter.dag),
            ("status", &filter.status),
        ] {
            if !value.is_empty() {
                q.append_pair(name, value);
            }
        }
        q.append_pair("before", &last.seq.to_string());
        format!("/jobs?{}", q.finish())
    });
    let body = html! {
        form.filters method="get" action="/jobs" {
            label { "Repository" input name="repository" list="repositories" value=(filter.repository); }
            datalist id="repositories" { @for r in &repositories { option value=(r) {} } }
            label { "DAG" input name="dag" list="dags" value=(filter.dag); }
            datalist id="dags" { @for d in &dags { option value=(d) {} } }
            label { "Status"
                select name="status" {
                    option value="" { "any" }
                    @for word in JobState::ALL.iter().map(|s| s.as_str()).chain(RESULT_STATUS_WORDS) {
                        option value=(word) selected[filter.status == word] { (word) }
                    }
                }
            }
            button type="submit" { "Filter" }
            @if !(filter.repository.is_empty() && filter.dag.is_empty() && filter.status.is_empty()) {
                a href="/jobs" { "clear" }
            }
        }
        @if rows.is_empty() {
            p.muted { "No jobs" @if filter.before.is_some() { " older than these" } "." }
        } @else {
            table {
                thead { tr { th { "Job" } th { "Status" } th { "Repository" } th { "DAG" } th { "Event" } th { "Ref" } th { "Stored" } th { "Took" } } }
                tbody {
                    @for row in rows { (job_line(web, row)) }
                }
            }
        }
        p.pager {
            @if filter.before.is_some() { a href="/jobs" { "newest" } " " }
            @if let Some(next) = next { a href=(next) rel="next" { "older →" } }
        }
    };
    layout::page("Jobs", Nav::Jobs, body, false)
}

fn job_line(web: &Web, row: &JobRow) -> Markup {
    let job = &row.job;
    let shown = shown_status(row);
    let event = if job.event_action.is_empty() {
        job.event_name.clone()
    } else {
        format!("{} · {}", job.event_name, job.event_action)
    };
    let repo = links::Repo::new(&web.github_web, &job.repository_name);
    let took = (row.state == JobState::Finished.as_str()).then(|| row.updated_ms - row.created_ms);
    html! {
        tr {
            td { a href={ "/jobs/" (row.id) } { code { (short(&row.id, 13)) } } }
            td { span class={ "status status-" (shown) } { (shown) } }
            td {
                @match &repo {
                    Some(repo) => a href=(repo.home()) { (job.repository_name) },
                    None => (job.repository_name),
                }
            }
            td { (job.dag_name) }
            td { (event) }
            td {
                (job.git_ref)
                @if let Some(url) = repo.as_ref().and_then(|r| r.commit(&job.sha)) {
                    " " a href=(url) { code { (short(&job.sha, 7)) } }
                }
            }
            td { (links::time(row.created_ms)) }
            td { @if let Some(ms) = took { (links::duration(ms)) } }
        }
    }
}

/// The word a job's status shows as: its result once finished, else its state.
pub(crate) fn shown_status(row: &JobRow) -> &str {
    if row.state == JobState::Finished.as_str() && !row.result_status.is_empty() {
        &row.result_status
    } else {
        &row.state
    }
}

/// The first `n` characters of `text`.
pub(crate) fn short(text: &str, n: usize) -> &str {
    text.char_indices().nth(n).map_or(text, |(i, _)| &text[..i])
}
