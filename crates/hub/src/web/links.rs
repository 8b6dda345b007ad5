//! Links to GitHub and the way times read on the pages. A link is built only from parts checked
//! first (a repository's `owner/name`, a hex SHA, a login, a number), so text from a payload can
//! never become a `javascript:` or off-site link; anything else is shown as plain text.

use std::time::{Duration, UNIX_EPOCH};

/// GitHub's web address for an API address: `https://api.github.com` → `https://github.com`, a
/// GitHub Enterprise Server's `https://host/api/v3` → `https://host`. Anything else (a test
/// stand-in) is used as it is.
pub(crate) fn github_web(api_url: &str) -> String {
    let api = api_url.trim_end_matches('/');
    if let Some(host) = api.strip_prefix("https://api.") {
        return format!("https://{host}");
    }
    api.strip_suffix("/api/v3").unwrap_or(api).to_owned()
}

/// `owner/name` as GitHub allows them: letters, digits, `-` in the owner; also `.` and `_` in
/// the name, which is neither `.` nor `..`.
pub(crate) fn is_repository(full_name: &str) -> bool {
    let Some((owner, name)) = full_name.split_once('/') else {
        return false;
    };
    let owner_ok = (1..=39).contains(&owner.len())
        && owner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let name_ok = (1..=100).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    owner_ok && name_ok
}

/// A full commit SHA (SHA-1 or SHA-256), lowercase hex.
pub(crate) fn is_sha(sha: &str) -> bool {
    matches!(sha.len(), 40 | 64) && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A GitHub login (apps end in `[bot]`).
pub(crate) fn is_login(login: &str) -> bool {
    let name = login.strip_suffix("[bot]").unwrap_or(login);
    (1..=39).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Links into one repository on GitHub, or none when the repository's name does not pass
/// [`is_repository`].
pub(crate) struct Repo {
    base: String,
}

impl Repo {
    pub(crate) fn new(github_web: &str, full_name: &str) -> Option<Repo> {
        is_repository(full_name).then(|| Repo {
            base: format!("{github_web}/{full_name}"),
        })
    }

    pub(crate) fn home(&self) -> &str {
        &self.base
    }

    pub(crate) fn commit(&self, sha: &str) -> Option<String> {
        is_sha(sha).then(|| format!("{}/commit/{sha}", self.base))
    }

    pub(crate) fn pull(&self, number: i64) -> Option<String> {
        (number > 0).then(|| format!("{}/pull/{number}", self.base))
    }

    pub(crate) fn issue(&self, number: i64) -> Option<String> {
        (number > 0).then(|| format!("{}/issues/{number}", self.base))
    }
}

/// A user's profile, when `login` is one.
pub(crate) fn user(github_web: &str, login: &str) -> Option<String> {
    is_login(login).then(|| format!("{github_web}/{}", login.trim_end_matches("[bot]")))
}

/// A stored time (ms since the Unix epoch) as an HTTP date in UTC; `-` for none.
pub(crate) fn time(ms: i64) -> String {
    match u64::try_from(ms) {
        // The date format stops at the end of year 9999 (and panics past it).
        Ok(ms) if ms > 0 && ms < TIME_END_MS => {
            httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(ms))
        }
        _ => "-".to_owned(),
    }
}

/// 10000-01-01T00:00:00Z in ms since the Unix epoch: the first time [`time`] cannot show.
const TIME_END_MS: u64 = 253_402_300_800_000;

/// A duration in ms, to the unit that reads best: `850 ms`, `12.4 s`, `3 min 05 s`, `2 h 01 min`.
pub(crate) fn duration(ms: i64) -> String {
    if ms < 0 {
        return "-".to_owned();
    }
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{} min {:02} s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{} h {:02} min", ms / 3_600_000, ms / 60_000 % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_web_address_from_the_api_address() {
        assert_eq!(github_web("https://api.github.com"), "https://github.com");
        assert_eq!(github_web("https://ghe.corp/api/v3/"), "https://ghe.corp");
        assert_eq!(github_web("http://127.0.0.1:9/"), "http://127.0.0.1:9");
    }

    #[test]
    fn only_checked_parts_make_links() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let repo = Repo::new("https://github.com", "octo-org/octo.repo_1").unwrap();
        assert_eq!(repo.home(), "https://github.com/octo-org/octo.repo_1");
        assert_eq!(
            repo.commit(sha).unwrap(),
            format!("https://github.com/octo-org/octo.repo_1/commit/{sha}")
        );
        assert_eq!(
            repo.pull(7).unwrap(),
            "https://github.com/octo-org/octo.repo_1/pull/7"
        );
        assert_eq!(repo.issue(0), None);
        for bad in [
            "javascript:alert(1)//x",
            "a/b/c",
            "o/..",
            "o/",
            "/r",
            "o/r?x=1",
            "<o>/r",
            "o/r\"onmouseover=",
            "o r/x",
        ] {
            assert!(Repo::new("https://github.com", bad).is_none(), "{bad}");
        }
        for bad in [
            "",
            "ABCDEF0123456789abcdef0123456789abcdef01",
            "123",
            "javascript:1",
        ] {
            assert!(repo.commit(bad).is_none(), "{bad}");
        }
        assert_eq!(
            user("https://github.com", "octocat").unwrap(),
            "https://github.com/octocat"
        );
        assert_eq!(
            user("https://github.com", "dependabot[bot]").unwrap(),
            "https://github.com/dependabot"
        );
        assert!(user("https://github.com", "a/b").is_none());
        assert!(user("https://github.com", "").is_none());
    }

    #[test]
    fn times_and_durations_read_well() {
        assert_eq!(time(0), "-");
        assert_eq!(time(1_000), "Thu, 01 Jan 1970 00:00:01 GMT");
        assert_eq!(time(253_402_300_799_000), "Fri, 31 Dec 9999 23:59:59 GMT");
        assert_eq!(time(253_402_300_800_000), "-");
        assert_eq!(time(i64::MAX), "-");
        assert_eq!(duration(-1), "-");
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(12_400), "12.4 s");
        assert_eq!(duration(185_000), "3 min 05 s");
        assert_eq!(duration(7_260_000), "2 h 01 min");
    }
}
