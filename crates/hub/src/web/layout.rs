//! The frame every page shares (head, navigation, footer), the answers that are not pages of data
//! (errors, the disabled UI) and the headers every page carries.
//!
//! The pages load no script or style from elsewhere and run no inline script: the one script (the
//! live log tail) and the style sheet are served by the hub under [`ASSETS`], and the
//! Content-Security-Policy allows nothing else, so even a value that escaped the escaping could not
//! run.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};

/// Where the style sheet and the tail script are served (public: they hold no data).
pub(crate) const ASSETS: &str = "/assets";

/// The style sheet.
pub(crate) const STYLE: &str = include_str!("style.css");

/// The live log tail (server-sent events), loaded only by the page of a job still running.
pub(crate) const TAIL_JS: &str = include_str!("tail.js");

const CSP: &str = "default-src 'none'; style-src 'self'; script-src 'self'; connect-src 'self'; \
img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The pages of the navigation bar.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Jobs,
    Deliveries,
    Servers,
    Bindings,
    None,
}

/// A whole page: `title`, the navigation with `nav` marked, then `body`; `script` adds the tail
/// script.
pub(crate) fn page(title: &str, nav: Nav, body: Markup, script: bool) -> Markup {
    let item = |target: Nav, href: &str, label: &str| {
        html! {
            a href=(href) aria-current=[(nav == target).then_some("page")] { (label) }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (title) " · dispatch hub" }
                link rel="stylesheet" href={ (ASSETS) "/style.css" };
            }
            body {
                header {
                    nav {
                        strong { "dispatch hub" }
                        (item(Nav::Jobs, "/jobs", "Jobs"))
                        (item(Nav::Deliveries, "/deliveries", "Deliveries"))
                        (item(Nav::Servers, "/servers", "Servers"))
                        (item(Nav::Bindings, "/bindings", "Bindings"))
                        @if nav != Nav::None {
                            form.logout method="post" action="/logout" {
                                button type="submit" { "Log out" }
                            }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
                @if script {
                    script src={ (ASSETS) "/tail.js" } defer {}
                }
            }
        }
    }
}

/// `markup` as an HTML answer with `status` and the page headers: no caching (pages hold private
/// data), no referrer (a click to GitHub must not carry the hub's addresses), the CSP.
pub(crate) fn answer(status: StatusCode, markup: Markup) -> Response {
    let mut response = (status, markup.into_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure_headers(headers);
    response
}

/// The headers every answer of the web routes carries.
pub(crate) fn secure_headers(headers: &mut axum::http::HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
}

/// A page that says what went wrong, without data.
pub(crate) fn message(status: StatusCode, title: &str, text: &str) -> Response {
    answer(
        status,
        page(title, Nav::None, html! { p { (text) } }, false),
    )
}

/// The answer of every page when no `ui_token` is set.
pub(crate) fn disabled() -> Response {
    message(
        StatusCode::NOT_FOUND,
        "Web UI disabled",
        "This hub serves no web pages: set `ui_token` in hub.toml (or --ui-token, \
         DISPATCH_HUB_UI_TOKEN) to turn them on.",
    )
}

/// A failed read of the store: logged, answered without detail.
pub(crate) fn internal(e: &crate::error::HubError) -> Response {
    tracing::error!(error = %dispatch_util::error_chain(e), "web page failed");
    message(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Internal error",
        "The hub could not read its store; the hub's log says why.",
    )
}
