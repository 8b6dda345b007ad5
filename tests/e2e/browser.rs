//! The hub's web pages in a real browser: Debian's Chromium, driven through chromedriver over the
//! WebDriver protocol, against `scheduler start` with its embedded hub. The test logs in with the
//! login link the banner prints, opens the jobs page, opens a job whose DAG is still running,
//! sees a log line arrive without a reload, then the final status, with no console error.
//! Screenshots go to `target/browser/`.
//!
//! WebDriver is a handful of JSON calls over HTTP here (new session, navigate, find, click,
//! execute a script, screenshot), made with the `reqwest` client the other tests use; a WebDriver
//! crate would bring a second HTTP and TLS stack for them.
//!
//! Without Chromium or chromedriver the test fails when `CI` is set (CI installs both) and is
//! skipped with a printed reason otherwise.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use nix::sys::signal::Signal;
use serde_json::{json, Value};

use crate::support::{fixture, github_signature, write, Proc, PATIENCE};

/// The flags Chromium needs on this kind of machine (root, no GPU, no network beyond loopback).
const CHROMIUM_FLAGS: [&str; 8] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// Collects every error the page meets (uncaught exceptions, rejected promises, console.error)
/// into `window.__errors`; installed before any script of each page runs.
const ERROR_HOOK: &str = "window.__errors = [];\
 window.addEventListener('error', function (e) { window.__errors.push('error: ' + e.message); });\
 window.addEventListener('unhandledrejection', function (e) { window.__errors.push('rejection: ' + e.reason); });\
 (function () { var original = console.error; console.error = function () {\
   window.__errors.push('console.error: ' + Array.prototype.join.call(arguments, ' '));\
   return original.apply(console, arguments); }; })();";

/// Lines the step prints after its first: the scheduler holds back the last bytes of a running
/// step's output as long as they could be the start of a credential it masks (about 70 bytes), so
/// a first line alone would reach the hub only when the step ends.
const PADDING: &str = "echo \"compiling crate one of three ..........................\";\
 echo \"compiling crate two of three ..........................\";\
 echo \"compiling crate three of three ........................\";";

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// `target/browser`, next to the binaries under test.
fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // <target>/<profile>/deps/e2e-<hash>
    let target = exe.ancestors().nth(3).expect("target directory").to_owned();
    let dir = target.join("browser");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// chromedriver on a free loopback port; killed on drop.
struct Driver {
    child: Child,
    base: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start(program: &Path) -> Driver {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(program)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
        let driver = Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let ready = http.get(format!("{}/status", driver.base)).send().await;
            if let Ok(resp) = ready {
                let status: Value = resp.json().await.unwrap_or_default();
                if status["value"]["ready"] == true {
                    return driver;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not get ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One WebDriver session.
struct Browser {
    http: reqwest::Client,
    session: String,
}

impl Browser {
    async fn open(driver: &Driver, chromium: &Path, profile: &Path) -> Browser {
        let http = reqwest::Client::new();
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| f.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        args.push("--window-size=1280,1600".into());
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let resp = answer(http.post(format!("{}/session", driver.base)).json(&caps)).await;
        let id = resp["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {resp}"))
            .to_owned();
        let browser = Browser {
            http,
            session: format!("{}/session/{id}", driver.base),
        };
        // Before any page script runs, on every page from now on.
        browser
            .call(
                "goog/cdp/execute",
                json!({"cmd": "Page.addScriptToEvaluateOnNewDocument", "params": {"source": ERROR_HOOK}}),
            )
            .await;
        browser
    }

    async fn call(&self, path: &str, body: Value) -> Value {
        let request = self.http.post(format!("{}/{path}", self.session));
        let resp = answer(request.json(&body)).await;
        assert!(
            resp["value"].get("error").is_none(),
            "WebDriver {path} failed: {resp}"
        );
        resp["value"].clone()
    }

    async fn get(&self, path: &str) -> Value {
        let resp = answer(self.http.get(format!("{}/{path}", self.session))).await;
        resp["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.call("url", json!({ "url": url })).await;
    }

    async fn script(&self, source: &str) -> Value {
        self.call("execute/sync", json!({"script": source, "args": []}))
            .await
    }

    async fn click(&self, css: &str) {
        let found = self
            .call("element", json!({"using": "css selector", "value": css}))
            .await;
        let element = found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_owned();
        self.call(&format!("element/{element}/click"), json!({}))
            .await;
    }

    /// Polls `source` (a script returning a value) until `done` accepts it.
    async fn wait_for(&self, what: &str, source: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let value = self.script(source).await;
            if done(&value) {
                return value;
            }
            if Instant::now() > deadline {
                let page = self.script("return document.body.innerText").await;
                panic!("timed out waiting for {what}; last {value}; page:\n{page}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&self, path: &Path) {
        let data = self.get("screenshot").await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().expect("screenshot data"))
            .unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// The console entries Chromium logged at level SEVERE (failed loads, CSP violations, ...),
    /// through chromedriver's log endpoint.
    async fn severe_console_entries(&self) -> Vec<String> {
        let request = self.http.post(format!("{}/se/log", self.session));
        let resp = answer(request.json(&json!({"type": "browser"}))).await;
        resp["value"]
            .as_array()
            .unwrap_or_else(|| panic!("chromedriver gave no browser log: {resp}"))
            .iter()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].to_string())
            .collect()
    }

    async fn close(&self) {
        let _ = self.http.delete(&self.session).send().await;
    }
}

/// The JSON answer to a WebDriver `request`.
async fn answer(request: reqwest::RequestBuilder) -> Value {
    let response = request.send().await.expect("WebDriver call");
    response.json().await.expect("WebDriver answers JSON")
}

/// The login link and the token, from the banner's line for a stdout that is not a terminal:
/// `<pages>/login (the token is in <file>)`, never the token itself (it would reach logs).
fn login_link(hint: &str) -> (String, String) {
    assert!(
        !hint.contains("token="),
        "the token went to a non-terminal stdout: {hint}"
    );
    let (page, rest) = hint
        .split_once(" (the token is in ")
        .unwrap_or_else(|| panic!("no token file named in {hint:?}"));
    let file = rest.trim_end_matches(')');
    let token = std::fs::read_to_string(file).unwrap().trim().to_owned();
    (format!("{page}?token={token}"), token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_logs_in_and_follows_a_running_job_live() {
    let chromium = find_program(&["chromium", "chromium-browser"]);
    let chromedriver = find_program(&["chromedriver"]);
    let (Some(chromium), Some(chromedriver)) = (chromium, chromedriver) else {
        let reason = "the browser test needs `chromium` and `chromedriver` on PATH \
                      (Debian: apt-get install chromium chromium-driver)";
        assert!(std::env::var_os("CI").is_none(), "{reason}");
        eprintln!("skipped: {reason}");
        return;
    };

    let home = tempfile::tempdir().unwrap();
    let gate = home.path().join("gate");
    write(
        &home.path().join("dags"),
        "live.yaml",
        &format!(
            "steps:\n  - name: build\n    command: >-\n      sh -c 'echo \"first line of the build\";\n      {padding}\n      while [ ! -e \"{gate}\" ]; do sleep 0.1; done;\n      echo \"line that arrives live\"'\n  - name: finish\n    command: echo done\n    depends: [build]\n",
            gate = gate.display(),
            padding = PADDING,
        ),
    );
    write(
        home.path(),
        "bindings.toml",
        "[[binding]]\nrepository = \"Codertocat/Hello-World\"\ndag = \"live\"\ntrigger = \"auto\"\nevent_name = \"push\"\n",
    );
    let home_arg = home.path().display().to_string();
    let mut scheduler = Proc::spawn(
        "scheduler",
        &[
            "start",
            "--home",
            &home_arg,
            "--hub-listen",
            "127.0.0.1:0",
            "--report-interval",
            "1",
        ],
        &[],
    );
    let webhook_url = scheduler.wait_for("webhook URL:");
    let hint = scheduler.wait_for("web pages:");
    let (login_url, token) = login_link(&hint);
    let token_file = home.path().join("ui_token");
    assert!(hint.contains(&token_file.display().to_string()), "{hint}");
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the token file is private");
    }

    let secret = std::fs::read_to_string(home.path().join("webhook_secret")).unwrap();
    let body = fixture("push/with-new-branch.payload.json");
    let answer: Value = reqwest::Client::new()
        .post(&webhook_url)
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", "e2e-browser-1")
        .header(
            "x-hub-signature-256",
            github_signature(secret.trim(), &body),
        )
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job_id = answer["job_ids"][0].as_str().unwrap().to_owned();

    let driver = Driver::start(&chromedriver).await;
    let profile = tempfile::tempdir().unwrap();
    let browser = Browser::open(&driver, &chromium, profile.path()).await;
    let shots = screenshot_dir();

    browser.goto(&login_url).await;
    let jobs_page = browser.script("return location.pathname").await;
    assert_eq!(jobs_page, "/jobs", "the login lands on the jobs page");
    browser
        .wait_for(
            "the job on the jobs page",
            "return document.body.innerText",
            |t| t.as_str().is_some_and(|t| t.contains("live")),
        )
        .await;
    browser.screenshot(&shots.join("jobs-page.png")).await;

    // The job page, once the run's first line has reached the hub, while the step waits.
    browser.click(&format!("a[href=\"/jobs/{job_id}\"]")).await;
    browser
        .wait_for("the job page", "return location.pathname", |p| {
            p.as_str() == Some(&format!("/jobs/{job_id}"))
        })
        .await;
    let log_text = "var p = Array.prototype.slice.call(document.querySelectorAll('pre.log'))\
                    .filter(function (p) { return p.dataset.step === 'build'; })[0];\
                    return p ? p.textContent : ''";
    let mut first_seen = false;
    let deadline = Instant::now() + PATIENCE;
    while !first_seen {
        // The first line is on the page as served, or arrives through the tail.
        let text = browser.script(log_text).await;
        first_seen = text
            .as_str()
            .is_some_and(|t| t.contains("first line of the build"));
        if !first_seen {
            assert!(Instant::now() < deadline, "the first line never showed");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let status = browser
        .script("return document.getElementById('job-status').textContent")
        .await;
    assert_ne!(status, "succeeded", "the run is still going");
    // A mark on this page's window: gone if the page is reloaded.
    browser
        .script("window.__sameDocument = true; return true")
        .await;
    browser
        .screenshot(&shots.join("job-page-running.png"))
        .await;

    std::fs::write(&gate, "go").unwrap();
    browser
        .wait_for("the live line", log_text, |t| {
            t.as_str()
                .is_some_and(|t| t.contains("line that arrives live"))
        })
        .await;
    browser
        .wait_for(
            "the final status",
            "return document.getElementById('job-status').textContent",
            |s| s == "succeeded",
        )
        .await;
    let same = browser
        .script("return window.__sameDocument === true")
        .await;
    assert_eq!(same, true, "the page was not reloaded");
    browser.screenshot(&shots.join("job-page.png")).await;

    let errors = browser.script("return window.__errors").await;
    assert_eq!(errors, json!([]), "errors on the page");
    let severe = browser.severe_console_entries().await;
    assert!(severe.is_empty(), "console errors: {severe:?}");
    browser.close().await;

    // Stdout is not a terminal here: the token is in neither the banner nor the logs.
    assert!(
        !scheduler.output().contains(&token),
        "the token leaked into the output"
    );
    scheduler.signal(Signal::SIGTERM);
    assert_eq!(scheduler.wait().code(), Some(0), "{}", scheduler.output());
}

/// `scheduler demo` names each job's page; with `--serve` the hub stays up after the table, its
/// login link works, and Ctrl-C ends the demo with its verdict's exit code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serve_keeps_the_hub_up_with_a_login_link_until_interrupted() {
    let mut demo = Proc::spawn("scheduler", &["demo", "--serve"], &[]);
    demo.wait_for("(the token is in");
    let out = demo.stdout();
    let hint = out
        .lines()
        .find(|l| l.contains("(the token is in"))
        .expect("the login line");
    let (login_url, _) = login_link(hint.trim());
    let out = demo.stdout();
    assert!(out.contains("all 6 jobs ended as expected"), "{out}");
    let job_url = out
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .find(|w| w.starts_with("http://") && w.contains("/jobs/"))
        .unwrap_or_else(|| panic!("no job page in\n{out}"))
        .to_owned();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // Without the login: sent to it. With it: the job's page.
    let anonymous = http.get(&job_url).send().await.unwrap();
    assert_eq!(anonymous.status(), 303);
    let login = http.get(&login_url).send().await.unwrap();
    assert_eq!(login.status(), 303, "{login_url}");
    let cookie = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let page = http
        .get(&job_url)
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(
        page.contains("Timeline") && page.contains("Codertocat/Hello-World"),
        "{page}"
    );
    demo.signal(Signal::SIGINT);
    assert_eq!(demo.wait().code(), Some(0), "{}", demo.output());
}
