//! Jobs per state, kept in memory as they change, so that `/metrics` never counts rows (with a
//! million jobs, a `GROUP BY` per scrape held the read connection long enough to slow every pull).
//!
//! The gauges are read from the table once, when the store opens; after that every write that
//! inserts, deletes or moves jobs between states records it in a [`Tally`], which the store adds
//! to the gauges only once the write has committed (a write rolled back changes nothing). They
//! count this process's changes: on PostgreSQL, where replicas share the rows, the store counts
//! them again once a minute ([`JobGauges::reset`]); another hub process sharing a SQLite file is
//! seen at the next start.

use std::sync::atomic::{AtomicI64, Ordering};

use super::state::JobState;

fn slot(state: JobState) -> usize {
    match state {
        JobState::Queued => 0,
        JobState::Claimed => 1,
        JobState::Accepted => 2,
        JobState::Finished => 3,
    }
}

/// What one write did to the number of jobs per state.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Tally([i64; 4]);

impl Tally {
    /// `n` jobs were inserted in `state`.
    pub fn added(&mut self, state: JobState, n: usize) {
        self.0[slot(state)] += n as i64;
    }

    /// `n` jobs in `state` were deleted.
    pub fn removed(&mut self, state: JobState, n: usize) {
        self.0[slot(state)] -= n as i64;
    }

    /// `n` jobs went from `from` to `to`.
    pub fn moved(&mut self, from: JobState, to: JobState, n: usize) {
        self.removed(from, n);
        self.added(to, n);
    }
}

/// The gauges themselves.
#[derive(Debug, Default)]
pub(crate) struct JobGauges([AtomicI64; 4]);

impl JobGauges {
    /// Gauges starting from counted rows.
    pub fn starting_at(counts: &[(JobState, i64)]) -> JobGauges {
        let gauges = JobGauges::default();
        for (state, n) in counts {
            gauges.0[slot(*state)].store(*n, Ordering::Relaxed);
        }
        gauges
    }

    /// Sets the gauges to counted rows (what other processes changed included).
    pub fn reset(&self, counts: &[(JobState, i64)]) {
        for state in JobState::ALL {
            let n = counts
                .iter()
                .find(|(s, _)| *s == state)
                .map_or(0, |(_, n)| *n);
            self.0[slot(state)].store(n, Ordering::Relaxed);
        }
    }

    /// Adds a committed write's changes.
    pub fn apply(&self, tally: &Tally) {
        for (gauge, change) in self.0.iter().zip(tally.0) {
            if change != 0 {
                gauge.fetch_add(change, Ordering::Relaxed);
            }
        }
    }

    /// Every state with its count, in [`JobState::ALL`] order.
    pub fn snapshot(&self) -> Vec<(JobState, i64)> {
        JobState::ALL
            .into_iter()
            .map(|state| (state, self.0[slot(state)].load(Ordering::Relaxed)))
            .collect()
    }
}
