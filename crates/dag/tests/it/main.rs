//! Integration tests of `dispatch-dag` against real files.

mod loader;
mod queue;
mod runs;
