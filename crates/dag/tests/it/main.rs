//! Integration tests of `dispatch-dag` against real files.

mod dagu;
mod loader;
mod queue;
mod runs;

/// How many entries the directory `dir` holds.
fn entries(dir: impl AsRef<std::path::Path>) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}
