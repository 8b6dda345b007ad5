//! Test and benchmark hooks of [`Tracker`], compiled only with the `test-hooks` feature (which the
//! crate's own tests and bench turn on through its dev-dependency on itself).

use crate::commit::WriteHold;
use crate::{Tracker, TrackerError};

impl Tracker {
    /// Entries currently in the journal file (live and superseded, each change of a batch
    /// counted).
    pub fn journal_records(&self) -> usize {
        self.journal.journal_records()
    }

    /// fdatasync calls made for batches of changes so far.
    pub fn journal_syncs(&self) -> u64 {
        self.journal.journal_syncs()
    }

    /// Changes waiting for the next batch write.
    pub fn waiting_changes(&self) -> usize {
        self.journal.waiting_changes()
    }

    /// Keeps any batch from being written until the returned hold is dropped, as if a long fsync
    /// were in progress, so that a test can line up concurrent changes into one batch.
    pub fn hold_writes(&self) -> WriteHold<'_> {
        self.journal.hold_writes()
    }

    /// Makes the next batch fail as if its write had failed, without touching the file.
    pub fn fail_next_batch(&self) {
        self.journal.fail_next_batch();
    }

    /// Compacts the journal now, whatever its size.
    pub fn compact_now(&self) -> Result<(), TrackerError> {
        self.journal.compact_now()
    }
}
