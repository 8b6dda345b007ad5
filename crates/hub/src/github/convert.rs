//! The second half of the manifest flow: GitHub sends the browser back to the hub with a one-time
//! code (`created_page` says what to do with it), and `hub github-app convert` trades the code
//! for the new App's id, private key and webhook secret ([`convert`]) and writes the key
//! ([`write_key_file`]).

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use axum::extract::Query;
use dispatch_protocol::Secret;
use dispatch_util::error_chain;
use serde::Deserialize;

/// What `hub github-app convert` can run into.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The code holds characters a GitHub code never has (it goes into a URL path).
    #[error("`{code}` is not a code GitHub hands out (letters, digits, `-` and `_` only)")]
    BadCode {
        /// The code as given.
        code: String,
    },
    /// GitHub could not be reached or did not answer with an App.
    #[error("GitHub did not turn the code into an App: {reason}")]
    Github {
        /// What happened (never the answer's body, which would hold the key).
        reason: String,
    },
    /// The key file could not be written (it may exist already: it is never overwritten).
    #[error("failed to write the private key file `{path}`")]
    WriteKey {
        /// The file.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
}

/// The App GitHub made from the manifest.
#[derive(Debug, Deserialize)]
pub struct NewApp {
    /// The App id (`[github] app_id`).
    pub id: u64,
    /// The App's short name.
    #[serde(default)]
    pub slug: String,
    /// The App's page on GitHub (installing it starts there).
    #[serde(default)]
    pub html_url: String,
    /// The private key, PEM.
    pub pem: Secret,
    /// The webhook secret GitHub generated (`webhook_secret`).
    pub webhook_secret: Secret,
}

/// Trades the one-time `code` for the new App (`POST /app-manifests/{code}/conversions`).
pub async fn convert(api_url: &str, code: &str) -> Result<NewApp, ConvertError> {
    let safe = !code.is_empty()
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !safe {
        return Err(ConvertError::BadCode {
            code: code.to_owned(),
        });
    }
    let url = format!(
        "{}/app-manifests/{code}/conversions",
        api_url.trim_end_matches('/')
    );
    let failed = |reason: String| ConvertError::Github { reason };
    let resp = reqwest::Client::new()
        .post(url)
        .header(reqwest::header::ACCEPT, "application/vnd.github+json")
        .header(reqwest::header::USER_AGENT, "dispatch-hub")
        .header("X-GitHub-Api-Version", super::answer::API_VERSION)
        .send()
        .await
        .map_err(|e| failed(error_chain(&e)))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(failed(format!(
            "github answered {status} (a code works once, for an hour)"
        )));
    }
    resp.json::<NewApp>()
        .await
        .map_err(|_| failed("the answer is not an App with an id, key and secret".to_owned()))
}

/// Writes the private key to a new file, mode 0600; never replaces an existing one.
pub fn write_key_file(path: &Path, pem: &Secret) -> Result<(), ConvertError> {
    let failed = |source| ConvertError::WriteKey {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(failed)?;
    file.write_all(pem.expose().as_bytes()).map_err(failed)?;
    file.sync_all().map_err(failed)
}

/// The page GitHub sends the browser to after the App is created (`redirect_url` of the
/// manifest). Plain text, so nothing in the query can become markup; the code is shown only to the
/// browser that brought it and is not stored.
pub(crate) async fn created_page(Query(query): Query<HashMap<String, String>>) -> String {
    match query.get("code") {
        Some(code)
            if !code.is_empty()
                && code
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            format!(
                "The GitHub App is created. Finish the setup within the hour, on the hub's machine:\n\n    \
                 hub github-app convert --config hub.toml --code {code} --key-file github-app.pem\n\n\
                 then install the App on your repositories and restart the hub (docs/github-app.md).\n"
            )
        }
        _ => "This page finishes creating the hub's GitHub App; GitHub sends you here with a code \
              after you create it from `hub github-app manifest` (docs/github-app.md).\n"
            .to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    #[tokio::test]
    async fn convert_trades_the_code_and_writes_the_key_once() {
        let github = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/app-manifests/abc_1/conversions"))
            .respond_with(ResponseTemplate::new(201).set_body_json(serde_json::json!({
                "id": 42, "slug": "dispatch", "html_url": "https://github.com/apps/dispatch",
                "pem": "-----BEGIN RSA PRIVATE KEY-----\nk\n-----END RSA PRIVATE KEY-----\n",
                "webhook_secret": "whs", "client_id": "Iv1", "client_secret": "cs"
            })))
            .mount(&github)
            .await;
        let app = convert(&github.uri(), "abc_1").await.unwrap();
        assert_eq!((app.id, app.webhook_secret.expose()), (42, "whs"));
        assert!(!format!("{app:?}").contains("PRIVATE"));
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("app.pem");
        write_key_file(&key, &app.pem).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(matches!(
            write_key_file(&key, &app.pem),
            Err(ConvertError::WriteKey { .. })
        ));
        let err = convert(&github.uri(), "used").await.unwrap_err();
        assert!(err.to_string().contains("404"), "{err}");
        assert!(matches!(
            convert(&github.uri(), "../x").await,
            Err(ConvertError::BadCode { .. })
        ));
    }

    #[tokio::test]
    async fn created_page_names_the_command_and_never_echoes_markup() {
        let page = |q: &[(&str, &str)]| {
            let map = q
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            created_page(Query(map))
        };
        assert!(page(&[("code", "c0de")])
            .await
            .contains("--code c0de --key-file"));
        let odd = page(&[("code", "<script>")]).await;
        assert!(!odd.contains("<script>"), "{odd}");
    }
}
