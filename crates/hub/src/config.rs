//! The `hub.toml` file of the `hub` binary.
//!
//! ```toml
//! listen = "0.0.0.0:8780"            # default 127.0.0.1:8780
//! data_dir = "/var/lib/dispatch-hub" # default: "data" next to this file
//! webhook_secret = "..."             # or DISPATCH_HUB_WEBHOOK_SECRET
//! mention = "@dispatch"
//! lease_seconds = 60
//! token_ttl_seconds = 604800
//! bindings_file = "bindings.toml"    # relative to this file; added to inline [[binding]] tables
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
//!
//! [[binding]]
//! repository = "octo-org/octo-repo"
//! dag = "build"
//! trigger = "auto"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dispatch_protocol::Secret;
use serde::Deserialize;

use crate::bindings::{validate_bindings, Binding};
use crate::{load_bindings, GithubConfig, HubConfig, HubError, LicenseKey};

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
    #[serde(default)]
    license: Vec<LicenseKey>,
    github: Option<GithubFile>,
    #[serde(default)]
    binding: Vec<Binding>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GithubFile {
    api_url: Option<String>,
    token: Option<Secret>,
}

/// Reads `hub.toml`. Relative paths are resolved against the file's directory. The webhook secret
/// may be left out here and supplied by the binary (it is checked by [`crate::Hub::start`]).
pub fn load_hub_config(path: &Path) -> Result<HubConfig, HubError> {
    let text = std::fs::read_to_string(path).map_err(|source| HubError::ReadConfig {
        path: path.to_owned(),
        source,
    })?;
    let file: HubFile = toml::from_str(&text).map_err(|source| HubError::ParseConfig {
        path: path.to_owned(),
        source,
    })?;
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
        lease: file
            .lease_seconds
            .map_or(defaults.lease, Duration::from_secs),
        mention: file.mention.unwrap_or(defaults.mention),
        token_ttl: file
            .token_ttl_seconds
            .map_or(defaults.token_ttl, Duration::from_secs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let HubError::ParseConfig { source, .. } = err else {
            panic!("parse error expected")
        };
        assert!(source.to_string().contains("lisen"));
    }
}
