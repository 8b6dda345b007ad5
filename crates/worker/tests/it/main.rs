//! Integration tests of the worker: a wiremock cloud, and the real tracker, stores and executor
//! in temp dirs.

mod batch;
mod common;
mod fault_matrix;
mod faults;
mod flow;
mod inputs;
mod progress;
mod restart;
mod secrets;
