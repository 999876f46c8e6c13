//! Per-VM security groups: the rule model, its validation, and the state of
//! what was last applied (so an unchanged group costs no nft run).
//!
//! Rendering to nftables JSON is in ruleset.rs, running nft in nft.rs. This
//! file holds no kernel access.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use super::error::{NetworkError, Result};
use super::names::IfName;
use super::VmUuid;

/// Direction of a rule, seen from the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Traffic to the VM (default deny).
    Ingress,
    /// Traffic from the VM (default allow while the group has no egress
    /// rule, default deny once it has one: CloudStack's semantics).
    Egress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
    All,
}

/// An inclusive port range, 1..=65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    start: u16,
    end: u16,
}

impl PortRange {
    pub fn new(start: u32, end: u32) -> Result<Self> {
        match (u16::try_from(start), u16::try_from(end)) {
            (Ok(s), Ok(e)) if s >= 1 && s <= e => Ok(Self { start: s, end: e }),
            _ => Err(NetworkError::invalid(format!(
                "port range {start}-{end} is not valid (1..65535, start <= end)"
            ))),
        }
    }
    pub fn start(self) -> u16 {
        self.start
    }
    pub fn end(self) -> u16 {
        self.end
    }
}

/// ICMP / ICMPv6 type and optional code; a rule without one matches all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IcmpMatch {
    pub icmp_type: u8,
    pub code: Option<u8>,
}

/// An IPv4 or IPv6 prefix, host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    pub fn new(addr: IpAddr, len: u8) -> Result<Self> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(NetworkError::invalid(format!(
                "prefix length /{len} is too long for {addr}"
            )));
        }
        let addr = match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        };
        Ok(Self { addr, len })
    }
    pub fn addr(&self) -> IpAddr {
        self.addr
    }
    pub fn prefix_len(&self) -> u8 {
        self.len
    }
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }
}

impl FromStr for Cidr {
    type Err = NetworkError;
    fn from_str(s: &str) -> Result<Self> {
        let bad =
            || NetworkError::invalid(format!("{s:?} is not a CIDR (e.g. 10.0.0.0/8, fd00::/8)"));
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().map_err(|_| bad())?;
        let len = match l {
            Some(l) => l.trim().parse::<u8>().map_err(|_| bad())?,
            None if addr.is_ipv4() => 32,
            None => 128,
        };
        Self::new(addr, len)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

pub use csagent_core::MacAddr;

/// Parses a NIC's own MAC: well formed and unicast (a guest may not send
/// from a group address).
pub fn parse_mac(s: &str) -> Result<MacAddr> {
    match MacAddr::parse(s) {
        Some(m) if !m.is_multicast() => Ok(m),
        _ => Err(NetworkError::invalid(format!(
            "{s:?} is not a unicast MAC address (aa:bb:cc:dd:ee:ff)"
        ))),
    }
}

/// One rule of a security group.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    pub direction: Direction,
    pub protocol: Protocol,
    /// Destination ports (tcp/udp only); None = all.
    pub ports: Option<PortRange>,
    /// icmp/icmpv6 only; None = all types.
    pub icmp: Option<IcmpMatch>,
    /// Remote side: source for ingress, destination for egress. Empty = any
    /// address of either family.
    pub cidrs: Vec<Cidr>,
}

/// A VM's NIC as the security group sees it: its host-side tap, the bridge
/// it is a port of, and the addresses the guest may use.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VmPort {
    pub tap: IfName,
    pub bridge: IfName,
    pub mac: MacAddr,
    /// The guest's IPv4 and IPv6 addresses (the EUI-64 link-local address of
    /// `mac` is always allowed in addition).
    pub ips: Vec<IpAddr>,
}

impl VmPort {
    pub fn ipv4(&self) -> Vec<Ipv4Addr> {
        self.ips
            .iter()
            .filter_map(|a| match a {
                IpAddr::V4(v) => Some(*v),
                IpAddr::V6(_) => None,
            })
            .collect()
    }
    /// IPv6 addresses including the EUI-64 link-local one.
    pub fn ipv6(&self) -> Vec<Ipv6Addr> {
        let mut v: Vec<Ipv6Addr> = self
            .ips
            .iter()
            .filter_map(|a| match a {
                IpAddr::V6(v) => Some(*v),
                IpAddr::V4(_) => None,
            })
            .collect();
        let ll = self.mac.link_local();
        if !v.contains(&ll) {
            v.push(ll);
        }
        v
    }
}

/// Everything the firewall needs to know about one VM.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VmRules {
    pub vm: VmUuid,
    pub ports: Vec<VmPort>,
    pub rules: Vec<Rule>,
}

impl VmRules {
    /// Rejects what nft would reject or misread, before anything changes.
    pub fn validate(&self) -> Result<()> {
        if self.ports.is_empty() {
            return Err(NetworkError::invalid(format!(
                "VM {}: a security group needs at least one NIC",
                self.vm
            )));
        }
        for p in &self.ports {
            if let Some(ip) = p
                .ips
                .iter()
                .find(|a| a.is_unspecified() || a.is_multicast())
            {
                return Err(NetworkError::invalid(format!(
                    "VM {}: {ip} on {} is not a unicast address",
                    self.vm, p.tap
                )));
            }
        }
        for (i, r) in self.rules.iter().enumerate() {
            validate_rule(r).map_err(|e| {
                NetworkError::invalid(format!("VM {} rule {}: {e}", self.vm, i + 1))
            })?;
        }
        Ok(())
    }

    pub(crate) fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }

    pub fn has_egress_rules(&self) -> bool {
        self.rules.iter().any(|r| r.direction == Direction::Egress)
    }
}

fn validate_rule(r: &Rule) -> std::result::Result<(), String> {
    let l4 = matches!(r.protocol, Protocol::Tcp | Protocol::Udp);
    let icmp = matches!(r.protocol, Protocol::Icmp | Protocol::Icmpv6);
    if r.ports.is_some() && !l4 {
        return Err("ports are only valid with tcp or udp".into());
    }
    if r.icmp.is_some() && !icmp {
        return Err("an ICMP type is only valid with icmp or icmpv6".into());
    }
    let has4 = r.cidrs.iter().any(Cidr::is_ipv4);
    let has6 = r.cidrs.iter().any(|c| !c.is_ipv4());
    match r.protocol {
        Protocol::Icmp if has6 && !has4 => {
            Err("icmp (IPv4) with only IPv6 CIDRs matches nothing; use icmpv6".into())
        }
        Protocol::Icmpv6 if has4 && !has6 => {
            Err("icmpv6 with only IPv4 CIDRs matches nothing; use icmp".into())
        }
        _ => Ok(()),
    }
}

/// Rejects groups that claim the same tap, or the same address on the same
/// bridge, as another VM: the dispatch maps need one owner per key, and a
/// guest must not be able to pose as another.
pub fn check_unique(vms: &BTreeMap<VmUuid, VmRules>) -> Result<()> {
    let mut taps: BTreeMap<&str, VmUuid> = BTreeMap::new();
    let mut addrs: BTreeMap<(&str, IpAddr), VmUuid> = BTreeMap::new();
    for v in vms.values() {
        for p in &v.ports {
            if let Some(other) = taps.insert(p.tap.as_str(), v.vm) {
                return Err(NetworkError::invalid(format!(
                    "VM {}: tap {} is already used by VM {other}",
                    v.vm, p.tap
                )));
            }
            let all = p
                .ipv4()
                .into_iter()
                .map(IpAddr::V4)
                .chain(p.ipv6().into_iter().map(IpAddr::V6));
            for a in all {
                if let Some(other) = addrs.insert((p.bridge.as_str(), a), v.vm) {
                    return Err(NetworkError::invalid(format!(
                        "VM {}: address {a} on bridge {} is already claimed by VM {other}",
                        v.vm, p.bridge
                    )));
                }
            }
        }
    }
    Ok(())
}

/// What was last applied per VM (fingerprints), to skip unchanged updates.
#[derive(Debug, Default)]
pub struct Applied {
    pub(crate) vms: BTreeMap<VmUuid, VmRules>,
    pub(crate) fingerprints: BTreeMap<VmUuid, u64>,
}

impl Applied {
    /// True if `rules` equals what is in force for its VM.
    pub fn unchanged(&self, rules: &VmRules) -> bool {
        self.fingerprints.get(&rules.vm) == Some(&rules.fingerprint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parse_and_mask() {
        let c: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        let c: Cidr = "fd00::1/8".parse().unwrap();
        assert_eq!(c.to_string(), "fd00::/8");
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
        assert_eq!("0.0.0.0/0".parse::<Cidr>().unwrap().prefix_len(), 0);
    }

    #[test]
    fn mac_and_link_local() {
        let m = parse_mac("52:54:00:12:34:56").unwrap();
        assert_eq!(m.link_local().to_string(), "fe80::5054:ff:fe12:3456");
        assert!(parse_mac("01:00:00:00:00:00").is_err());
        assert!(parse_mac("52:54:00:12:34").is_err());
    }

    #[test]
    fn addresses_have_one_owner() {
        let port = |tap: &str, mac: &str| VmPort {
            tap: IfName::new(tap).unwrap(),
            bridge: IfName::new("br0").unwrap(),
            mac: parse_mac(mac).unwrap(),
            ips: vec!["10.0.0.5".parse().unwrap()],
        };
        let vm = |n: u8, p: VmPort| VmRules {
            vm: VmUuid(uuid::Uuid::from_bytes([n; 16])),
            ports: vec![p],
            rules: vec![],
        };
        let mut all = BTreeMap::new();
        all.insert(
            VmUuid(uuid::Uuid::from_bytes([1; 16])),
            vm(1, port("vnet1", "52:54:00:00:00:01")),
        );
        assert!(check_unique(&all).is_ok());
        all.insert(
            VmUuid(uuid::Uuid::from_bytes([2; 16])),
            vm(2, port("vnet2", "52:54:00:00:00:02")),
        );
        let e = check_unique(&all).unwrap_err().to_string();
        assert!(e.contains("10.0.0.5"), "{e}");
    }

    #[test]
    fn rule_validation() {
        let mut r = Rule {
            direction: Direction::Ingress,
            protocol: Protocol::Icmp,
            ports: Some(PortRange::new(22, 22).unwrap()),
            icmp: None,
            cidrs: vec![],
        };
        assert!(validate_rule(&r).is_err());
        r.ports = None;
        r.cidrs = vec!["fd00::/8".parse().unwrap()];
        assert!(validate_rule(&r).is_err());
        assert!(PortRange::new(0, 10).is_err());
        assert!(PortRange::new(10, 9).is_err());
        assert!(PortRange::new(1, 70000).is_err());
    }
}
