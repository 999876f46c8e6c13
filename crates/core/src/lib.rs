//! The leaves every csagent crate stands on: the classification of
//! failures (`ErrorKind`, `CommandError`), the ids and units that carry
//! meaning across crates (`VmUuid`, `MacAddr`, `Bytes`, `KiB`, `MiB`), wall
//! time, reconnect backoff and poison-tolerant locking.
//!
//! Owns vocabulary only: no I/O, no wire types, nothing that knows about
//! libvirt, the plane or a config file. With the `cli` feature it also
//! holds what both binaries share: log setup and man page generation.

#[cfg(feature = "cli")]
pub mod assets;
pub mod backoff;
pub mod error;
pub mod ids;
#[cfg(feature = "cli")]
pub mod logging;
pub mod sync;
pub mod time;
pub mod units;

pub use error::{CommandError, ErrorKind};
pub use ids::{MacAddr, VmUuid};
pub use units::{Bytes, KiB, MiB};
