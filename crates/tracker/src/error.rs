//! The tracker's error type: each variant names the file (and offset) involved and what to do next.

use std::io;
use std::path::{Path, PathBuf};

/// Errors of the tracker.
#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    /// Another tracker (in this or another process) holds the directory's lock.
    #[error("tracker directory `{}` is already in use by another process or tracker", dir.display())]
    InUse {
        /// The tracker directory.
        dir: PathBuf,
    },
    /// A file-system call failed.
    #[error("failed to {action} `{}`", path.display())]
    Io {
        /// What was being done, e.g. "fsync".
        action: &'static str,
        /// File or directory involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The journal does not start with the tracker's magic bytes.
    #[error("`{}` is not a tracker journal of a known version (bad header)", path.display())]
    BadHeader {
        /// The journal file.
        path: PathBuf,
    },
    /// A record in the middle of the journal is damaged while later records are intact.
    #[error(
        "corrupt record at byte {offset} of tracker journal `{}` ({reason}); intact records follow \
         at byte {next_good}, refusing to drop them",
        path.display()
    )]
    Corrupt {
        /// The journal file.
        path: PathBuf,
        /// Byte offset of the bad record.
        offset: u64,
        /// What is wrong with it.
        reason: String,
        /// Offset of the next intact record.
        next_good: u64,
    },
    /// A record's checksum is right but its JSON is not a tracker entry.
    #[error("failed to decode record at byte {offset} of tracker journal `{}`", path.display())]
    Decode {
        /// The journal file.
        path: PathBuf,
        /// Byte offset of the record.
        offset: u64,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A job could not be encoded as JSON.
    #[error("failed to encode tracked job `{job_id}`")]
    Encode {
        /// The job's id.
        job_id: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A job's encoding exceeds the per-record limit.
    #[error("tracked job `{job_id}` encodes to {len} bytes, over the limit of {max}")]
    TooLarge {
        /// The job's id.
        job_id: String,
        /// Encoded size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An earlier write or fsync failed; the tracker must be reopened.
    #[error("tracker journal `{}` failed an earlier write; reopen the tracker", path.display())]
    Poisoned {
        /// The journal file.
        path: PathBuf,
    },
}

/// Wraps an OS error of `action` on `path` (for `map_err`).
pub(crate) fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> TrackerError + 'a {
    move |source| TrackerError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}
