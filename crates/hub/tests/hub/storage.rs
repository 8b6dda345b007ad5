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
        hub.accept_ok(&a, &first).await;
        hub.accept_ok(&a, &first).await;
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
        hub.finish_ok(&b, &again, "failed", "").await;
        hub.finish_ok(&a, &first, "succeeded", "").await;
        hub.finish_ok(&a, &first, "succeeded", "").await;
        assert_eq!(gauges(&hub).await, [0, 0, 0, 2]);
        hub.push("g2").await;
        hub.restart().await;
        assert_eq!(gauges(&hub).await, [2, 0, 0, 2], "counted once at start");
    }

    #[tokio::test]
    async fn a_scrape_reads_no_table() {
        // SQLite: rows go behind the hub's back through the file, and PostgreSQL's gauges are
        // counted again each minute for the replicas.
        let hub = TestHub::start_sqlite(vec![build(Trigger::Auto)]).await;
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
        assert_eq!(hub.get("/healthz").await.status(), StatusCode::OK);
    }
}

mod retention {
    use super::*;

    const DAY_MS: i64 = 24 * 3600 * 1000;

    #[tokio::test]
    async fn the_pass_at_start_prunes_old_finished_jobs_and_keeps_the_rest() {
        // SQLite: the rows are aged, and what is left read, through the file.
        let mut hub = TestHub::start_sqlite(vec![build(Trigger::Auto)]).await;
        let c = hub.activate("lic-a", SRV_A).await;
        hub.push("old").await;
        let old = hub.pull_id(&c).await;
        hub.accept_ok(&c, &old).await;
        hub.finish_ok(&c, &old, "succeeded", "").await;
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
        // SQLite: the store's files are the ones checked.
        let mut hub = TestHub::start_sqlite(vec![build(Trigger::Auto)]).await;
        hub.push("d").await;
        assert_private(&hub.cfg.data_dir);
        hub.stop().await;
    }

    #[tokio::test]
    async fn files_left_readable_by_an_older_release_are_tightened() {
        // SQLite: the store's files are the ones checked.
        let mut hub = TestHub::start_sqlite(vec![build(Trigger::Auto)]).await;
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
        // SQLite: the damage is done to the file.
        let mut hub = TestHub::start_sqlite(vec![build(Trigger::Auto)]).await;
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
        let config = hub_toml(dir, "data_dir = \"data\"\n");
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

mod servers {
    use super::*;

    /// Activates `license_id` on `server` as `machine`; the raw answer.
    async fn activate_as(hub: &TestHub, server: &str, machine: &str) -> reqwest::Response {
        hub.post(
            "/api/v1/licenses/activate",
            json!({"key": "key-lic-a", "server_id": server, "machine_name": machine}),
        )
        .await
    }

    async fn heartbeat(hub: &TestHub, c: &Creds) -> reqwest::Response {
        hub.post(
            "/api/v1/licenses/heartbeat",
            json!({"license_id": c.license_id, "server_id": c.server_id, "heartbeat_secret": c.secret}),
        )
        .await
    }

    /// Checks that a pull as `c` is refused (401) with a message that holds `why`.
    async fn pull_refused(hub: &TestHub, c: &Creds, why: &str) {
        let pull = hub.pull(c, 0).await;
        assert_eq!(pull.status(), StatusCode::UNAUTHORIZED);
        let body: Value = pull.json().await.unwrap();
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(why), "{body}");
    }

    /// `hub servers <args> --data-dir <the hub's>` (and `--store-url` when the hub has one): exit
    /// code and stdout (stderr on failure).
    fn servers_cmd(hub: &TestHub, args: &[&str]) -> (i32, String) {
        let mut all = vec!["servers"];
        all.extend_from_slice(args);
        if let Some(url) = &hub.cfg.store_url {
            all.extend(["--store-url", url.expose()]);
        }
        all.push("--data-dir");
        let out = hub_bin(&all, &hub.cfg.data_dir).output().unwrap();
        let text = if out.status.success() {
            out.stdout
        } else {
            out.stderr
        };
        (out.status.code().unwrap(), String::from_utf8(text).unwrap())
    }

    #[tokio::test]
    async fn a_server_id_that_is_not_a_uuid_is_refused_naming_the_field() {
        let hub = TestHub::start(vec![build(Trigger::Auto)]).await;
        let c = hub.activate("lic-a", SRV_A).await;
        let long = "a".repeat(64 * 1024);
        for bad in [
            "",
            "srv-1",
            "0190A000-0000-7000-8000-00000000000A",
            "{0190a000-0000-7000-8000-00000000000a}",
            "0190a0000000700080000000000000000a",
            "00000000-0000-0000-0000-000000000000",
            "0190a000-0000-7000-8000-00000000000a\n",
            long.as_str(),
        ] {
            let as_bad = Creds {
                server_id: bad.to_owned(),
                ..c.clone()
            };
            let answers = [
                ("activate", activate_as(&hub, bad, "box").await),
                ("heartbeat", heartbeat(&hub, &as_bad).await),
                ("pull", hub.pull(&as_bad, 0).await),
                ("accept", hub.accept(&as_bad, "j").await),
                ("finish", hub.finish(&as_bad, "j", "failed", "").await),
            ];
            for (call, resp) in answers {
                assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{call} {bad:.40?}");
                let body: Value = resp.json().await.unwrap();
                let message = body["message"].as_str().unwrap();
                assert!(message.contains("server_id"), "{call}: {message}");
            }
        }
        assert_eq!(hub.pull(&c, 0).await.status(), StatusCode::NO_CONTENT);
        // A machine name is a host name, not a document.
        let resp = activate_as(&hub, SRV_B, &"m".repeat(256)).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let body: Value = resp.json().await.unwrap();
        assert!(
            body["message"].as_str().unwrap().contains("machine_name"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn a_server_id_stays_with_its_machine_until_revoked_even_while_the_hub_runs() {
        let hub = TestHub::start(vec![build(Trigger::Auto)]).await;
        let mine = hub.activate("lic-a", SRV_A).await;
        // The same machine again is fine (and gets a new secret).
        let again = hub.activate("lic-a", SRV_A).await;
        assert_ne!(again.secret, mine.secret);
        // Another machine holding a license key cannot take the id over, under any license.
        for key in ["key-lic-a", "key-lic-b"] {
            let resp = hub
                .post(
                    "/api/v1/licenses/activate",
                    json!({"key": key, "server_id": SRV_A, "machine_name": "intruder"}),
                )
                .await;
            assert_eq!(resp.status(), StatusCode::CONFLICT);
            let body: Value = resp.json().await.unwrap();
            let message = body["message"].as_str().unwrap();
            assert!(
                message.contains("another machine") && message.contains("hub servers revoke"),
                "{message}"
            );
        }
        assert_eq!(
            hub.pull(&again, 0).await.status(),
            StatusCode::NO_CONTENT,
            "untouched"
        );
        let other = hub.activate("lic-a", SRV_B).await;

        let (code, list) = servers_cmd(&hub, &["list"]);
        assert_eq!(code, 0, "{list}");
        assert!(list.starts_with("SERVER ID"), "{list}");
        let line_a = list.lines().find(|l| l.starts_with(SRV_A)).expect(&list);
        for field in ["box", "lic-a", "active"] {
            assert!(line_a.contains(field), "{field} in {line_a}");
        }

        // Revoked from the command line while the hub runs: the next calls are refused at once.
        let (code, out) = servers_cmd(&hub, &["revoke", SRV_A]);
        assert_eq!(code, 0, "{out}");
        pull_refused(&hub, &again, "revoked").await;
        assert_eq!(heartbeat(&hub, &again).await.status(), StatusCode::GONE);
        assert_eq!(
            hub.accept(&again, "j").await.status(),
            StatusCode::UNAUTHORIZED
        );
        // Someone without the secret learns nothing more than before.
        let guess = Creds {
            secret: "guess".into(),
            ..again.clone()
        };
        let body: Value = hub.pull(&guess, 0).await.json().await.unwrap();
        assert_eq!(body["message"], "unknown license, server or secret");
        assert_eq!(
            hub.pull(&other, 0).await.status(),
            StatusCode::NO_CONTENT,
            "others unaffected"
        );
        let (_, list) = servers_cmd(&hub, &["list"]);
        let line_a = list.lines().find(|l| l.starts_with(SRV_A)).expect(&list);
        assert!(line_a.contains("revoked 20"), "{line_a}");

        // Once revoked, the id may be activated again, by any machine.
        assert_eq!(
            activate_as(&hub, SRV_A, "new-box").await.status(),
            StatusCode::OK
        );
        // Unknown or malformed ids are errors that say so.
        let (code, err) = servers_cmd(&hub, &["revoke", "0190a000-0000-7000-8000-0000000000ff"]);
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains("no server") && err.contains("hub servers list"),
            "{err}"
        );
        let (code, err) = servers_cmd(&hub, &["revoke", "srv-1"]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("server-id"), "{err}");
    }

    #[test]
    fn the_commands_need_an_existing_store() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("nothing-here");
        let out = hub_bin(&["servers", "list", "--data-dir"], &empty)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no hub store"), "{err}");
        assert!(!empty.exists(), "no store was made there");
    }

    #[tokio::test]
    async fn an_activation_not_seen_for_the_expiry_must_activate_again() {
        // SQLite: the activation is aged through the file.
        let hub = TestHub::start_sqlite(vec![build(Trigger::Auto)]).await;
        let c = hub.activate("lic-a", SRV_A).await;
        assert_eq!(hub.pull(&c, 0).await.status(), StatusCode::NO_CONTENT);
        // Thirty-one days without a word from the server (the expiry is 30 days by default).
        let long_ago = dispatch_util::now_ms() as i64 - 31 * 24 * 3600 * 1000;
        open_db(&hub)
            .execute(
                "UPDATE activations SET activated_ms = ?1, last_seen_ms = ?1",
                [long_ago],
            )
            .unwrap();
        pull_refused(&hub, &c, "expired").await;
        assert_eq!(heartbeat(&hub, &c).await.status(), StatusCode::UNAUTHORIZED);
        // An expired id is free: even another machine may activate it.
        assert_eq!(
            activate_as(&hub, SRV_A, "new-box").await.status(),
            StatusCode::OK
        );
        let fresh = hub.activate("lic-b", SRV_B).await;
        assert_eq!(hub.pull(&fresh, 0).await.status(), StatusCode::NO_CONTENT);
    }

    #[tokio::test]
    async fn last_seen_is_kept_in_memory_and_written_later_not_per_pull() {
        // SQLite: the stored time is set and read through the file.
        let mut hub = TestHub::start_sqlite(vec![build(Trigger::Auto)]).await;
        let c = hub.activate("lic-a", SRV_A).await;
        let long_ago = dispatch_util::now_ms() as i64 - 10 * 24 * 3600 * 1000;
        let set = |db: &rusqlite::Connection| {
            db.execute(
                "UPDATE activations SET activated_ms = ?1, last_seen_ms = ?1",
                [long_ago],
            )
            .unwrap();
        };
        set(&open_db(&hub));
        let before_pulls = dispatch_util::now_ms() as i64;
        for _ in 0..3 {
            assert_eq!(hub.pull(&c, 0).await.status(), StatusCode::NO_CONTENT);
        }
        assert_eq!(heartbeat(&hub, &c).await.status(), StatusCode::OK);
        let seen = |db: &rusqlite::Connection| -> i64 {
            db.query_row("SELECT last_seen_ms FROM activations", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(seen(&open_db(&hub)), long_ago, "no write per pull");
        // Written at the latest when the hub stops (and once a minute while it runs).
        hub.stop().await;
        assert!(seen(&open_db(&hub)) >= before_pulls);
    }
}

mod logs {
    use super::*;

    /// A machine name that would start a new log line and turn the terminal red.
    const EVIL: &str = "box\nFAKE LINE\u{1b}[31mred";

    #[tokio::test]
    async fn untrusted_strings_are_logged_escaped() {
        let logs = dispatch_test_support::capture_logs("dispatch_hub=trace");
        let hub = TestHub::start(vec![build(Trigger::Auto)]).await;
        let resp = hub
            .post(
                "/api/v1/licenses/activate",
                json!({"key": "key-lic-a", "server_id": SRV_A, "machine_name": EVIL}),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let refused = hub
            .post(
                "/api/v1/licenses/activate",
                json!({"key": "key-lic-a", "server_id": SRV_A, "machine_name": "other\u{1b}[2J"}),
            )
            .await;
        assert_eq!(refused.status(), StatusCode::CONFLICT);
        let text = logs.contents();
        assert!(text.contains("license activated"), "{text}");
        assert!(
            text.contains(r"box\nFAKE LINE\u{1b}[31mred"),
            "escaped: {text}"
        );
        assert!(!text.contains('\u{1b}'), "no raw escape codes: {text}");
        assert!(!text.contains("\nFAKE LINE"), "no forged line: {text}");
    }

    /// The binary's text logs carry no colour codes when stderr is not a terminal, and an
    /// untrusted name cannot forge a log line there either.
    #[test]
    fn the_binary_logs_plain_text_to_a_pipe() {
        let dir = tempfile::tempdir().unwrap();
        let licensed = "[[license]]\nid = \"lic-a\"\nkey = \"key-lic-a\"\n";
        let hub = Served::start(
            &hub_toml(dir.path(), licensed),
            &[("DISPATCH_HUB_LOG", "debug")],
        );
        block_on(async {
            let resp = reqwest::Client::new()
                .post(format!("{}/api/v1/licenses/activate", hub.base))
                .json(&json!({"key": "key-lic-a", "server_id": SRV_A, "machine_name": EVIL}))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
        });
        let logs = hub.stop();
        assert!(logs.contains("license activated"), "{logs}");
        assert!(!logs.contains('\u{1b}'), "no escape codes at all:\n{logs}");
        assert!(!logs.contains("\nFAKE LINE"), "no forged line:\n{logs}");
    }
}

mod serve_flags {
    use super::*;

    #[test]
    fn out_of_range_days_are_config_errors_naming_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let path = hub_toml(dir.path(), "");
        for (flag, setting) in [
            ("--retention-days=0", "retention_days"),
            ("--activation-expiry-days=99999", "activation_expiry_days"),
        ] {
            let out = hub_bin(&["serve", flag, "--config"], &path)
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(2), "{flag}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(setting), "{flag}: {err}");
        }
    }

    /// The token comes from the environment and never shows in the logs.
    #[test]
    fn the_metrics_token_from_the_environment_guards_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let env = [
            ("DISPATCH_HUB_METRICS_TOKEN", "env-token-93c1"),
            ("DISPATCH_HUB_LOG", "trace"),
        ];
        let hub = Served::start(&hub_toml(dir.path(), ""), &env);
        let base = &hub.base;
        block_on(async {
            let http = reqwest::Client::new();
            let open = http.get(format!("{base}/metrics")).send().await.unwrap();
            assert_eq!(open.status(), StatusCode::UNAUTHORIZED);
            let with = http
                .get(format!("{base}/metrics"))
                .bearer_auth("env-token-93c1")
                .send()
                .await
                .unwrap();
            assert_eq!(with.status(), StatusCode::OK);
        });
        let logs = hub.stop();
        assert!(
            !logs.contains("env-token-93c1"),
            "the token leaked:\n{logs}"
        );
    }
}
