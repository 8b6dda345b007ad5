//! No secret in logs, `Debug` output or finish summaries, even when calls fail.

use serde_json::json;
use wiremock::matchers::path_regex;
use wiremock::ResponseTemplate;

use crate::common::*;

#[tokio::test]
async fn the_heartbeat_secret_never_reaches_logs_or_summaries() {
    let logs =
        dispatch_test_support::capture_logs("dispatch_worker=trace,dispatch_license=trace,info");
    let rig = Rig::bare().await;
    rig.write_quick_dag();
    // Failures whose bodies echo the secret, on every endpoint.
    let echo = json!({"message": format!("bad secret {SECRET}")});
    rig.answer_pulls(ResponseTemplate::new(401).set_body_json(echo.clone()), 1)
        .await;
    for what in ["accept", "finish"] {
        let failure = ResponseTemplate::new(500).set_body_json(echo.clone());
        rig.answer_first(path_regex(format!("/{what}$")), failure, 1)
            .await;
    }
    rig.mount_defaults().await;
    rig.offer(json!({"id": "j-sec", "dag_name": "quick"})).await;
    rig.offer(json!({"id": "j-bad", "dag_name": "../x"})).await;
    let creds = TestCreds::present();
    let w = rig.start(fast_config(), creds.clone()).await;
    eventually("both finished", || async {
        w.stats.jobs_finished("succeeded") == 1 && w.stats.jobs_finished("rejected") == 1
    })
    .await;
    w.stop().await;

    let text = logs.contents();
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
