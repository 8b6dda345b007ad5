//! `GET /jobs/{id}`: one job, at the address its GitHub statuses link to (`target_url`): the
//! event, the binding, the DAG, the server, the timeline, the steps with their logs and the
//! final summary. The timeline is built from stored times: the webhook's arrival, the job's
//! creation, its latest claim (a claim whose lease ran out is replaced by the next one), its
//! accept, the run's and each step's start and end as the progress extension reported them, and
//! the finish.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{html, Markup};

use super::jobs::{short, shown_status};
use super::layout::{self, Nav};
use super::links;
use super::queries::{self, JobDetail};
use super::state::Web;
use super::steps::{self, StepsView};
use crate::store::{now_ms, JobState};

pub(crate) async fn job_page(State(web): State<Arc<Web>>, Path(id): Path<String>) -> Response {
    let key = id.clone();
    let detail = match web.read(move |conn| queries::job(conn, &key)).await {
        Ok(Some(detail)) => detail,
        Ok(None) => {
            return layout::message(
                StatusCode::NOT_FOUND,
                "No such job",
                "The hub has no job with this id (finished jobs are pruned after the retention period).",
            )
        }
        Err(e) => return layout::internal(&e),
    };
    let view = match web.read(move |conn| steps::read(conn, &id)).await {
        Ok(view) => view,
        Err(e) => return layout::internal(&e),
    };
    layout::answer(StatusCode::OK, render(&web, &detail, &view, now_ms()))
}

/// One line of the timeline: when, what.
struct Moment {
    at_ms: i64,
    what: String,
}

fn timeline(d: &JobDetail, view: &StepsView) -> Vec<Moment> {
    let row = &d.row;
    let mut moments = Vec::new();
    if d.received_ms > 0 {
        moments.push(Moment {
            at_ms: d.received_ms,
            what: format!("webhook received ({})", row.job.event_name),
        });
    }
    moments.push(Moment {
        at_ms: row.created_ms,
        what: "job stored, queued".to_owned(),
    });
    // Only the latest claim is kept: one whose lease ran out is replaced by the next.
    if d.claimed_ms > 0 {
        let mut what = format!("claimed by {}", server_name(d));
        if d.claims > 1 {
            what.push_str(&format!(
                " (claim {}: the earlier claims' leases ran out)",
                d.claims
            ));
        }
        if row.state == JobState::Queued.as_str() {
            what.push_str("; its lease ran out, queued again");
        }
        moments.push(Moment {
            at_ms: d.claimed_ms,
            what,
        });
    }
    if d.accepted_ms > 0 {
        moments.push(Moment {
            at_ms: d.accepted_ms,
            what: format!("accepted by {}", server_name(d)),
        });
    }
    if let Some(started) = view.progress.map(|p| p.run_started_ms).filter(|ms| *ms > 0) {
        moments.push(Moment {
            at_ms: started,
            what: format!("run started on {}", server_name(d)),
        });
    }
    for step in &view.steps {
        if step.started_ms > 0 {
            moments.push(Moment {
                at_ms: step.started_ms,
                what: format!("step {} started", step.name),
            });
        }
        if step.finished_ms > 0 {
            let exit = step
                .exit_code
                .map(|c| format!(", exit code {c}"))
                .unwrap_or_default();
            moments.push(Moment {
                at_ms: step.finished_ms,
                what: format!("step {} {}{exit}", step.name, step.status),
            });
        }
    }
    if row.state == JobState::Finished.as_str() {
        moments.push(Moment {
            at_ms: row.updated_ms,
            what: format!("finished: {}", shown_status(row)),
        });
    }
    moments.sort_by_key(|m| m.at_ms);
    moments
}

fn server_name(d: &JobDetail) -> String {
    if d.machine_name.trim().is_empty() {
        d.row.claimed_by.clone()
    } else {
        format!("{} ({})", d.machine_name, d.row.claimed_by)
    }
}

pub(crate) fn render(web: &Web, d: &JobDetail, view: &StepsView, now_ms: i64) -> Markup {
    let row = &d.row;
    let job = &row.job;
    let repo = links::Repo::new(&web.github_web, &job.repository_name);
    let binding = web
        .app
        .cfg
        .bindings
        .iter()
        .find(|b| !job.binding_id.is_empty() && b.id == job.binding_id);
    let shown = shown_status(row);
    let moments = timeline(d, view);
    let running = row.state != JobState::Finished.as_str();
    let body = html! {
        p {
            "Status: " span #job-status class={ "status status-" (shown) } { (shown) }
            " · state " span #job-state { (row.state) }
        }
        h2 { "Event" }
        dl.facts {
            dt { "Type" } dd { (job.event_name) @if !job.event_action.is_empty() { " · " (job.event_action) } }
            dt { "Repository" } dd {
                @match &repo {
                    Some(r) => a href=(r.home()) { (job.repository_name) },
                    None => (job.repository_name),
                }
            }
            @if !job.git_ref.is_empty() { dt { "Ref" } dd { code { (job.git_ref) } } }
            @if !job.sha.is_empty() {
                dt { "Commit" } dd {
                    @match repo.as_ref().and_then(|r| r.commit(&job.sha)) {
                        Some(url) => a href=(url) { code { (job.sha) } },
                        None => code { (job.sha) },
                    }
                }
            }
            @if !job.actor_login.is_empty() {
                dt { "Actor" } dd {
                    @match links::user(&web.github_web, &job.actor_login) {
                        Some(url) => a href=(url) { (job.actor_login) },
                        None => (job.actor_login),
                    }
                }
            }
            @if job.pull_request_number > 0 {
                dt { "Pull request" } dd {
                    @match repo.as_ref().and_then(|r| r.pull(job.pull_request_number)) {
                        Some(url) => a href=(url) { "#" (job.pull_request_number) },
                        None => { "#" (job.pull_request_number) },
                    }
                    @if !d.title.is_empty() { " " (d.title) }
                }
            } @else if job.issue_number > 0 {
                dt { "Issue" } dd {
                    @match repo.as_ref().and_then(|r| r.issue(job.issue_number)) {
                        Some(url) => a href=(url) { "#" (job.issue_number) },
                        None => { "#" (job.issue_number) },
                    }
                    @if !d.title.is_empty() { " " (d.title) }
                }
            }
            @if !job.command.is_empty() { dt { "Command" } dd { code { (job.command) } } }
            @if !job.delivery_id.is_empty() {
                dt { "Delivery" } dd { code { (job.delivery_id) } }
            }
        }
        h2 { "Binding and DAG" }
        dl.facts {
            dt { "DAG" } dd { code { (job.dag_name) } }
            dt { "Binding" } dd {
                code { (job.binding_id) }
                @match binding {
                    Some(b) => { " · trigger " (b.trigger.as_str()) @if !b.license.is_empty() { " · license " (b.license) } },
                    None => @if !job.binding_id.is_empty() { span.muted { " (no longer in the bindings)" } },
                }
            }
        }
        h2 { "Server" }
        @if row.claimed_by.is_empty() {
            p.muted { "Not taken by a scheduler yet." }
        } @else {
            dl.facts {
                dt { "Server" } dd { (server_name(d)) }
                @if !d.client_version.is_empty() { dt { "Version" } dd { (d.client_version) } }
                dt { "License" } dd { (row.claimed_license) }
            }
        }
        h2 { "Timeline" }
        table {
            thead { tr { th { "When" } th { "What" } th { "After" } } }
            tbody {
                @for (i, m) in moments.iter().enumerate() {
                    tr {
                        td { (links::time(m.at_ms)) }
                        td { (m.what) }
                        td { @if i > 0 { (links::duration(m.at_ms.saturating_sub(moments[i - 1].at_ms))) } }
                    }
                }
            }
        }
        h2 { "Steps" }
        @if view.steps.is_empty() {
            p.muted { "No steps reported (yet): the scheduler reports them once the run starts, if it speaks the progress extension." }
        }
        (steps::table(view, now_ms))
        h2 { "Logs" }
        (steps::logs(&row.id, view))
        @if running {
            div #live data-events={ "/jobs/" (row.id) "/events" } {
                p.muted { "This page follows the run as it goes (with JavaScript; without, reload it)." }
            }
        }
        h2 { "Summary" }
        @if row.state == JobState::Finished.as_str() {
            p { span class={ "status status-" (shown) } { (shown) } " after " (links::duration(row.updated_ms.saturating_sub(row.created_ms))) }
        } @else {
            p #job-pending.muted { "Not finished yet." }
        }
        pre #job-summary hidden[row.result_summary.is_empty()] { (row.result_summary) }
    };
    let title = format!("{} · {}", job.dag_name, short(&row.id, 13));
    layout::page(&title, Nav::Jobs, body, running)
}
