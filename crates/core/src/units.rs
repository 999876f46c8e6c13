//! Unit newtypes for sizes (bytes, KiB, MiB), so a size in KiB from /proc
//! or libvirt can never be added to a size in MiB from a VM request by
//! mistake.
//!
//! Only conversions live here; no I/O.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A size in bytes.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Bytes(pub u64);

/// An amount of memory in KiB, the unit libvirt reports and csagent always
/// renders.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct KiB(pub u64);

/// A size in mebibytes (what VM offerings and libvirt `<memory unit='MiB'>` use).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct MiB(pub u64);

impl Bytes {
    /// From a /proc or sysfs figure given in KiB.
    pub fn from_kib(kib: u64) -> Self {
        Bytes(kib.saturating_mul(1024))
    }

    /// Whole MiB, rounded down (capacity is never over-stated).
    pub fn to_mib(self) -> MiB {
        MiB(self.0 / (1024 * 1024))
    }
}

impl MiB {
    pub fn to_bytes(self) -> Bytes {
        Bytes(self.0.saturating_mul(1024 * 1024))
    }

    pub fn saturating_sub(self, other: MiB) -> MiB {
        MiB(self.0.saturating_sub(other.0))
    }
}

impl fmt::Display for MiB {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} MiB", self.0)
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_down_and_saturate() {
        assert_eq!(Bytes::from_kib(2048).to_mib(), MiB(2));
        assert_eq!(Bytes(1024 * 1024 - 1).to_mib(), MiB(0));
        assert_eq!(MiB(3).to_bytes(), Bytes(3 * 1024 * 1024));
        assert_eq!(MiB(1).saturating_sub(MiB(5)), MiB(0));
        assert_eq!(Bytes::from_kib(u64::MAX), Bytes(u64::MAX));
    }
}
