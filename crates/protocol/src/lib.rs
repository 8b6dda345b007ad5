//! The vocabulary both sides of dispatch share: the wire types of the scheduler ⇄ hub contract,
//! the result status words and the cancel command word, license tokens (EdDSA JWTs), GitHub's
//! webhook signature, and [`Secret`]. The contract itself is written down in `docs/protocol.md`.
//!
//! Main items: [`DispatchJob`] and the other [`wire`] types, the `pull-batch` extension's types
//! ([`PullBatchRequest`], [`AcceptBatchRequest`], [`EXTENSIONS_HEADER`]), the `progress`
//! extension's ([`ProgressRequest`], [`LogChunk`], [`ProgressResponse`]), [`RESULT_STATUS_WORDS`],
//! [`CANCEL_COMMAND`], [`token::Claims`] with [`token::sign`] / [`token::verify`],
//! [`webhook_signature::sign`] / [`webhook_signature::verify`].
//!
//! Not for: HTTP (the scheduler's client lives in `dispatch-license`, the server in `dispatch-hub`),
//! files, or anything about DAGs and runs.

mod batch;
mod progress;
mod secret;
pub mod token;
pub mod webhook_signature;
pub mod wire;

pub use batch::*;
pub use progress::*;
pub use secret::Secret;
pub use wire::*;
