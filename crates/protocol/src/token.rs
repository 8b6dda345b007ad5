//! License tokens: compact JWTs signed with EdDSA (Ed25519); see `docs/protocol.md` (License tokens).
//!
//! The hub signs with [`sign`]; a scheduler checks with [`verify`] (strict, with the `exp` grace
//! period) or, when no public key is configured, reads the claims with [`decode_unverified`].
//! Errors never carry the token text: a token is a secret.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ed25519_dalek::pkcs8::{DecodePublicKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Grace period after `exp` when the token does not name one (`grace_days`).
pub const DEFAULT_GRACE_DAYS: u32 = 14;

/// Clock skew tolerated on `nbf`, in seconds.
pub const NBF_LEEWAY_SECS: i64 = 60;

/// The claims of a license token. Unknown claims are ignored when decoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// License id.
    pub jti: String,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Not before, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Issued at, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// Plan name.
    #[serde(default)]
    pub plan: String,
    /// Enabled features.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    /// Days a token stays usable after `exp` (default [`DEFAULT_GRACE_DAYS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_days: Option<u32>,
}

impl Claims {
    /// The grace period in days: `grace_days` or the default.
    pub fn effective_grace_days(&self) -> u32 {
        self.grace_days.unwrap_or(DEFAULT_GRACE_DAYS)
    }

    /// The last Unix second (exclusive) at which the token is still usable within grace.
    pub fn grace_end(&self) -> i64 {
        self.exp
            .saturating_add(i64::from(self.effective_grace_days()).saturating_mul(86_400))
    }
}

/// A token that passed [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Its claims.
    pub claims: Claims,
    /// True when `exp` has passed but the grace period has not: usable, with a warning.
    pub expired_in_grace: bool,
}

/// Why a token or public key was refused. Never contains the token itself.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Not three dot-separated base64url parts.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// A part is not valid base64url.
    #[error("malformed token: invalid base64url in {part}")]
    Base64 {
        /// `header`, `claims` or `signature`.
        part: &'static str,
        /// Decoder error.
        #[source]
        source: base64::DecodeError,
    },
    /// The header or claims are not the expected JSON.
    #[error("malformed token: invalid json in {part}")]
    Json {
        /// `header` or `claims`.
        part: &'static str,
        /// Parser error.
        #[source]
        source: serde_json::Error,
    },
    /// The header names an algorithm other than EdDSA.
    #[error("unsupported token algorithm `{0}` (want EdDSA)")]
    Algorithm(String),
    /// The signature does not match the public key.
    #[error("token signature is invalid")]
    Signature,
    /// `nbf` is in the future.
    #[error("token is not valid before {nbf} (now {now})")]
    NotYetValid {
        /// The token's `nbf`.
        nbf: i64,
        /// The clock used.
        now: i64,
    },
    /// `exp` and the grace period have passed.
    #[error("token expired at {exp} and its {grace_days}-day grace period has passed (now {now})")]
    Expired {
        /// The token's `exp`.
        exp: i64,
        /// Grace period applied.
        grace_days: u32,
        /// The clock used.
        now: i64,
    },
    /// The public key text is neither an SPKI PEM nor base64 of 32 bytes, or is not a valid point.
    #[error("invalid ed25519 public key: {0}")]
    PublicKey(String),
    /// The claims could not be written as JSON (a claim value JSON cannot hold).
    #[error("cannot encode token {part}")]
    Encode {
        /// `header` or `claims`.
        part: &'static str,
        /// Encoder error.
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
}

/// Signs `claims` as a compact JWT with header `{"alg":"EdDSA","typ":"JWT"}`. Fails only when the
/// claims cannot be encoded as JSON; it never signs anything but the claims given.
pub fn sign(claims: &Claims, key: &SigningKey) -> Result<String, TokenError> {
    let header = Header {
        alg: "EdDSA".to_owned(),
        typ: Some("JWT".to_owned()),
    };
    let header_json = serde_json::to_vec(&header).map_err(|source| TokenError::Encode {
        part: "header",
        source,
    })?;
    let claims_json = serde_json::to_vec(claims).map_err(|source| TokenError::Encode {
        part: "claims",
        source,
    })?;
    let mut out = URL_SAFE_NO_PAD.encode(header_json);
    out.push('.');
    out.push_str(&URL_SAFE_NO_PAD.encode(claims_json));
    let signature = key.sign(out.as_bytes());
    out.push('.');
    out.push_str(&URL_SAFE_NO_PAD.encode(signature.to_bytes()));
    Ok(out)
}

struct Parts<'a> {
    signing_input: &'a str,
    header: Header,
    claims: Claims,
    signature: &'a str,
}

/// The JSON value of the token's part `part` (`header` or `claims`), base64url `text`.
fn decode_part<T: serde::de::DeserializeOwned>(
    text: &str,
    part: &'static str,
) -> Result<T, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|source| TokenError::Base64 { part, source })?;
    serde_json::from_slice(&bytes).map_err(|source| TokenError::Json { part, source })
}

fn split(token: &str) -> Result<Parts<'_>, TokenError> {
    let token = token.trim();
    let mut it = token.split('.');
    let (Some(h), Some(c), Some(s), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err(TokenError::Malformed("expected three dot-separated parts"));
    };
    if h.is_empty() || c.is_empty() {
        return Err(TokenError::Malformed("empty header or claims"));
    }
    let header: Header = decode_part(h, "header")?;
    let claims: Claims = decode_part(c, "claims")?;
    if claims.jti.is_empty() {
        return Err(TokenError::Malformed("empty jti claim"));
    }
    Ok(Parts {
        signing_input: &token[..h.len() + 1 + c.len()],
        header,
        claims,
        signature: s,
    })
}

/// Reads the claims without checking the signature or the times. Only for setups with no
/// public key configured.
pub fn decode_unverified(token: &str) -> Result<Claims, TokenError> {
    split(token).map(|p| p.claims)
}

/// Verifies the token strictly: algorithm EdDSA, a valid signature, `nbf <= now` (with
/// [`NBF_LEEWAY_SECS`] skew), and `exp > now` — or, when only `exp` fails, `now` still inside
/// the grace period, reported as [`Verified::expired_in_grace`].
pub fn verify(token: &str, key: &VerifyingKey, now_unix: i64) -> Result<Verified, TokenError> {
    let parts = split(token)?;
    if parts.header.alg != "EdDSA" {
        // Only a short, sanitized name: the header is attacker-chosen text headed for logs.
        let alg: String = parts
            .header
            .alg
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(16)
            .collect();
        return Err(TokenError::Algorithm(alg));
    }
    let sig_bytes =
        URL_SAFE_NO_PAD
            .decode(parts.signature)
            .map_err(|source| TokenError::Base64 {
                part: "signature",
                source,
            })?;
    let sig_array: [u8; 64] = sig_bytes
        .as_slice()
        .try_into()
        .map_err(|_| TokenError::Signature)?;
    let signature = Signature::from_bytes(&sig_array);
    key.verify_strict(parts.signing_input.as_bytes(), &signature)
        .map_err(|_| TokenError::Signature)?;
    let claims = parts.claims;
    let expired_in_grace = check_times(&claims, now_unix)?;
    Ok(Verified {
        claims,
        expired_in_grace,
    })
}

/// Checks `nbf` (with [`NBF_LEEWAY_SECS`] skew) and `exp` with its grace period against
/// `now_unix`. `Ok(true)` means expired but still within grace.
pub fn check_times(claims: &Claims, now_unix: i64) -> Result<bool, TokenError> {
    if let Some(nbf) = claims.nbf {
        if nbf > now_unix.saturating_add(NBF_LEEWAY_SECS) {
            return Err(TokenError::NotYetValid { nbf, now: now_unix });
        }
    }
    if now_unix < claims.exp {
        Ok(false)
    } else if now_unix < claims.grace_end() {
        Ok(true)
    } else {
        Err(TokenError::Expired {
            exp: claims.exp,
            grace_days: claims.effective_grace_days(),
            now: now_unix,
        })
    }
}

/// Parses an Ed25519 public key: PEM (SPKI, `-----BEGIN PUBLIC KEY-----`) or standard base64 of
/// the 32 raw bytes. Surrounding whitespace is ignored.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, TokenError> {
    let text = text.trim();
    if text.starts_with("-----BEGIN") {
        return VerifyingKey::from_public_key_pem(text)
            .map_err(|e| TokenError::PublicKey(format!("bad pem: {e}")));
    }
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let bytes = STANDARD
        .decode(&compact)
        .or_else(|_| URL_SAFE_NO_PAD.decode(compact.trim_end_matches('=')))
        .map_err(|e| TokenError::PublicKey(format!("not pem and not base64: {e}")))?;
    let raw: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
        TokenError::PublicKey(format!("expected 32 raw bytes, got {}", bytes.len()))
    })?;
    VerifyingKey::from_bytes(&raw).map_err(|e| TokenError::PublicKey(format!("bad point: {e}")))
}

/// The key as an SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
pub fn public_key_pem(key: &VerifyingKey) -> String {
    key.to_public_key_pem(Default::default())
        .unwrap_or_default()
}

/// The key as standard base64 of its 32 raw bytes.
pub fn public_key_base64(key: &VerifyingKey) -> String {
    STANDARD.encode(key.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::generate(&mut rand::rngs::OsRng)
    }

    fn claims(exp: i64) -> Claims {
        Claims {
            jti: "lic-1".into(),
            exp,
            nbf: Some(1_000),
            iat: Some(1_000),
            plan: "pro".into(),
            features: vec!["dispatch".into()],
            grace_days: None,
        }
    }

    #[test]
    fn sign_then_verify_round_trips() {
        let k = key();
        let c = claims(10_000);
        let t = sign(&c, &k).unwrap();
        let v = verify(&t, &k.verifying_key(), 2_000).unwrap();
        assert_eq!(v.claims, c);
        assert!(!v.expired_in_grace);
        assert_eq!(decode_unverified(&t).unwrap(), c);
        let header = URL_SAFE_NO_PAD
            .decode(t.split('.').next().unwrap())
            .unwrap();
        assert_eq!(header, br#"{"alg":"EdDSA","typ":"JWT"}"#);
        assert!(!t.contains('='));
    }

    #[test]
    fn optional_claims_are_omitted_and_unknown_ignored() {
        let c = Claims {
            jti: "x".into(),
            exp: 5,
            nbf: None,
            iat: None,
            plan: String::new(),
            features: vec![],
            grace_days: None,
        };
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v, serde_json::json!({"jti":"x","exp":5,"plan":""}));
        let parsed: Claims =
            serde_json::from_str(r#"{"jti":"x","exp":5,"sub":"who","aud":["a"]}"#).unwrap();
        assert_eq!(parsed, c);
    }

    #[test]
    fn rejects_other_key_tampering_and_alg() {
        let k = key();
        let other = key();
        let t = sign(&claims(10_000), &k).unwrap();
        assert!(matches!(
            verify(&t, &other.verifying_key(), 2_000),
            Err(TokenError::Signature)
        ));
        // Swap the claims for different ones while keeping the signature.
        let mut c2 = claims(10_000);
        c2.plan = "enterprise".into();
        let t2 = sign(&c2, &k).unwrap();
        let p1: Vec<&str> = t.split('.').collect();
        let p2: Vec<&str> = t2.split('.').collect();
        let forged = format!("{}.{}.{}", p1[0], p2[1], p1[2]);
        assert!(matches!(
            verify(&forged, &k.verifying_key(), 2_000),
            Err(TokenError::Signature)
        ));
        // alg none with an empty signature.
        let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let none_token = format!("{}.{}.", none_header, p1[1]);
        assert!(matches!(
            verify(&none_token, &k.verifying_key(), 2_000),
            Err(TokenError::Algorithm(a)) if a == "none"
        ));
        // HS256 header with the real EdDSA signature.
        let hs = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        assert!(matches!(
            verify(
                &format!("{}.{}.{}", hs, p1[1], p1[2]),
                &k.verifying_key(),
                2_000
            ),
            Err(TokenError::Algorithm(_))
        ));
    }

    #[test]
    fn times_nbf_exp_and_grace() {
        let k = key();
        let vk = k.verifying_key();
        let c = claims(10_000);
        let t = sign(&c, &k).unwrap();
        // nbf 1000: 940 is within skew, 939 is not.
        assert!(verify(&t, &vk, 1_000 - NBF_LEEWAY_SECS).is_ok());
        assert!(matches!(
            verify(&t, &vk, 1_000 - NBF_LEEWAY_SECS - 1),
            Err(TokenError::NotYetValid { nbf: 1_000, .. })
        ));
        // At exp: in grace.
        assert!(verify(&t, &vk, 10_000).unwrap().expired_in_grace);
        let last = 10_000 + 14 * 86_400 - 1;
        assert!(verify(&t, &vk, last).unwrap().expired_in_grace);
        assert!(matches!(
            verify(&t, &vk, last + 1),
            Err(TokenError::Expired { grace_days: 14, .. })
        ));
        let mut c0 = c.clone();
        c0.grace_days = Some(0);
        let t0 = sign(&c0, &k).unwrap();
        assert!(matches!(
            verify(&t0, &vk, 10_000),
            Err(TokenError::Expired { .. })
        ));
        assert!(!verify(&t0, &vk, 9_999).unwrap().expired_in_grace);
    }

    #[test]
    fn malformed_tokens_are_errors_without_token_text() {
        let k = key();
        let vk = k.verifying_key();
        let secretish = "SECRETPART";
        for bad in [
            String::new(),
            secretish.to_string(),
            format!("{secretish}.{secretish}"),
            format!("{secretish}.{secretish}.{secretish}.x"),
            format!("{secretish}!.{secretish}.sig"),
            format!(
                "{}.{}.sig",
                URL_SAFE_NO_PAD.encode(secretish),
                URL_SAFE_NO_PAD.encode(secretish)
            ),
        ] {
            let e = verify(&bad, &vk, 0).unwrap_err();
            let text = format!("{e} {e:?}");
            assert!(!text.contains(secretish), "{text}");
            assert!(decode_unverified(&bad).is_err());
        }
        // A good header/claims with a short signature.
        let t = sign(&claims(10_000), &k).unwrap();
        let head = &t[..t.rfind('.').unwrap()];
        let short = format!("{head}.{}", URL_SAFE_NO_PAD.encode([7u8; 63]));
        assert!(matches!(
            verify(&short, &vk, 2_000),
            Err(TokenError::Signature)
        ));
        // A truncated signature is not valid base64url (86 chars minus one).
        let cut = &t[..t.len() - 1];
        assert!(verify(cut, &vk, 2_000).is_err());
    }

    #[test]
    fn empty_jti_is_malformed() {
        let k = key();
        let mut c = claims(10_000);
        c.jti.clear();
        let t = sign(&c, &k).unwrap();
        assert!(matches!(
            verify(&t, &k.verifying_key(), 2_000),
            Err(TokenError::Malformed(_))
        ));
        assert!(decode_unverified(&t).is_err());
    }

    #[test]
    fn public_key_pem_and_base64_round_trip() {
        let vk = key().verifying_key();
        let pem = public_key_pem(&vk);
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"));
        assert_eq!(parse_public_key(&format!("\n  {pem}\n")).unwrap(), vk);
        let b64 = public_key_base64(&vk);
        assert_eq!(STANDARD.decode(&b64).unwrap(), vk.as_bytes());
        assert_eq!(parse_public_key(&format!(" {b64}\n")).unwrap(), vk);
        assert!(parse_public_key("").is_err());
        assert!(parse_public_key(&STANDARD.encode([1u8; 31])).is_err());
        assert!(
            parse_public_key("-----BEGIN PUBLIC KEY-----\nxx\n-----END PUBLIC KEY-----").is_err()
        );
        assert!(parse_public_key("not base64 !!").is_err());
    }
}
