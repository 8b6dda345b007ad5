//! Reading the hub's TOML files (`hub.toml` and bindings files) into their serde shapes. Both
//! name the file when it cannot be read, and its line and column (never its text, which may hold
//! secrets) when it does not parse; each caller then validates the settings itself.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::HubError;

/// The file at `path`, parsed as `T`.
pub(crate) fn read<T: DeserializeOwned>(path: &Path) -> Result<T, HubError> {
    let text = std::fs::read_to_string(path).map_err(|source| HubError::ReadConfig {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| HubError::parse_config(path, &text, &e))
}
