//! What the network module must remember across agent restarts: the
//! security groups in force and which VMs use which bridge.
//!
//! The kernel keeps csagent's nftables tables when the agent restarts, but
//! the agent's memory of them is gone; without this file the next group
//! applied would rebuild the tables from that one VM and open every other
//! VM on the host. Groups are stored in their wire form (a versioned,
//! documented format) and validated again when loaded. Writes are atomic
//! (temporary file, fsync, rename), so a crash leaves the old or the new
//! state, never half of one. This file does no kernel access.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::convert;
use super::error::{NetworkError, Result};
use super::names::IfName;
use super::secgroup::VmRules;
use super::VmUuid;
use crate::proto::v1 as pb;

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
    security_groups: Vec<pb::ApplySecurityGroup>,
    /// bridge name -> UUIDs of the csagent VMs using it.
    bridge_users: BTreeMap<String, Vec<String>>,
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
        security_groups: state
            .groups
            .values()
            .map(convert::security_group_message)
            .collect(),
        bridge_users,
    }
}

fn from_file(file: StateFile) -> Result<Remembered> {
    let mut groups = BTreeMap::new();
    for m in &file.security_groups {
        let rules = convert::apply_security_group(m)?;
        groups.insert(rules.vm, rules);
    }
    let mut bridge_users = Vec::new();
    for (br, vms) in &file.bridge_users {
        let bridge = IfName::new(br)?;
        for vm in vms {
            bridge_users.push((convert::vm_uuid(vm)?, bridge.clone()));
        }
    }
    Ok(Remembered {
        groups,
        bridge_users,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::secgroup::{Direction, PortRange, Protocol, Rule, VmPort};

    fn group() -> VmRules {
        VmRules {
            vm: VmUuid(uuid::Uuid::from_bytes([3; 16])),
            ports: vec![VmPort {
                tap: IfName::new("vnet3").unwrap(),
                bridge: IfName::new("brvx-9").unwrap(),
                mac: "52:54:00:00:00:03".parse().unwrap(),
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
}
