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

mod retention {
    use super::*;

    const DAY_MS: i64 = 24 * 3600 * 1000;

    #[tokio::test]
    async fn the_pass_at_start_prunes_old_finished_jobs_and_keeps_the_rest() {
        let mut hub = TestHub::start(vec![build(Trigger::Auto)]).await;
        let c = hub.activate("lic-a", SRV_A).await;
        hub.push("old").await;
        let old = hub.pull_id(&c).await;
        assert_eq!(hub.accept(&c, &old).await.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            hub.finish(&c, &old, "succeeded", "").await.status(),
            StatusCode::NO_CONTENT
        );
        hub.push("recent").await;
        let recent = hub.pull_id(&c).await;
        hub.finish(&c, &recent, "failed", "").await;
        let (_, waiting) = hub.push("waiting").await;
        hub.stop().await;
        // Forty days pass for the first job (the clock of the finish is the only thing that
        // ages it; the waiting job is as old and unfinished).
        let forty_days_ago = dispatch_util::now_ms() as i64 - 40 * DAY_MS;
        let db = open_db(&hub);
        db.execute(
            "UPDATE jobs SET updated_ms = ?1, created_ms = ?1 WHERE id = ?2 OR id = ?3",
            rusqlite::params![forty_days_ago, old, ids(&waiting)[0]],
        )
        .unwrap();
        db.execute(
            "UPDATE deliveries SET received_ms = ?1 WHERE delivery_id IN ('old', 'waiting')",
            [forty_days_ago],
        )
        .unwrap();
        drop(db);
        hub.boot().await;
        eventually("the old job pruned", || async {
            gauges(&hub).await == [1, 0, 0, 1]
        })
        .await;
        let db = open_db(&hub);
        let left: Vec<String> = db
            .prepare("SELECT delivery_id FROM deliveries ORDER BY delivery_id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(left, ["recent", "waiting"]);
        let job = hub.pull_job(&c).await;
        assert_eq!(
            job["id"],
            ids(&waiting)[0].as_str(),
            "an unfinished job stays"
        );
        assert_eq!(job["delivery_id"], "waiting");
        assert!(job["payload"]["ref"].is_string(), "with its payload");
    }
}

mod files {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn assert_private(data: &Path) {
        assert_eq!(mode(data), 0o700, "{}", data.display());
        for name in [
            "hub.sqlite3",
            "hub.sqlite3-wal",
            "hub.sqlite3-shm",
            "hub_ed25519.key",
        ] {
            assert_eq!(mode(&data.join(name)), 0o600, "{name}");
        }
    }

    #[tokio::test]
    async fn a_new_data_directory_and_its_files_are_private() {
        let mut hub = TestHub::start(vec![build(Trigger::Auto)]).await;
        hub.push("d").await;
        assert_private(&hub.cfg.data_dir);
        hub.stop().await;
    }

    #[tokio::test]
    async fn files_left_readable_by_an_older_release_are_tightened() {
        let mut hub = TestHub::start(vec![build(Trigger::Auto)]).await;
        hub.push("d").await;
        hub.stop().await;
        let data = hub.cfg.data_dir.clone();
        for entry in std::fs::read_dir(&data).unwrap() {
            let path = entry.unwrap().path();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        hub.boot().await;
        hub.push("e").await;
        assert_private(&data);
    }
}

mod integrity {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    /// A real database with some pages in the middle overwritten.
    async fn damaged_store() -> TestHub {
        let mut hub = TestHub::start(vec![build(Trigger::Auto)]).await;
        for i in 0..60 {
            hub.push(&format!("d{i}")).await;
        }
        hub.stop().await;
        let path = db_path(&hub);
        // Everything in the main file, as a backup tool would find it.
        let db = open_db(&hub);
        db.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        drop(db);
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len > 40 * 4096, "{len} bytes: enough pages to damage some");
        let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.seek(SeekFrom::Start(len / 2 / 4096 * 4096)).unwrap();
        file.write_all(&[0x5a; 8 * 4096]).unwrap();
        file.sync_all().unwrap();
        hub
    }

    #[tokio::test]
    async fn a_damaged_store_stops_the_start_naming_the_file_and_what_to_do() {
        let hub = damaged_store().await;
        let err = Hub::start(hub.cfg.clone(), CancellationToken::new())
            .await
            .err()
            .expect("a damaged store does not start");
        assert!(
            matches!(err, dispatch_hub::HubError::CorruptStore { .. }),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains(&db_path(&hub).display().to_string()),
            "{text}"
        );
        assert!(
            text.contains("backup") && text.contains("move it away"),
            "{text}"
        );
        assert!(!err.is_config());
    }

    #[tokio::test]
    async fn the_binary_exits_1_with_the_message() {
        let hub = damaged_store().await;
        let dir = hub.cfg.data_dir.parent().unwrap();
        let config = dir.join("hub.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\nwebhook_secret = \"{SECRET}\"\ndata_dir = \"data\"\n"
            ),
        )
        .unwrap();
        let out = hub_bin(&["serve", "--config"], &config).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("hub.sqlite3") && err.contains("damaged"),
            "{err}"
        );
        assert!(err.contains("restore it from a backup"), "{err}");
    }
}
