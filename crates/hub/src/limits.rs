//! What the hub's HTTP server accepts from the network: [`ServeLimits`] (timeouts, the connection
//! cap, the webhook body budget), the per-route body caps, the scheduler API's own budget and the
//! minimum rate a body must arrive at. `docs/security.md` ("Hostile traffic") says
//! why each exists and how to set it.

use std::time::Duration;

use serde::Deserialize;

use crate::error::HubError;

/// GitHub's own cap on a webhook payload.
pub const WEBHOOK_BODY_LIMIT: usize = 25 * 1024 * 1024;

/// Cap on the body of a scheduler API call (activate, heartbeat, pull, accept, finish). The largest
/// is a finish, whose summary GitHub cuts at 65,536 characters; even escaped as `\uXXXX` that is
/// well under this.
pub const API_BODY_LIMIT: usize = 1024 * 1024;

/// Bytes of scheduler API bodies the hub holds at once, apart from [`ServeLimits::body_budget`]
/// (which webhooks use), so that neither group can crowd out the other: sixteen bodies of
/// [`API_BODY_LIMIT`], or tens of thousands of pulls.
pub const API_BODY_BUDGET: usize = 16 * 1024 * 1024;

/// Bytes a request body must bring in each [`BODY_RATE_WINDOW`], counted from when the hub starts
/// reading it, unless it ends first: 4 KiB a second. A body that stalls is cut (408) after one
/// window instead of holding its share of the budget for the whole body timeout.
pub const MIN_BODY_BYTES_PER_WINDOW: usize = 5 * 4 * 1024;

/// See [`MIN_BODY_BYTES_PER_WINDOW`].
pub const BODY_RATE_WINDOW: Duration = Duration::from_secs(5);

/// The header timeout may not be set above this.
pub const MAX_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// The body timeout may not be set above this: a slow sender holds its share of the body budget
/// for as long as it is allowed to send.
pub const MAX_BODY_TIMEOUT: Duration = Duration::from_secs(600);

const MIB: usize = 1024 * 1024;

/// Limits on connections and request bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// Time a client has to send a request's headers, counted from when the connection opens and
    /// again from when the previous answer was written: it is also how long a keep-alive
    /// connection may sit idle, and how long an answer may wait for a client that does not read
    /// it. Default 10 s, at most 30 s.
    pub header_timeout: Duration,
    /// Time a client has to send a whole request body, counted from when the hub starts reading
    /// it. Default 30 s, at most 10 minutes.
    pub body_timeout: Duration,
    /// Open connections at most. When they are all taken, a new connection is answered 503 and
    /// closed at once. Default 4,096; lowered at start when the process's file limit is smaller.
    pub max_connections: usize,
    /// Bytes of webhook bodies the hub holds at once, over all connections, counted as they
    /// arrive. A delivery that would go beyond it is answered 503 with `Retry-After: 1`. Default
    /// 64 MiB, at least [`WEBHOOK_BODY_LIMIT`] so that the largest delivery GitHub sends can be
    /// taken. The scheduler API has its own budget, [`API_BODY_BUDGET`].
    pub body_budget: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 4096,
            body_budget: 64 * MIB,
        }
    }
}

impl ServeLimits {
    /// Checks the ranges; `origin` names where the settings came from.
    pub(crate) fn validate(&self, origin: &str) -> Result<(), HubError> {
        let timeouts = [
            (
                "limits.header_timeout",
                self.header_timeout,
                MAX_HEADER_TIMEOUT,
            ),
            ("limits.body_timeout", self.body_timeout, MAX_BODY_TIMEOUT),
        ];
        for (setting, timeout, max) in timeouts {
            if timeout.is_zero() || timeout > max {
                return Err(HubError::setting(
                    origin,
                    setting,
                    format!("must be positive and at most {} seconds", max.as_secs()),
                ));
            }
        }
        if self.max_connections == 0 {
            return Err(HubError::setting(
                origin,
                "limits.max_connections",
                "must be at least 1",
            ));
        }
        if self.body_budget < WEBHOOK_BODY_LIMIT {
            return Err(HubError::setting(
                origin,
                "limits.body_budget",
                format!(
                    "must be at least {} MiB, the largest webhook GitHub sends",
                    WEBHOOK_BODY_LIMIT / MIB
                ),
            ));
        }
        Ok(())
    }
}

/// The `[limits]` table of `hub.toml`; absent keys keep their defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsFile {
    header_timeout_seconds: Option<u64>,
    body_timeout_seconds: Option<u64>,
    max_connections: Option<usize>,
    body_budget_mib: Option<usize>,
}

impl LimitsFile {
    pub(crate) fn into_limits(self) -> ServeLimits {
        let d = ServeLimits::default();
        ServeLimits {
            header_timeout: self
                .header_timeout_seconds
                .map_or(d.header_timeout, Duration::from_secs),
            body_timeout: self
                .body_timeout_seconds
                .map_or(d.body_timeout, Duration::from_secs),
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            body_budget: self
                .body_budget_mib
                .map_or(d.body_budget, |m| m.saturating_mul(MIB)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_file_keys_override_them() {
        ServeLimits::default().validate("test").unwrap();
        let file: LimitsFile = toml::from_str(
            "header_timeout_seconds = 5\nbody_timeout_seconds = 7\nmax_connections = 9\nbody_budget_mib = 100\n",
        )
        .unwrap();
        assert_eq!(
            file.into_limits(),
            ServeLimits {
                header_timeout: Duration::from_secs(5),
                body_timeout: Duration::from_secs(7),
                max_connections: 9,
                body_budget: 100 * MIB,
            }
        );
        assert_eq!(LimitsFile::default().into_limits(), ServeLimits::default());
        assert!(toml::from_str::<LimitsFile>("header_timeout = 5\n").is_err());
    }

    #[test]
    fn out_of_range_values_name_the_setting() {
        type Change = fn(&mut ServeLimits);
        let cases: [(Change, &str); 6] = [
            (
                |l| l.header_timeout = Duration::ZERO,
                "limits.header_timeout",
            ),
            (
                |l| l.header_timeout = Duration::from_secs(31),
                "limits.header_timeout",
            ),
            (|l| l.body_timeout = Duration::ZERO, "limits.body_timeout"),
            (
                |l| l.body_timeout = Duration::from_secs(601),
                "limits.body_timeout",
            ),
            (|l| l.max_connections = 0, "limits.max_connections"),
            (|l| l.body_budget = 24 * MIB, "limits.body_budget"),
        ];
        for (change, setting) in cases {
            let mut limits = ServeLimits::default();
            change(&mut limits);
            let err = limits.validate("hub.toml").unwrap_err();
            assert!(err.is_config());
            assert!(
                err.to_string().contains(&format!("`{setting}`")),
                "{err} should name {setting}"
            );
        }
    }
}
