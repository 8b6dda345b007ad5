//! Integration tests of `dispatch-license`: the cloud client and the license manager against
//! wiremock peers on loopback.

mod client;
mod manager;
