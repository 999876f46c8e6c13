//! The agent's edge: every conversion between the wire types of
//! csagent-proto and the agent's and capability crates' own types.
//!
//! Owns validation of wire values (a bad command fails with
//! `InvalidArgument` here, before anything changes). Must not: do I/O or
//! hold state; nothing outside this module names a `pb::` type except the
//! link's session and dispatch's queue, which carry them unopened.

pub mod command;
pub mod domain;
pub mod ha;
pub mod host;
pub mod identity;
pub mod link;
pub mod migrate;
pub mod network;
pub mod network_wire;
pub mod storage;
pub mod storage_wire;
pub mod vm_ops;
pub mod vm_start;
pub mod vmstate;
