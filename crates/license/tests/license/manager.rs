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

/// Starts an activated manager (strict verification) and returns it with its token.
async fn activated(
    server: &MockServer,
    data: &Path,
    key: &SigningKey,
) -> (Arc<LicenseManager>, String) {
    let tok = good_token(key);
    mount_activate(server, &tok).await;
    let m = LicenseManager::start(
        config(data, Some(KEY), Some(key)),
        client_for(&server.uri()),
    )
    .await
    .unwrap();
    assert!(
        m.cloud_machine_credentials().is_some(),
        "{}",
        m.status_summary()
    );
    (m, tok)
}

#[tokio::test]
async fn server_id_is_created_persisted_and_repaired() {
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let id_path = dir.path().join("license").join("server_id");

    let m = LicenseManager::start(config(dir.path(), None, None), client_for(&server.uri()))
        .await
        .unwrap();
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
    assert!(
        m.status_summary().contains("no license key"),
        "{}",
        m.status_summary()
    );

    // Restart keeps it.
    let m2 = LicenseManager::start(config(dir.path(), None, None), client_for(&server.uri()))
        .await
        .unwrap();
    assert_eq!(m2.server_id(), id);

    // Empty and invalid files are replaced by a fresh valid id.
    for junk in [
        "",
        "   \n",
        "not-a-uuid",
        "00000000-0000-0000-0000-000000000000",
    ] {
        std::fs::write(&id_path, junk).unwrap();
        let m3 = LicenseManager::start(config(dir.path(), None, None), client_for(&server.uri()))
            .await
            .unwrap();
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
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = signing_key();
    let (m, tok) = activated(&server, dir.path(), &key).await;

    let creds = m.cloud_machine_credentials().unwrap();
    assert_eq!(creds.license_id, "lic-1");
    assert_eq!(creds.server_id, m.server_id());
    assert_eq!(creds.heartbeat_secret.expose(), HB);
    assert_eq!(m.claims().unwrap().plan, "pro");

    let reqs = server.received_requests().await.unwrap();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].url.path(), ACTIVATE);
    let body: Value = serde_json::from_slice(&reqs[0].body).unwrap();
    assert_eq!(
        body,
        json!({"key": KEY, "server_id": m.server_id(), "machine_name": "box-1", "client_version": "0.0.1"})
    );

    assert_eq!(
        read_record(dir.path()),
        json!({"token": tok, "heartbeat_secret": HB, "license_key": KEY, "server_id": m.server_id()})
    );
    let mode = std::fs::metadata(record_path(dir.path()))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn offline_start_uses_cached_activation_of_the_same_key_only() {
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = signing_key();
    let (first, _) = activated(&server, dir.path(), &key).await;
    let id = first.server_id().to_owned();

    // Cloud unreachable: same key → cached activation.
    let m = LicenseManager::start(
        config(dir.path(), Some(KEY), Some(&key)),
        client_for(&refused_base()),
    )
    .await
    .unwrap();
    let creds = m.cloud_machine_credentials().expect("cached credentials");
    assert_eq!(creds.license_id, "lic-1");
    assert_eq!(creds.server_id, id);
    assert!(
        m.status_summary().contains("cached"),
        "{}",
        m.status_summary()
    );

    // Cloud failing with 500: same key → cached too.
    let failing = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&failing)
        .await;
    let m = LicenseManager::start(
        config(dir.path(), Some(KEY), Some(&key)),
        client_for(&failing.uri()),
    )
    .await
    .unwrap();
    assert!(m.cloud_machine_credentials().is_some());

    // A different key never uses another key's activation.
    let m = LicenseManager::start(
        config(dir.path(), Some("lk_OTHER_KEY"), Some(&key)),
        client_for(&refused_base()),
    )
    .await
    .unwrap();
    assert!(m.cloud_machine_credentials().is_none());
    assert!(m.claims().is_none());
    // ... and leaves the record of the first key alone.
    assert_eq!(read_record(dir.path())["license_key"], KEY);

    // A corrupt record is ignored, not fatal.
    let saved = std::fs::read(record_path(dir.path())).unwrap();
    std::fs::write(record_path(dir.path()), b"{\"token\": 5").unwrap();
    let m = LicenseManager::start(
        config(dir.path(), Some(KEY), Some(&key)),
        client_for(&refused_base()),
    )
    .await
    .unwrap();
    assert!(m.cloud_machine_credentials().is_none());
    std::fs::write(record_path(dir.path()), saved).unwrap();

    // A record made for another server id is not used either.
    std::fs::remove_file(dir.path().join("license").join("server_id")).unwrap();
    let m = LicenseManager::start(
        config(dir.path(), Some(KEY), Some(&key)),
        client_for(&refused_base()),
    )
    .await
    .unwrap();
    assert_ne!(m.server_id(), id);
    assert!(m.cloud_machine_credentials().is_none());
}

#[tokio::test]
async fn activation_refused_with_410_ignores_and_removes_cache() {
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = signing_key();
    activated(&server, dir.path(), &key).await;

    let refusing = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(410).set_body_json(json!({"message": "key revoked"})))
        .mount(&refusing)
        .await;
    let m = LicenseManager::start(
        config(dir.path(), Some(KEY), Some(&key)),
        client_for(&refusing.uri()),
    )
    .await
    .unwrap();
    assert!(m.cloud_machine_credentials().is_none());
    assert!(!record_path(dir.path()).exists());
    assert!(
        m.status_summary().contains("key revoked"),
        "{}",
        m.status_summary()
    );
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
        let m = LicenseManager::start(
            config(dir.path(), Some(KEY), Some(&key)),
            client_for(&server.uri()),
        )
        .await
        .unwrap();
        assert!(m.cloud_machine_credentials().is_none());
        assert!(m.claims().is_none());
        assert!(
            !record_path(dir.path()).exists(),
            "a rejected token is not stored"
        );
        assert!(
            m.status_summary().contains("rejected"),
            "{}",
            m.status_summary()
        );
    }

    // Without a public key the same foreign token is read unverified.
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    mount_activate(&server, &foreign).await;
    let m = LicenseManager::start(
        config(dir.path(), Some(KEY), None),
        client_for(&server.uri()),
    )
    .await
    .unwrap();
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
        let m = LicenseManager::start(
            config(dir.path(), Some(KEY), Some(&key)),
            client_for(&server.uri()),
        )
        .await
        .unwrap();
        assert_eq!(
            m.cloud_machine_credentials().is_some(),
            ok,
            "{name}: {}",
            m.status_summary()
        );
        if ok {
            assert!(
                m.status_summary().contains("in grace"),
                "{}",
                m.status_summary()
            );
        }
    }
}

#[tokio::test]
async fn heartbeat_410_and_401_clear_the_license() {
    for code in [410u16, 401] {
        let server = MockServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let key = signing_key();
        let (m, _) = activated(&server, dir.path(), &key).await;
        mount_heartbeat(
            &server,
            ResponseTemplate::new(code).set_body_json(json!({"message": "license gone"})),
        )
        .await;
        let outcome = m.heartbeat_now().await;
        assert_eq!(
            outcome,
            HeartbeatOutcome::Cleared {
                status: code,
                reason: "license gone".into()
            }
        );
        assert!(m.cloud_machine_credentials().is_none());
        assert!(m.claims().is_none());
        assert!(!record_path(dir.path()).exists());
        assert!(
            m.status_summary().contains("license gone"),
            "{}",
            m.status_summary()
        );
        // Heartbeat body was exact.
        let reqs = server.received_requests().await.unwrap();
        let hb = reqs.iter().find(|r| r.url.path() == HEARTBEAT).unwrap();
        let body: Value = serde_json::from_slice(&hb.body).unwrap();
        assert_eq!(
            body,
            json!({"license_id": "lic-1", "server_id": m.server_id(), "heartbeat_secret": HB, "client_version": "0.0.1"})
        );
        // Nothing to heartbeat any more.
        assert_eq!(m.heartbeat_now().await, HeartbeatOutcome::Skipped);
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
        let server = MockServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let key = signing_key();
        let (m, tok) = activated(&server, dir.path(), &key).await;
        mount_heartbeat(&server, resp).await;
        let outcome = m.heartbeat_now().await;
        assert!(
            matches!(outcome, HeartbeatOutcome::Kept { .. }),
            "{outcome:?}"
        );
        assert!(m.cloud_machine_credentials().is_some());
        assert_eq!(read_record(dir.path())["token"], tok);
    }
    // A 200 with a token signed by someone else is not taken either.
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = signing_key();
    let (m, tok) = activated(&server, dir.path(), &key).await;
    let forged = token::sign(&claims("lic-evil", now() + 3600, None), &signing_key()).unwrap();
    mount_heartbeat(
        &server,
        ResponseTemplate::new(200).set_body_json(json!({"token": forged})),
    )
    .await;
    assert!(matches!(
        m.heartbeat_now().await,
        HeartbeatOutcome::Kept { .. }
    ));
    assert_eq!(m.cloud_machine_credentials().unwrap().license_id, "lic-1");
    assert_eq!(read_record(dir.path())["token"], tok);
}

#[tokio::test]
async fn heartbeat_token_for_another_license_is_refused_even_when_signed_by_the_hub() {
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = signing_key();
    let (m, tok) = activated(&server, dir.path(), &key).await;
    // Signed with the right key, but its `jti` names another license.
    let other = token::sign(&claims("lic-2", now() + 7200, None), &key).unwrap();
    mount_heartbeat(
        &server,
        ResponseTemplate::new(200).set_body_json(json!({"token": other})),
    )
    .await;
    let outcome = m.heartbeat_now().await;
    match &outcome {
        HeartbeatOutcome::Kept { reason } => assert!(reason.contains("lic-2"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(m.cloud_machine_credentials().unwrap().license_id, "lic-1");
    assert_eq!(read_record(dir.path())["token"], tok);
}

#[tokio::test]
async fn heartbeat_200_replaces_and_persists_the_token() {
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = signing_key();
    let (m, _) = activated(&server, dir.path(), &key).await;
    let mut c = claims("lic-1", now() + 7200, None);
    c.plan = "enterprise".into();
    let new_tok = token::sign(&c, &key).unwrap();
    mount_heartbeat(
        &server,
        ResponseTemplate::new(200).set_body_json(json!({"token": new_tok})),
    )
    .await;
    assert_eq!(m.heartbeat_now().await, HeartbeatOutcome::Refreshed);
    assert_eq!(m.claims().unwrap().plan, "enterprise");
    assert_eq!(
        read_record(dir.path()),
        json!({"token": new_tok, "heartbeat_secret": HB, "license_key": KEY, "server_id": m.server_id()})
    );
    let mode = std::fs::metadata(record_path(dir.path()))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..3000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn run_heartbeats_at_start_and_on_interval_then_stops_on_cancel() {
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = signing_key();
    let tok = good_token(&key);
    mount_activate(&server, &tok).await;
    mount_heartbeat(
        &server,
        ResponseTemplate::new(200).set_body_json(json!({"token": tok})),
    )
    .await;
    let mut cfg = config(dir.path(), Some(KEY), Some(&key));
    cfg.heartbeat_interval = Duration::from_millis(30);
    let m = LicenseManager::start(cfg, client_for(&server.uri()))
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(m.clone().run(cancel.clone()));
    let mut count = 0;
    for _ in 0..3000 {
        count = server
            .received_requests()
            .await
            .unwrap()
            .iter()
            .filter(|r| r.url.path() == HEARTBEAT)
            .count();
        if count >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(count >= 3, "heartbeats seen: {count}");
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn run_retries_activation_until_credentials_appear_and_after_revocation() {
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = signing_key();
    let tok = good_token(&key);
    // The first two activations fail; later ones succeed.
    Mock::given(method("POST"))
        .and(path(ACTIVATE))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(2)
        .mount(&server)
        .await;
    mount_activate(&server, &tok).await;
    // The first heartbeat revokes; later ones succeed.
    Mock::given(method("POST"))
        .and(path(HEARTBEAT))
        .respond_with(ResponseTemplate::new(410).set_body_json(json!({"message": "revoked"})))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    mount_heartbeat(
        &server,
        ResponseTemplate::new(200).set_body_json(json!({"token": tok})),
    )
    .await;

    let mut cfg = config(dir.path(), Some(KEY), Some(&key));
    cfg.activation_retry = Duration::from_millis(20);
    cfg.heartbeat_interval = Duration::from_millis(20);
    let m = LicenseManager::start(cfg, client_for(&server.uri()))
        .await
        .unwrap();
    assert!(m.cloud_machine_credentials().is_none());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(m.clone().run(cancel.clone()));
    wait_for("credentials after activation retry", || {
        m.cloud_machine_credentials().is_some()
    })
    .await;
    // After the 410 heartbeat clears it, activation retries bring it back without a restart.
    let srv = &server;
    let mut saw_410_then_active = false;
    for _ in 0..3000 {
        let reqs = srv.received_requests().await.unwrap();
        let heartbeats = reqs.iter().filter(|r| r.url.path() == HEARTBEAT).count();
        let activations = reqs.iter().filter(|r| r.url.path() == ACTIVATE).count();
        if heartbeats >= 2 && activations >= 4 && m.cloud_machine_credentials().is_some() {
            saw_410_then_active = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(saw_410_then_active, "{}", m.status_summary());
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn run_without_key_waits_for_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let m = LicenseManager::start(config(dir.path(), None, None), client_for(&refused_base()))
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(m.clone().run(cancel.clone()));
    tokio::task::yield_now().await;
    assert!(!task.is_finished());
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
    assert!(m.cloud_machine_credentials().is_none());
}

fn capture_logs() -> dispatch_test_support::LogBuffer {
    dispatch_test_support::capture_logs("dispatch_license=trace,reqwest=trace,info")
}

#[tokio::test]
async fn secrets_never_appear_in_logs_debug_display_or_errors() {
    let buffer = capture_logs();
    let key = signing_key();
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (m, tok) = activated(&server, dir.path(), &key).await;
    let new_tok = token::sign(&claims("lic-1", now() + 9000, None), &key).unwrap();
    let mut outputs: Vec<String> = Vec::new();

    // Heartbeat: 200, 500 echoing the secret, bad token, then 410.
    server.reset().await;
    Mock::given(method("POST"))
        .and(path(HEARTBEAT))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"token": new_tok})))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(HEARTBEAT))
        .respond_with(ResponseTemplate::new(500).set_body_string(format!("bad secret {HB}")))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(HEARTBEAT))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"token": "x.y.z"})))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    mount_heartbeat(
        &server,
        ResponseTemplate::new(410).set_body_json(json!({"message": format!("revoked {HB}")})),
    )
    .await;
    let creds = m.cloud_machine_credentials().unwrap();
    outputs.push(format!("{creds:?}"));
    outputs.push(format!("{m:?} {}", m.status_summary()));
    for _ in 0..4 {
        let outcome = m.heartbeat_now().await;
        outputs.push(format!("{outcome:?}"));
        outputs.push(m.status_summary());
    }
    assert!(m.cloud_machine_credentials().is_none());

    // Offline start without a cache, foreign token, unverified mode.
    let dir2 = tempfile::tempdir().unwrap();
    let cfg = config(dir2.path(), Some(KEY), Some(&key));
    outputs.push(format!("{cfg:?}"));
    let m2 = LicenseManager::start(cfg, client_for(&refused_base()))
        .await
        .unwrap();
    outputs.push(format!("{m2:?} {}", m2.status_summary()));
    let m3 = LicenseManager::start(
        config(dir2.path(), Some(KEY), None),
        client_for(&server.uri()),
    )
    .await
    .unwrap();
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
    let e = token::verify(&tok, &signing_key().verifying_key(), now()).unwrap_err();
    outputs.push(format!("{e} {e:?}"));
    let e = token::decode_unverified(&format!("{tok}.{tok}")).unwrap_err();
    outputs.push(format!("{e} {e:?}"));
    let record = dispatch_license::ActivationRecord {
        token: Secret::new(tok.clone()),
        heartbeat_secret: Secret::new(HB),
        license_key: Secret::new(KEY),
        server_id: "s".into(),
    };
    outputs.push(format!("{record:?}"));
    let resp = dispatch_protocol::ActivateResponse {
        token: Secret::new(tok.clone()),
        heartbeat_secret: Secret::new(HB),
    };
    outputs.push(format!("{resp:?}"));

    let logs = buffer.contents();
    assert!(logs.contains("license activated"), "capture works: {logs}");
    assert!(logs.contains("read without verifying"), "{logs}");
    assert!(logs.contains("revoked"), "{logs}");
    outputs.push(logs);
    for secret in [KEY, HB, tok.as_str(), new_tok.as_str()] {
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
