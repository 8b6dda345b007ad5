//! `LicenseManager` against wiremock, with tokens signed here by a generated Ed25519 key.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dispatch_license::{
    ClientConfig, CloudClient, CredentialSource, HeartbeatOutcome, LicenseConfig, LicenseManager,
};
use dispatch_protocol::token::{self, Claims};
use dispatch_protocol::Secret;
use ed25519_dalek::SigningKey;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const KEY: &str = "lk_LICENSE_KEY_SECRET_77";
const HB: &str = "hb_HEARTBEAT_SECRET_55";
const ACTIVATE: &str = "/api/v1/licenses/activate";
const HEARTBEAT: &str = "/api/v1/licenses/heartbeat";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn signing_key() -> SigningKey {
    SigningKey::generate(&mut rand::rngs::OsRng)
}

fn claims(jti: &str, exp: i64, grace_days: Option<u32>) -> Claims {
    Claims {
        jti: jti.into(),
        exp,
        nbf: Some(now() - 60),
        iat: Some(now() - 60),
        plan: "pro".into(),
        features: vec!["dispatch".into()],
        grace_days,
    }
}

fn good_token(key: &SigningKey) -> String {
    token::sign(&claims("lic-1", now() + 3600, None), key).unwrap()
}

fn client_for(base: &str) -> CloudClient {
    CloudClient::new(ClientConfig {
        base_url: base.to_owned(),
        version: "0.0.1".into(),
        request_timeout: Duration::from_secs(10),
    })
    .unwrap()
}

fn refused_base() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

fn config(data: &Path, key: Option<&str>, public: Option<&SigningKey>) -> LicenseConfig {
    LicenseConfig {
        data_dir: data.to_owned(),
        license_key: key.map(Secret::new),
        public_key: public.map(SigningKey::verifying_key),
        machine_name: "box-1".into(),
        client_version: "0.0.1".into(),
        heartbeat_interval: Duration::from_secs(24 * 3600),
        activation_retry: Duration::from_secs(60),
    }
}

async fn mount_activate(server: &MockServer, token: &str) {
    Mock::given(method("POST"))
        .and(path(ACTIVATE))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"token": token, "heartbeat_secret": HB})),
        )
        .mount(server)
        .await;
}

async fn mount_heartbeat(server: &MockServer, resp: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(path(HEARTBEAT))
        .respond_with(resp)
        .mount(server)
        .await;
}

fn record_path(data: &Path) -> std::path::PathBuf {
    data.join("license").join("activation.json")
}

fn read_record(data: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(record_path(data)).unwrap()).unwrap()
}

/// Starts a manager on `data` with this license key and token-verifying key, talking to `base`.
async fn start(
    data: &Path,
    key: Option<&str>,
    public: Option<&SigningKey>,
    base: &str,
) -> Arc<LicenseManager> {
    start_with(config(data, key, public), base).await
}

async fn start_with(config: LicenseConfig, base: &str) -> Arc<LicenseManager> {
    LicenseManager::start(config, client_for(base))
        .await
        .unwrap()
}

/// A heartbeat (or activation) answer carrying only a new token.
fn token_answer(token: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({"token": token}))
}

/// Answers the next `times` POSTs to `endpoint` with `resp`, ahead of the mocks mounted later.
async fn mount_times(server: &MockServer, endpoint: &str, resp: ResponseTemplate, times: u64) {
    Mock::given(method("POST"))
        .and(path(endpoint))
        .respond_with(resp)
        .up_to_n_times(times)
        .mount(server)
        .await;
}

async fn requests_to(server: &MockServer, endpoint: &str) -> usize {
    let reqs = server.received_requests().await.unwrap();
    reqs.iter().filter(|r| r.url.path() == endpoint).count()
}

fn assert_summary_says(m: &LicenseManager, words: &str) {
    let summary = m.status_summary();
    assert!(summary.contains(words), "`{words}` missing in: {summary}");
}

/// The activation record holds secrets: only its owner may read it.
fn assert_record_private(data: &Path) {
    let mode = std::fs::metadata(record_path(data))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

fn spawn_run(m: &Arc<LicenseManager>) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let cancel = CancellationToken::new();
    let task = tokio::spawn(m.clone().run(cancel.clone()));
    (cancel, task)
}

/// Cancels the manager's `run` task and expects it to end promptly and cleanly.
async fn stop(cancel: CancellationToken, task: tokio::task::JoinHandle<()>) {
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}

/// A mock cloud, the key it signs license tokens with and a good token for `lic-1`.
struct Cloud {
    server: MockServer,
    key: SigningKey,
    tok: String,
}

impl Cloud {
    async fn new() -> Self {
        let key = signing_key();
        Cloud {
            server: MockServer::start().await,
            tok: good_token(&key),
            key,
        }
    }
}

/// A manager activated (strict verification) against its own mock cloud, in its own data
/// directory, with the token the cloud handed it.
struct Activated {
    server: MockServer,
    dir: tempfile::TempDir,
    key: SigningKey,
    m: Arc<LicenseManager>,
    tok: String,
}

impl Activated {
    async fn new() -> Self {
        let Cloud { server, key, tok } = Cloud::new().await;
        mount_activate(&server, &tok).await;
        let dir = tempfile::tempdir().unwrap();
        let m = start(dir.path(), Some(KEY), Some(&key), &server.uri()).await;
        assert!(
            m.cloud_machine_credentials().is_some(),
            "{}",
            m.status_summary()
        );
        Activated {
            server,
            dir,
            key,
            m,
            tok,
        }
    }

    /// Starts a second manager with the same data directory, license key and verifying key,
    /// as the scheduler does on its next start.
    async fn restart(&self, base: &str) -> Arc<LicenseManager> {
        start(self.data(), Some(KEY), Some(&self.key), base).await
    }

    fn data(&self) -> &Path {
        self.dir.path()
    }

    /// The manager still holds the token of its activation, in memory and on disk.
    fn assert_kept_its_token(&self) {
        let creds = self.m.cloud_machine_credentials();
        assert_eq!(
            creds.unwrap().license_id,
            "lic-1",
            "{}",
            self.m.status_summary()
        );
        assert_eq!(read_record(self.data())["token"], self.tok);
    }
}

#[tokio::test]
async fn server_id_is_created_persisted_and_repaired() {
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let id_path = dir.path().join("license").join("server_id");

    let m = start(dir.path(), None, None, &server.uri()).await;
    let id = m.server_id().to_owned();
    let parsed = uuid::Uuid::parse_str(&id).unwrap();
    assert_eq!(parsed.get_version_num(), 7);
    assert_eq!(
        std::fs::read_to_string(&id_path).unwrap(),
        format!("{id}\n")
    );
    // No key: no network, no credentials.
    assert!(m.cloud_machine_credentials().is_none());
    assert!(m.claims().is_none());
    assert!(server.received_requests().await.unwrap().is_empty());
    assert_summary_says(&m, "no license key");

    // Restart keeps it.
    let m2 = start(dir.path(), None, None, &server.uri()).await;
    assert_eq!(m2.server_id(), id);

    // Empty and invalid files are replaced by a fresh valid id.
    for junk in [
        "",
        "   \n",
        "not-a-uuid",
        "00000000-0000-0000-0000-000000000000",
    ] {
        std::fs::write(&id_path, junk).unwrap();
        let m3 = start(dir.path(), None, None, &server.uri()).await;
        let new_id = m3.server_id().to_owned();
        assert_ne!(new_id, id);
        assert_eq!(uuid::Uuid::parse_str(&new_id).unwrap().get_version_num(), 7);
        assert_eq!(
            std::fs::read_to_string(&id_path).unwrap(),
            format!("{new_id}\n")
        );
    }
    // No temp files are left behind.
    let names: Vec<String> = std::fs::read_dir(dir.path().join("license"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["server_id".to_owned()]);
}

#[tokio::test]
async fn unusable_data_dir_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, "x").unwrap();
    let e = LicenseManager::start(config(&file, Some(KEY), None), client_for(&refused_base()))
        .await
        .unwrap_err();
    // The cause is named once in the chain: not in the top message and again as its source.
    let chain = dispatch_util::error_chain(&e);
    assert!(chain.contains("plain-file"), "{chain}");
    assert_eq!(chain.matches("plain-file").count(), 1, "{chain}");
    assert!(std::error::Error::source(&e).is_some());
}

#[tokio::test]
async fn activation_persists_record_0600_and_yields_credentials() {
    let a = Activated::new().await;

    let creds = a.m.cloud_machine_credentials().unwrap();
    assert_eq!(creds.license_id, "lic-1");
    assert_eq!(creds.server_id, a.m.server_id());
    assert_eq!(creds.heartbeat_secret.expose(), HB);
    assert_eq!(a.m.claims().unwrap().plan, "pro");

    let reqs = a.server.received_requests().await.unwrap();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].url.path(), ACTIVATE);
    let body: Value = serde_json::from_slice(&reqs[0].body).unwrap();
    assert_eq!(
        body,
        json!({"key": KEY, "server_id": a.m.server_id(), "machine_name": "box-1", "client_version": "0.0.1"})
    );

    assert_eq!(
        read_record(a.data()),
        json!({"token": a.tok, "heartbeat_secret": HB, "license_key": KEY, "server_id": a.m.server_id()})
    );
    assert_record_private(a.data());
}

#[tokio::test]
async fn offline_start_uses_cached_activation_of_the_same_key_only() {
    let a = Activated::new().await;
    let id = a.m.server_id().to_owned();

    // Cloud unreachable: same key → cached activation.
    let m = a.restart(&refused_base()).await;
    let creds = m.cloud_machine_credentials().expect("cached credentials");
    assert_eq!(creds.license_id, "lic-1");
    assert_eq!(creds.server_id, id);
    assert_summary_says(&m, "cached");

    // Cloud failing with 500: same key → cached too.
    let failing = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&failing)
        .await;
    let m = a.restart(&failing.uri()).await;
    assert!(m.cloud_machine_credentials().is_some());

    // A different key never uses another key's activation.
    let m = start(
        a.data(),
        Some("lk_OTHER_KEY"),
        Some(&a.key),
        &refused_base(),
    )
    .await;
    assert!(m.cloud_machine_credentials().is_none());
    assert!(m.claims().is_none());
    // ... and leaves the record of the first key alone.
    assert_eq!(read_record(a.data())["license_key"], KEY);

    // A corrupt record is ignored, not fatal.
    let saved = std::fs::read(record_path(a.data())).unwrap();
    std::fs::write(record_path(a.data()), b"{\"token\": 5").unwrap();
    let m = a.restart(&refused_base()).await;
    assert!(m.cloud_machine_credentials().is_none());
    std::fs::write(record_path(a.data()), saved).unwrap();

    // A record made for another server id is not used either.
    std::fs::remove_file(a.data().join("license").join("server_id")).unwrap();
    let m = a.restart(&refused_base()).await;
    assert_ne!(m.server_id(), id);
    assert!(m.cloud_machine_credentials().is_none());
}

#[tokio::test]
async fn activation_refused_with_410_ignores_and_removes_cache() {
    let a = Activated::new().await;

    let refusing = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(410).set_body_json(json!({"message": "key revoked"})))
        .mount(&refusing)
        .await;
    let m = a.restart(&refusing.uri()).await;
    assert!(m.cloud_machine_credentials().is_none());
    assert!(!record_path(a.data()).exists());
    assert_summary_says(&m, "key revoked");
}

#[tokio::test]
async fn strict_verification_rejects_foreign_key_and_alg_none() {
    let key = signing_key();
    let foreign = token::sign(&claims("lic-1", now() + 3600, None), &signing_key()).unwrap();
    let good = good_token(&key);
    let mut parts = good.split('.');
    let _ = parts.next();
    let none_header = base64_url(br#"{"alg":"none","typ":"JWT"}"#);
    let alg_none = format!("{}.{}.", none_header, parts.next().unwrap());
    for bad in [foreign.clone(), alg_none, "garbage".to_owned()] {
        let server = MockServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        mount_activate(&server, &bad).await;
        let m = start(dir.path(), Some(KEY), Some(&key), &server.uri()).await;
        assert!(m.cloud_machine_credentials().is_none());
        assert!(m.claims().is_none());
        assert!(
            !record_path(dir.path()).exists(),
            "a rejected token is not stored"
        );
        assert_summary_says(&m, "rejected");
    }

    // Without a public key the same foreign token is read unverified.
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    mount_activate(&server, &foreign).await;
    let m = start(dir.path(), Some(KEY), None, &server.uri()).await;
    assert_eq!(m.cloud_machine_credentials().unwrap().license_id, "lic-1");
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn expired_token_is_accepted_within_grace_only() {
    let key = signing_key();
    let day = 86_400;
    let cases = [
        (
            "expired 1 day, default grace",
            claims("lic-g", now() - day, None),
            true,
        ),
        (
            "expired 13 days, default grace",
            claims("lic-g", now() - 13 * day, None),
            true,
        ),
        (
            "expired 15 days, default grace",
            claims("lic-g", now() - 15 * day, None),
            false,
        ),
        (
            "expired 2 days, grace 3",
            claims("lic-g", now() - 2 * day, Some(3)),
            true,
        ),
        (
            "expired 1 hour, grace 0",
            claims("lic-g", now() - 3600, Some(0)),
            false,
        ),
    ];
    for (name, c, ok) in cases {
        let server = MockServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        mount_activate(&server, &token::sign(&c, &key).unwrap()).await;
        let m = start(dir.path(), Some(KEY), Some(&key), &server.uri()).await;
        assert_eq!(
            m.cloud_machine_credentials().is_some(),
            ok,
            "{name}: {}",
            m.status_summary()
        );
        if ok {
            assert_summary_says(&m, "in grace");
        }
    }
}

#[tokio::test]
async fn heartbeat_410_and_401_clear_the_license() {
    for code in [410u16, 401] {
        let a = Activated::new().await;
        mount_heartbeat(
            &a.server,
            ResponseTemplate::new(code).set_body_json(json!({"message": "license gone"})),
        )
        .await;
        let outcome = a.m.heartbeat_now().await;
        assert_eq!(
            outcome,
            HeartbeatOutcome::Cleared {
                status: code,
                reason: "license gone".into()
            }
        );
        assert!(a.m.cloud_machine_credentials().is_none());
        assert!(a.m.claims().is_none());
        assert!(!record_path(a.data()).exists());
        assert_summary_says(&a.m, "license gone");
        // Heartbeat body was exact.
        let reqs = a.server.received_requests().await.unwrap();
        let hb = reqs.iter().find(|r| r.url.path() == HEARTBEAT).unwrap();
        let body: Value = serde_json::from_slice(&hb.body).unwrap();
        assert_eq!(
            body,
            json!({"license_id": "lic-1", "server_id": a.m.server_id(), "heartbeat_secret": HB, "client_version": "0.0.1"})
        );
        // Nothing to heartbeat any more.
        assert_eq!(a.m.heartbeat_now().await, HeartbeatOutcome::Skipped);
    }
}

#[tokio::test]
async fn heartbeat_400_500_and_bad_token_keep_the_cached_token() {
    let cases = [
        ResponseTemplate::new(400).set_body_json(json!({"message": "license expired"})),
        ResponseTemplate::new(500).set_body_string("boom"),
        ResponseTemplate::new(200).set_body_string("{not json"),
    ];
    for resp in cases {
        let a = Activated::new().await;
        mount_heartbeat(&a.server, resp).await;
        let outcome = a.m.heartbeat_now().await;
        assert!(
            matches!(outcome, HeartbeatOutcome::Kept { .. }),
            "{outcome:?}"
        );
        a.assert_kept_its_token();
    }
    // A 200 with a token signed by someone else is not taken either.
    let a = Activated::new().await;
    let forged = token::sign(&claims("lic-evil", now() + 3600, None), &signing_key()).unwrap();
    mount_heartbeat(&a.server, token_answer(&forged)).await;
    let outcome = a.m.heartbeat_now().await;
    assert!(
        matches!(outcome, HeartbeatOutcome::Kept { .. }),
        "{outcome:?}"
    );
    a.assert_kept_its_token();
}

#[tokio::test]
async fn heartbeat_token_for_another_license_is_refused_even_when_signed_by_the_hub() {
    let a = Activated::new().await;
    // Signed with the right key, but its `jti` names another license.
    let other = token::sign(&claims("lic-2", now() + 7200, None), &a.key).unwrap();
    mount_heartbeat(&a.server, token_answer(&other)).await;
    let outcome = a.m.heartbeat_now().await;
    match &outcome {
        HeartbeatOutcome::Kept { reason } => assert!(reason.contains("lic-2"), "{reason}"),
        other => panic!("{other:?}"),
    }
    a.assert_kept_its_token();
}

#[tokio::test]
async fn heartbeat_200_replaces_and_persists_the_token() {
    let a = Activated::new().await;
    let mut c = claims("lic-1", now() + 7200, None);
    c.plan = "enterprise".into();
    let new_tok = token::sign(&c, &a.key).unwrap();
    mount_heartbeat(&a.server, token_answer(&new_tok)).await;
    assert_eq!(a.m.heartbeat_now().await, HeartbeatOutcome::Refreshed);
    assert_eq!(a.m.claims().unwrap().plan, "enterprise");
    assert_eq!(
        read_record(a.data()),
        json!({"token": new_tok, "heartbeat_secret": HB, "license_key": KEY, "server_id": a.m.server_id()})
    );
    assert_record_private(a.data());
}

/// Polls `cond` every 10 ms for up to 30 s.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut cond: impl FnMut() -> F,
) {
    for _ in 0..3000 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn run_heartbeats_at_start_and_on_interval_then_stops_on_cancel() {
    let Cloud { server, key, tok } = Cloud::new().await;
    let dir = tempfile::tempdir().unwrap();
    mount_activate(&server, &tok).await;
    mount_heartbeat(&server, token_answer(&tok)).await;
    let mut cfg = config(dir.path(), Some(KEY), Some(&key));
    cfg.heartbeat_interval = Duration::from_millis(30);
    let m = start_with(cfg, &server.uri()).await;
    let (cancel, task) = spawn_run(&m);
    eventually("three heartbeats", || async {
        requests_to(&server, HEARTBEAT).await >= 3
    })
    .await;
    stop(cancel, task).await;
}

#[tokio::test]
async fn run_retries_activation_until_credentials_appear_and_after_revocation() {
    let Cloud { server, key, tok } = Cloud::new().await;
    let dir = tempfile::tempdir().unwrap();
    // The first two activations fail; later ones succeed.
    mount_times(&server, ACTIVATE, ResponseTemplate::new(503), 2).await;
    mount_activate(&server, &tok).await;
    // The first heartbeat revokes; later ones succeed.
    mount_times(
        &server,
        HEARTBEAT,
        ResponseTemplate::new(410).set_body_json(json!({"message": "revoked"})),
        1,
    )
    .await;
    mount_heartbeat(&server, token_answer(&tok)).await;

    let mut cfg = config(dir.path(), Some(KEY), Some(&key));
    cfg.activation_retry = Duration::from_millis(20);
    cfg.heartbeat_interval = Duration::from_millis(20);
    let m = start_with(cfg, &server.uri()).await;
    assert!(m.cloud_machine_credentials().is_none());
    let (cancel, task) = spawn_run(&m);
    eventually("credentials after activation retry", || async {
        m.cloud_machine_credentials().is_some()
    })
    .await;
    // After the 410 heartbeat clears it, activation retries bring it back without a restart.
    eventually("credentials again after the revoking heartbeat", || async {
        requests_to(&server, HEARTBEAT).await >= 2
            && requests_to(&server, ACTIVATE).await >= 4
            && m.cloud_machine_credentials().is_some()
    })
    .await;
    stop(cancel, task).await;
}

#[tokio::test]
async fn run_without_key_waits_for_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let m = start(dir.path(), None, None, &refused_base()).await;
    let (cancel, task) = spawn_run(&m);
    tokio::task::yield_now().await;
    assert!(!task.is_finished());
    stop(cancel, task).await;
    assert!(m.cloud_machine_credentials().is_none());
}

#[tokio::test]
async fn secrets_never_appear_in_logs_debug_display_or_errors() {
    let buffer = dispatch_test_support::capture_logs("dispatch_license=trace,reqwest=trace,info");
    let a = Activated::new().await;
    let new_tok = token::sign(&claims("lic-1", now() + 9000, None), &a.key).unwrap();
    let mut outputs: Vec<String> = Vec::new();

    // Heartbeat: 200, 500 echoing the secret, bad token, then 410.
    a.server.reset().await;
    mount_times(&a.server, HEARTBEAT, token_answer(&new_tok), 1).await;
    mount_times(
        &a.server,
        HEARTBEAT,
        ResponseTemplate::new(500).set_body_string(format!("bad secret {HB}")),
        1,
    )
    .await;
    mount_times(&a.server, HEARTBEAT, token_answer("x.y.z"), 1).await;
    mount_heartbeat(
        &a.server,
        ResponseTemplate::new(410).set_body_json(json!({"message": format!("revoked {HB}")})),
    )
    .await;
    let creds = a.m.cloud_machine_credentials().unwrap();
    outputs.push(format!("{creds:?}"));
    outputs.push(format!("{:?} {}", a.m, a.m.status_summary()));
    for _ in 0..4 {
        let outcome = a.m.heartbeat_now().await;
        outputs.push(format!("{outcome:?}"));
        outputs.push(a.m.status_summary());
    }
    assert!(a.m.cloud_machine_credentials().is_none());

    // Offline start without a cache, foreign token, unverified mode.
    let dir2 = tempfile::tempdir().unwrap();
    let cfg = config(dir2.path(), Some(KEY), Some(&a.key));
    outputs.push(format!("{cfg:?}"));
    let m2 = start_with(cfg, &refused_base()).await;
    outputs.push(format!("{m2:?} {}", m2.status_summary()));
    let m3 = start(dir2.path(), Some(KEY), None, &a.server.uri()).await;
    outputs.push(m3.status_summary());

    // Errors of every layer.
    let client = client_for(&refused_base());
    let req = dispatch_protocol::ActivateRequest {
        key: Secret::new(KEY),
        server_id: "s".into(),
        machine_name: "m".into(),
        client_version: String::new(),
    };
    outputs.push(format!("{req:?}"));
    let e = client.activate(&req).await.unwrap_err();
    outputs.push(format!("{e} {e:?}"));
    let e = token::verify(&a.tok, &signing_key().verifying_key(), now()).unwrap_err();
    outputs.push(format!("{e} {e:?}"));
    let e = token::decode_unverified(&format!("{0}.{0}", a.tok)).unwrap_err();
    outputs.push(format!("{e} {e:?}"));
    let record = dispatch_license::ActivationRecord {
        token: Secret::new(a.tok.clone()),
        heartbeat_secret: Secret::new(HB),
        license_key: Secret::new(KEY),
        server_id: "s".into(),
    };
    outputs.push(format!("{record:?}"));
    let resp = dispatch_protocol::ActivateResponse {
        token: Secret::new(a.tok.clone()),
        heartbeat_secret: Secret::new(HB),
    };
    outputs.push(format!("{resp:?}"));

    let logs = buffer.contents();
    assert!(logs.contains("license activated"), "capture works: {logs}");
    assert!(logs.contains("read without verifying"), "{logs}");
    assert!(logs.contains("revoked"), "{logs}");
    outputs.push(logs);
    for secret in [KEY, HB, a.tok.as_str(), new_tok.as_str()] {
        // Token parts too: a leaked signature or claims segment is a leak.
        let mut needles = vec![secret.to_owned()];
        if secret.contains('.') {
            needles.extend(secret.split('.').map(str::to_owned));
        }
        for out in &outputs {
            for needle in &needles {
                assert!(!out.contains(needle.as_str()), "secret leaked into: {out}");
            }
        }
    }
}
