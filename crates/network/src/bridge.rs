//! Guest bridges of VLAN and VXLAN networks: plans the links a network needs,
//! creates what is missing (idempotently, rolling back on failure), and
//! removes a bridge only when no csagent VM uses it any more.
//!
//! Ownership: every link csagent creates carries an ifalias
//! `csagent:<network identity>`. A link with the right name but no such
//! alias is someone else's and is never changed or deleted; one with a
//! csagent alias for another network is a conflict. Links go through
//! netlink.rs only; this file never runs a command.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::error::{NetworkError, Result};
use super::names::{self, IfName, Mtu, VlanId, Vni};
use super::netlink::{Link, Netlink, VxlanParams, VXLAN_PORT};
use super::VmUuid;

/// Prefix of the ifalias that marks a link as csagent's.
pub const ALIAS_PREFIX: &str = "csagent:";

/// How a VXLAN network floods broadcast and unknown traffic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VxlanFlood {
    /// A multicast group joined on the underlay device.
    Group(IpAddr),
    /// Unicast head-end replication to these VTEPs (other hosts' underlay IPs).
    Peers(Vec<IpAddr>),
}

/// A guest network to plumb on this host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NetworkSpec {
    /// 802.1Q VLAN `vlan` on the physical (traffic-labelled) device.
    Vlan {
        physical: IfName,
        vlan: VlanId,
        /// None: inherit the physical device's MTU.
        mtu: Option<Mtu>,
    },
    /// VXLAN `vni` over `underlay`, UDP port 4789.
    Vxlan {
        vni: Vni,
        underlay: IfName,
        flood: VxlanFlood,
        /// None: underlay MTU minus the VXLAN overhead (50 bytes over IPv4,
        /// 70 over IPv6).
        mtu: Option<Mtu>,
    },
}

/// The links a network consists of, with the alias that marks them.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub bridge: IfName,
    pub uplink: IfName,
    pub alias: String,
}

impl NetworkSpec {
    /// Names and ownership mark of this network's links (pure).
    pub(crate) fn plan(&self) -> Plan {
        match self {
            Self::Vlan { physical, vlan, .. } => Plan {
                bridge: names::vlan_bridge_name(physical, *vlan),
                uplink: names::vlan_subif_name(physical, *vlan),
                alias: format!("{ALIAS_PREFIX}vlan:{physical}:{}", vlan.get()),
            },
            Self::Vxlan {
                vni,
                underlay,
                flood,
                ..
            } => {
                let mode = match flood {
                    VxlanFlood::Group(g) => format!("group={g}"),
                    VxlanFlood::Peers(_) => "unicast".to_owned(),
                };
                Plan {
                    bridge: names::vxlan_bridge_name(*vni),
                    uplink: names::vxlan_dev_name(*vni),
                    alias: format!("{ALIAS_PREFIX}vxlan:{}:{underlay}:{mode}", vni.get()),
                }
            }
        }
    }

    /// Bridge name this network is given (pure; no kernel access).
    pub fn bridge_name(&self) -> IfName {
        self.plan().bridge
    }

    fn lower(&self) -> &IfName {
        match self {
            Self::Vlan { physical, .. } => physical,
            Self::Vxlan { underlay, .. } => underlay,
        }
    }

    fn mtu_for(&self, lower: &Link) -> Result<Mtu> {
        match self {
            Self::Vlan { mtu: Some(m), .. } | Self::Vxlan { mtu: Some(m), .. } => Ok(*m),
            Self::Vlan { .. } => Mtu::new(lower.mtu),
            Self::Vxlan { flood, .. } => {
                let v6 = match flood {
                    VxlanFlood::Group(g) => g.is_ipv6(),
                    VxlanFlood::Peers(p) => p.iter().any(IpAddr::is_ipv6),
                };
                Mtu::new(lower.mtu.saturating_sub(if v6 { 70 } else { 50 }))
            }
        }
    }

    /// Checks what types cannot: peers and groups make sense.
    pub fn validate(&self) -> Result<()> {
        match self {
            Self::Vxlan {
                flood: VxlanFlood::Group(g),
                ..
            } if !g.is_multicast() => Err(NetworkError::invalid(format!(
                "VXLAN group {g} is not a multicast address"
            ))),
            Self::Vxlan {
                flood: VxlanFlood::Peers(p),
                ..
            } => match p.iter().find(|a| a.is_multicast() || a.is_unspecified()) {
                Some(a) => Err(NetworkError::invalid(format!(
                    "VXLAN peer {a} is not a unicast address"
                ))),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }
}

/// What [`inspect`] found for one planned link.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    Missing,
    Ours(u32),
}

/// Classifies an existing link against the plan: missing, ours (same
/// network), or a conflict error.
fn inspect(
    existing: Option<&Link>,
    plan: &Plan,
    want_kind: &str,
    check: impl Fn(&Link) -> Option<String>,
) -> Result<Found> {
    let Some(l) = existing else {
        return Ok(Found::Missing);
    };
    let have = l.alias.clone().unwrap_or_default();
    if !have.starts_with(ALIAS_PREFIX) {
        return Err(NetworkError::Foreign {
            name: l.name.clone(),
            detail: format!(
                "kind {}, no csagent alias",
                l.kind.as_deref().unwrap_or("physical")
            ),
        });
    }
    if have != plan.alias || l.kind.as_deref() != Some(want_kind) {
        return Err(NetworkError::Mismatch {
            name: l.name.clone(),
            have: format!("{have} ({})", l.kind.as_deref().unwrap_or("?")),
            want: plan.alias.clone(),
        });
    }
    if let Some(diff) = check(l) {
        return Err(NetworkError::Mismatch {
            name: l.name.clone(),
            have: diff,
            want: plan.alias.clone(),
        });
    }
    Ok(Found::Ours(l.index))
}

fn mtu_check(l: &Link, want: Option<Mtu>) -> Option<String> {
    match want {
        Some(m) if m.get() != l.mtu => Some(format!("MTU {} instead of {}", l.mtu, m.get())),
        _ => None,
    }
}

/// Reference counts of guest bridges by VM, and the specs they were made from.
#[derive(Debug, Default)]
pub struct Bridges {
    users: BTreeMap<IfName, BTreeSet<VmUuid>>,
    /// Flood lists this process set, by VXLAN ifindex (a recreated device
    /// gets a new index, so a stale entry never matches).
    peers: BTreeMap<u32, BTreeSet<IpAddr>>,
}

impl Bridges {
    /// Replaces the user sets with what libvirt says is in use (agent start).
    pub fn rebuild(&mut self, in_use: &[(VmUuid, IfName)]) {
        self.users.clear();
        for (vm, br) in in_use {
            self.users.entry(br.clone()).or_default().insert(*vm);
        }
    }

    pub fn add_user(&mut self, bridge: &IfName, vm: VmUuid) {
        self.users.entry(bridge.clone()).or_default().insert(vm);
    }

    /// Removes `vm` from `bridge`'s users; true when nobody uses it any more.
    pub fn remove_user(&mut self, bridge: &IfName, vm: VmUuid) -> bool {
        match self.users.get_mut(bridge) {
            Some(set) => {
                set.remove(&vm);
                if set.is_empty() {
                    self.users.remove(bridge);
                    true
                } else {
                    false
                }
            }
            None => true,
        }
    }

    /// Bridges `vm` uses.
    pub fn of_vm(&self, vm: VmUuid) -> Vec<IfName> {
        self.users
            .iter()
            .filter(|(_, s)| s.contains(&vm))
            .map(|(b, _)| b.clone())
            .collect()
    }

    /// Every (VM, bridge) use, to remember across restarts.
    pub fn pairs(&self) -> Vec<(VmUuid, IfName)> {
        self.users
            .iter()
            .flat_map(|(b, vms)| vms.iter().map(move |v| (*v, b.clone())))
            .collect()
    }

    pub fn users(&self, bridge: &IfName) -> usize {
        self.users.get(bridge).map_or(0, BTreeSet::len)
    }
}

/// Makes sure the network's bridge and uplink exist, are csagent's, are
/// configured as `spec` says and are up. Creates what is missing; on failure
/// deletes what this call created. Returns the bridge name.
pub async fn ensure(nl: &Netlink, spec: &NetworkSpec, known: &mut Bridges) -> Result<IfName> {
    spec.validate()?;
    let plan = spec.plan();
    // Three targeted lookups on one socket, concurrently: a full dump costs
    // milliseconds on a host with hundreds of taps.
    let (lower, br_link, up_link) = futures::try_join!(
        nl.link(spec.lower().as_str()),
        nl.link(plan.bridge.as_str()),
        nl.link(plan.uplink.as_str())
    )?;
    let lower = lower.ok_or_else(|| {
        NetworkError::invalid(format!(
            "device {} does not exist on this host; check the network's traffic label",
            spec.lower()
        ))
    })?;
    let mtu = spec.mtu_for(&lower)?;
    let want_mtu = match spec {
        NetworkSpec::Vlan { mtu, .. } | NetworkSpec::Vxlan { mtu, .. } => *mtu,
    };
    let br = inspect(br_link.as_ref(), &plan, "bridge", |l| {
        mtu_check(l, want_mtu)
    })?;
    let up = inspect(up_link.as_ref(), &plan, uplink_kind(spec), |l| {
        uplink_diff(spec, l, lower.index).or_else(|| mtu_check(l, want_mtu))
    })?;
    let existing = Existing {
        bridge: br_link.as_ref(),
        uplink: up_link.as_ref(),
    };
    let mut created = Vec::new();
    let target = Target {
        spec,
        plan: &plan,
        mtu,
        lower: lower.index,
    };
    let res = build(nl, &target, (&br, &up), &existing, known, &mut created).await;
    if let Err(e) = res {
        for idx in created.into_iter().rev() {
            if let Err(undo) = nl.delete(idx).await {
                tracing::error!(ifindex = idx, error = %undo, "rollback of a half-made network failed");
            }
        }
        return Err(e);
    }
    Ok(plan.bridge)
}

/// What a network should look like on this host.
struct Target<'a> {
    spec: &'a NetworkSpec,
    plan: &'a Plan,
    mtu: Mtu,
    lower: u32,
}

/// The planned links as found before this call changed anything.
struct Existing<'a> {
    bridge: Option<&'a Link>,
    uplink: Option<&'a Link>,
}

fn uplink_kind(spec: &NetworkSpec) -> &'static str {
    match spec {
        NetworkSpec::Vlan { .. } => "vlan",
        NetworkSpec::Vxlan { .. } => "vxlan",
    }
}

/// Difference between an existing csagent uplink and the spec, if any.
fn uplink_diff(spec: &NetworkSpec, l: &Link, lower: u32) -> Option<String> {
    match spec {
        NetworkSpec::Vlan { vlan, .. } => (l.vlan_id != Some(vlan.get())
            || l.parent != Some(lower))
        .then(|| format!("vlan {:?} on ifindex {:?}", l.vlan_id, l.parent)),
        NetworkSpec::Vxlan { vni, flood, .. } => {
            let x = l.vxlan.clone().unwrap_or_default();
            let group = match flood {
                VxlanFlood::Group(g) => Some(*g),
                VxlanFlood::Peers(_) => None,
            };
            (x.vni != vni.get()
                || x.port != VXLAN_PORT
                || x.group != group
                || x.underlay != Some(lower))
            .then(|| {
                format!(
                    "vni {} port {} group {:?} underlay {:?}",
                    x.vni, x.port, x.group, x.underlay
                )
            })
        }
    }
}

async fn build(
    nl: &Netlink,
    t: &Target<'_>,
    found: (&Found, &Found),
    existing: &Existing<'_>,
    known: &mut Bridges,
    created: &mut Vec<u32>,
) -> Result<()> {
    let br_idx = match found.0 {
        Found::Ours(i) => *i,
        Found::Missing => {
            nl.add_bridge(&t.plan.bridge, t.mtu)
                .await
                .map_err(|e| exists_is_foreign(e, &t.plan.bridge))?;
            let i = index_of(nl, &t.plan.bridge).await?;
            created.push(i);
            nl.set_alias(i, &t.plan.alias).await?;
            i
        }
    };
    let up_idx = match found.1 {
        Found::Ours(i) => *i,
        Found::Missing => {
            create_uplink(nl, t.spec, t.plan, t.mtu, t.lower).await?;
            let i = index_of(nl, &t.plan.uplink).await?;
            created.push(i);
            nl.set_alias(i, &t.plan.alias).await?;
            i
        }
    };
    if let NetworkSpec::Vxlan {
        flood: VxlanFlood::Peers(peers),
        ..
    } = t.spec
    {
        let want: BTreeSet<IpAddr> = peers.iter().copied().collect();
        // The fdb dump lists every entry of the host: skip it when this
        // process already made the flood list equal to `want`.
        if known.peers.get(&up_idx) != Some(&want) {
            known.peers.remove(&up_idx);
            reconcile_peers(nl, up_idx, &want).await?;
            known.peers.insert(up_idx, want);
        }
    }
    if existing.uplink.is_none_or(|l| l.master != Some(br_idx)) {
        nl.set_master(up_idx, br_idx).await?;
    }
    if existing.bridge.is_none_or(|l| !l.up) {
        nl.set_up(br_idx).await?;
    }
    if existing.uplink.is_none_or(|l| !l.up) {
        nl.set_up(up_idx).await?;
    }
    Ok(())
}

async fn create_uplink(
    nl: &Netlink,
    spec: &NetworkSpec,
    plan: &Plan,
    mtu: Mtu,
    lower: u32,
) -> Result<()> {
    let r = match spec {
        NetworkSpec::Vlan { vlan, .. } => nl.add_vlan(&plan.uplink, lower, *vlan, mtu).await,
        NetworkSpec::Vxlan { vni, flood, .. } => {
            let group = match flood {
                VxlanFlood::Group(g) => Some(*g),
                VxlanFlood::Peers(_) => None,
            };
            let p = VxlanParams {
                vni: *vni,
                underlay: lower,
                group,
                mtu,
            };
            nl.add_vxlan(&plan.uplink, &p).await
        }
    };
    r.map_err(|e| exists_is_foreign(e, &plan.uplink))
}

/// EEXIST on create means a link csagent did not see in its dump (a race) or
/// a foreign device holding the same VLAN/VNI under another name.
fn exists_is_foreign(e: NetworkError, name: &IfName) -> NetworkError {
    if super::netlink::errno_of(&e) == Some(libc::EEXIST) {
        NetworkError::Foreign {
            name: name.to_string(),
            detail:
                "the kernel refused it as a duplicate (another device may use the same VLAN or VNI)"
                    .into(),
        }
    } else {
        e
    }
}

async fn index_of(nl: &Netlink, name: &IfName) -> Result<u32> {
    nl.link(name.as_str())
        .await?
        .map(|l| l.index)
        .ok_or_else(|| NetworkError::NoSuchLink(name.to_string()))
}

/// Makes the flood entries of a unicast VXLAN device equal to `peers`.
async fn reconcile_peers(nl: &Netlink, idx: u32, want: &BTreeSet<IpAddr>) -> Result<()> {
    let have: BTreeSet<IpAddr> = nl.fdb_remotes(idx).await?.into_iter().collect();
    for p in want.difference(&have) {
        nl.fdb_append(idx, *p).await?;
    }
    for p in have.difference(want) {
        nl.fdb_delete(idx, *p).await?;
    }
    Ok(())
}

/// Deletes the network's uplink and bridge if they are csagent's and no
/// foreign port is still attached. Missing links are fine (already gone).
pub async fn remove(nl: &Netlink, bridge: &IfName) -> Result<()> {
    let links = nl.links().await?;
    let Some(br) = links.iter().find(|l| l.name == bridge.as_str()) else {
        return Ok(());
    };
    let alias = br.alias.clone().unwrap_or_default();
    if !alias.starts_with(ALIAS_PREFIX) {
        return Err(NetworkError::Foreign {
            name: bridge.to_string(),
            detail: "refusing to delete a bridge csagent did not create".into(),
        });
    }
    let ports: Vec<&Link> = links
        .iter()
        .filter(|l| l.master == Some(br.index))
        .collect();
    let (ours, others): (Vec<&Link>, Vec<&Link>) = ports
        .into_iter()
        .partition(|l| l.alias.as_deref() == Some(alias.as_str()));
    if !others.is_empty() {
        let names: Vec<&str> = others.iter().map(|l| l.name.as_str()).collect();
        tracing::warn!(bridge = %bridge, ports = ?names, "bridge kept: ports csagent does not know are still attached");
        return Ok(());
    }
    for l in ours {
        nl.delete(l.index).await?;
    }
    nl.delete(br.index).await
}
