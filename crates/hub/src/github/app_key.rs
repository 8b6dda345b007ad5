//! The GitHub App's private key and the short-lived RS256 token (a JWT) it signs. GitHub accepts
//! that token only to manage the App itself, here: to exchange it for installation tokens.

use std::path::Path;

use dispatch_protocol::Secret;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use super::GithubError;

/// GitHub refuses app tokens that live longer than 10 minutes; 9 leave room for a clock that runs
/// a little ahead of GitHub's.
pub(crate) const APP_TOKEN_LIFETIME_SECS: i64 = 9 * 60;

/// Issued this far in the past, as GitHub advises, against a clock that runs a little behind.
pub(crate) const APP_TOKEN_BACKDATE_SECS: i64 = 60;

/// The App's id and private key. Shows neither the key nor any token it signs.
#[derive(Clone)]
pub(crate) struct AppKey {
    app_id: u64,
    key: EncodingKey,
}

impl std::fmt::Debug for AppKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppKey")
            .field("app_id", &self.app_id)
            .field("key", &"<redacted>")
            .finish()
    }
}

#[derive(Serialize)]
struct AppClaims {
    iat: i64,
    exp: i64,
    iss: String,
}

impl AppKey {
    /// Reads the PEM private key GitHub handed out for the App (PKCS#1; PKCS#8 works too).
    pub fn load(app_id: u64, path: &Path) -> Result<AppKey, GithubError> {
        let pem = std::fs::read(path).map_err(|source| GithubError::ReadKey {
            path: path.to_owned(),
            source,
        })?;
        Self::from_pem(app_id, &pem).ok_or_else(|| GithubError::KeyFormat {
            path: path.to_owned(),
        })
    }

    /// The key from PEM text; `None` when it holds no RSA private key.
    pub fn from_pem(app_id: u64, pem: &[u8]) -> Option<AppKey> {
        let key = EncodingKey::from_rsa_pem(pem).ok()?;
        let app = AppKey { app_id, key };
        // `from_rsa_pem` accepts some PEM it cannot sign with (a PKCS#8 wrapper of another key
        // type, say); one signature now turns that into a config error at start instead of a
        // failure at the first report.
        app.token(0).ok()?;
        Some(app)
    }

    /// The App's id (`iss` of its tokens).
    #[cfg(test)]
    pub fn app_id(&self) -> u64 {
        self.app_id
    }

    /// An app token for `now_secs` (Unix seconds): issued a minute in the past, expiring within
    /// ten minutes.
    pub fn token(&self, now_secs: i64) -> Result<Secret, GithubError> {
        let claims = AppClaims {
            iat: now_secs - APP_TOKEN_BACKDATE_SECS,
            exp: now_secs + APP_TOKEN_LIFETIME_SECS,
            iss: self.app_id.to_string(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .map(Secret::new)
            .map_err(GithubError::Sign)
    }
}

/// A test-only key (`openssl genrsa -traditional 2048`, made for these tests; never used elsewhere).
#[cfg(test)]
pub(crate) const TEST_KEY: &str = include_str!("../../tests/fixtures/github-app.test-only.pem");

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    const TEST_PUBLIC_KEY: &str = include_str!("../../tests/fixtures/github-app.test-only.pub.pem");

    #[derive(serde::Deserialize)]
    struct Seen {
        iat: i64,
        exp: i64,
        iss: String,
    }

    #[test]
    fn token_is_rs256_with_iss_iat_exp() {
        let key = AppKey::from_pem(4242, TEST_KEY.as_bytes()).unwrap();
        let now = 1_700_000_000;
        let token = key.token(now).unwrap();
        let header = jsonwebtoken::decode_header(token.expose()).unwrap();
        assert_eq!(header.alg, Algorithm::RS256);
        let mut validation = Validation::new(Algorithm::RS256);
        validation.validate_exp = false;
        validation.set_issuer(&["4242"]);
        validation.set_required_spec_claims(&["iss", "exp"]);
        let decoding = DecodingKey::from_rsa_pem(TEST_PUBLIC_KEY.as_bytes()).unwrap();
        let seen = jsonwebtoken::decode::<Seen>(token.expose(), &decoding, &validation)
            .unwrap()
            .claims;
        assert_eq!(seen.iss, "4242");
        assert_eq!(seen.iat, now - 60);
        assert!(seen.exp > now && seen.exp <= now + 600, "{}", seen.exp);
    }

    #[test]
    fn unreadable_or_wrong_key_files_name_the_file_not_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let err = AppKey::load(1, &missing).unwrap_err();
        assert!(matches!(err, GithubError::ReadKey { .. }));
        assert!(err.to_string().contains("nope.pem"), "{err}");

        let bad = dir.path().join("bad.pem");
        std::fs::write(
            &bad,
            "-----BEGIN RSA PRIVATE KEY-----\nc2VjcmV0LWNhbmFyeQ==\n-----END RSA PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = AppKey::load(1, &bad).unwrap_err();
        let text = dispatch_util::error_chain(&err);
        assert!(text.contains("bad.pem"), "{text}");
        assert!(!text.contains("c2VjcmV0"), "{text}");

        let good = dir.path().join("app.pem");
        std::fs::write(&good, TEST_KEY).unwrap();
        let key = AppKey::load(7, &good).unwrap();
        assert_eq!(key.app_id(), 7);
        assert!(!format!("{key:?}").contains("MII"), "{key:?}");
    }
}
