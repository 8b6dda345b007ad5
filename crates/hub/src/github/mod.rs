//! Talking to GitHub as a GitHub App: the app's signed token (`app_key`), installation access
//! tokens (`installations`), one HTTP call with either kind of credentials and GitHub's answers
//! sorted into retry / rate limit / give up (`client`, `rate_limit`), the check-run request
//! bodies (`checks`) and the App manifest that creates the App in one step ([`manifest`]).
//!
//! What is reported when is `lifecycle`, and the durable queue that sends it `reporter`; this
//! module knows nothing about the store. `docs/github-app.md` is the user's side of it.
//!
//! Secrets (the private key, app tokens, installation tokens) travel as `Secret` or inside
//! `app_key::AppKey`, which shows none of them; no error here carries a response body, a token
//! or the key file's content.

pub(crate) mod answer;
pub(crate) mod app_key;
pub(crate) mod checks;
pub(crate) mod client;
pub mod convert;
pub(crate) mod installations;
pub mod manifest;
pub(crate) mod rate_limit;
pub mod time;

use std::path::PathBuf;

/// What can go wrong with the GitHub App's own credentials.
#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    /// The private key file could not be read.
    #[error("failed to read the GitHub App private key file `{path}`")]
    ReadKey {
        /// The file named by `app_private_key_file`.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The private key file holds no RSA private key. The parser's own message is left out: it
    /// may quote the file.
    #[error(
        "GitHub App private key file `{path}` is not an RSA private key in PEM form (the `.pem` file GitHub offers for download)"
    )]
    KeyFormat {
        /// The file named by `app_private_key_file`.
        path: PathBuf,
    },
    /// Signing the app token failed.
    #[error("failed to sign the GitHub App token")]
    Sign(#[source] jsonwebtoken::errors::Error),
}
