//! csagent: the KVM host agent of a CloudStack-style cloud, as a library.
//!
//! The capabilities live in their own crates (csagent-domain, -libvirt,
//! -host, -storage, -network); this crate wires them to the management
//! link: configuration, the command context and dispatch, the VM
//! lifecycle that combines them, the link and identity, status and
//! metrics. `convert/` is its one edge: the only modules that see the wire
//! types of csagent-proto. The `csagent` binary is a thin CLI over it;
//! tests and benchmarks drive the same code.

pub mod agent;
pub mod check;
pub mod config;
pub mod convert;
pub mod dispatch;
pub mod handlers;
mod heap;
pub mod identity;
pub mod link;
pub mod metrics;
pub mod monitor;
pub mod notify;
pub mod ops;
pub mod status;
pub mod vm;
pub mod vmstate;
