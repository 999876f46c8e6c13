//! csagent: the KVM host agent of a CloudStack-style cloud, as a library.
//!
//! The capabilities live in their own crates (csagent-domain, -libvirt,
//! -host, -storage, -network); this crate wires them to the management
//! link. Its modules are layered, each importing only those below it
//! (tests/e2e/layering.rs fails the suite on a cycle):
//!
//! - leaves: `config`, `endpoints`, `dial`, `outbox`, `heap`, `notify`;
//! - the command context `ctx`, then the capability glue: `vm`, `monitor`,
//!   `identity`, `handlers`;
//! - `convert`, the edge: every conversion between the proto's wire types
//!   and the crates' own types;
//! - what speaks the wire: `vmstate`, `status`, `metrics`, `dispatch`,
//!   `link`; then `ops`, `check` and `agent`, which wires it all.
//!
//! The `csagent` binary is a thin CLI over it; tests and benchmarks drive
//! the same code.

pub mod agent;
pub mod check;
pub mod config;
pub mod convert;
pub mod ctx;
pub mod dial;
pub mod dispatch;
pub mod endpoints;
pub mod handlers;
mod heap;
pub mod identity;
pub mod isolation;
pub mod link;
pub mod local_pool;
pub mod metrics;
pub mod monitor;
pub mod notify;
pub mod ops;
pub mod outbox;
pub mod status;
pub mod vm;
pub mod vmstate;
