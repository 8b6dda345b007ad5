//! The hub's own pages: `GET /deliveries` (every webhook and what became of it), `GET /servers`
//! (the schedulers that activated, and the jobs they hold) and `GET /bindings` (as loaded).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::html;
use serde::Deserialize;

use super::jobs::short;
use super::layout::{self, Nav};
use super::links;
use super::queries::{self, DeliveryKey};
use super::state::Web;
use crate::metrics::WEBHOOKS;
use crate::store::{now_ms, servers, ServerInfo};

/// Query of the deliveries page: the key of the last row of the page before.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct DeliveriesQuery {
    before_ms: Option<i64>,
    #[serde(default)]
    before_id: String,
}

/// What an outcome word means, for a reader of the page.
fn outcome_text(outcome: &str) -> &'static str {
    use crate::trust::Outcome;
    [
        (Outcome::Accepted, "made jobs or ran a command"),
        (Outcome::Duplicate, "a redelivery, already handled"),
        (Outcome::NotAllowed, "the commenter may not run commands"),
        (Outcome::ForkNotApproved, "fork code not approved"),
        (Outcome::NoBinding, "no binding matched"),
    ]
    .into_iter()
    .find(|(o, _)| o.as_str() == outcome)
    .map_or("", |(_, text)| text)
}

pub(crate) async fn deliveries_page(
    State(web): State<Arc<Web>>,
    Query(q): Query<DeliveriesQuery>,
) -> Response {
    let before: Option<DeliveryKey> = q.before_ms.map(|ms| (ms, q.before_id.clone()));
    let paged = before.is_some();
    let (rows, next) = match web
        .read(move |conn| queries::deliveries(conn, before))
        .await
    {
        Ok(found) => found,
        Err(e) => return layout::internal(&e),
    };
    let counts = web.app.metrics.counts(WEBHOOKS);
    let next = next.map(|(ms, id)| {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("before_ms", &ms.to_string());
        q.append_pair("before_id", &id);
        format!("/deliveries?{}", q.finish())
    });
    let body = html! {
        h2 { "Since the hub started" }
        p.muted { "Every webhook request by outcome, including the ones never stored (bad signature, too large)." }
        @if counts.is_empty() {
            p { "No webhook received since the hub started." }
        } @else {
            table #webhook-counts {
                thead { tr { th { "Outcome" } th { "Requests" } } }
                tbody { @for (label, n) in &counts { tr { td { (label) } td { (n) } } } }
            }
        }
        h2 { "Stored deliveries" }
        @if rows.is_empty() {
            p.muted { "No deliveries" @if paged { " older than these" } "." }
        } @else {
            table {
                thead { tr { th { "Received" } th { "Event" } th { "Delivery" } th { "Outcome" } th { "Jobs" } } }
                tbody {
                    @for d in &rows {
                        tr {
                            td { (links::time(d.received_ms)) }
                            td { (d.event) }
                            td { code { (d.delivery_id) } }
                            td {
                                span.status { (d.outcome) }
                                " " span.muted { (outcome_text(&d.outcome)) }
                                @if !d.reason.is_empty() { br; (d.reason) }
                            }
                            td {
                                @for id in &d.job_ids {
                                    a href={ "/jobs/" (id) } { code { (short(id, 13)) } } " "
                                }
                            }
                        }
                    }
                }
            }
        }
        p.pager {
            @if paged { a href="/deliveries" { "newest" } " " }
            @if let Some(next) = next { a href=(next) rel="next" { "older →" } }
        }
    };
    layout::answer(
        StatusCode::OK,
        layout::page("Deliveries", Nav::Deliveries, body, false),
    )
}

pub(crate) async fn servers_page(State(web): State<Arc<Web>>) -> Response {
    let servers = match web.read(servers).await {
        Ok(servers) => servers,
        Err(e) => return layout::internal(&e),
    };
    let active = match web.read(queries::active_jobs).await {
        Ok(active) => active,
        Err(e) => return layout::internal(&e),
    };
    let versions = match web.read(queries::server_versions).await {
        Ok(versions) => versions,
        Err(e) => return layout::internal(&e),
    };
    let version_of = |s: &ServerInfo| {
        versions
            .get(&(s.license_id.clone(), s.server_id.clone()))
            .map(String::as_str)
    };
    let now = now_ms();
    let body = html! {
        p.muted { "Every scheduler that activated a license on this hub, most recently seen first, with the version it gave when it activated or last heartbeated." }
        @if servers.is_empty() {
            p { "No scheduler has activated a license yet." }
        } @else {
            table {
                thead { tr { th { "Server" } th { "Machine" } th { "Version" } th { "License" } th { "Activated" } th { "Last seen" } th { "Active jobs" } } }
                tbody {
                    @for s in &servers {
                        tr {
                            td { code { (s.server_id) } @if let Some(ms) = s.revoked_ms { br; span.status.status-failed { "revoked " (links::time(ms)) } } }
                            td { (s.machine_name) }
                            td.version {
                                @match version_of(s) {
                                    Some(v) => (v),
                                    None => span.muted { "not given" },
                                }
                            }
                            td { (s.license_id) }
                            td { (links::time(s.activated_ms)) }
                            td { (links::time(s.last_seen_ms)) " " span.muted { "(" (links::duration(now - s.last_seen_ms)) " ago)" } }
                            td {
                                @for j in active.iter().filter(|j| j.server_id == s.server_id) {
                                    a href={ "/jobs/" (j.id) } { (j.dag) } " " span.muted { (j.repository) " · " (j.state) } br;
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    layout::answer(
        StatusCode::OK,
        layout::page("Servers", Nav::Servers, body, false),
    )
}

pub(crate) async fn bindings_page(State(web): State<Arc<Web>>) -> Response {
    let bindings = &web.app.cfg.bindings;
    let body = html! {
        p.muted { "The bindings this hub loaded at start. A binding with an error stops the hub from starting (the error names the file and the binding), so every binding listed here is in force." }
        @if bindings.is_empty() {
            p { "No bindings: webhooks start nothing until some are added." }
        } @else {
            table {
                thead { tr { th { "Id" } th { "Repository" } th { "DAG" } th { "Trigger" } th { "Narrowed to" } th { "License" } th { "Forks" } th { "Commands from" } } }
                tbody {
                    @for b in bindings {
                        tr {
                            td { code { (b.id) } }
                            td {
                                @match links::Repo::new(&web.github_web, &b.repository) {
                                    Some(r) => a href=(r.home()) { (b.repository) },
                                    None => (b.repository),
                                }
                            }
                            td { (b.dag) }
                            td { (b.trigger.as_str()) }
                            td {
                                @for (name, value) in [("event", &b.event_name), ("action", &b.action), ("branch", &b.branch_pattern), ("tag", &b.tag_pattern), ("alias", &b.command_alias), ("event_type", &b.dispatch_event_type), ("context", &b.check_name)] {
                                    @if !value.is_empty() { (name) " " code { (value) } br; }
                                }
                            }
                            td { @if b.license.is_empty() { span.muted { "any" } } @else { (b.license) } }
                            td { (b.fork_pull_requests.as_str()) }
                            td { (b.allowed_associations.join(", ")) @if !b.allowed_users.is_empty() { br; (b.allowed_users.join(", ")) } }
                        }
                    }
                }
            }
        }
    };
    layout::answer(
        StatusCode::OK,
        layout::page("Bindings", Nav::Bindings, body, false),
    )
}
