//! Installation access tokens: the App's token exchanged for one installation's token
//! (`POST /app/installations/{id}/access_tokens`), kept until shortly before its `expires_at`
//! (GitHub gives them an hour) and fetched anew when GitHub answers 401 to one.
//!
//! Deliveries name their installation (`installation.id`); a job from a webhook that did not come
//! through the App (a repository webhook, say) has none, and its repository's installation is
//! looked up once (`GET /repos/{owner}/{repo}/installation`) and remembered.

use std::collections::HashMap;
use std::sync::Arc;

use dispatch_protocol::Secret;
use dispatch_util::error_chain;
use serde::Deserialize;
use tokio::sync::Mutex;

use super::answer::{classify, CallError};
use super::app_key::AppKey;
use super::time::parse_utc;

/// A token is replaced this long before GitHub says it expires, so a call never starts with a
/// token that runs out on the way.
pub(crate) const REFRESH_MARGIN_MS: i64 = 5 * 60 * 1000;

/// How long to keep a token whose `expires_at` cannot be read (GitHub's tokens live an hour).
const UNKNOWN_EXPIRY_KEEP_MS: i64 = 10 * 60 * 1000;

/// The clock, in Unix milliseconds (tests set their own).
pub(crate) type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

#[derive(Clone)]
struct CachedToken {
    token: Secret,
    /// Replace at or after this time.
    refresh_at_ms: i64,
}

/// The App's credentials and the installation tokens it holds.
pub(crate) struct Installations {
    http: reqwest::Client,
    api_url: String,
    key: AppKey,
    clock: Clock,
    tokens: Mutex<HashMap<i64, CachedToken>>,
    by_repository: Mutex<HashMap<String, i64>>,
}

#[derive(Deserialize)]
struct AccessToken {
    token: Secret,
    #[serde(default)]
    expires_at: String,
}

#[derive(Deserialize)]
struct Installation {
    id: i64,
}

impl Installations {
    pub fn new(http: reqwest::Client, api_url: &str, key: AppKey, clock: Clock) -> Self {
        Installations {
            http,
            api_url: api_url.trim_end_matches('/').to_owned(),
            key,
            clock,
            tokens: Mutex::new(HashMap::new()),
            by_repository: Mutex::new(HashMap::new()),
        }
    }

    fn app_token(&self) -> Result<Secret, CallError> {
        let now = (self.clock)();
        self.key
            .token(now.div_euclid(1000))
            .map_err(|e| CallError::Retry(error_chain(&e)))
    }

    /// Sends `request` with the App's own token; `what` names the call in errors.
    async fn send_as_app(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<reqwest::Response, CallError> {
        request
            .bearer_auth(self.app_token()?.expose())
            .header(reqwest::header::ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", super::answer::API_VERSION)
            .send()
            .await
            .map_err(|e| CallError::Retry(format!("`{what}` failed: {}", error_chain(&e))))
    }

    /// A token for `installation_id`: the cached one while it is fresh, else a new exchange.
    pub async fn token(&self, installation_id: i64) -> Result<Secret, CallError> {
        // Held across the exchange, so two reports for one installation make one exchange.
        let mut tokens = self.tokens.lock().await;
        let now = (self.clock)();
        if let Some(cached) = tokens.get(&installation_id) {
            if now < cached.refresh_at_ms {
                return Ok(cached.token.clone());
            }
        }
        let what = "create an installation access token";
        let url = format!(
            "{}/app/installations/{installation_id}/access_tokens",
            self.api_url
        );
        let resp = self.send_as_app(self.http.post(url), what).await?;
        let status = resp.status();
        if !status.is_success() {
            // A token request for an installation that is gone stays gone; everything else about
            // the exchange (a bad clock, a key GitHub does not know yet) may heal.
            return Err(match classify(status.as_u16(), resp.headers(), now, what) {
                CallError::Permanent(why) if status.as_u16() != 404 => CallError::Retry(why),
                other => other,
            });
        }
        let body: AccessToken = read_answer(resp, what).await?;
        let refresh_at_ms = match parse_utc(&body.expires_at) {
            Some(expires) => expires - REFRESH_MARGIN_MS,
            None => now + UNKNOWN_EXPIRY_KEEP_MS,
        };
        tokens.insert(
            installation_id,
            CachedToken {
                token: body.token.clone(),
                refresh_at_ms,
            },
        );
        tracing::debug!(installation_id, "fetched an installation access token");
        Ok(body.token)
    }

    /// Drops a cached token GitHub refused (401), so the next call fetches a new one.
    pub async fn forget(&self, installation_id: i64) {
        self.tokens.lock().await.remove(&installation_id);
    }

    /// The installation of `repository` (`owner/name`), asked once with the App's token.
    pub async fn for_repository(&self, repository: &str) -> Result<i64, CallError> {
        let key = repository.to_ascii_lowercase();
        if let Some(id) = self.by_repository.lock().await.get(&key) {
            return Ok(*id);
        }
        let what = "find the repository's installation";
        let now = (self.clock)();
        let url = format!("{}/repos/{repository}/installation", self.api_url);
        let resp = self.send_as_app(self.http.get(url), what).await?;
        let status = resp.status();
        if !status.is_success() {
            return Err(classify(status.as_u16(), resp.headers(), now, what));
        }
        let found: Installation = read_answer(resp, what).await?;
        self.by_repository.lock().await.insert(key, found.id);
        Ok(found.id)
    }
}

/// The JSON body of a successful answer to `what`. An answer that does not read is retried: it is
/// GitHub's side having a bad moment, not a refusal.
async fn read_answer<T: serde::de::DeserializeOwned>(
    resp: reqwest::Response,
    what: &str,
) -> Result<T, CallError> {
    resp.json()
        .await
        .map_err(|_| CallError::Retry(format!("unreadable answer to `{what}`")))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};

    use super::*;
    use crate::github::app_key::TEST_KEY;
    use crate::github::time::format_utc;
    use wiremock::matchers::{header_exists, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    /// The test App (id 9) talking to `github`, reading `clock`.
    fn app_of(github: &MockServer, clock: Clock) -> Installations {
        let key = AppKey::from_pem(9, TEST_KEY.as_bytes()).unwrap();
        Installations::new(reqwest::Client::new(), &github.uri(), key, clock)
    }

    #[tokio::test]
    async fn tokens_are_cached_until_shortly_before_expiry_and_refetched_when_forgotten() {
        let github = MockServer::start().await;
        let now = Arc::new(AtomicI64::new(1_700_000_000_000));
        let expires = 1_700_000_000_000 + 3_600_000;
        Mock::given(method("POST"))
            .and(path("/app/installations/77/access_tokens"))
            .and(header_exists("authorization"))
            .respond_with(ResponseTemplate::new(201).set_body_json(
                serde_json::json!({"token": "ghs_one", "expires_at": format_utc(expires)}),
            ))
            .expect(3)
            .mount(&github)
            .await;
        let clock = now.clone();
        let installations = app_of(&github, Arc::new(move || clock.load(Ordering::SeqCst)));
        assert_eq!(installations.token(77).await.unwrap().expose(), "ghs_one");
        now.store(expires - REFRESH_MARGIN_MS - 1, Ordering::SeqCst);
        installations.token(77).await.unwrap();
        assert_eq!(github.received_requests().await.unwrap().len(), 1);
        now.store(expires - REFRESH_MARGIN_MS, Ordering::SeqCst);
        installations.token(77).await.unwrap();
        assert_eq!(github.received_requests().await.unwrap().len(), 2);
        installations.forget(77).await;
        installations.token(77).await.unwrap();
        // `expect(3)` is checked when the server drops.
    }

    #[tokio::test]
    async fn a_missing_installation_is_permanent_and_a_refused_app_token_is_retried() {
        let github = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/app/installations/1/access_tokens"))
            .respond_with(ResponseTemplate::new(404))
            .mount(&github)
            .await;
        Mock::given(method("POST"))
            .and(path("/app/installations/2/access_tokens"))
            .respond_with(ResponseTemplate::new(401).set_body_string("ghs_secret_echo"))
            .mount(&github)
            .await;
        let installations = app_of(&github, Arc::new(|| 1_700_000_000_000));
        assert!(matches!(
            installations.token(1).await,
            Err(CallError::Permanent(_))
        ));
        let err = installations.token(2).await.unwrap_err();
        assert!(matches!(err, CallError::Retry(_)), "{err:?}");
        assert!(!err.reason().contains("ghs_secret_echo"));
    }
}
