//! The hub's settings: [`HubConfig`] (with [`LicenseKey`] and [`GithubConfig`]), checked when the
//! hub starts, and the `hub.toml` file of the `hub` binary that fills them.
//!
//! ```toml
//! listen = "0.0.0.0:8780"            # default 127.0.0.1:8780
//! data_dir = "/var/lib/dispatch-hub" # default: "data" next to this file
//! webhook_secret = "..."             # or DISPATCH_HUB_WEBHOOK_SECRET
//! mention = "@dispatch"
//! lease_seconds = 60
//! token_ttl_seconds = 604800
//! bindings_file = "bindings.toml"    # relative to this file; added to inline [[binding]] tables
//! retention_days = 30                # finished jobs (and their payloads) older than this are pruned
//! activation_expiry_days = 30        # a server not seen for this long must activate again
//! job_log_cap_mib = 10               # step logs kept per job (1-1024); past it a job's log is cut
//! metrics_token = "..."              # or DISPATCH_HUB_METRICS_TOKEN; /metrics then needs it as Bearer
//! public_url = "https://hub.example.com" # or DISPATCH_HUB_PUBLIC_URL; default http://<listen>
//! ui_token = "..."                   # or DISPATCH_HUB_UI_TOKEN; the web pages' login (unset: no pages)
//! store_url = "postgres://dispatch@db.internal/dispatch" # or DISPATCH_HUB_STORE_URL; unset: SQLite in data_dir
//!
//! [limits]                           # docs/security.md, "Hostile traffic"
//! header_timeout_seconds = 10
//! body_timeout_seconds = 30
//! max_connections = 4096
//! body_budget_mib = 64
//!
//! [[license]]
//! id = "team"
//! key = "..."
//! plan = "pro"
//! features = ["dispatch"]
//!
//! [github]
//! api_url = "https://api.github.com"
//! token = "..."                      # or DISPATCH_HUB_GITHUB_TOKEN
//! app_id = 123456                    # a GitHub App (docs/github-app.md); or DISPATCH_HUB_GITHUB_APP_ID
//! app_private_key_file = "app.pem"   # relative to this file; or DISPATCH_HUB_GITHUB_APP_KEY_FILE
//!
//! [[binding]]
//! repository = "octo-org/octo-repo"
//! dag = "build"
//! trigger = "auto"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dispatch_protocol::{Secret, DEFAULT_JOB_LOG_CAP, MAX_JOB_LOG_CAP};
use serde::Deserialize;

use crate::bindings::{load_bindings, validate_bindings, Binding};
use crate::error::HubError;
use crate::limits::{LimitsFile, ServeLimits};
use crate::toml_file;

/// A license the hub accepts on activate.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LicenseKey {
    /// License id: the token's `jti` and what bindings name in `license`.
    pub id: String,
    /// The key a scheduler presents on activate.
    pub key: Secret,
    /// Plan name put in the token.
    #[serde(default)]
    pub plan: String,
    /// Features put in the token.
    #[serde(default)]
    pub features: Vec<String>,
}

/// Where and how to report to GitHub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GithubConfig {
    /// API base URL (`https://api.github.com`, or `https://<host>/api/v3` for GitHub Enterprise).
    pub api_url: String,
    /// Token for commit statuses and comments; without one (and without an App) the hub does not
    /// report.
    pub token: Option<Secret>,
    /// A GitHub App to report as, with check runs (`docs/github-app.md`); used instead of the
    /// token when set.
    pub app: Option<GithubApp>,
}

/// The GitHub App the hub reports as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GithubApp {
    /// The App's id (GitHub shows it on the App's settings page).
    pub app_id: u64,
    /// The App's private key, the PEM file GitHub offers for download; read when the hub starts.
    pub private_key_file: PathBuf,
}

impl Default for GithubConfig {
    fn default() -> Self {
        GithubConfig {
            api_url: "https://api.github.com".to_owned(),
            token: None,
            app: None,
        }
    }
}

/// Everything the hub needs to run.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Address to listen on (port 0 picks a free port, which `HubHandle::addr` then names).
    pub listen: SocketAddr,
    /// Directory for `hub.sqlite3` and `hub_ed25519.key` (created if absent).
    pub data_dir: PathBuf,
    /// The webhook secret configured on GitHub; must not be empty.
    pub webhook_secret: Secret,
    /// Bindings from events to DAGs.
    pub bindings: Vec<Binding>,
    /// Licenses schedulers may activate.
    pub licenses: Vec<LicenseKey>,
    /// GitHub reporting.
    pub github: GithubConfig,
    /// Finished jobs older than this (by finish time) are deleted with their payloads and
    /// reports; deliveries that made no job go after as long (default 30 days, at least 1 day).
    pub retention: Duration,
    /// An activation whose server has not pulled or heartbeated for this long expires: the
    /// server must activate again (default 30 days, at least 1 day).
    pub activation_expiry: Duration,
    /// Log bytes the hub keeps per job, every step and stream together (`job_log_cap_mib`):
    /// past it a job's log is cut and marked truncated (`docs/protocol.md`, "Extension:
    /// progress and logs"). Default [`DEFAULT_JOB_LOG_CAP`] (10 MiB), from 1 MiB to
    /// [`MAX_JOB_LOG_CAP`] (1 GiB).
    pub job_log_cap: u64,
    /// When set, `GET /metrics` answers only `Authorization: Bearer <token>`.
    pub metrics_token: Option<Secret>,
    /// How long a claim may stay unaccepted before the job goes back to the queue (default 60 s).
    pub lease: Duration,
    /// The comment mention (default `@dispatch`).
    pub mention: String,
    /// Lifetime of issued license tokens (default 7 days; schedulers heartbeat every 24 h).
    pub token_ttl: Duration,
    /// Timeouts, the connection cap and the body budget of the HTTP server.
    pub limits: ServeLimits,
    /// The hub's address as GitHub and browsers reach it (`https://hub.example.com`): the
    /// webhook URL of the App manifest and of the hub's start-up log, and the job links on
    /// GitHub. Default: `http://` + the address the hub listens on.
    pub public_url: Option<String>,
    /// The admin token of the web pages (`docs/security.md`, "Web pages"): `GET /login?token=…`
    /// starts a browser session, `Authorization: Bearer …` works on every page. None: the pages
    /// answer that the web UI is disabled.
    pub ui_token: Option<Secret>,
    /// Where the store lives: unset, SQLite (`hub.sqlite3` in `data_dir`); a `postgres://` URL,
    /// a PostgreSQL database that several hub replicas may share (`docs/deploy.md`). A secret:
    /// the URL may carry a password.
    pub store_url: Option<Secret>,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8780)),
            data_dir: PathBuf::from("data"),
            webhook_secret: Secret::default(),
            bindings: Vec::new(),
            licenses: Vec::new(),
            github: GithubConfig::default(),
            retention: days(30),
            activation_expiry: days(30),
            job_log_cap: DEFAULT_JOB_LOG_CAP,
            metrics_token: None,
            lease: Duration::from_secs(60),
            mention: "@dispatch".to_owned(),
            token_ttl: Duration::from_secs(7 * 24 * 3600),
            limits: ServeLimits::default(),
            public_url: None,
            ui_token: None,
            store_url: None,
        }
    }
}

impl HubConfig {
    /// Checks the settings that files cannot check alone; fills binding ids.
    pub(crate) fn validate(mut self) -> Result<HubConfig, HubError> {
        const ORIGIN: &str = "hub config";
        if self.webhook_secret.is_empty() {
            return Err(HubError::setting(
                ORIGIN,
                "webhook_secret",
                "must not be empty",
            ));
        }
        if self.mention.is_empty() || self.mention.chars().any(char::is_whitespace) {
            return Err(HubError::setting(
                ORIGIN,
                "mention",
                "must be one word, e.g. `@dispatch`",
            ));
        }
        if self.lease.is_zero() {
            return Err(HubError::setting(ORIGIN, "lease", "must be positive"));
        }
        for (setting, value) in [
            ("retention_days", self.retention),
            ("activation_expiry_days", self.activation_expiry),
        ] {
            if !(days(1)..=days(MAX_DAYS)).contains(&value) {
                return Err(HubError::setting(
                    ORIGIN,
                    setting,
                    format!("must be between 1 and {MAX_DAYS} days"),
                ));
            }
        }
        // A whole log is built in memory for its download (`docs/security.md`, "Web pages"):
        // the cap bounds that too.
        if !(mib(1)..=MAX_JOB_LOG_CAP).contains(&self.job_log_cap) {
            return Err(HubError::setting(
                ORIGIN,
                "job_log_cap_mib",
                format!("must be between 1 and {MAX_JOB_LOG_CAP_MIB} MiB"),
            ));
        }
        if self.metrics_token.as_ref().is_some_and(|t| t.is_empty()) {
            self.metrics_token = None;
        }
        if self.ui_token.as_ref().is_some_and(|t| t.is_empty()) {
            self.ui_token = None;
        }
        // The token is the pages' only lock: a short one could be guessed.
        if self
            .ui_token
            .as_ref()
            .is_some_and(|t| t.expose().chars().count() < MIN_UI_TOKEN_CHARS)
        {
            return Err(HubError::setting(
                ORIGIN,
                "ui_token",
                format!(
                    "must be at least {MIN_UI_TOKEN_CHARS} characters long (or empty: no pages)"
                ),
            ));
        }
        if self.token_ttl < Duration::from_secs(60) {
            return Err(HubError::setting(
                ORIGIN,
                "token_ttl",
                "must be at least 60 seconds",
            ));
        }
        self.limits.validate(ORIGIN)?;
        if let Some(url) = self.public_url.take().filter(|u| !u.trim().is_empty()) {
            let url = url.trim().trim_end_matches('/').to_owned();
            let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
            if !scheme_ok || url.contains(char::is_whitespace) || url.contains(['?', '#']) {
                return Err(HubError::setting(
                    ORIGIN,
                    "public_url",
                    format!("`{url}` is not a base URL like https://hub.example.com"),
                ));
            }
            self.public_url = Some(url);
        }
        self.store_url = self.store_url.take().filter(|u| !u.is_empty());
        if let Some(url) = &self.store_url {
            crate::store::Location::postgres(url.expose())
                .map_err(|reason| HubError::setting(ORIGIN, "store_url", reason))?;
        }
        if self.github.app.as_ref().is_some_and(|app| app.app_id == 0) {
            return Err(HubError::setting(
                ORIGIN,
                "github.app_id",
                "must be the App's id (a positive number)",
            ));
        }
        for (i, l) in self.licenses.iter().enumerate() {
            if l.id.trim().is_empty() {
                return Err(HubError::setting(
                    ORIGIN,
                    format!("license[{i}].id"),
                    "must not be empty",
                ));
            }
            if l.key.is_empty() {
                return Err(HubError::setting(
                    ORIGIN,
                    format!("license[{i}].key"),
                    "must not be empty",
                ));
            }
            if self.licenses[..i].iter().any(|o| o.id == l.id) {
                return Err(HubError::setting(
                    ORIGIN,
                    format!("license[{i}].id"),
                    format!("`{}` is used twice", l.id),
                ));
            }
            if self.licenses[..i].iter().any(|o| o.key == l.key) {
                return Err(HubError::setting(
                    ORIGIN,
                    format!("license[{i}].key"),
                    "the same key is used by two licenses",
                ));
            }
        }
        self.bindings = validate_bindings(self.bindings, ORIGIN)?;
        for (i, b) in self.bindings.iter().enumerate() {
            if !b.license.is_empty() && !self.licenses.iter().any(|l| l.id == b.license) {
                return Err(HubError::setting(
                    ORIGIN,
                    format!("binding[{i}].license"),
                    format!("no license with id `{}` is configured", b.license),
                ));
            }
        }
        Ok(self)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HubFile {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    webhook_secret: Option<Secret>,
    mention: Option<String>,
    lease_seconds: Option<u64>,
    token_ttl_seconds: Option<u64>,
    bindings_file: Option<PathBuf>,
    retention_days: Option<u64>,
    activation_expiry_days: Option<u64>,
    job_log_cap_mib: Option<u64>,
    metrics_token: Option<Secret>,
    public_url: Option<String>,
    ui_token: Option<Secret>,
    store_url: Option<Secret>,
    #[serde(default)]
    license: Vec<LicenseKey>,
    github: Option<GithubFile>,
    limits: Option<LimitsFile>,
    #[serde(default)]
    binding: Vec<Binding>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GithubFile {
    api_url: Option<String>,
    token: Option<Secret>,
    app_id: Option<u64>,
    app_private_key_file: Option<PathBuf>,
}

/// Fewest characters a `ui_token` may have: the pages' only lock must not be guessable.
pub const MIN_UI_TOKEN_CHARS: usize = 16;

/// Longest retention or activation expiry: a century keeps millisecond arithmetic far from
/// overflowing.
pub const MAX_DAYS: u64 = 36_500;

/// `n` days (saturating, so an absurd value is caught by validation, not by an overflow).
pub fn days(n: u64) -> Duration {
    Duration::from_secs(n.saturating_mul(24 * 3600))
}

/// The largest `job_log_cap_mib`: [`MAX_JOB_LOG_CAP`] in MiB.
pub const MAX_JOB_LOG_CAP_MIB: u64 = MAX_JOB_LOG_CAP / (1024 * 1024);

/// `n` MiB in bytes (saturating, so an absurd value is caught by validation, not by an overflow).
pub fn mib(n: u64) -> u64 {
    n.saturating_mul(1024 * 1024)
}

/// Reads `hub.toml`. Relative paths are resolved against the file's directory. The webhook secret
/// may be left out here and supplied by the binary (it is checked when the hub starts).
pub fn load_hub_config(path: &Path) -> Result<HubConfig, HubError> {
    let file: HubFile = toml_file::read(path)?;
    let origin = path.display().to_string();
    let base = path.parent().unwrap_or(Path::new("."));
    let defaults = HubConfig::default();
    let listen = match file.listen {
        Some(text) => text.parse::<SocketAddr>().map_err(|e| {
            HubError::setting(
                &origin,
                "listen",
                format!("`{text}` is not an address like 127.0.0.1:8780: {e}"),
            )
        })?,
        None => defaults.listen,
    };
    let mut bindings = validate_bindings(file.binding, &origin)?;
    if let Some(extra) = file.bindings_file {
        bindings.extend(load_bindings(&base.join(extra))?);
    }
    let github = match file.github {
        Some(g) => GithubConfig {
            api_url: g.api_url.unwrap_or(defaults.github.api_url),
            token: g.token.filter(|t| !t.is_empty()),
            app: match (g.app_id, g.app_private_key_file) {
                (Some(app_id), Some(key)) => Some(GithubApp {
                    app_id,
                    private_key_file: base.join(key),
                }),
                (None, None) => None,
                (Some(_), None) => {
                    return Err(HubError::setting(
                        &origin,
                        "github.app_private_key_file",
                        "is needed with `app_id`",
                    ))
                }
                (None, Some(_)) => {
                    return Err(HubError::setting(
                        &origin,
                        "github.app_id",
                        "is needed with `app_private_key_file`",
                    ))
                }
            },
        },
        None => defaults.github,
    };
    Ok(HubConfig {
        listen,
        data_dir: base.join(file.data_dir.unwrap_or(defaults.data_dir)),
        webhook_secret: file.webhook_secret.unwrap_or_default(),
        bindings,
        licenses: file.license,
        github,
        retention: file.retention_days.map_or(defaults.retention, days),
        activation_expiry: file
            .activation_expiry_days
            .map_or(defaults.activation_expiry, days),
        job_log_cap: file.job_log_cap_mib.map_or(defaults.job_log_cap, mib),
        metrics_token: file.metrics_token.filter(|t| !t.is_empty()),
        lease: file
            .lease_seconds
            .map_or(defaults.lease, Duration::from_secs),
        mention: file.mention.unwrap_or(defaults.mention),
        token_ttl: file
            .token_ttl_seconds
            .map_or(defaults.token_ttl, Duration::from_secs),
        limits: file.limits.unwrap_or_default().into_limits(),
        public_url: file.public_url,
        ui_token: file.ui_token.filter(|t| !t.is_empty()),
        store_url: file.store_url.filter(|u| !u.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::Trigger;

    #[test]
    fn loads_full_file_with_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("b.toml"),
            "[[binding]]\nrepository = \"o/r\"\ndag = \"rel\"\ntrigger = \"auto\"\n",
        )
        .unwrap();
        let path = dir.path().join("hub.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:0\"\nwebhook_secret = \"w\"\nbindings_file = \"b.toml\"\nlease_seconds = 5\n\
             [[license]]\nid = \"l1\"\nkey = \"k1\"\n\
             [github]\ntoken = \"t\"\n\
             [[binding]]\nrepository = \"o/r\"\ndag = \"build\"\ntrigger = \"auto\"\n",
        )
        .unwrap();
        let cfg = load_hub_config(&path).unwrap();
        assert_eq!(cfg.listen.port(), 0);
        assert_eq!(cfg.data_dir, dir.path().join("data"));
        assert_eq!(cfg.bindings.len(), 2);
        assert_eq!(cfg.bindings[1].dag, "rel");
        assert_eq!(cfg.lease, Duration::from_secs(5));
        assert_eq!(cfg.licenses[0].key.expose(), "k1");
        assert_eq!(cfg.github.api_url, "https://api.github.com");
        assert!(
            !format!("{cfg:?}").contains("k1"),
            "secrets must not show in Debug"
        );
    }

    #[test]
    fn ui_token_is_read_and_an_empty_one_means_no_pages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.toml");
        std::fs::write(&path, "ui_token = \"let-me-see-the-pages\"\n").unwrap();
        let cfg = load_hub_config(&path).unwrap();
        assert_eq!(
            cfg.ui_token.as_ref().map(Secret::expose),
            Some("let-me-see-the-pages")
        );
        assert!(!format!("{cfg:?}").contains("let-me-see"));
        std::fs::write(&path, "ui_token = \"\"\n").unwrap();
        assert!(load_hub_config(&path).unwrap().ui_token.is_none());
        let given_empty = HubConfig {
            webhook_secret: Secret::new("w"),
            ui_token: Some(Secret::new("")),
            ..HubConfig::default()
        };
        assert!(given_empty.validate().unwrap().ui_token.is_none());
    }

    #[test]
    fn a_short_ui_token_is_refused_by_name() {
        let short = HubConfig {
            webhook_secret: Secret::new("w"),
            ui_token: Some(Secret::new("fifteen-chars-x")),
            ..HubConfig::default()
        };
        let message = short.validate().unwrap_err().to_string();
        assert!(
            message.contains("ui_token") && message.contains("at least 16 characters"),
            "{message}"
        );
    }

    #[test]
    fn app_settings_and_public_url() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.toml");
        std::fs::write(
            &path,
            "public_url = \"https://hub.example.com/\"\n\
             [github]\napp_id = 42\napp_private_key_file = \"keys/app.pem\"\n",
        )
        .unwrap();
        let cfg = load_hub_config(&path).unwrap();
        let app = cfg.github.app.clone().unwrap();
        assert_eq!(app.app_id, 42);
        assert_eq!(app.private_key_file, dir.path().join("keys/app.pem"));
        let valid = HubConfig {
            webhook_secret: Secret::new("w"),
            ..cfg
        }
        .validate()
        .unwrap();
        assert_eq!(valid.public_url.as_deref(), Some("https://hub.example.com"));

        for (text, setting) in [
            ("[github]\napp_id = 42\n", "github.app_private_key_file"),
            (
                "[github]\napp_private_key_file = \"k.pem\"\n",
                "github.app_id",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = load_hub_config(&path).unwrap_err().to_string();
            assert!(err.contains(&format!("`{setting}`")), "{err}");
        }
        for url in ["hub.example.com", "ftp://h", "https://h/?x"] {
            let err = HubConfig {
                webhook_secret: Secret::new("w"),
                public_url: Some(url.into()),
                ..HubConfig::default()
            }
            .validate()
            .unwrap_err();
            assert!(err.to_string().contains("`public_url`"), "{err}");
        }
    }

    #[test]
    fn errors_name_file_and_setting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.toml");
        std::fs::write(&path, "listen = \"nowhere\"\n").unwrap();
        let err = load_hub_config(&path).unwrap_err().to_string();
        assert!(
            err.contains("`listen`") && err.contains("hub.toml"),
            "{err}"
        );
        std::fs::write(&path, "lisen = \"x\"\n").unwrap();
        let err = load_hub_config(&path).unwrap_err();
        assert!(err.is_config());
        let HubError::ParseConfig { message, .. } = err else {
            panic!("parse error expected")
        };
        assert!(message.contains("lisen"), "{message}");
    }

    /// `toml`'s own messages quote the offending line; the hub's never do, whatever the shape of
    /// the mistake next to a secret.
    #[test]
    fn parse_errors_never_quote_the_file() {
        const CANARY: &str = "CANARY-5e3b1";
        let dir = tempfile::tempdir().unwrap();
        let hub_toml = dir.path().join("hub.toml");
        let shapes = [
            format!("webhook_secret = \"{CANARY}\nlisten = \"127.0.0.1:0\"\n"),
            format!("webhook_secret = {CANARY}\n"),
            format!("webhook_secret = \"{CANARY}\" trailing\n"),
            format!("webhook_secret = \"{CANARY}\"\nwebhook_secret = \"{CANARY}\"\n"),
            format!("webhook_secret = '''{CANARY}\n"),
            format!("metrics_token = [\"{CANARY}\"]\n"),
            format!("[[license]]\nid = \"l\"\nkey = \"{CANARY}\"\nplan = 5\n"),
            format!("[[license]]\nid = \"l\"\nkey = \"{CANARY}\"\nkye = \"{CANARY}\"\n"),
            format!("[github]\ntoken = {{ value = \"{CANARY}\" }}\n"),
            format!("[github]\ntoken = \"{CANARY}\"\n[github]\n"),
        ];
        for (i, text) in shapes.iter().enumerate() {
            // The same text as hub.toml, and after a binding in a bindings file.
            std::fs::write(&hub_toml, text).unwrap();
            let direct = load_hub_config(&hub_toml).unwrap_err();
            let bindings = dir.path().join(format!("b{i}.toml"));
            let binding = "[[binding]]\nrepository = \"o/r\"\ndag = \"d\"\ntrigger = \"auto\"\n";
            std::fs::write(&bindings, format!("{binding}{text}")).unwrap();
            let via_bindings = crate::bindings::load_bindings(&bindings).unwrap_err();
            for err in [direct, via_bindings] {
                assert!(matches!(err, HubError::ParseConfig { .. }), "{text}: {err}");
                let shown = format!("{} / {err:?}", dispatch_util::error_chain(&err));
                assert!(!shown.contains(CANARY), "{text}: a secret leaked: {shown}");
                assert!(shown.contains("line "), "{text}: no position in {shown}");
            }
        }
    }

    fn cfg() -> HubConfig {
        HubConfig {
            webhook_secret: Secret::new("w"),
            licenses: vec![LicenseKey {
                id: "l1".into(),
                key: Secret::new("k1"),
                plan: String::new(),
                features: Vec::new(),
            }],
            ..HubConfig::default()
        }
    }

    #[test]
    fn the_job_log_cap_is_read_in_mib_and_kept_in_its_range() {
        assert_eq!(HubConfig::default().job_log_cap, DEFAULT_JOB_LOG_CAP);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.toml");
        std::fs::write(&path, "webhook_secret = \"w\"\njob_log_cap_mib = 3\n").unwrap();
        let from_file = load_hub_config(&path).unwrap().validate().unwrap();
        assert_eq!(from_file.job_log_cap, 3 * 1024 * 1024);
        for n in [1, MAX_JOB_LOG_CAP_MIB] {
            let edge = HubConfig {
                job_log_cap: mib(n),
                ..cfg()
            };
            assert_eq!(edge.validate().unwrap().job_log_cap, mib(n));
        }
        for n in [0, MAX_JOB_LOG_CAP_MIB + 1, u64::MAX] {
            let err = HubConfig {
                job_log_cap: mib(n),
                ..cfg()
            }
            .validate()
            .unwrap_err();
            assert!(err.is_config(), "{err}");
            let message = err.to_string();
            assert!(
                message.contains("`job_log_cap_mib`") && message.contains("between 1 and 1024 MiB"),
                "{n}: {message}"
            );
        }
    }

    #[test]
    fn validate_names_the_bad_setting() {
        let binding = |license: &str| Binding {
            license: license.into(),
            ..Binding::new("o/r", "d", Trigger::Auto)
        };
        let ok = HubConfig {
            bindings: vec![binding("l1"), binding("")],
            ..cfg()
        };
        let valid = ok.validate().unwrap();
        assert_eq!(valid.bindings[1].id, "o/r/d/auto-2");

        let mut dup = cfg();
        dup.licenses.push(dup.licenses[0].clone());
        let cases: Vec<(HubConfig, &str)> = vec![
            (
                HubConfig {
                    webhook_secret: Secret::default(),
                    ..cfg()
                },
                "webhook_secret",
            ),
            (
                HubConfig {
                    mention: "@a b".into(),
                    ..cfg()
                },
                "mention",
            ),
            (
                HubConfig {
                    lease: Duration::ZERO,
                    ..cfg()
                },
                "lease",
            ),
            (dup, "license[1].id"),
            (
                HubConfig {
                    bindings: vec![binding("nope")],
                    ..cfg()
                },
                "binding[0].license",
            ),
        ];
        for (c, setting) in cases {
            let err = c.validate().unwrap_err();
            assert!(err.is_config(), "{err}");
            assert!(
                err.to_string().contains(&format!("`{setting}`")),
                "{err} should name {setting}"
            );
            assert!(!err.to_string().contains("k1"), "no secret in errors");
        }
    }
}
