//! The HTTP client for the cloud contract (`docs/protocol.md`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::{HeaderMap, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use dispatch_protocol::{
    lists_extension, AcceptBatchRequest, AcceptBatchResponse, AcceptBatchResult, AcceptRequest,
    ActivateRequest, ActivateResponse, DispatchJob, FinishRequest, HeartbeatRequest,
    HeartbeatResponse, ProgressRequest, ProgressResponse, PullBatchRequest, PullBatchResponse,
    PullRequest, ACCEPT_BATCH_PATH, EXTENSIONS_HEADER, PROGRESS, PROGRESS_ACTION, PULL_BATCH,
    PULL_BATCH_PATH,
};

/// Request timeout used when none is configured.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The most bytes of a response body the client reads.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// The most bytes of a batched pull answer the client reads (it asks the hub for at most half of
/// this, see [`CloudClient::pull_dispatch_batch`]).
pub const MAX_BATCH_RESPONSE_BYTES: usize = 8 * MAX_RESPONSE_BYTES;

/// The longest error message taken from a response body, in characters.
pub const MAX_ERROR_MESSAGE_CHARS: usize = 512;

/// Everything except RFC 3986 unreserved characters, so a job id is always one path segment.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// How to reach the cloud.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Base URL, e.g. `https://cloud.example.com` (a path prefix is kept; a trailing `/` is not
    /// needed).
    pub base_url: String,
    /// Client version, sent as `User-Agent: dispatch/<version>`.
    pub version: String,
    /// Timeout of one request, body included; a long-poll pull adds its wait.
    pub request_timeout: Duration,
}

impl ClientConfig {
    /// A config with the default request timeout.
    pub fn new(base_url: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            version: version.into(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// What went wrong with a cloud call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloudErrorKind {
    /// The cloud answered with a non-2xx status.
    Http,
    /// The connection could not be made.
    Connect,
    /// The request (or its body) did not finish within the timeout.
    Timeout,
    /// The response body was larger than [`MAX_RESPONSE_BYTES`].
    BodyTooLarge,
    /// A 2xx answer that is not what the contract says: invalid JSON, empty body, job without id.
    Decode,
    /// Another transport failure, e.g. the connection was reset mid-answer.
    Request,
    /// The call was not made: bad base URL, version or job id.
    InvalidInput,
}

impl CloudErrorKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http error",
            Self::Connect => "connect error",
            Self::Timeout => "timeout",
            Self::BodyTooLarge => "response body too large",
            Self::Decode => "malformed response",
            Self::Request => "request failed",
            Self::InvalidInput => "invalid input",
        }
    }
}

/// A failed cloud call. The message never contains request bodies, so no secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct CloudError {
    /// HTTP status for [`CloudErrorKind::Http`]; `None` for transport and decode errors.
    pub status: Option<u16>,
    /// For HTTP errors the body's `message` (or the raw body text, trimmed and capped); otherwise
    /// what failed.
    pub message: String,
    /// The `Retry-After` of an HTTP error (seconds or HTTP date), if any.
    pub retry_after: Option<Duration>,
    /// The class of failure.
    pub kind: CloudErrorKind,
}

impl CloudError {
    fn new(kind: CloudErrorKind, message: impl Into<String>) -> Self {
        Self {
            status: None,
            message: message.into(),
            retry_after: None,
            kind,
        }
    }

    fn render(&self) -> String {
        match self.status {
            Some(code) => format!("cloud answered status {code}: {}", self.message),
            None => format!("{}: {}", self.kind.as_str(), self.message),
        }
    }

    /// True when trying the same call later may succeed: connect errors, timeouts, other
    /// transport failures, and HTTP 408, 429 and 5xx.
    pub fn is_retryable(&self) -> bool {
        match self.kind {
            CloudErrorKind::Connect | CloudErrorKind::Timeout | CloudErrorKind::Request => true,
            CloudErrorKind::Http => {
                matches!(self.status, Some(408 | 429 | 500..=599))
            }
            CloudErrorKind::BodyTooLarge
            | CloudErrorKind::Decode
            | CloudErrorKind::InvalidInput => false,
        }
    }

    /// True for HTTP 401: the credentials were refused.
    pub fn is_unauthorized(&self) -> bool {
        self.status == Some(401)
    }

    /// True for HTTP 410: the license was revoked (or the job is gone).
    pub fn is_gone(&self) -> bool {
        self.status == Some(410)
    }
}

/// HTTP client for the license and dispatch endpoints. Cheap to clone (shares one connection
/// pool).
#[derive(Debug, Clone)]
pub struct CloudClient {
    http: reqwest::Client,
    base_url: String,
    request_timeout: Duration,
    /// Whether the last answer of the cloud advertised the `pull-batch` extension (shared by
    /// clones).
    pull_batch: Arc<AtomicBool>,
    /// The same for the `progress` extension.
    progress: Arc<AtomicBool>,
    /// Whether any answer has come yet (until then, what the cloud serves is not known).
    answered: Arc<AtomicBool>,
}

impl CloudClient {
    /// Builds a client. Fails only for an unusable base URL or version.
    pub fn new(config: ClientConfig) -> Result<Self, CloudError> {
        let base = config.base_url.trim().trim_end_matches('/').to_owned();
        let parsed = reqwest::Url::parse(&base).map_err(|e| {
            CloudError::new(
                CloudErrorKind::InvalidInput,
                format!("invalid base url `{base}`: {e}"),
            )
        })?;
        if !matches!(parsed.scheme(), "http" | "https")
            || parsed.query().is_some()
            || parsed.fragment().is_some()
            || parsed.cannot_be_a_base()
        {
            return Err(CloudError::new(
                CloudErrorKind::InvalidInput,
                format!("invalid base url `{base}`: want http(s) without query or fragment"),
            ));
        }
        let user_agent = format!("dispatch/{}", config.version);
        let http = reqwest::Client::builder()
            .user_agent(user_agent)
            // A redirect would re-send secrets to a place nobody configured.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.request_timeout)
            .build()
            .map_err(|e| {
                CloudError::new(
                    CloudErrorKind::InvalidInput,
                    format!("cannot build http client: {}", describe_request_error(&e)),
                )
            })?;
        Ok(Self {
            http,
            base_url: base,
            request_timeout: config.request_timeout,
            pull_batch: Arc::default(),
            progress: Arc::default(),
            answered: Arc::default(),
        })
    }

    /// Whether the cloud serves the `pull-batch` extension: its last answer (to any call)
    /// listed it in the `X-Dispatch-Extensions` header. False until the first answer, and again
    /// after an answer without it or a batched call the cloud did not know.
    pub fn supports_pull_batch(&self) -> bool {
        self.pull_batch.load(Ordering::Relaxed)
    }

    /// Whether the cloud serves the `progress` extension, as [`CloudClient::supports_pull_batch`]
    /// tells it for `pull-batch`.
    pub fn supports_progress(&self) -> bool {
        self.progress.load(Ordering::Relaxed)
    }

    /// Whether the cloud has answered any call yet: until it has, [`CloudClient::supports_progress`]
    /// and [`CloudClient::supports_pull_batch`] say false for want of knowing.
    pub fn has_answered(&self) -> bool {
        self.answered.load(Ordering::Relaxed)
    }

    fn note_extensions(&self, headers: &HeaderMap) {
        let advertised = |word: &str| {
            headers
                .get_all(EXTENSIONS_HEADER)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| lists_extension(v, word))
        };
        self.pull_batch
            .store(advertised(PULL_BATCH), Ordering::Relaxed);
        self.progress.store(advertised(PROGRESS), Ordering::Relaxed);
        self.answered.store(true, Ordering::Relaxed);
    }

    /// A batched call answered as unknown: the cloud no longer serves the extension.
    fn forget_batch_on(&self, error: CloudError) -> CloudError {
        if matches!(error.status, Some(404 | 405)) {
            self.pull_batch.store(false, Ordering::Relaxed);
        }
        error
    }

    /// The base URL in use (without trailing `/`).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `POST /api/v1/licenses/activate`.
    pub async fn activate(&self, req: &ActivateRequest) -> Result<ActivateResponse, CloudError> {
        let secrets = [req.key.expose()];
        let resp = self
            .post(
                "/api/v1/licenses/activate",
                req,
                self.request_timeout,
                &secrets,
            )
            .await?;
        decode_json(resp).await
    }

    /// `POST /api/v1/licenses/heartbeat`.
    pub async fn heartbeat(&self, req: &HeartbeatRequest) -> Result<HeartbeatResponse, CloudError> {
        let secrets = [req.heartbeat_secret.expose()];
        let resp = self
            .post(
                "/api/v1/licenses/heartbeat",
                req,
                self.request_timeout,
                &secrets,
            )
            .await?;
        decode_json(resp).await
    }

    /// `POST /api/v1/github/dispatch/pull`. `Ok(None)` only for 204; the timeout is the
    /// request timeout plus `wait_seconds`.
    pub async fn pull_dispatch(
        &self,
        req: &PullRequest,
    ) -> Result<Option<DispatchJob>, CloudError> {
        let secrets = [req.heartbeat_secret.expose()];
        let timeout = self.request_timeout + Duration::from_secs(u64::from(req.wait_seconds));
        let resp = self
            .post("/api/v1/github/dispatch/pull", req, timeout, &secrets)
            .await?;
        if resp.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let status = resp.status().as_u16();
        let body = read_capped(resp, MAX_RESPONSE_BYTES).await?;
        pulled_job(status, &body).map(Some)
    }

    /// `POST /api/v1/github/dispatch/pull-batch` (the `pull-batch` extension): up to
    /// `req.max_jobs` jobs at once, never waiting; empty for 204. Call it only when
    /// [`CloudClient::supports_pull_batch`]. `req.max_bytes` above half of
    /// [`MAX_BATCH_RESPONSE_BYTES`] is lowered to it, so that an answer the hub filled up to the
    /// limit plus one job of up to [`MAX_RESPONSE_BYTES`] can still be read.
    pub async fn pull_dispatch_batch(
        &self,
        req: &PullBatchRequest,
    ) -> Result<Vec<DispatchJob>, CloudError> {
        let secrets = [req.heartbeat_secret.expose()];
        let mut req = req.clone();
        req.max_bytes = req.max_bytes.min(MAX_BATCH_RESPONSE_BYTES as u64 / 2);
        let resp = self
            .post(PULL_BATCH_PATH, &req, self.request_timeout, &secrets)
            .await
            .map_err(|e| self.forget_batch_on(e))?;
        if resp.status() == StatusCode::NO_CONTENT {
            return Ok(Vec::new());
        }
        let status = resp.status().as_u16();
        let body = read_capped(resp, MAX_BATCH_RESPONSE_BYTES).await?;
        let answer: PullBatchResponse = decode_body(status, &body)?;
        if answer.jobs.iter().any(|job| job.id.is_empty()) {
            return Err(CloudError::new(
                CloudErrorKind::Decode,
                "a job of the batch has no id",
            ));
        }
        Ok(answer.jobs)
    }

    /// `POST /api/v1/github/dispatch/accept-batch` (the `pull-batch` extension): the outcome of
    /// each job's accept, in the request's order, as [`CloudClient::accept_dispatch`] would have
    /// returned it (a refused job is an [`CloudErrorKind::Http`] error with its status and
    /// message). `Err` when the call itself failed.
    pub async fn accept_dispatch_batch(
        &self,
        req: &AcceptBatchRequest,
    ) -> Result<Vec<Result<(), CloudError>>, CloudError> {
        let secrets = [req.secret.expose()];
        let resp = self
            .post(ACCEPT_BATCH_PATH, req, self.request_timeout, &secrets)
            .await
            .map_err(|e| self.forget_batch_on(e))?;
        let answer: AcceptBatchResponse = decode_json(resp).await?;
        let same_jobs = answer.results.len() == req.jobs.len()
            && answer
                .results
                .iter()
                .zip(&req.jobs)
                .all(|(result, job)| result.job_id == job.job_id);
        if !same_jobs {
            return Err(CloudError::new(
                CloudErrorKind::Decode,
                format!(
                    "the batched accept answered {} results for {} jobs, or in another order",
                    answer.results.len(),
                    req.jobs.len()
                ),
            ));
        }
        Ok(answer.results.into_iter().map(job_outcome).collect())
    }

    /// `POST /api/v1/github/dispatch/{id}/accept`; any 2xx is success.
    pub async fn accept_dispatch(
        &self,
        job_id: &str,
        req: &AcceptRequest,
    ) -> Result<(), CloudError> {
        self.post_job(job_id, "accept", req, req.secret.expose())
            .await?;
        Ok(())
    }

    /// `POST /api/v1/github/dispatch/{id}/progress` (the `progress` extension): a job's run
    /// start, step states and log chunks; the answer acknowledges each chunk. Call it only when
    /// [`CloudClient::supports_progress`].
    pub async fn send_progress(
        &self,
        job_id: &str,
        req: &ProgressRequest,
    ) -> Result<ProgressResponse, CloudError> {
        let resp = self
            .post_job(job_id, PROGRESS_ACTION, req, req.secret.expose())
            .await?;
        let answer: ProgressResponse = decode_json(resp).await?;
        if answer.logs.len() != req.logs.len() {
            return Err(CloudError::new(
                CloudErrorKind::Decode,
                format!(
                    "the progress call answered {} acknowledgements for {} log chunks",
                    answer.logs.len(),
                    req.logs.len()
                ),
            ));
        }
        Ok(answer)
    }

    /// `POST /api/v1/github/dispatch/{id}/finish`; any 2xx is success.
    pub async fn finish_dispatch(
        &self,
        job_id: &str,
        req: &FinishRequest,
    ) -> Result<(), CloudError> {
        self.post_job(job_id, "finish", req, req.secret.expose())
            .await?;
        Ok(())
    }

    /// Sends `req` to `/api/v1/github/dispatch/{job_id}/{action}`, with the job's secret
    /// redacted from any error.
    async fn post_job<B: Serialize>(
        &self,
        job_id: &str,
        action: &str,
        req: &B,
        secret: &str,
    ) -> Result<reqwest::Response, CloudError> {
        let path = job_path(job_id, action)?;
        self.post(&path, req, self.request_timeout, &[secret]).await
    }

    /// Sends the request; returns the response when it is 2xx, else the HTTP error.
    async fn post<B: Serialize>(
        &self,
        path: &str,
        body: &B,
        timeout: Duration,
        secrets: &[&str],
    ) -> Result<reqwest::Response, CloudError> {
        let body = serde_json::to_vec(body).map_err(|e| {
            CloudError::new(
                CloudErrorKind::InvalidInput,
                format!("cannot encode request for {path}: {}", e.classify_str()),
            )
        })?;
        let url = format!("{}{}", self.base_url, path);
        let resp = self
            .http
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .timeout(timeout)
            .body(body)
            .send()
            .await
            .map_err(|e| transport_error(path, &e))?;
        self.note_extensions(resp.headers());
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(http_error(resp, secrets).await)
    }
}

trait ClassifyStr {
    fn classify_str(&self) -> &'static str;
}

impl ClassifyStr for serde_json::Error {
    fn classify_str(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "io error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected data",
            serde_json::error::Category::Eof => "unexpected end of input",
        }
    }
}

/// One job's result in a batched accept, as its single accept would have ended.
fn job_outcome(result: AcceptBatchResult) -> Result<(), CloudError> {
    if (200..300).contains(&result.status) {
        return Ok(());
    }
    let mut message = result.message;
    if message.is_empty() {
        message = StatusCode::from_u16(result.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("no message")
            .to_ascii_lowercase();
    }
    message = message.chars().take(MAX_ERROR_MESSAGE_CHARS).collect();
    Err(CloudError {
        status: Some(result.status),
        message,
        retry_after: None,
        kind: CloudErrorKind::Http,
    })
}

fn job_path(job_id: &str, action: &str) -> Result<String, CloudError> {
    // `.` and `..` are unreserved, so escaping leaves them alone, and URL parsing would then
    // resolve them as dot segments and change the path.
    if job_id.is_empty() || job_id == "." || job_id == ".." {
        return Err(CloudError::new(
            CloudErrorKind::InvalidInput,
            format!("invalid job id `{job_id}` for {action}"),
        ));
    }
    Ok(format!(
        "/api/v1/github/dispatch/{}/{action}",
        utf8_percent_encode(job_id, PATH_SEGMENT)
    ))
}

fn transport_error(path: &str, e: &reqwest::Error) -> CloudError {
    let kind = if e.is_timeout() {
        CloudErrorKind::Timeout
    } else if e.is_connect() {
        CloudErrorKind::Connect
    } else {
        CloudErrorKind::Request
    };
    CloudError::new(kind, format!("POST {path}: {}", describe_request_error(e)))
}

/// The error and its causes, without the URL (which is ours and already named by the caller).
fn describe_request_error(e: &reqwest::Error) -> String {
    let mut out = String::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    let head = match e {
        _ if e.is_timeout() => "timed out",
        _ if e.is_connect() => "connect failed",
        _ if e.is_body() => "body error",
        _ if e.is_decode() => "decode error",
        _ if e.is_builder() => "builder error",
        _ if e.is_redirect() => "redirect error",
        _ => "request error",
    };
    out.push_str(head);
    while let Some(err) = current {
        let text = err.to_string();
        if !text.is_empty() && !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        current = err.source();
    }
    out
}

/// Reads at most `cap` bytes of the body. `Err(BodyTooLarge)` past the cap; a body is never
/// silently cut.
async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<Vec<u8>, CloudError> {
    if let Some(len) = declared_length(resp.headers()) {
        if len > cap as u64 {
            return Err(too_large(cap));
        }
    }
    let mut buf = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > cap {
                    return Err(too_large(cap));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(buf),
            Err(e) => return Err(transport_error("response body", &e)),
        }
    }
}

fn too_large(cap: usize) -> CloudError {
    CloudError::new(
        CloudErrorKind::BodyTooLarge,
        format!("response body exceeds {cap} bytes"),
    )
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

async fn decode_json<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T, CloudError> {
    let status = resp.status().as_u16();
    let body = read_capped(resp, MAX_RESPONSE_BYTES).await?;
    decode_body(status, &body)
}

fn decode_body<T: DeserializeOwned>(status: u16, body: &[u8]) -> Result<T, CloudError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(CloudError::new(
            CloudErrorKind::Decode,
            format!("empty body with status {status}"),
        ));
    }
    // serde messages can quote values from the body, which may hold a token: report only the
    // category and position.
    serde_json::from_slice(body).map_err(|e| {
        CloudError::new(
            CloudErrorKind::Decode,
            format!(
                "invalid json ({} at line {} column {})",
                e.classify_str(),
                e.line(),
                e.column()
            ),
        )
    })
}

/// Decodes the body of a `200` pull answer exactly as [`CloudClient::pull_dispatch`] does: an
/// empty body, invalid JSON or a job without an `id` is a [`CloudErrorKind::Decode`] error, so a
/// malformed answer is never mistaken for an empty queue. Public so the decoder can be fuzzed.
pub fn decode_pulled_job(body: &[u8]) -> Result<DispatchJob, CloudError> {
    pulled_job(200, body)
}

fn pulled_job(status: u16, body: &[u8]) -> Result<DispatchJob, CloudError> {
    let job: DispatchJob = decode_body(status, body)?;
    if job.id.is_empty() {
        return Err(CloudError::new(
            CloudErrorKind::Decode,
            "pulled job has no id",
        ));
    }
    Ok(job)
}

async fn http_error(resp: reqwest::Response, secrets: &[&str]) -> CloudError {
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    // An error body is only read for its message: past the cap, the status still counts and the
    // message falls back to the reason phrase.
    let body = read_capped(resp, MAX_RESPONSE_BYTES)
        .await
        .unwrap_or_default();
    let mut message = error_message(&body, secrets);
    if message.is_empty() {
        message = status
            .canonical_reason()
            .unwrap_or("no message")
            .to_ascii_lowercase();
    }
    CloudError {
        status: Some(status.as_u16()),
        message,
        retry_after,
        kind: CloudErrorKind::Http,
    }
}

/// The body's JSON `message` when non-empty, else the raw text; our `secrets` removed, then
/// trimmed and capped (in that order: a cut through a secret would leave a piece of it).
fn error_message(body: &[u8], secrets: &[&str]) -> String {
    #[derive(serde::Deserialize)]
    struct WithMessage {
        #[serde(default)]
        message: Option<serde_json::Value>,
    }
    let from_json = serde_json::from_slice::<WithMessage>(body)
        .ok()
        .and_then(|w| match w.message {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Some(s),
            _ => None,
        });
    let text = from_json.unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let text = scrub(text, secrets);
    let trimmed = text.trim();
    let mut out: String = trimmed.chars().take(MAX_ERROR_MESSAGE_CHARS).collect();
    if out.len() < trimmed.len() {
        out.push('…');
    }
    out
}

/// Removes our own secrets from a message a server wrote, in case it echoes the request.
fn scrub(mut message: String, secrets: &[&str]) -> String {
    for secret in secrets {
        if !secret.is_empty() && message.contains(secret) {
            message = message.replace(secret, "<redacted>");
        }
    }
    message
}

/// `Retry-After`: delta seconds or an HTTP date (a past date means now).
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pulled_job_decoding_never_mistakes_garbage_for_a_job() {
        let job = decode_pulled_job(br#"{"id":"j1","payload":{"a": 1},"extra":true}"#).unwrap();
        assert_eq!(job.id, "j1");
        assert_eq!(job.payload.unwrap().get(), r#"{"a": 1}"#);
        for body in [
            &b""[..],
            b"  \n",
            b"{}",
            br#"{"id":""}"#,
            b"[1]",
            b"{\"id\":",
            b"null",
        ] {
            let err = decode_pulled_job(body).unwrap_err();
            assert_eq!(
                err.kind,
                CloudErrorKind::Decode,
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn job_path_escapes_to_one_segment() {
        // (job id, action, the path below `/api/v1/github/dispatch/`)
        for (id, action, path) in [
            ("a/b?c%d#e f", "accept", "a%2Fb%3Fc%25d%23e%20f/accept"),
            ("job-1_x.y~z", "finish", "job-1_x.y~z/finish"),
            ("é", "accept", "%C3%A9/accept"),
        ] {
            let want = format!("/api/v1/github/dispatch/{path}");
            assert_eq!(job_path(id, action).unwrap(), want, "{id}");
        }
        for bad in ["", ".", ".."] {
            assert_eq!(
                job_path(bad, "accept").unwrap_err().kind,
                CloudErrorKind::InvalidInput
            );
        }
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(90))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn error_message_prefers_json_message() {
        assert_eq!(error_message(br#"{"message":"revoked"}"#, &[]), "revoked");
        assert_eq!(
            error_message(br#"{"message":"","error":"x"}"#, &[]),
            r#"{"message":"","error":"x"}"#
        );
        assert_eq!(error_message(b"  plain text\n", &[]), "plain text");
        assert_eq!(error_message(br#"{"message":5}"#, &[]), r#"{"message":5}"#);
        let long = "x".repeat(2000);
        let m = error_message(long.as_bytes(), &[]);
        assert_eq!(m.chars().count(), MAX_ERROR_MESSAGE_CHARS + 1);
        assert_eq!(
            scrub("key k-123 echoed".into(), &["k-123", ""]),
            "key <redacted> echoed"
        );
        // A secret where the cap cuts is removed whole, not cut to a piece that stays.
        let secret = "k-secret-0123456789";
        let straddling = format!("{}{secret}", "x".repeat(MAX_ERROR_MESSAGE_CHARS - 5));
        let m = error_message(straddling.as_bytes(), &[secret]);
        assert!(!m.contains("k-sec"), "{m}");
    }

    #[test]
    fn retryable_classes() {
        let http = |code| CloudError {
            status: Some(code),
            message: String::new(),
            retry_after: None,
            kind: CloudErrorKind::Http,
        };
        assert!(http(500).is_retryable());
        assert!(http(503).is_retryable());
        assert!(http(429).is_retryable());
        assert!(!http(400).is_retryable());
        assert!(!http(401).is_retryable());
        assert!(http(401).is_unauthorized());
        assert!(http(410).is_gone());
        assert!(CloudError::new(CloudErrorKind::Timeout, "").is_retryable());
        assert!(CloudError::new(CloudErrorKind::Connect, "").is_retryable());
        assert!(!CloudError::new(CloudErrorKind::Decode, "").is_retryable());
        assert!(!CloudError::new(CloudErrorKind::BodyTooLarge, "").is_retryable());
    }

    #[test]
    fn rejects_bad_base_urls() {
        for bad in ["", "not a url", "ftp://x", "http://x/?q=1", "mailto:a@b"] {
            let e = CloudClient::new(ClientConfig::new(bad, "1")).unwrap_err();
            assert_eq!(e.kind, CloudErrorKind::InvalidInput, "{bad}");
        }
        let c = CloudClient::new(ClientConfig::new("http://127.0.0.1:1/prefix/", "1")).unwrap();
        assert_eq!(c.base_url(), "http://127.0.0.1:1/prefix");
    }
}
