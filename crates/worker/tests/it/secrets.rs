//! No secret in logs, `Debug` output or finish summaries, even when calls fail.

use std::sync::{Arc, Mutex};

use serde_json::json;
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, ResponseTemplate};

use crate::common::*;

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buffer {
    type Writer = Buffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// A global subscriber (thread-local ones can miss callsites that another test thread
/// registered first); other tests' logs land in it too, which only widens the check.
fn capture_logs() -> Buffer {
    static LOGS: std::sync::OnceLock<Buffer> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("dispatch_worker=trace,dispatch_license=trace,info")
            .with_writer(buffer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        buffer
    })
    .clone()
}

#[tokio::test]
async fn the_heartbeat_secret_never_reaches_logs_or_summaries() {
    let logs = capture_logs();
    let rig = Rig::bare().await;
    rig.write_dag("quick", "steps:\n  - name: s\n    command: \"true\"\n");
    // Failures whose bodies echo the secret, on every endpoint.
    let echo = json!({"message": format!("bad secret {SECRET}")});
    Mock::given(method("POST"))
        .and(path(PULL))
        .respond_with(ResponseTemplate::new(401).set_body_json(echo.clone()))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&rig.server)
        .await;
    for what in ["accept", "finish"] {
        Mock::given(method("POST"))
            .and(path_regex(format!("/{what}$")))
            .respond_with(ResponseTemplate::new(500).set_body_json(echo.clone()))
            .up_to_n_times(1)
            .with_priority(1)
            .mount(&rig.server)
            .await;
    }
    rig.mount_defaults().await;
    rig.offer_job(job_json(
        json!({"id": "j-sec", "dag_name": "quick"}),
        None,
        None,
    ))
    .await;
    rig.offer_job(job_json(
        json!({"id": "j-bad", "dag_name": "../x"}),
        None,
        None,
    ))
    .await;
    let creds = TestCreds::present();
    let w = rig.start(fast_config(), creds.clone()).await;
    eventually("both finished", || async {
        w.stats.jobs_finished("succeeded") == 1 && w.stats.jobs_finished("rejected") == 1
    })
    .await;
    w.stop().await;

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("dispatch job finished"), "logs were captured");
    assert!(text.contains("accept failed"), "the failures were logged");
    assert!(!text.contains(SECRET), "secret in logs");
    let creds_debug = format!("{:?}", creds.cloud_machine_credentials_for_test());
    assert!(!creds_debug.contains(SECRET), "{creds_debug}");
    for (_, body) in rig.bodies("/finish").await {
        let summary = body["result_summary"].as_str().unwrap_or_default();
        assert!(!summary.contains(SECRET), "{summary}");
    }
}
