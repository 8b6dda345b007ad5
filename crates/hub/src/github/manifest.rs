//! The GitHub App manifest (`hub github-app manifest`): the App the hub needs, created in one step
//! from GitHub's "new App" form. `docs/github-app.md` walks through it.

use serde_json::{json, Value};

/// The repository permissions the hub uses: check runs, commit statuses, comments (an issue
/// permission, also for pull requests), and reading the pull requests, code and metadata that
/// events refer to.
pub const PERMISSIONS: [(&str, &str); 6] = [
    ("checks", "write"),
    ("statuses", "write"),
    ("issues", "write"),
    ("pull_requests", "read"),
    ("contents", "read"),
    ("metadata", "read"),
];

/// The webhook events bindings can start DAGs from, plus `check_suite` (the "Re-run all" button).
pub const EVENTS: [&str; 10] = [
    "push",
    "pull_request",
    "issue_comment",
    "pull_request_review_comment",
    "release",
    "create",
    "check_run",
    "check_suite",
    "repository_dispatch",
    "workflow_dispatch",
];

/// The path under `public_url` GitHub delivers webhooks to.
pub const WEBHOOK_PATH: &str = "/webhooks/github";

/// The path under `public_url` GitHub sends the browser to after the App is created.
pub const CREATED_PATH: &str = "/github-app/created";

/// The manifest for an App named `name`, for a hub reachable at `public_url`.
pub fn manifest(name: &str, public_url: &str) -> Value {
    let base = public_url.trim_end_matches('/');
    let permissions: serde_json::Map<String, Value> = PERMISSIONS
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
        .collect();
    json!({
        "name": name,
        "url": base,
        "description": "dispatch: GitHub events start DAGs on your own machines",
        "hook_attributes": {"url": format!("{base}{WEBHOOK_PATH}"), "active": true},
        "redirect_url": format!("{base}{CREATED_PATH}"),
        "public": false,
        "default_permissions": permissions,
        "default_events": EVENTS,
    })
}

/// GitHub's web address for an API base URL: `https://api.github.com` → `https://github.com`,
/// `https://<host>/api/v3` (GitHub Enterprise Server) → `https://<host>`.
pub fn web_url(api_url: &str) -> String {
    let api = api_url.trim_end_matches('/');
    if api == "https://api.github.com" {
        return "https://github.com".to_owned();
    }
    api.strip_suffix("/api/v3").unwrap_or(api).to_owned()
}

/// The form a manifest is posted to: the user's own Apps, or an organization's when `org` is set.
pub fn creation_url(api_url: &str, org: Option<&str>) -> String {
    let web = web_url(api_url);
    match org {
        Some(org) => format!("{web}/organizations/{org}/settings/apps/new"),
        None => format!("{web}/settings/apps/new"),
    }
}

/// A page with one button that posts the manifest to GitHub (GitHub takes manifests only as a
/// form post from the user's browser).
pub fn form_html(manifest: &Value, creation_url: &str) -> String {
    let escape = |text: &str| {
        text.replace('&', "&amp;")
            .replace('"', "&quot;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    format!(
        "<!doctype html>\n<meta charset=\"utf-8\">\n<title>Create the dispatch GitHub App</title>\n\
         <form action=\"{}\" method=\"post\">\n\
         <input type=\"hidden\" name=\"manifest\" value=\"{}\">\n\
         <button type=\"submit\">Create the GitHub App on GitHub</button>\n</form>\n",
        escape(creation_url),
        escape(&manifest.to_string())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_names_hook_permissions_and_events() {
        let m = manifest("dispatch-hub", "https://hub.example.com/");
        assert_eq!(m["url"], "https://hub.example.com");
        assert_eq!(
            m["hook_attributes"]["url"],
            "https://hub.example.com/webhooks/github"
        );
        assert_eq!(
            m["redirect_url"],
            "https://hub.example.com/github-app/created"
        );
        assert_eq!(m["public"], false);
        assert_eq!(
            m["default_permissions"],
            json!({"checks": "write", "statuses": "write", "issues": "write",
                   "pull_requests": "read", "contents": "read", "metadata": "read"})
        );
        let events: Vec<&str> = m["default_events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        assert_eq!(events, EVENTS);
    }

    #[test]
    fn creation_urls_for_github_and_enterprise() {
        assert_eq!(
            creation_url("https://api.github.com", None),
            "https://github.com/settings/apps/new"
        );
        assert_eq!(
            creation_url("https://api.github.com/", Some("octo-org")),
            "https://github.com/organizations/octo-org/settings/apps/new"
        );
        assert_eq!(
            creation_url("https://ghe.example.com/api/v3", None),
            "https://ghe.example.com/settings/apps/new"
        );
    }

    #[test]
    fn form_escapes_the_manifest() {
        let m = manifest("a\"<b>", "https://h");
        let html = form_html(&m, "https://github.com/settings/apps/new");
        assert!(
            !html.contains("a\"<b>") && !html.contains("\\\"<b>"),
            "{html}"
        );
        assert!(html.contains("name=\"manifest\""));
    }
}
