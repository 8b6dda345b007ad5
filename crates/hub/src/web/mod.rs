//! The hub's web pages (`docs/security.md`, "Web pages"): server-rendered HTML for people, behind
//! a login with the hub's `ui_token`. Jobs (`/jobs`, `/jobs/{id}`: the address GitHub statuses
//! link to), deliveries, servers and bindings; plain links and GET forms, no script but the
//! live log tail.
//!
//! Files, bottom to top: `sessions`, `guard` (the brake on token guessing), `links`, `queries` (the SQL, over the pages' own read-only
//! connection), `state`, `layout`, `auth`, then the pages: `jobs`, `steps` (a job's steps and
//! logs), `job`, `tail` (the live tail), `admin`; and this file, which mounts them.
//!
//! Not for: anything a scheduler calls (the cloud API is `api`), writing to the store.

mod admin;
mod auth;
mod guard;
mod job;
mod jobs;
mod layout;
mod links;
mod queries;
mod sessions;
mod state;
mod steps;
mod tail;

use std::sync::Arc;

use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::error::HubError;
use crate::handler::AppState;
use crate::store::Reader;
use state::Web;

/// The page routes over the hub's state; the pages read the store through `reader`, a connection
/// of their own.
pub(crate) fn router(app: Arc<AppState>, reader: Reader) -> Result<Router, HubError> {
    let web = Arc::new(Web::open(app, reader));
    let base = web.app.cfg.public_url.as_deref().unwrap_or_default();
    if web.token.is_some() {
        // The token itself is never logged.
        tracing::info!(login = %format!("{base}/login"), "web pages on; log in with the ui_token");
    } else {
        tracing::info!("web pages off: no ui_token set");
    }
    let pages = Router::new()
        .route("/", get(|| async { Redirect::to("/jobs") }))
        .route("/jobs", get(jobs::jobs_page))
        .route("/jobs/{id}", get(job::job_page))
        .route("/jobs/{id}/log", get(steps::whole_log))
        .route("/jobs/{id}/events", get(tail::events))
        .route("/deliveries", get(admin::deliveries_page))
        .route("/servers", get(admin::servers_page))
        .route("/bindings", get(admin::bindings_page))
        .route_layer(from_fn_with_state(web.clone(), auth::require_login));
    Ok(Router::new()
        .merge(pages)
        .route("/login", get(auth::login).post(auth::login_form))
        .route("/logout", post(auth::logout))
        // Browsers ask for it on their own; an empty answer keeps a 404 out of their console.
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route(
            "/assets/style.css",
            get(|| async { asset("text/css; charset=utf-8", layout::STYLE) }),
        )
        .route(
            "/assets/tail.js",
            get(|| async { asset("text/javascript; charset=utf-8", layout::TAIL_JS) }),
        )
        .with_state(web))
}

fn asset(content_type: &'static str, text: &'static str) -> Response {
    let mut response = text.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}
