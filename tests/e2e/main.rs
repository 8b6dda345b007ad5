//! End-to-end tests of dispatch: the real `scheduler` and `hub` binaries as processes, their
//! HTTP peers (cloud, GitHub) faked with wiremock on loopback. See `support.rs` for how the
//! binaries are found.

mod browser;
mod cloud;
mod crash;
mod embedded;
mod hub_and_scheduler;
mod progress;
mod replicas;
mod run_by_hand;
mod scheduler;
mod support;
