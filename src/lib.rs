//! csagent: the KVM host agent of a CloudStack-style cloud, as a library.
//!
//! The `csagent` binary (the agent) and `csagent-mgmt` (the reference
//! management plane) are thin CLIs over these modules; tests and benchmarks
//! drive the same code.

pub mod agent;
pub mod assets;
pub mod check;
pub mod config;
pub mod dispatch;
pub mod domain;
pub mod error;
pub mod handlers;
mod heap;
pub mod host;
pub mod hypervisor;
pub mod identity;
pub mod link;
pub mod logging;
pub mod metrics;
pub mod mgmt;
pub mod monitor;
pub mod network;
pub mod notify;
pub mod ops;
pub mod pki;
pub mod proto;
pub mod status;
pub mod storage;
mod sync;
pub mod tls;
pub mod vm;
pub mod vmstate;
