//! Integration tests of `dispatch-dag` against real files.

mod queue;
mod runs;
