//! Conversions between the wire types of `proto/csagent/v1/network.proto` and
//! the network module's own types. Every wire value is validated here, so a
//! bad command fails with `InvalidArgument` before anything changes.
//!
//! The only file of the module that sees generated code.

use std::net::IpAddr;

use csagent_proto::v1 as pb;

use csagent_network::bridge::{NetworkSpec, VxlanFlood};
use csagent_network::counters::{Traffic, TrafficReport};
use csagent_network::error::{NetworkError, Result};
use csagent_network::names::{IfName, Mtu, VlanId, Vni};
use csagent_network::secgroup::{
    Cidr, Direction, IcmpMatch, PortRange, Protocol, Rule, VmPort, VmRules,
};
use csagent_network::VmUuid;

pub fn vm_uuid(s: &str) -> Result<VmUuid> {
    uuid::Uuid::parse_str(s)
        .map(VmUuid)
        .map_err(|_| NetworkError::invalid(format!("vm_uuid {s:?} is not a UUID")))
}

fn mtu(v: u32) -> Result<Option<Mtu>> {
    if v == 0 {
        Ok(None)
    } else {
        Mtu::new(v).map(Some)
    }
}

fn ip(s: &str, what: &str) -> Result<IpAddr> {
    s.trim()
        .parse()
        .map_err(|_| NetworkError::invalid(format!("{what} {s:?} is not an IP address")))
}

/// `EnsureNetwork` -> (user VM, network spec).
pub fn ensure_network(m: &pb::EnsureNetwork) -> Result<(VmUuid, NetworkSpec)> {
    let vm = vm_uuid(&m.vm_uuid)?;
    let spec = match &m.network {
        Some(pb::ensure_network::Network::Vlan(v)) => NetworkSpec::Vlan {
            physical: IfName::new(&v.physical_device)?,
            vlan: VlanId::new(v.vlan_id)?,
            mtu: mtu(v.mtu)?,
        },
        Some(pb::ensure_network::Network::Vxlan(v)) => {
            let flood = match (v.multicast_group.trim(), v.peers.is_empty()) {
                ("", _) => VxlanFlood::Peers(
                    v.peers
                        .iter()
                        .map(|p| ip(p, "VXLAN peer"))
                        .collect::<Result<_>>()?,
                ),
                (g, true) => VxlanFlood::Group(ip(g, "VXLAN multicast group")?),
                (_, false) => {
                    return Err(NetworkError::invalid(
                        "VXLAN network: give either multicast_group or peers, not both",
                    ))
                }
            };
            NetworkSpec::Vxlan {
                vni: Vni::new(v.vni)?,
                underlay: IfName::new(&v.underlay_device)?,
                flood,
                mtu: mtu(v.mtu)?,
            }
        }
        None => {
            return Err(NetworkError::invalid(
                "EnsureNetwork needs a vlan or vxlan network",
            ))
        }
    };
    spec.validate()?;
    Ok((vm, spec))
}

pub fn ensure_network_result(bridge: &IfName) -> pb::EnsureNetworkResult {
    pb::EnsureNetworkResult {
        bridge: bridge.to_string(),
    }
}

/// `ReleaseNetwork` -> (VM, bridge).
pub fn release_network(m: &pb::ReleaseNetwork) -> Result<(VmUuid, IfName)> {
    Ok((vm_uuid(&m.vm_uuid)?, IfName::new(&m.bridge)?))
}

fn direction(v: i32) -> Result<Direction> {
    match pb::RuleDirection::try_from(v) {
        Ok(pb::RuleDirection::Ingress) => Ok(Direction::Ingress),
        Ok(pb::RuleDirection::Egress) => Ok(Direction::Egress),
        _ => Err(NetworkError::invalid(format!(
            "rule direction {v} is not ingress or egress"
        ))),
    }
}

fn protocol(v: i32) -> Result<Protocol> {
    match pb::RuleProtocol::try_from(v) {
        Ok(pb::RuleProtocol::Tcp) => Ok(Protocol::Tcp),
        Ok(pb::RuleProtocol::Udp) => Ok(Protocol::Udp),
        Ok(pb::RuleProtocol::Icmp) => Ok(Protocol::Icmp),
        Ok(pb::RuleProtocol::Icmpv6) => Ok(Protocol::Icmpv6),
        Ok(pb::RuleProtocol::All) => Ok(Protocol::All),
        _ => Err(NetworkError::invalid(format!(
            "rule protocol {v} is not tcp, udp, icmp, icmpv6 or all"
        ))),
    }
}

fn icmp_part(v: Option<u32>, what: &str) -> Result<Option<u8>> {
    v.map(|x| {
        u8::try_from(x)
            .map_err(|_| NetworkError::invalid(format!("ICMP {what} {x} is out of range 0..255")))
    })
    .transpose()
}

fn rule(r: &pb::SecurityGroupRule) -> Result<Rule> {
    let icmp_type = icmp_part(r.icmp_type, "type")?;
    let code = icmp_part(r.icmp_code, "code")?;
    let icmp = match (icmp_type, code) {
        (Some(t), c) => Some(IcmpMatch {
            icmp_type: t,
            code: c,
        }),
        (None, None) => None,
        (None, Some(_)) => return Err(NetworkError::invalid("an ICMP code needs an ICMP type")),
    };
    Ok(Rule {
        direction: direction(r.direction)?,
        protocol: protocol(r.protocol)?,
        ports: r
            .ports
            .as_ref()
            .map(|p| PortRange::new(p.start, p.end))
            .transpose()?,
        icmp,
        cidrs: r
            .cidrs
            .iter()
            .map(|c| c.parse::<Cidr>())
            .collect::<Result<_>>()?,
    })
}

fn nic(n: &pb::VmNic) -> Result<VmPort> {
    Ok(VmPort {
        tap: IfName::new(&n.tap)?,
        bridge: IfName::new(&n.bridge)?,
        mac: csagent_network::parse_mac(&n.mac)?,
        ips: n
            .ips
            .iter()
            .map(|i| ip(i, "NIC address"))
            .collect::<Result<_>>()?,
    })
}

/// `ApplySecurityGroup` -> validated rules of one VM.
pub fn apply_security_group(m: &pb::ApplySecurityGroup) -> Result<VmRules> {
    let rules = VmRules {
        vm: vm_uuid(&m.vm_uuid)?,
        ports: m.nics.iter().map(nic).collect::<Result<_>>()?,
        rules: m.rules.iter().map(rule).collect::<Result<_>>()?,
    };
    rules.validate()?;
    Ok(rules)
}

/// Validated rules of one VM -> `ApplySecurityGroup`: the inverse of
/// [`apply_security_group`], used to remember groups across restarts.
pub fn security_group_message(v: &VmRules) -> pb::ApplySecurityGroup {
    pb::ApplySecurityGroup {
        vm_uuid: v.vm.to_string(),
        nics: v
            .ports
            .iter()
            .map(|p| pb::VmNic {
                tap: p.tap.as_str().to_owned(),
                bridge: p.bridge.as_str().to_owned(),
                mac: p.mac.to_string(),
                ips: p.ips.iter().map(ToString::to_string).collect(),
            })
            .collect(),
        rules: v.rules.iter().map(rule_message).collect(),
    }
}

fn rule_message(r: &Rule) -> pb::SecurityGroupRule {
    let direction = match r.direction {
        Direction::Ingress => pb::RuleDirection::Ingress,
        Direction::Egress => pb::RuleDirection::Egress,
    };
    let protocol = match r.protocol {
        Protocol::Tcp => pb::RuleProtocol::Tcp,
        Protocol::Udp => pb::RuleProtocol::Udp,
        Protocol::Icmp => pb::RuleProtocol::Icmp,
        Protocol::Icmpv6 => pb::RuleProtocol::Icmpv6,
        Protocol::All => pb::RuleProtocol::All,
    };
    pb::SecurityGroupRule {
        direction: direction.into(),
        protocol: protocol.into(),
        ports: r.ports.map(|p| pb::PortRange {
            start: p.start().into(),
            end: p.end().into(),
        }),
        icmp_type: r.icmp.map(|i| i.icmp_type.into()),
        icmp_code: r.icmp.and_then(|i| i.code).map(Into::into),
        cidrs: r.cidrs.iter().map(ToString::to_string).collect(),
    }
}

fn traffic(t: &Traffic) -> pb::TrafficCounters {
    pb::TrafficCounters {
        bytes_in: t.bytes_in,
        packets_in: t.packets_in,
        bytes_out: t.bytes_out,
        packets_out: t.packets_out,
    }
}

/// `GetNetworkCounters` -> taps to read.
pub fn counters_request(m: &pb::GetNetworkCounters) -> Result<Vec<IfName>> {
    m.taps.iter().map(|t| IfName::new(t)).collect()
}

pub fn counters_result(r: &TrafficReport) -> pb::NetworkCountersResult {
    let list = |v: &[(String, Traffic)]| {
        v.iter()
            .map(|(name, t)| pb::InterfaceCounters {
                name: name.clone(),
                traffic: Some(traffic(t)),
            })
            .collect()
    };
    pb::NetworkCountersResult {
        taps: list(&r.taps),
        networks: list(&r.networks),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VM: &str = "6f1c2d3e-4a5b-4c6d-8e9f-0a1b2c3d4e5f";

    #[test]
    fn ensure_network_validates() {
        let mut m = pb::EnsureNetwork {
            vm_uuid: VM.into(),
            network: Some(pb::ensure_network::Network::Vlan(pb::VlanNetwork {
                physical_device: "eth0".into(),
                vlan_id: 100,
                mtu: 0,
            })),
        };
        let (_, spec) = ensure_network(&m).unwrap();
        assert_eq!(spec.bridge_name().as_str(), "breth0-100");
        m.network = Some(pb::ensure_network::Network::Vlan(pb::VlanNetwork {
            physical_device: "eth0".into(),
            vlan_id: 4095,
            mtu: 0,
        }));
        assert!(ensure_network(&m).is_err());
        m.network = Some(pb::ensure_network::Network::Vxlan(pb::VxlanNetwork {
            vni: 5000,
            underlay_device: "bond0".into(),
            multicast_group: "10.0.0.1".into(),
            peers: vec![],
            mtu: 0,
        }));
        assert!(ensure_network(&m).is_err(), "unicast address as group");
        m.vm_uuid = "not-a-uuid".into();
        assert!(ensure_network(&m).is_err());
    }

    #[test]
    fn security_group_converts() {
        let m = pb::ApplySecurityGroup {
            vm_uuid: VM.into(),
            nics: vec![pb::VmNic {
                tap: "vnet0".into(),
                bridge: "brvx-5000".into(),
                mac: "52:54:00:aa:bb:cc".into(),
                ips: vec!["10.1.1.5".into(), "fd00::5".into()],
            }],
            rules: vec![pb::SecurityGroupRule {
                direction: pb::RuleDirection::Ingress as i32,
                protocol: pb::RuleProtocol::Tcp as i32,
                ports: Some(pb::PortRange { start: 22, end: 22 }),
                icmp_type: None,
                icmp_code: None,
                cidrs: vec!["0.0.0.0/0".into()],
            }],
        };
        let r = apply_security_group(&m).unwrap();
        assert_eq!(r.rules[0].ports.map(|p| p.start()), Some(22));
        let mut bad = m.clone();
        bad.rules[0].protocol = pb::RuleProtocol::Icmp as i32;
        assert!(apply_security_group(&bad).is_err(), "ports with icmp");
        let mut bad = m.clone();
        bad.nics[0].tap = "vnet*".into();
        assert!(
            apply_security_group(&bad).is_err(),
            "nft wildcard in a tap name"
        );
        let mut bad = m;
        bad.rules[0].direction = 0;
        assert!(apply_security_group(&bad).is_err());
    }
}
