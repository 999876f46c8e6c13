//! The VM commands' wire messages <-> the vm module's own types: StartVm
//! (start.rs) and the change and watch commands (ops.rs). Every bad field is
//! INVALID_ARGUMENT here, before anything happens; nothing here talks to
//! libvirt or decides policy.

mod ops;
mod start;

pub use ops::*;
pub use start::*;
