//! GitHub's webhook signature: `X-Hub-Signature-256: sha256=<hex of HMAC-SHA256(secret, body)>`.
//!
//! The hub verifies it with [`verify`]; senders (the demo, the end-to-end tests, the fuzz target)
//! produce it with [`sign`], so both sides share one definition.

use dispatch_util::{decode_hex, hex};
use hmac::{Hmac, Mac};

use crate::Secret;
use sha2::Sha256;

/// The `X-Hub-Signature-256` header value for `body` under `secret`.
pub fn sign(secret: &Secret, body: &[u8]) -> String {
    format!("sha256={}", hex(&mac(secret, body).finalize().into_bytes()))
}

/// True when `header` (the `X-Hub-Signature-256` value, if any) is `body`'s signature under
/// `secret`. The comparison is constant-time.
pub fn verify(secret: &Secret, header: Option<&str>, body: &[u8]) -> bool {
    let Some(expected) = header
        .and_then(|v| v.strip_prefix("sha256="))
        .and_then(decode_hex)
    else {
        return false;
    };
    mac(secret, body).verify_slice(&expected).is_ok()
}

fn mac(secret: &Secret, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.expose().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of every length"));
    mac.update(body);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_githubs_documented_example() {
        // From GitHub's "Validating webhook deliveries" documentation.
        let secret = Secret::new("It's a Secret to Everybody");
        let signature = sign(&secret, b"Hello, World!");
        assert_eq!(
            signature,
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
        assert!(verify(&secret, Some(&signature), b"Hello, World!"));
    }

    #[test]
    fn rejects_what_does_not_match() {
        let secret = Secret::new("s3");
        let good = sign(&secret, b"{\"a\":1}");
        assert!(verify(&secret, Some(&good), b"{\"a\":1}"));
        assert!(!verify(&secret, None, b"{\"a\":1}"));
        assert!(!verify(&secret, Some(&good), b"{\"a\":2}"));
        assert!(!verify(&Secret::new("other"), Some(&good), b"{\"a\":1}"));
        assert!(!verify(
            &secret,
            Some(good.trim_start_matches("sha256=")),
            b"{\"a\":1}"
        ));
        assert!(!verify(&secret, Some("sha256=zz"), b"{\"a\":1}"));
        assert!(!verify(&secret, Some("sha256=abc"), b"{\"a\":1}"));
        assert!(!verify(&secret, Some("sha256=é1"), b"{\"a\":1}"));
    }
}
