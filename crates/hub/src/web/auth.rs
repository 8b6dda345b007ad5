//! Who may see the pages: a browser with a session (from the login form, `POST /login`, or the
//! scheduler's login link, `GET /login?token=<ui_token>`), or a script sending
//! `Authorization: Bearer <ui_token>`. Anything else is sent to the login page before any data
//! is read. An address that sends too many wrong tokens is stopped for a while
//! ([`super::guard`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use dispatch_protocol::Secret;
use maud::html;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::layout::{self, Nav};
use super::sessions::SESSION_TTL_MS;
use super::state::Web;
use crate::store::now_ms;

/// The session cookie's name.
pub(crate) const COOKIE: &str = "dispatch_session";

/// Lets a request with a session or the bearer token through; sends a browser without one to
/// the login page; answers everything with "disabled" when no `ui_token` is set.
pub(crate) async fn require_login(
    State(web): State<Arc<Web>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = &web.token else {
        return layout::disabled();
    };
    let headers = request.headers();
    let bearer = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    let peer = peer(&request);
    if bearer.is_some() && !web.guard.allows(peer, now_ms()) {
        return too_many_failures();
    }
    let allowed = match bearer {
        Some(value) => crate::metrics::scrape_allowed(Some(token), Some(value)),
        None => session_id(headers).is_some_and(|id| web.sessions.valid(id, now_ms())),
    };
    if allowed {
        let mut response = next.run(request).await;
        layout::secure_headers(response.headers_mut());
        return response;
    }
    if bearer.is_some() {
        web.guard.failed(peer, now_ms());
        return layout::message(
            StatusCode::UNAUTHORIZED,
            "Wrong token",
            "The bearer token is not this hub's ui_token.",
        );
    }
    let mut response = (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, HeaderValue::from_static("/login"))],
    )
        .into_response();
    layout::secure_headers(response.headers_mut());
    response
}

/// The client's address (the hub's server records it on each connection; unspecified where
/// none was recorded).
fn peer<B>(request: &axum::http::Request<B>) -> IpAddr {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip())
}

/// The answer to an address past its wrong tokens ([`super::guard`]).
fn too_many_failures() -> Response {
    let mut response = layout::message(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many wrong tokens",
        "This address sent too many wrong tokens; wait a minute before trying again.",
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    response
}

/// The session id of the request's cookie, if it has one.
fn session_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// Whether `given` is the token, compared over digests so that the time taken reveals neither
/// where a guess goes wrong nor the token's length.
fn is_token(token: &Secret, given: &str) -> bool {
    Sha256::digest(given.as_bytes())
        .ct_eq(&Sha256::digest(token.expose().as_bytes()))
        .into()
}

#[derive(Deserialize)]
pub(crate) struct LoginQuery {
    token: Option<String>,
}

/// `GET /login`: without a token, a form asking for it; with the right one (the scheduler's
/// login link), a new session and a redirect to `/`; with a wrong one, the form again, answered
/// 401.
pub(crate) async fn login(
    State(web): State<Arc<Web>>,
    Query(q): Query<LoginQuery>,
    request: Request,
) -> Response {
    let peer = peer(&request);
    log_in(&web, peer, q.token.unwrap_or_default())
}

/// `POST /login`: the form's typed token, in the body (`token=…`, form-encoded) so that it never
/// lands in an address, a history or a log; answered like `GET /login`.
pub(crate) async fn login_form(State(web): State<Arc<Web>>, request: Request) -> Response {
    let peer = peer(&request);
    let body = match axum::body::to_bytes(request.into_body(), 64 * 1024).await {
        Ok(body) => body,
        Err(_) => Bytes::new(),
    };
    let given = form_urlencoded::parse(&body)
        .find(|(name, _)| name == "token")
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default();
    log_in(&web, peer, given)
}

/// Starts a session when `given` is the token; else the form (401 after a wrong token, 429 once
/// `peer` sent too many).
fn log_in(web: &Web, peer: IpAddr, given: String) -> Response {
    let Some(token) = &web.token else {
        return layout::disabled();
    };
    if !given.is_empty() && !web.guard.allows(peer, now_ms()) {
        return too_many_failures();
    }
    if !given.is_empty() && is_token(token, &given) {
        let id = web.sessions.start(now_ms());
        let secure = if web.secure_cookies { "; Secure" } else { "" };
        let cookie = format!(
            "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
            SESSION_TTL_MS / 1000
        );
        let mut response = (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, HeaderValue::from_static("/"))],
        )
            .into_response();
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().insert(header::SET_COOKIE, value);
        }
        layout::secure_headers(response.headers_mut());
        return response;
    }
    let (status, note) = if given.is_empty() {
        (StatusCode::OK, "")
    } else {
        web.guard.failed(peer, now_ms());
        (StatusCode::UNAUTHORIZED, "That is not this hub's token.")
    };
    let body = html! {
        @if !note.is_empty() { p.status.status-failed { (note) } }
        p { "The hub's pages need its UI token (" code { "ui_token" } "; the scheduler with an embedded hub prints a ready login link when it starts)." }
        form method="post" action="/login" {
            label { "Token " input type="password" name="token" autocomplete="current-password" required; }
            " "
            button type="submit" { "Log in" }
        }
    };
    layout::answer(status, layout::page("Log in", Nav::None, body, false))
}

/// `POST /logout`: ends the session and clears the cookie.
pub(crate) async fn logout(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    if let Some(id) = session_id(&headers) {
        web.sessions.end(id);
    }
    let mut response = (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, HeaderValue::from_static("/login")),
            (
                header::SET_COOKIE,
                HeaderValue::from_static(
                    "dispatch_session=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0",
                ),
            ),
        ],
    )
        .into_response();
    layout::secure_headers(response.headers_mut());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; dispatch_session=abc; b=2"),
        );
        assert_eq!(session_id(&headers), Some("abc"));
        let mut none = HeaderMap::new();
        none.append(
            header::COOKIE,
            HeaderValue::from_static("xdispatch_session=abc"),
        );
        assert_eq!(session_id(&none), None);
    }

    #[test]
    fn only_the_exact_token_logs_in() {
        let token = Secret::new("right");
        assert!(is_token(&token, "right"));
        for wrong in ["", "righ", "right ", "RIGHT", "rightx"] {
            assert!(!is_token(&token, wrong), "{wrong:?}");
        }
    }
}
