//! Identifiers that cross crate boundaries: a VM's UUID and a NIC's MAC.
//!
//! One type each, so a domain, a security group and a bridge port all name
//! a VM the same way. Parsing is lenient about case and strict about shape;
//! whether a multicast MAC is acceptable is the caller's rule, not this one.

use std::fmt;
use std::net::Ipv6Addr;

use serde::{Deserialize, Serialize};

/// A domain UUID (never confused with a volume or account id).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub struct VmUuid(pub uuid::Uuid);

impl fmt::Display for VmUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// A unicast or multicast Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Parses `52:54:00:12:34:56` (colons only, any case); None when malformed.
    pub fn parse(s: &str) -> Option<MacAddr> {
        let b = s.as_bytes();
        if b.len() != 17 {
            return None;
        }
        let mut out = [0u8; 6];
        for (i, byte) in out.iter_mut().enumerate() {
            let p = i * 3;
            if i < 5 && b[p + 2] != b':' {
                return None;
            }
            let hex = std::str::from_utf8(&b[p..p + 2]).ok()?;
            if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                return None;
            }
            *byte = u8::from_str_radix(hex, 16).ok()?;
        }
        Some(MacAddr(out))
    }

    /// Multicast addresses (low bit of the first octet) cannot be a NIC's own.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }

    /// The EUI-64 IPv6 link-local address a guest derives from this MAC.
    pub fn link_local(&self) -> Ipv6Addr {
        let m = self.0;
        Ipv6Addr::new(
            0xfe80,
            0,
            0,
            0,
            u16::from_be_bytes([m[0] ^ 0x02, m[1]]),
            u16::from_be_bytes([m[2], 0xff]),
            u16::from_be_bytes([0xfe, m[3]]),
            u16::from_be_bytes([m[4], m[5]]),
        )
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parses_strictly_and_prints_lower_case() {
        let m = MacAddr::parse("52:54:00:AB:cd:0F").expect("valid");
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
        assert!(!m.is_multicast());
        for bad in [
            "52:54:00:ab:cd",
            "52-54-00-ab-cd-0f",
            "52:54:00:ab:cd:0g",
            "+2:54:00:ab:cd:0f",
        ] {
            assert_eq!(MacAddr::parse(bad), None, "{bad}");
        }
        assert!(MacAddr::parse("01:00:5e:00:00:01")
            .expect("valid")
            .is_multicast());
    }

    #[test]
    fn link_local_flips_the_universal_bit() {
        let m = MacAddr::parse("52:54:00:12:34:56").expect("valid");
        assert_eq!(m.link_local().to_string(), "fe80::5054:ff:fe12:3456");
    }
}
