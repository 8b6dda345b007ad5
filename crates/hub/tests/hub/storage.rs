//! Stored data and servers (`docs/security.md`, "Stored data and servers"): job gauges kept as
//! things happen, the metrics token, retention, file modes, the start-up integrity check, server
//! ids, revocation and expiry, config errors without secrets, escaped logs.

use super::*;

/// Server ids are UUIDs (the scheduler makes UUIDv7s); these stand for a few machines.
const SRV_A: &str = "0190a000-0000-7000-8000-00000000000a";
const SRV_B: &str = "0190a000-0000-7000-8000-00000000000b";

/// The database file of a test hub.
fn db_path(hub: &TestHub) -> std::path::PathBuf {
    hub.cfg.data_dir.join(dispatch_hub::DB_FILE)
}

/// A connection of its own to a hub's database, as another process (or an operator) would open it.
fn open_db(hub: &TestHub) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(db_path(hub)).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn
}

/// The `dispatch_hub_jobs` gauges from the metrics page, in queued, claimed, accepted, finished
/// order.
async fn gauges(hub: &TestHub) -> [i64; 4] {
    let page = hub.metrics().await;
    ["queued", "claimed", "accepted", "finished"].map(|state| {
        let prefix = format!("dispatch_hub_jobs{{state=\"{state}\"}} ");
        page.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no gauge for {state} in\n{page}"))
            .parse()
            .unwrap()
    })
}

mod metrics {
    use super::*;

    #[tokio::test]
    async fn job_gauges_follow_every_transition_and_survive_a_restart() {
        let mut hub = TestHub::start_with(
            vec![
                build(Trigger::Auto),
                Binding::new(HELLO, "lint", Trigger::Auto),
            ],
            |cfg| cfg.lease = Duration::from_millis(300),
        )
        .await;
        assert_eq!(gauges(&hub).await, [0, 0, 0, 0]);
        hub.push("g1").await;
        assert_eq!(gauges(&hub).await, [2, 0, 0, 0], "two bindings, two jobs");
        hub.push("g1").await;
        assert_eq!(gauges(&hub).await, [2, 0, 0, 0], "a redelivery adds none");
        let a = hub.activate("lic-a", SRV_A).await;
        let b = hub.activate("lic-a", SRV_B).await;
        let first = hub.pull_id(&a).await;
        let second = hub.pull_id(&a).await;
        assert_eq!(gauges(&hub).await, [0, 2, 0, 0]);
        assert_eq!(
            hub.accept(&a, &first).await.status(),
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            hub.accept(&a, &first).await.status(),
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            gauges(&hub).await,
            [0, 1, 1, 0],
            "a repeated accept moves nothing"
        );
        // The second claim runs out and the lease sweep puts it back.
        eventually("the expired claim back in the queue", || async {
            gauges(&hub).await == [1, 0, 1, 0]
        })
        .await;
        let again = hub.pull_id(&b).await;
        assert_eq!(again, second);
        assert_eq!(
            hub.finish(&b, &again, "failed", "").await.status(),
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            hub.finish(&a, &first, "succeeded", "").await.status(),
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            hub.finish(&a, &first, "succeeded", "").await.status(),
            StatusCode::NO_CONTENT
        );
        assert_eq!(gauges(&hub).await, [0, 0, 0, 2]);
        hub.push("g2").await;
        hub.restart().await;
        assert_eq!(gauges(&hub).await, [2, 0, 0, 2], "counted once at start");
    }

    #[tokio::test]
    async fn a_scrape_reads_no_table() {
        let hub = TestHub::start(vec![build(Trigger::Auto)]).await;
        hub.push("s1").await;
        assert_eq!(gauges(&hub).await, [1, 0, 0, 0]);
        // Rows removed behind the hub's back do not show: the page is served from the gauges,
        // not from a count of the table.
        open_db(&hub).execute("DELETE FROM jobs", []).unwrap();
        assert_eq!(gauges(&hub).await, [1, 0, 0, 0]);
    }

    #[tokio::test]
    async fn a_metrics_token_is_required_as_bearer_when_set() {
        let hub = TestHub::start_with(vec![build(Trigger::Auto)], |cfg| {
            cfg.metrics_token = Some(Secret::new("scrape-token-5f1e"));
        })
        .await;
        let get = |auth: Option<&str>| {
            let mut req = hub.http.get(format!("{}/metrics", hub.base));
            if let Some(auth) = auth {
                req = req.header("Authorization", auth);
            }
            req.send()
        };
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Bearer scrape-token-5f1"),
            Some("Bearer scrape-token-5f1e0"),
            Some("scrape-token-5f1e"),
            Some("Basic scrape-token-5f1e"),
        ] {
            let resp = get(auth).await.unwrap();
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
            assert_eq!(resp.headers()["www-authenticate"], "Bearer");
            let text = resp.text().await.unwrap();
            assert!(!text.contains("dispatch_hub_jobs"), "{text}");
            assert!(
                !text.contains("scrape-token"),
                "the token is not echoed: {text}"
            );
        }
        let resp = get(Some("Bearer scrape-token-5f1e")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp
            .text()
            .await
            .unwrap()
            .contains("dispatch_hub_jobs{state=\"queued\"} 0"));
        // Everything else stays open.
        let health = hub.http.get(format!("{}/healthz", hub.base)).send().await;
        assert_eq!(health.unwrap().status(), StatusCode::OK);
    }
}
