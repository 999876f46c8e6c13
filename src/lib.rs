//! csagent: the KVM host agent of a CloudStack-style cloud, as a library.
//!
//! The `csagent` binary (the agent) and `csagent-mgmt` (the reference
//! management plane) are thin CLIs over these modules; tests and benchmarks
//! drive the same code.

pub mod domain;
pub mod proto;
