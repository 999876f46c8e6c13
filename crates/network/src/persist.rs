//! What the network module must remember across agent restarts: the
//! security groups in force and which VMs use which bridge.
//!
//! The kernel keeps csagent's nftables tables when the agent restarts, but
//! the agent's memory of them is gone; without this file the next group
//! applied would rebuild the tables from that one VM and open every other
//! VM on the host. Groups are stored in this file's own serde types, kept
//! field for field in the shape version 1 was written in (then the wire
//! message's JSON), so an upgraded agent reads the file an older one left;
//! everything is validated again when loaded. Writes are atomic
//! (temporary file, fsync, rename), so a crash leaves the old or the new
//! state, never half of one. This file does no kernel access.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{NetworkError, Result};
use super::names::IfName;
use super::secgroup::{
    parse_mac, Cidr, Direction, IcmpMatch, PortRange, Protocol, Rule, VmPort, VmRules,
};
use super::VmUuid;

const VERSION: u32 = 1;

/// The remembered state, in the module's own types.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Remembered {
    pub groups: BTreeMap<VmUuid, VmRules>,
    pub bridge_users: Vec<(VmUuid, IfName)>,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct StateFile {
    version: u32,
    security_groups: Vec<StoredGroup>,
    /// bridge name -> UUIDs of the csagent VMs using it.
    bridge_users: BTreeMap<String, Vec<String>>,
}

/// One VM's group on disk. Directions and protocols are the numbers
/// version 1 used (those of the wire enums at the time): 1 ingress, 2
/// egress; 1 tcp, 2 udp, 3 icmp, 4 icmpv6, 5 all.
#[derive(Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
#[serde(default, deny_unknown_fields)]
struct StoredGroup {
    vm_uuid: String,
    nics: Vec<StoredNic>,
    rules: Vec<StoredRule>,
}

#[derive(Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
#[serde(default, deny_unknown_fields)]
struct StoredNic {
    tap: String,
    bridge: String,
    mac: String,
    ips: Vec<String>,
}

#[derive(Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
#[serde(default, deny_unknown_fields)]
struct StoredRule {
    direction: i32,
    protocol: i32,
    ports: Option<StoredPorts>,
    icmp_type: Option<u32>,
    icmp_code: Option<u32>,
    cidrs: Vec<String>,
}

#[derive(Serialize, Deserialize, Default, Debug, Clone, Copy, PartialEq)]
#[serde(default, deny_unknown_fields)]
struct StoredPorts {
    start: u32,
    end: u32,
}

/// The state file of one agent.
#[derive(Debug, Clone)]
pub struct StateStore {
    path: PathBuf,
}

impl StateStore {
    pub fn new(path: PathBuf) -> StateStore {
        StateStore { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file; a missing file is an empty state (first start).
    pub fn load(&self) -> Result<Remembered> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Remembered::default()),
            Err(e) => return Err(self.error("read", e.to_string())),
        };
        let file: StateFile =
            serde_json::from_slice(&bytes).map_err(|e| self.error("parse", e.to_string()))?;
        if file.version != VERSION {
            return Err(self.error(
                "parse",
                format!("version {} is not {VERSION}", file.version),
            ));
        }
        from_file(file).map_err(|e| self.error("validate", e.to_string()))
    }

    /// Replaces the file with `state`, atomically.
    pub fn save(&self, state: &Remembered) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(&to_file(state))
            .map_err(|e| self.error("serialise", e.to_string()))?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)
            .map_err(|e| self.error("create directory for", e.to_string()))?;
        let tmp = self.path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            self.error("write", e.to_string())
        })
    }

    fn error(&self, op: &str, detail: String) -> NetworkError {
        NetworkError::State {
            detail: format!("cannot {op} {}: {detail}", self.path.display()),
        }
    }
}

fn to_file(state: &Remembered) -> StateFile {
    let mut bridge_users: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (vm, br) in &state.bridge_users {
        bridge_users
            .entry(br.as_str().to_owned())
            .or_default()
            .push(vm.to_string());
    }
    StateFile {
        version: VERSION,
        security_groups: state.groups.values().map(store_group).collect(),
        bridge_users,
    }
}

fn from_file(file: StateFile) -> Result<Remembered> {
    let mut groups = BTreeMap::new();
    for m in &file.security_groups {
        let rules = load_group(m)?;
        groups.insert(rules.vm, rules);
    }
    let mut bridge_users = Vec::new();
    for (br, vms) in &file.bridge_users {
        let bridge = IfName::new(br)?;
        for vm in vms {
            bridge_users.push((vm_uuid(vm)?, bridge.clone()));
        }
    }
    Ok(Remembered {
        groups,
        bridge_users,
    })
}

fn vm_uuid(s: &str) -> Result<VmUuid> {
    uuid::Uuid::parse_str(s)
        .map(VmUuid)
        .map_err(|_| NetworkError::invalid(format!("vm_uuid {s:?} is not a UUID")))
}

fn store_group(v: &VmRules) -> StoredGroup {
    StoredGroup {
        vm_uuid: v.vm.to_string(),
        nics: v
            .ports
            .iter()
            .map(|p| StoredNic {
                tap: p.tap.as_str().to_owned(),
                bridge: p.bridge.as_str().to_owned(),
                mac: p.mac.to_string(),
                ips: p.ips.iter().map(ToString::to_string).collect(),
            })
            .collect(),
        rules: v.rules.iter().map(store_rule).collect(),
    }
}

fn store_rule(r: &Rule) -> StoredRule {
    StoredRule {
        direction: match r.direction {
            Direction::Ingress => 1,
            Direction::Egress => 2,
        },
        protocol: match r.protocol {
            Protocol::Tcp => 1,
            Protocol::Udp => 2,
            Protocol::Icmp => 3,
            Protocol::Icmpv6 => 4,
            Protocol::All => 5,
        },
        ports: r.ports.map(|p| StoredPorts {
            start: p.start().into(),
            end: p.end().into(),
        }),
        icmp_type: r.icmp.map(|i| i.icmp_type.into()),
        icmp_code: r.icmp.and_then(|i| i.code).map(Into::into),
        cidrs: r.cidrs.iter().map(ToString::to_string).collect(),
    }
}

fn load_group(g: &StoredGroup) -> Result<VmRules> {
    let rules = VmRules {
        vm: vm_uuid(&g.vm_uuid)?,
        ports: g.nics.iter().map(load_nic).collect::<Result<_>>()?,
        rules: g.rules.iter().map(load_rule).collect::<Result<_>>()?,
    };
    rules.validate()?;
    Ok(rules)
}

fn load_nic(n: &StoredNic) -> Result<VmPort> {
    Ok(VmPort {
        tap: IfName::new(&n.tap)?,
        bridge: IfName::new(&n.bridge)?,
        mac: parse_mac(&n.mac)?,
        ips: n
            .ips
            .iter()
            .map(|i| {
                i.parse().map_err(|_| {
                    NetworkError::invalid(format!("NIC address {i:?} is not an IP address"))
                })
            })
            .collect::<Result<_>>()?,
    })
}

fn load_rule(r: &StoredRule) -> Result<Rule> {
    let direction = match r.direction {
        1 => Direction::Ingress,
        2 => Direction::Egress,
        d => {
            return Err(NetworkError::invalid(format!(
                "rule direction {d} is not 1 or 2"
            )))
        }
    };
    let protocol = match r.protocol {
        1 => Protocol::Tcp,
        2 => Protocol::Udp,
        3 => Protocol::Icmp,
        4 => Protocol::Icmpv6,
        5 => Protocol::All,
        p => {
            return Err(NetworkError::invalid(format!(
                "rule protocol {p} is not 1..5"
            )))
        }
    };
    let byte = |v: u32| {
        u8::try_from(v).map_err(|_| NetworkError::invalid(format!("ICMP value {v} exceeds 255")))
    };
    let icmp = match (r.icmp_type, r.icmp_code) {
        (Some(t), c) => Some(IcmpMatch {
            icmp_type: byte(t)?,
            code: c.map(byte).transpose()?,
        }),
        (None, None) => None,
        (None, Some(_)) => return Err(NetworkError::invalid("an ICMP code needs an ICMP type")),
    };
    Ok(Rule {
        direction,
        protocol,
        ports: r
            .ports
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

#[cfg(test)]
mod tests {
    use super::*;

    fn group() -> VmRules {
        VmRules {
            vm: VmUuid(uuid::Uuid::from_bytes([3; 16])),
            ports: vec![VmPort {
                tap: IfName::new("vnet3").unwrap(),
                bridge: IfName::new("brvx-9").unwrap(),
                mac: parse_mac("52:54:00:00:00:03").unwrap(),
                ips: vec!["10.1.0.3".parse().unwrap(), "fd00::3".parse().unwrap()],
            }],
            rules: vec![Rule {
                direction: Direction::Ingress,
                protocol: Protocol::Tcp,
                ports: Some(PortRange::new(22, 22).unwrap()),
                icmp: None,
                cidrs: vec!["10.0.0.0/8".parse().unwrap()],
            }],
        }
    }

    #[test]
    fn round_trips_and_is_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path().join("net").join("network-state.json"));
        assert_eq!(store.load().unwrap(), Remembered::default());
        let g = group();
        let state = Remembered {
            groups: [(g.vm, g.clone())].into(),
            bridge_users: vec![(g.vm, IfName::new("brvx-9").unwrap())],
        };
        store.save(&state).unwrap();
        assert_eq!(store.load().unwrap(), state);
        assert!(!store.path().with_extension("tmp").exists());
    }

    #[test]
    fn a_damaged_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path().join("network-state.json"));
        std::fs::write(
            store.path(),
            b"{\"version\": 1, \"security_groups\": [{\"vm_uuid\": \"x\"}]}",
        )
        .unwrap();
        let e = store.load().unwrap_err().to_string();
        assert!(
            e.contains("network-state.json") && e.contains("vm_uuid"),
            "{e}"
        );
        std::fs::write(store.path(), b"{\"version\": 7}").unwrap();
        assert!(store.load().unwrap_err().to_string().contains("version 7"));
    }

    /// A file as version 1 of the agent wrote it (the wire message's JSON):
    /// an upgraded agent keeps the groups in force.
    #[test]
    fn reads_the_file_an_older_agent_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path().join("network-state.json"));
        std::fs::write(
            store.path(),
            br#"{
  "version": 1,
  "security_groups": [
    {
      "vm_uuid": "03030303-0303-0303-0303-030303030303",
      "nics": [
        {"tap": "vnet3", "bridge": "brvx-9", "mac": "52:54:00:00:00:03", "ips": ["10.1.0.3", "fd00::3"]}
      ],
      "rules": [
        {"direction": 1, "protocol": 1, "ports": {"start": 22, "end": 22},
         "icmp_type": null, "icmp_code": null, "cidrs": ["10.0.0.0/8"]}
      ]
    }
  ],
  "bridge_users": {"brvx-9": ["03030303-0303-0303-0303-030303030303"]}
}"#,
        )
        .unwrap();
        let g = group();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.groups.get(&g.vm), Some(&g));
        assert_eq!(
            loaded.bridge_users,
            vec![(g.vm, IfName::new("brvx-9").unwrap())]
        );
    }
}
