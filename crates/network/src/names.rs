//! Validated identifiers of guest networks and the names csagent gives to the
//! links it creates (CloudStack's style: `br<dev>-<vlan>`, `brvx-<vni>`).
//!
//! Everything here is pure: no syscalls. Every constructor rejects bad input
//! with an `InvalidArgument` error, so the rest of the module never sees an
//! out-of-range VLAN or a name the kernel would refuse.

use std::fmt;

use super::error::{NetworkError, Result};

/// Longest interface name the kernel accepts (IFNAMSIZ minus the NUL).
pub const IFNAME_MAX: usize = 15;

/// An 802.1Q VLAN id, 1..=4094 (0 and 4095 are reserved).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VlanId(u16);

impl VlanId {
    pub fn new(id: u32) -> Result<Self> {
        match u16::try_from(id) {
            Ok(v) if (1..=4094).contains(&v) => Ok(Self(v)),
            _ => Err(NetworkError::invalid(format!(
                "VLAN id {id} is out of range 1..4094"
            ))),
        }
    }
    pub fn get(self) -> u16 {
        self.0
    }
}

/// A VXLAN network identifier, 1..=16777215 (24 bits; 0 is reserved here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vni(u32);

impl Vni {
    pub fn new(id: u32) -> Result<Self> {
        if (1..=0x00FF_FFFF).contains(&id) {
            Ok(Self(id))
        } else {
            Err(NetworkError::invalid(format!(
                "VXLAN VNI {id} is out of range 1..16777215"
            )))
        }
    }
    pub fn get(self) -> u32 {
        self.0
    }
}

/// A link MTU in bytes. 68 is IPv4's minimum; 65535 the largest jumbo
/// frame any bridge port accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mtu(u32);

impl Mtu {
    pub fn new(mtu: u32) -> Result<Self> {
        if (68..=65535).contains(&mtu) {
            Ok(Self(mtu))
        } else {
            Err(NetworkError::invalid(format!(
                "MTU {mtu} is out of range 68..65535"
            )))
        }
    }
    pub fn get(self) -> u32 {
        self.0
    }
}

/// A kernel interface name: 1..=15 characters of `[A-Za-z0-9_.-]`, not "."
/// or "..".
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfName(String);

impl IfName {
    pub fn new(name: &str) -> Result<Self> {
        // Stricter than the kernel on purpose: nft treats '*' as a wildcard,
        // '@' and '$' as set and variable references.
        let bad_char = name
            .chars()
            .any(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'));
        if name.is_empty() || name.len() > IFNAME_MAX || bad_char || name == "." || name == ".." {
            return Err(NetworkError::invalid(format!(
                "interface name {name:?} is not valid (1..15 characters of A-Z a-z 0-9 _ . -)"
            )));
        }
        Ok(Self(name.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Short stable tag of a long device name, so derived names stay within
/// IFNAMSIZ and two long names sharing a prefix do not collide (FNV-1a).
fn short_tag(dev: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in dev.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{:06x}", h & 0x00FF_FFFF)
}

/// Builds `<prefix><dev><sep><id>`, replacing `dev` by a 6-hex tag when the
/// result would be longer than IFNAMSIZ allows.
fn derived(prefix: &str, dev: &IfName, sep: char, id: u32) -> IfName {
    let full = format!("{prefix}{dev}{sep}{id}");
    let name = if full.len() <= IFNAME_MAX {
        full
    } else {
        format!("{prefix}{}{sep}{id}", short_tag(dev.as_str()))
    };
    // Provably valid: prefix, a valid ifname or 6 hex digits, a separator and
    // at most 8 digits are at most 2+6+1+8 < 16 ASCII characters.
    IfName(name)
}

/// Bridge of a VLAN network on `dev`: `br<dev>-<vlan>` (e.g. `breth0-100`).
pub fn vlan_bridge_name(dev: &IfName, vlan: VlanId) -> IfName {
    derived("br", dev, '-', u32::from(vlan.get()))
}

/// 802.1Q sub-interface: `<dev>.<vlan>` (e.g. `eth0.100`), or `vl<tag>.<vlan>`.
pub fn vlan_subif_name(dev: &IfName, vlan: VlanId) -> IfName {
    let full = format!("{dev}.{}", vlan.get());
    if full.len() <= IFNAME_MAX {
        IfName(full)
    } else {
        derived("vl", dev, '.', u32::from(vlan.get()))
    }
}

/// Bridge of a VXLAN network: `brvx-<vni>`.
pub fn vxlan_bridge_name(vni: Vni) -> IfName {
    IfName(format!("brvx-{}", vni.get()))
}

/// VXLAN device: `vxlan<vni>`.
pub fn vxlan_dev_name(vni: Vni) -> IfName {
    IfName(format!("vxlan{}", vni.get()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert!(VlanId::new(0).is_err());
        assert!(VlanId::new(4095).is_err());
        assert_eq!(VlanId::new(4094).map(VlanId::get).ok(), Some(4094));
        assert!(Vni::new(0).is_err());
        assert!(Vni::new(16_777_216).is_err());
        assert!(Vni::new(16_777_215).is_ok());
        assert!(Mtu::new(67).is_err());
        assert!(Mtu::new(9000).is_ok());
    }

    #[test]
    fn ifnames() {
        assert!(IfName::new("").is_err());
        assert!(IfName::new("a/b").is_err());
        assert!(IfName::new("sixteen-chars-xx").is_err());
        assert!(IfName::new("eth*").is_err());
        assert!(IfName::new("@set").is_err());
        assert!(IfName::new("eth0").is_ok());
    }

    #[test]
    fn derived_names_fit() {
        let long = IfName::new("enp129s0f1np1").unwrap();
        let other = IfName::new("enp129s0f0np0").unwrap();
        let vlan = VlanId::new(4094).unwrap();
        let a = vlan_bridge_name(&long, vlan);
        let b = vlan_bridge_name(&other, vlan);
        assert!(a.as_str().len() <= IFNAME_MAX);
        assert_ne!(a, b);
        assert!(vlan_subif_name(&long, vlan).as_str().len() <= IFNAME_MAX);
        let eth0 = IfName::new("eth0").unwrap();
        assert_eq!(vlan_bridge_name(&eth0, vlan).as_str(), "breth0-4094");
        assert_eq!(vlan_subif_name(&eth0, vlan).as_str(), "eth0.4094");
        let vni = Vni::new(16_777_215).unwrap();
        assert_eq!(vxlan_bridge_name(vni).as_str(), "brvx-16777215");
        assert_eq!(vxlan_dev_name(vni).as_str(), "vxlan16777215");
    }
}
