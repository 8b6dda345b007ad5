//! One GitHub API call with the hub's credentials: a configured token, or the App's installation
//! token for the repository's installation (fetched again once when GitHub answers 401).

use dispatch_protocol::Secret;
use dispatch_util::error_chain;
use reqwest::Method;
use serde_json::Value;

use super::answer::{classify, CallError, API_VERSION};
use super::installations::{Clock, Installations};

/// The hub's GitHub credentials.
pub(crate) enum Auth {
    /// A personal (or other long-lived) token: commit statuses and comments.
    Token(Secret),
    /// A GitHub App: check runs and comments, per installation.
    App(Box<Installations>),
}

/// One request: method, path under the API base URL, JSON body, and a name for errors and logs.
pub(crate) struct Call<'a> {
    pub method: Method,
    pub path: &'a str,
    pub body: Option<&'a str>,
    pub what: &'a str,
}

/// The API base URL, the HTTP client and the credentials.
pub(crate) struct GithubClient {
    http: reqwest::Client,
    api_url: String,
    auth: Auth,
    clock: Clock,
}

impl GithubClient {
    pub fn new(http: reqwest::Client, api_url: &str, auth: Auth, clock: Clock) -> Self {
        GithubClient {
            http,
            api_url: api_url.trim_end_matches('/').to_owned(),
            auth,
            clock,
        }
    }

    /// True when the hub reports as a GitHub App.
    pub fn is_app(&self) -> bool {
        matches!(self.auth, Auth::App(_))
    }

    /// The installation calls for `repository` are made as: the job's own, else the one the
    /// repository is installed on. Always 0 with a token, which is one rate-limit bucket.
    pub async fn installation(
        &self,
        repository: &str,
        installation_id: i64,
    ) -> Result<i64, CallError> {
        match &self.auth {
            Auth::Token(_) => Ok(0),
            Auth::App(_) if installation_id > 0 => Ok(installation_id),
            Auth::App(app) => app.for_repository(repository).await,
        }
    }

    /// Makes `call` as `installation` (from [`GithubClient::installation`]); the answer's JSON
    /// body (`Null` when it has none).
    pub async fn call(&self, installation: i64, call: Call<'_>) -> Result<Value, CallError> {
        let token = match &self.auth {
            Auth::Token(token) => token.clone(),
            Auth::App(app) => app.token(installation).await?,
        };
        let resp = self.send(&call, &token).await?;
        let resp = match (&self.auth, resp.status().as_u16()) {
            // An installation token can be revoked before it expires (the App was suspended and
            // restored, say): one new token, one more try.
            (Auth::App(app), 401) => {
                app.forget(installation).await;
                let token = app.token(installation).await?;
                self.send(&call, &token).await?
            }
            _ => resp,
        };
        let status = resp.status();
        if !status.is_success() {
            return Err(classify(
                status.as_u16(),
                resp.headers(),
                (self.clock)(),
                call.what,
            ));
        }
        let bytes = resp.bytes().await.map_err(|e| {
            CallError::Retry(format!("`{}` failed: {}", call.what, error_chain(&e)))
        })?;
        Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    async fn send(&self, call: &Call<'_>, token: &Secret) -> Result<reqwest::Response, CallError> {
        let mut req = self
            .http
            .request(
                call.method.clone(),
                format!("{}{}", self.api_url, call.path),
            )
            .bearer_auth(token.expose())
            .header(reqwest::header::ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", API_VERSION);
        if let Some(body) = call.body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_owned());
        }
        req.send()
            .await
            .map_err(|e| CallError::Retry(format!("`{}` failed: {}", call.what, error_chain(&e))))
    }
}
