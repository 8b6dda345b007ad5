//! Settings of `scheduler start`: flags beat `DISPATCH_*` variables (both via clap) beat the
//! TOML config file beat defaults. Every problem is a [`ConfigError`] naming the setting and why;
//! `main` maps it to exit code 2.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dispatch_protocol::Secret;
use ed25519_dalek::VerifyingKey;
use reqwest::Url;
use serde::Deserialize;

use crate::cli::{parse_addr, LogFormat, StartArgs};

/// Default address of the embedded hub.
pub(crate) const DEFAULT_HUB_LISTEN: &str = "127.0.0.1:8787";
const DEFAULT_GITHUB_API_URL: &str = "https://api.github.com";
const MAX_LONG_POLL_SECS: u64 = 60;

/// A setting that cannot be used. `setting` is the flag name (its env variable and file key
/// are derived from it), `reason` says why in a lowercase fragment without the secret value.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    /// A value is malformed or out of range.
    #[error("invalid --{setting}: {reason}")]
    Invalid {
        /// Flag name without dashes, e.g. `poll-interval`.
        setting: &'static str,
        /// Why it is rejected.
        reason: String,
    },
    /// The config file cannot be read.
    #[error("cannot read config file `{path}`")]
    FileRead {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML or holds an unknown key or a wrong type.
    #[error("invalid config file `{path}`: {message}")]
    FileParse {
        /// The file.
        path: PathBuf,
        /// The TOML parser's message (names the key and line).
        message: String,
    },
    /// The bindings file or another hub setting is unusable (the hub's error names the file
    /// and the setting).
    #[error(transparent)]
    Hub(dispatch_hub::HubError),
    /// Flags could not be parsed (clap's own message names the flag).
    #[error("{0}")]
    Cli(#[from] clap::Error),
}

/// Keys of the config file: the flag names with `_` for `-`. Unknown keys are errors so a typo
/// does not silently fall back to a default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    home: Option<PathBuf>,
    dags_dir: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    log_dir: Option<PathBuf>,
    cloud_url: Option<String>,
    license_key: Option<Secret>,
    license_public_key: Option<String>,
    poll_interval: Option<u64>,
    report_interval: Option<u64>,
    long_poll: Option<u64>,
    max_concurrent_runs: Option<u64>,
    shutdown_grace: Option<u64>,
    metrics_addr: Option<String>,
    log_format: Option<LogFormat>,
    hub_listen: Option<String>,
    hub_retention_days: Option<u64>,
    hub_activation_expiry_days: Option<u64>,
    hub_job_log_cap_mib: Option<u64>,
    hub_metrics_token: Option<Secret>,
    hub_ui_token: Option<Secret>,
    github_api_url: Option<String>,
    github_token: Option<Secret>,
    public_url: Option<String>,
    github_app_id: Option<u64>,
    github_app_key_file: Option<PathBuf>,
    hist_retention_days: Option<u64>,
}

/// Where the worker pulls from.
#[derive(Debug, Clone)]
pub(crate) enum CloudTarget {
    /// A remote hub/cloud at this base URL.
    Remote(Url),
    /// A hub embedded in this process.
    Embedded {
        /// Where it listens (loopback by default).
        listen: SocketAddr,
        /// Retention, activation expiry, job log cap, metrics and pages tokens.
        storage: HubStorage,
        /// GitHub API base URL for reporting.
        github_api_url: Url,
        /// GitHub token for reporting.
        github_token: Option<Secret>,
        /// GitHub App for reporting with check runs (used instead of the token).
        github_app: Option<dispatch_hub::GithubApp>,
        /// The hub's address as GitHub and browsers reach it (default: its listen address).
        public_url: Option<String>,
    },
}

/// The embedded hub's stored-data settings (`docs/security.md`, "Stored data and servers").
#[derive(Debug, Clone)]
pub(crate) struct HubStorage {
    /// Finished jobs older than this are pruned.
    pub(crate) retention: Duration,
    /// An activation not seen for this long expires.
    pub(crate) activation_expiry: Duration,
    /// Log bytes kept per job; past them a job's log is cut.
    pub(crate) job_log_cap: u64,
    /// When set, the hub's `/metrics` needs it as a bearer token.
    pub(crate) metrics_token: Option<Secret>,
    /// The web pages' admin token; None: a random one kept under the home.
    pub(crate) ui_token: Option<Secret>,
}

impl Default for HubStorage {
    fn default() -> Self {
        let hub = dispatch_hub::HubConfig::default();
        HubStorage {
            retention: hub.retention,
            activation_expiry: hub.activation_expiry,
            job_log_cap: hub.job_log_cap,
            metrics_token: None,
            ui_token: None,
        }
    }
}

/// Resolved settings. `Debug` is safe: secrets are [`Secret`]s.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) home: PathBuf,
    pub(crate) dags_dir: PathBuf,
    pub(crate) data_dir: PathBuf,
    pub(crate) log_dir: PathBuf,
    pub(crate) cloud: CloudTarget,
    pub(crate) license_key: Option<Secret>,
    pub(crate) license_public_key: Option<VerifyingKey>,
    pub(crate) poll_interval: Duration,
    pub(crate) report_interval: Duration,
    pub(crate) long_poll: Duration,
    pub(crate) max_concurrent_runs: Option<usize>,
    pub(crate) shutdown_grace: Duration,
    pub(crate) metrics_addr: Option<SocketAddr>,
    pub(crate) log_format: LogFormat,
    /// Days finished runs are kept when their DAG sets no `hist_retention_days`.
    pub(crate) hist_retention_days: u64,
}

impl Settings {
    /// Layers flags/env over the config file over defaults. `user_home` is `$HOME`, passed in
    /// so tests do not depend on the environment.
    pub(crate) fn resolve(
        args: StartArgs,
        user_home: Option<&Path>,
    ) -> Result<Settings, ConfigError> {
        let default_home = || user_home.map(|h| h.join(".dispatch"));
        let config_path = match &args.config {
            Some(path) => Some(path.clone()),
            None => args
                .home
                .clone()
                .or_else(default_home)
                .map(|home| home.join("config.toml"))
                .filter(|path| path.is_file()),
        };
        let file = match &config_path {
            Some(path) => read_file_config(path)?,
            None => FileConfig::default(),
        };

        let home = args
            .home
            .or(file.home)
            .or_else(default_home)
            .ok_or_else(|| ConfigError::Invalid {
                setting: "home",
                reason: "not set and $HOME is unknown".to_owned(),
            })?;
        let dags_dir = args
            .dags_dir
            .or(file.dags_dir)
            .unwrap_or_else(|| home.join("dags"));
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| home.join("data"));
        let log_dir = args
            .log_dir
            .or(file.log_dir)
            .unwrap_or_else(|| home.join("logs"));

        let poll_interval = seconds("poll-interval", args.poll_interval, file.poll_interval, 10)?;
        if poll_interval.is_zero() {
            return Err(invalid("poll-interval", "must be at least 1 second"));
        }
        let report_interval = seconds(
            "report-interval",
            args.report_interval,
            file.report_interval,
            10,
        )?;
        if report_interval.is_zero() {
            return Err(invalid("report-interval", "must be at least 1 second"));
        }
        let long_poll = seconds("long-poll", args.long_poll, file.long_poll, 30)?;
        if long_poll.as_secs() > MAX_LONG_POLL_SECS {
            return Err(invalid(
                "long-poll",
                format!("{} is above the maximum of 60 seconds", long_poll.as_secs()),
            ));
        }
        let shutdown_grace = seconds(
            "shutdown-grace",
            args.shutdown_grace,
            file.shutdown_grace,
            30,
        )?;
        let max_concurrent_runs = match number(
            "max-concurrent-runs",
            args.max_concurrent_runs,
            file.max_concurrent_runs,
        )? {
            Some(0) => return Err(invalid("max-concurrent-runs", "must be at least 1")),
            Some(n) => {
                Some(usize::try_from(n).map_err(|_| invalid("max-concurrent-runs", "too large"))?)
            }
            None => None,
        };

        let hist_retention_days = number(
            "hist-retention-days",
            args.hist_retention_days,
            file.hist_retention_days,
        )?
        .unwrap_or(dispatch_dag::DEFAULT_HIST_RETENTION_DAYS);

        let metrics_addr = args
            .metrics_addr
            .or(file.metrics_addr)
            .map(|value| parse_addr(&value).map_err(|reason| invalid("metrics-addr", reason)))
            .transpose()?;
        let log_format = match args.log_format {
            Some(value) => match value.trim().to_ascii_lowercase().as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                _ => {
                    return Err(invalid(
                        "log-format",
                        format!("`{value}` is not `text` or `json`"),
                    ))
                }
            },
            None => file.log_format.unwrap_or(LogFormat::Text),
        };

        let cloud = match args
            .cloud_url
            .or(file.cloud_url)
            .filter(|url| !url.trim().is_empty())
        {
            Some(url) => CloudTarget::Remote(http_url("cloud-url", &url)?),
            None => {
                let listen = args
                    .hub_listen
                    .or(file.hub_listen)
                    .unwrap_or_else(|| DEFAULT_HUB_LISTEN.to_owned());
                let github_api_url = args
                    .github_api_url
                    .or(file.github_api_url)
                    .unwrap_or_else(|| DEFAULT_GITHUB_API_URL.to_owned());
                CloudTarget::Embedded {
                    listen: parse_addr(&listen).map_err(|reason| invalid("hub-listen", reason))?,
                    storage: HubStorage {
                        retention: hub_days(
                            "hub-retention-days",
                            args.hub_retention_days,
                            file.hub_retention_days,
                        )?,
                        activation_expiry: hub_days(
                            "hub-activation-expiry-days",
                            args.hub_activation_expiry_days,
                            file.hub_activation_expiry_days,
                        )?,
                        job_log_cap: hub_job_log_cap(
                            args.hub_job_log_cap_mib,
                            file.hub_job_log_cap_mib,
                        )?,
                        metrics_token: args
                            .hub_metrics_token
                            .or(file.hub_metrics_token)
                            .filter(|t| !t.is_empty()),
                        ui_token: args
                            .hub_ui_token
                            .or(file.hub_ui_token)
                            .filter(|t| !t.is_empty()),
                    },
                    github_api_url: http_url("github-api-url", &github_api_url)?,
                    github_token: args
                        .github_token
                        .or(file.github_token)
                        .filter(|t| !t.is_empty()),
                    github_app: match (
                        number("github-app-id", args.github_app_id, file.github_app_id)?,
                        args.github_app_key_file.or(file.github_app_key_file),
                    ) {
                        (Some(app_id), Some(private_key_file)) => Some(dispatch_hub::GithubApp {
                            app_id,
                            private_key_file,
                        }),
                        (None, None) => None,
                        (Some(_), None) => {
                            return Err(invalid(
                                "github-app-key-file",
                                "is needed with github-app-id",
                            ))
                        }
                        (None, Some(_)) => {
                            return Err(invalid(
                                "github-app-id",
                                "is needed with github-app-key-file",
                            ))
                        }
                    },
                    public_url: args
                        .public_url
                        .or(file.public_url)
                        .filter(|u| !u.trim().is_empty()),
                }
            }
        };

        let license_key = args
            .license_key
            .or(file.license_key)
            .filter(|key| !key.expose().trim().is_empty());
        let license_public_key = args
            .license_public_key
            .or(file.license_public_key)
            .map(|value| public_key(&value))
            .transpose()?;

        Ok(Settings {
            home,
            dags_dir,
            data_dir,
            log_dir,
            cloud,
            license_key,
            license_public_key,
            poll_interval,
            report_interval,
            long_poll,
            max_concurrent_runs,
            shutdown_grace,
            metrics_addr,
            log_format,
            hist_retention_days,
        })
    }
}

/// A day count of the embedded hub (default 30, at most [`dispatch_hub::config::MAX_DAYS`]).
fn hub_days(
    setting: &'static str,
    flag: Option<String>,
    file: Option<u64>,
) -> Result<Duration, ConfigError> {
    match number(setting, flag, file)? {
        None => Ok(dispatch_hub::config::days(30)),
        Some(n) if (1..=dispatch_hub::config::MAX_DAYS).contains(&n) => {
            Ok(dispatch_hub::config::days(n))
        }
        Some(n) => Err(invalid(
            setting,
            format!(
                "{n} is not between 1 and {} days",
                dispatch_hub::config::MAX_DAYS
            ),
        )),
    }
}

/// The embedded hub's job log cap in bytes, given in MiB (default 10, at most
/// [`dispatch_hub::config::MAX_JOB_LOG_CAP_MIB`]).
fn hub_job_log_cap(flag: Option<String>, file: Option<u64>) -> Result<u64, ConfigError> {
    let setting = "hub-job-log-cap-mib";
    let max = dispatch_hub::config::MAX_JOB_LOG_CAP_MIB;
    match number(setting, flag, file)? {
        None => Ok(dispatch_protocol::DEFAULT_JOB_LOG_CAP),
        Some(n) if (1..=max).contains(&n) => Ok(dispatch_hub::config::mib(n)),
        Some(n) => Err(invalid(
            setting,
            format!("{n} is not between 1 and {max} MiB"),
        )),
    }
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        reason: reason.into(),
    }
}

fn read_file_config(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::FileRead {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|err| ConfigError::FileParse {
        path: path.to_owned(),
        // toml's own text quotes the offending line, and this file may hold the license key:
        // position and reason only.
        message: dispatch_util::describe_parse_error(&text, err.message(), err.span()),
    })
}

fn number(
    setting: &'static str,
    flag: Option<String>,
    file: Option<u64>,
) -> Result<Option<u64>, ConfigError> {
    match flag {
        Some(value) => value.trim().parse::<u64>().map(Some).map_err(|_| {
            invalid(
                setting,
                format!("`{value}` is not a whole non-negative number"),
            )
        }),
        None => Ok(file),
    }
}

fn seconds(
    setting: &'static str,
    flag: Option<String>,
    file: Option<u64>,
    default: u64,
) -> Result<Duration, ConfigError> {
    Ok(Duration::from_secs(
        number(setting, flag, file)?.unwrap_or(default),
    ))
}

fn http_url(setting: &'static str, value: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(value.trim())
        .map_err(|err| invalid(setting, format!("`{value}` is not a URL ({err})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid(
            setting,
            format!("`{value}` must be an http:// or https:// URL with a host"),
        ));
    }
    Ok(url)
}

/// A PEM or base64 key given inline, else a path to a file holding one. The key itself is
/// public, but the error text still quotes only the start of a long value.
fn public_key(value: &str) -> Result<VerifyingKey, ConfigError> {
    let setting = "license-public-key";
    let inline_err = match dispatch_protocol::token::parse_public_key(value) {
        Ok(key) => return Ok(key),
        Err(err) => err,
    };
    let path = Path::new(value.trim());
    if value.trim_start().starts_with("-----BEGIN") || !path.is_file() {
        return Err(invalid(
            setting,
            format!("not an Ed25519 public key (PEM or base64 of 32 bytes) nor a readable file: {inline_err}"),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|err| {
        invalid(
            setting,
            format!("cannot read key file `{}`: {err}", path.display()),
        )
    })?;
    dispatch_protocol::token::parse_public_key(&text).map_err(|err| {
        invalid(
            setting,
            format!(
                "file `{}` holds no Ed25519 public key: {err}",
                path.display()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> StartArgs {
        StartArgs {
            home: Some(PathBuf::from("/nonexistent/home")),
            ..StartArgs::default()
        }
    }

    /// A home holding `config.toml` with `text`, and the arguments that name both.
    fn config_file(text: &str) -> (tempfile::TempDir, StartArgs) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(&file, text).unwrap();
        let args = StartArgs {
            home: Some(dir.path().to_owned()),
            config: Some(file),
            ..StartArgs::default()
        };
        (dir, args)
    }

    /// The error of resolving with a config file that holds `text`.
    fn file_error(text: &str) -> ConfigError {
        let (_dir, a) = config_file(text);
        Settings::resolve(a, None).unwrap_err()
    }

    fn setting_of(err: ConfigError) -> &'static str {
        match err {
            ConfigError::Invalid { setting, .. } => setting,
            other => panic!("expected an invalid setting, got {other}"),
        }
    }

    #[test]
    fn defaults_derive_from_home() {
        let s = Settings::resolve(args(), None).unwrap();
        assert_eq!(s.dags_dir, PathBuf::from("/nonexistent/home/dags"));
        assert_eq!(s.data_dir, PathBuf::from("/nonexistent/home/data"));
        assert_eq!(s.log_dir, PathBuf::from("/nonexistent/home/logs"));
        assert_eq!(s.poll_interval, Duration::from_secs(10));
        assert_eq!(s.report_interval, Duration::from_secs(10));
        assert_eq!(s.long_poll, Duration::from_secs(30));
        assert_eq!(s.log_format, LogFormat::Text);
        assert_eq!(s.hist_retention_days, 30);
        assert!(
            matches!(s.cloud, CloudTarget::Embedded { listen, .. } if listen.to_string() == DEFAULT_HUB_LISTEN)
        );
    }

    #[test]
    fn home_defaults_to_user_home() {
        let s = Settings::resolve(StartArgs::default(), Some(Path::new("/u/alice"))).unwrap();
        assert_eq!(s.home, PathBuf::from("/u/alice/.dispatch"));
    }

    #[test]
    fn bad_values_name_their_setting() {
        fn some<T: From<&'static str>>(value: &'static str) -> Option<T> {
            Some(value.into())
        }
        /// Sets one argument to a value it must refuse.
        type Edit = fn(&mut StartArgs);
        let cases: [(&str, Edit); 16] = [
            ("poll-interval", |a| a.poll_interval = some("ten")),
            ("poll-interval", |a| a.poll_interval = some("0")),
            ("report-interval", |a| a.report_interval = some("-1")),
            ("long-poll", |a| a.long_poll = some("61")),
            ("max-concurrent-runs", |a| a.max_concurrent_runs = some("0")),
            ("shutdown-grace", |a| a.shutdown_grace = some("1m")),
            ("cloud-url", |a| a.cloud_url = some("not a url")),
            ("cloud-url", |a| a.cloud_url = some("ftp://example.com")),
            ("license-public-key", |a| {
                a.license_public_key = some("bm90")
            }),
            ("metrics-addr", |a| a.metrics_addr = some("localhost")),
            ("log-format", |a| a.log_format = some("xml")),
            ("hub-listen", |a| a.hub_listen = some(":x")),
            ("hist-retention-days", |a| {
                a.hist_retention_days = some("-3")
            }),
            ("github-app-id", |a| a.github_app_id = some("one")),
            ("github-app-key-file", |a| a.github_app_id = some("7")),
            ("github-app-id", |a| a.github_app_key_file = some("app.pem")),
        ];
        for (setting, set) in cases {
            let mut a = args();
            set(&mut a);
            let err = Settings::resolve(a, None).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(setting), "{text}");
            assert_eq!(setting_of(err), setting, "{text}");
        }
    }

    #[test]
    fn embedded_hub_github_app_and_public_url() {
        let (_dir, a) = config_file(
            "github_app_id = 42\ngithub_app_key_file = \"app.pem\"\npublic_url = \"https://h.example\"\n",
        );
        let s = Settings::resolve(a, None).unwrap();
        let CloudTarget::Embedded {
            github_app,
            public_url,
            ..
        } = s.cloud
        else {
            panic!("embedded hub expected")
        };
        let app = github_app.unwrap();
        assert_eq!((app.app_id, app.private_key_file), (42, "app.pem".into()));
        assert_eq!(public_url.as_deref(), Some("https://h.example"));
    }

    #[test]
    fn embedded_hub_storage_settings() {
        let storage = |s: Settings| match s.cloud {
            CloudTarget::Embedded { storage, .. } => storage,
            CloudTarget::Remote(_) => panic!("embedded hub expected"),
        };
        let day = Duration::from_secs(24 * 3600);
        let defaults = storage(Settings::resolve(args(), None).unwrap());
        assert_eq!(defaults.retention, 30 * day);
        assert_eq!(defaults.activation_expiry, 30 * day);
        assert!(defaults.metrics_token.is_none());
        assert!(defaults.ui_token.is_none());
        assert_eq!(defaults.job_log_cap, dispatch_protocol::DEFAULT_JOB_LOG_CAP);

        let text = "hub_retention_days = 7\nhub_activation_expiry_days = 3\n\
                    hub_metrics_token = \"m-1\"\nhub_ui_token = \"u-1\"\n\
                    hub_job_log_cap_mib = 2\n";
        let (_dir, from_file) = config_file(text);
        let s = storage(Settings::resolve(from_file, None).unwrap());
        assert_eq!((s.retention, s.activation_expiry), (7 * day, 3 * day));
        assert_eq!(s.metrics_token.unwrap().expose(), "m-1");
        assert_eq!(s.ui_token.unwrap().expose(), "u-1");
        assert_eq!(s.job_log_cap, 2 * 1024 * 1024);
        let (_dir, mut flags) = config_file(text);
        flags.hub_retention_days = Some("90".into());
        flags.hub_job_log_cap_mib = Some("1024".into());
        let s = storage(Settings::resolve(flags, None).unwrap());
        assert_eq!((s.retention, s.job_log_cap), (90 * day, 1024 * 1024 * 1024));

        let with = |set: fn(&mut StartArgs)| {
            let mut a = args();
            set(&mut a);
            a
        };
        for (setting, a) in [
            (
                "hub-retention-days",
                with(|a| a.hub_retention_days = Some("0".into())),
            ),
            (
                "hub-activation-expiry-days",
                with(|a| a.hub_activation_expiry_days = Some("a month".into())),
            ),
            (
                "hub-job-log-cap-mib",
                with(|a| a.hub_job_log_cap_mib = Some("0".into())),
            ),
            (
                "hub-job-log-cap-mib",
                with(|a| a.hub_job_log_cap_mib = Some("1025".into())),
            ),
        ] {
            let err = Settings::resolve(a, None).unwrap_err();
            assert_eq!(setting_of(err), setting);
        }
    }

    #[test]
    fn flags_beat_file_beat_defaults() {
        let (_dir, mut a) = config_file(
            "poll_interval = 3\nreport_interval = 4\nlog_format = \"json\"\nhist_retention_days = 7\n",
        );
        a.poll_interval = Some("7".into());
        // The default `<home>/config.toml` is read when present.
        a.config = None;
        let s = Settings::resolve(a, None).unwrap();
        assert_eq!(s.poll_interval, Duration::from_secs(7));
        assert_eq!(s.report_interval, Duration::from_secs(4));
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.long_poll, Duration::from_secs(30));
        assert_eq!(s.hist_retention_days, 7);
    }

    #[test]
    fn file_errors_name_the_file_and_key() {
        let text = file_error("poll_intervall = 3\n").to_string();
        assert!(
            text.contains("config.toml") && text.contains("poll_intervall"),
            "{text}"
        );

        let text = file_error("poll_interval = \"abc\"\n").to_string();
        assert!(text.contains("poll_interval"), "{text}");

        let dir = tempfile::tempdir().unwrap();
        let a = StartArgs {
            config: Some(dir.path().join("missing.toml")),
            ..args()
        };
        let err = Settings::resolve(a, None).unwrap_err();
        assert!(matches!(err, ConfigError::FileRead { .. }), "{err}");
    }

    #[test]
    fn file_errors_never_print_a_secret() {
        // Unquoted (a TOML syntax error), a wrong type, and a valid secret beside a bad key: the
        // parser's own text would quote each line.
        for text in [
            "license_key = CANARY-7f3a9\n",
            "license_key = 7734519977\n",
            "github_token = \"CANARY-7f3a9\"\npoll_interval = CANARY-7f3a9\n",
            "license_key = \"CANARY-7f3a9\"\nbogus_key = 1\n",
        ] {
            let err = file_error(text);
            let shown = format!("{err} {err:?}");
            assert!(matches!(err, ConfigError::FileParse { .. }), "{shown}");
            assert!(
                !shown.contains("CANARY") && !shown.contains("7734519977"),
                "{shown}"
            );
            assert!(shown.contains("line "), "{shown}");
        }
    }

    #[test]
    fn license_key_never_in_debug() {
        let mut a = args();
        a.license_key = Some(Secret::new("lk_supersecret"));
        let s = Settings::resolve(a, None).unwrap();
        assert!(!format!("{s:?}").contains("supersecret"));
    }

    #[test]
    fn public_key_inline_or_from_file() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]).verifying_key();
        let b64 = dispatch_protocol::token::public_key_base64(&key);
        let mut a = args();
        a.license_public_key = Some(b64);
        assert_eq!(
            Settings::resolve(a, None).unwrap().license_public_key,
            Some(key)
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.pub");
        std::fs::write(&path, dispatch_protocol::token::public_key_pem(&key)).unwrap();
        let mut a = args();
        a.license_public_key = Some(path.display().to_string());
        assert_eq!(
            Settings::resolve(a, None).unwrap().license_public_key,
            Some(key)
        );
    }
}
