//! Part of the `hub` binary (not of the library): `hub servers list|revoke`, and the `hub serve`
//! flags of the stored-data settings (retention, activation expiry, job log cap, metrics token,
//! store URL).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use dispatch_hub::config::{days, load_hub_config, mib};
use dispatch_hub::{HubConfig, HubError, ServerInfo};
use dispatch_protocol::Secret;

/// `hub serve` overrides of `retention_days`, `activation_expiry_days`, `job_log_cap_mib`,
/// `metrics_token` and `store_url`.
#[derive(Args)]
pub(crate) struct StoreFlags {
    /// Days finished jobs (with their payloads) are kept (overrides `retention_days`).
    #[arg(long, value_name = "DAYS", env = "DISPATCH_HUB_RETENTION_DAYS")]
    retention_days: Option<u64>,
    /// Days an activation lasts without a pull or heartbeat (overrides `activation_expiry_days`).
    #[arg(long, value_name = "DAYS", env = "DISPATCH_HUB_ACTIVATION_EXPIRY_DAYS")]
    activation_expiry_days: Option<u64>,
    /// MiB of step logs kept per job, 1 to 1024; past it a job's log is cut (overrides
    /// `job_log_cap_mib`) [default: 10].
    #[arg(long, value_name = "MIB", env = "DISPATCH_HUB_JOB_LOG_CAP_MIB")]
    job_log_cap_mib: Option<u64>,
    /// Bearer token `/metrics` then requires (overrides `metrics_token`).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "DISPATCH_HUB_METRICS_TOKEN",
        hide_env_values = true
    )]
    metrics_token: Option<String>,
    #[command(flatten)]
    store_url: StoreUrl,
}

/// `--store-url`, shared by `hub serve` and the commands that open the store.
#[derive(Args)]
pub(crate) struct StoreUrl {
    /// The store in PostgreSQL, `postgres://user@host/database`, for several replicas
    /// (overrides `store_url`; unset: SQLite in the data directory).
    #[arg(
        long,
        value_name = "URL",
        env = "DISPATCH_HUB_STORE_URL",
        hide_env_values = true
    )]
    store_url: Option<String>,
}

impl StoreUrl {
    /// Sets `cfg.store_url` when the flag was given.
    fn apply(self, cfg: &mut HubConfig) -> Result<(), HubError> {
        if let Some(url) = self.store_url.filter(|u| !u.is_empty()) {
            dispatch_hub::check_store_url(&url)?;
            cfg.store_url = Some(Secret::new(url));
        }
        Ok(())
    }
}

impl StoreFlags {
    pub(crate) fn apply(self, cfg: &mut HubConfig) -> Result<(), HubError> {
        self.store_url.apply(cfg)?;
        if let Some(n) = self.retention_days {
            cfg.retention = days(n);
        }
        if let Some(n) = self.activation_expiry_days {
            cfg.activation_expiry = days(n);
        }
        if let Some(n) = self.job_log_cap_mib {
            cfg.job_log_cap = mib(n);
        }
        if let Some(token) = self.metrics_token.filter(|t| !t.is_empty()) {
            cfg.metrics_token = Some(Secret::new(token));
        }
        Ok(())
    }
}

/// Where the hub's store is: `--data-dir`, or the `data_dir` of `--config`.
#[derive(Args)]
pub(crate) struct StoreLocation {
    /// hub.toml of the hub (its `data_dir` and `activation_expiry_days` are used).
    #[arg(long, env = "DISPATCH_HUB_CONFIG")]
    config: Option<PathBuf>,
    /// The hub's data directory (overrides the config's).
    #[arg(long, env = "DISPATCH_HUB_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    store_url: StoreUrl,
}

impl StoreLocation {
    /// The settings that say where the store is (`data_dir`, `store_url`) and the activation
    /// expiry in force there.
    pub(crate) fn resolve(self) -> Result<HubConfig, HubError> {
        let mut cfg = match &self.config {
            Some(path) => load_hub_config(path)?,
            None => HubConfig::default(),
        };
        self.store_url.apply(&mut cfg)?;
        match (self.data_dir, &self.config) {
            (Some(dir), _) => cfg.data_dir = dir,
            (None, Some(_)) => {}
            (None, None) if cfg.store_url.is_some() => {}
            (None, None) => {
                return Err(HubError::InvalidSetting {
                    origin: "the command line".into(),
                    setting: "data-dir".into(),
                    reason:
                        "give `--data-dir`, `--store-url` or `--config` (or DISPATCH_HUB_DATA_DIR)"
                            .into(),
                })
            }
        }
        Ok(cfg)
    }
}

/// The servers that activated licenses on this hub. Both work while the hub runs.
#[derive(Subcommand)]
pub(crate) enum ServersCommand {
    /// One line per activation: server id, machine, license, activated, last seen, state.
    List {
        #[command(flatten)]
        store: StoreLocation,
        /// Days without a pull or heartbeat after which an activation counts as expired
        /// (overrides the config's `activation_expiry_days`).
        #[arg(long, value_name = "DAYS", env = "DISPATCH_HUB_ACTIVATION_EXPIRY_DAYS")]
        activation_expiry_days: Option<u64>,
    },
    /// Revoke every activation of a server: its next call is refused (heartbeat 410, dispatch
    /// calls 401). A machine that still holds a license key can activate again; to keep it out,
    /// change that license's key.
    Revoke {
        /// The server id (a UUID, as `hub servers list` shows it).
        server_id: String,
        #[command(flatten)]
        store: StoreLocation,
    },
}

pub(crate) fn run(command: ServersCommand) -> anyhow::Result<()> {
    match command {
        ServersCommand::List {
            store,
            activation_expiry_days,
        } => {
            let cfg = store.resolve()?;
            let expiry = activation_expiry_days.map_or(cfg.activation_expiry, days);
            let servers = dispatch_hub::list_servers(&cfg)?;
            let now = i64::try_from(dispatch_util::now_ms()).unwrap_or(i64::MAX);
            print!("{}", table(&servers, now, expiry));
            Ok(())
        }
        ServersCommand::Revoke { server_id, store } => {
            let cfg = store.resolve()?;
            let revoked = dispatch_hub::revoke_server(&cfg, &server_id)?;
            if revoked == 0 {
                println!("server {server_id} was already revoked");
            } else {
                println!("server {server_id} revoked ({revoked} activation(s)); its next call is refused");
            }
            Ok(())
        }
    }
}

/// The list as aligned columns. Machine names come from the servers: control characters are
/// shown escaped so they cannot move the cursor or colour the terminal.
fn table(servers: &[ServerInfo], now_ms: i64, expiry: std::time::Duration) -> String {
    let expiry_ms = i64::try_from(expiry.as_millis()).unwrap_or(i64::MAX);
    let mut rows = vec![[
        "SERVER ID".to_owned(),
        "MACHINE".to_owned(),
        "LICENSE".to_owned(),
        "ACTIVATED".to_owned(),
        "LAST SEEN".to_owned(),
        "STATE".to_owned(),
    ]];
    for s in servers {
        let state = match s.revoked_ms {
            Some(at) => format!("revoked {}", utc(at)),
            None if s.last_seen_ms <= now_ms.saturating_sub(expiry_ms) => "expired".to_owned(),
            None => "active".to_owned(),
        };
        rows.push([
            s.server_id.clone(),
            printable(&s.machine_name),
            printable(&s.license_id),
            utc(s.activated_ms),
            utc(s.last_seen_ms),
            state,
        ]);
    }
    let mut widths = [0; 6];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `text` with control characters escaped (`\n`, `\u{1b}`), everything else as is.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DD HH:MM:SSZ`: GitHub's form with a space for the
/// `T`, which reads more easily in a table.
fn utc(ms: i64) -> String {
    dispatch_hub::github::time::format_utc(ms).replacen('T', " ", 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00Z");
        assert_eq!(utc(1_700_000_000_123), "2023-11-14 22:13:20Z");
    }

    #[test]
    fn the_table_escapes_machine_names_and_shows_states() {
        const DAY: i64 = 86_400_000;
        let server = |id: &str, machine: &str, seen: i64, revoked: Option<i64>| ServerInfo {
            server_id: id.into(),
            machine_name: machine.into(),
            license_id: "lic".into(),
            activated_ms: 0,
            last_seen_ms: seen,
            revoked_ms: revoked,
        };
        let now = 100 * DAY;
        let text = table(
            &[
                server("a", "box\n\u{1b}[31mred", now, None),
                server("b", "old", now - 31 * DAY, None),
                server("c", "gone", now, Some(now)),
            ],
            now,
            std::time::Duration::from_secs(30 * 86_400),
        );
        assert!(
            !text.contains('\u{1b}') && text.lines().count() == 4,
            "{text}"
        );
        assert!(text.contains("box\\n\\u{1b}[31mred"), "{text}");
        let states: Vec<&str> = text
            .lines()
            .skip(1)
            .map(|l| l.split("  ").last().unwrap().trim())
            .collect();
        assert_eq!(states[0], "active");
        assert_eq!(states[1], "expired");
        assert!(states[2].starts_with("revoked 1970-04-11"), "{text}");
    }
}
