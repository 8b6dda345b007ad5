//! A wiremock cloud that speaks only the base contract: it activates a license with a token it
//! signs, answers heartbeats, hands out one job on the first pull (then 204 No Content), and
//! takes that job's accept and finish.

use dispatch_protocol::token::{self, Claims};
use ed25519_dalek::SigningKey;
use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

/// The fake cloud and the key its license tokens are signed with.
pub struct Cloud {
    pub server: MockServer,
    signing: SigningKey,
}

impl Cloud {
    /// Starts the cloud for license `license_id`, whose activation hands out
    /// `heartbeat_secret`; `seed` makes the signing key.
    pub async fn start(license_id: &str, heartbeat_secret: &str, seed: u8) -> Cloud {
        let signing = SigningKey::from_bytes(&[seed; 32]);
        let server = MockServer::start().await;
        let token = signed_token(&signing, license_id);
        Mock::given(method("POST"))
            .and(path("/api/v1/licenses/activate"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "token": token,
                "heartbeat_secret": heartbeat_secret,
            })))
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/api/v1/licenses/heartbeat"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "token": token })))
            .mount(&server)
            .await;
        Cloud { server, signing }
    }

    /// The first pull answers `job` (job `job_id`); every later one 204. The job's accept and
    /// finish answer 204.
    pub async fn hand_out_once(&self, job_id: &str, job: ResponseTemplate) {
        Mock::given(method("POST"))
            .and(path("/api/v1/github/dispatch/pull"))
            .respond_with(job)
            .up_to_n_times(1)
            .with_priority(1)
            .mount(&self.server)
            .await;
        Mock::given(method("POST"))
            .and(path("/api/v1/github/dispatch/pull"))
            .respond_with(ResponseTemplate::new(204))
            .with_priority(2)
            .mount(&self.server)
            .await;
        for endpoint in ["accept", "finish"] {
            Mock::given(method("POST"))
                .and(path(format!("/api/v1/github/dispatch/{job_id}/{endpoint}")))
                .respond_with(ResponseTemplate::new(204))
                .mount(&self.server)
                .await;
        }
    }

    /// `scheduler start` arguments that point at this cloud, trust its key and poll it each
    /// second without long polls.
    pub fn scheduler_args(&self) -> Vec<String> {
        [
            "--cloud-url",
            &self.server.uri(),
            "--license-public-key",
            &token::public_key_base64(&self.signing.verifying_key()),
            "--poll-interval",
            "1",
            "--report-interval",
            "1",
            "--long-poll",
            "0",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// Every request received so far.
    pub async fn requests(&self) -> Vec<Request> {
        self.server
            .received_requests()
            .await
            .expect("the fake cloud records its requests")
    }
}

/// A license token for `license_id`, valid for an hour, signed with `key`.
fn signed_token(key: &SigningKey, license_id: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = Claims {
        jti: license_id.into(),
        exp: now + 3600,
        nbf: Some(now - 60),
        iat: Some(now),
        plan: "e2e".into(),
        features: vec![],
        grace_days: None,
    };
    token::sign(&claims, key).unwrap()
}

/// The JSON bodies of the `requests` made to `endpoint`, in order.
pub fn bodies(requests: &[Request], endpoint: &str) -> Vec<Value> {
    requests
        .iter()
        .filter(|r| r.url.path() == endpoint)
        .map(|r| serde_json::from_slice(&r.body).expect("json request body"))
        .collect()
}
