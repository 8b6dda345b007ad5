//! Integration tests of `dispatch-dag` against real files.

mod dagu;
mod loader;
mod queue;
mod runs;
