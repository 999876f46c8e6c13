//! Guest networks on this host: bridges, VLAN and VXLAN plumbing (netlink),
//! per-VM security groups (nftables) and traffic counters.
//!
//! [`Network`] is the one entry point the rest of the agent uses. It
//! serialises every change behind one lock (networks and rulesets are host
//! wide), keeps the reference counts of bridges by VM and the last applied
//! security groups. Wire types never enter here: the agent's edge translates them.

pub mod bridge;
pub mod counters;
pub mod error;
pub mod names;
pub mod netlink;
pub mod nft;
pub mod persist;
pub mod ruleset;
pub mod secgroup;

use std::path::{Path, PathBuf};

use tokio::sync::Mutex;

pub use bridge::{NetworkSpec, VxlanFlood};
pub use counters::{Traffic, TrafficReport};
pub use error::{ErrorKind, NetworkError, Result};
pub use names::{IfName, Mtu, VlanId, Vni};
pub use secgroup::{
    parse_mac, Cidr, Direction, IcmpMatch, MacAddr, PortRange, Protocol, Rule, VmPort, VmRules,
};

pub use csagent_core::VmUuid;

#[derive(Default)]
struct State {
    bridges: bridge::Bridges,
    applied: secgroup::Applied,
}

/// Guest networking of this host (one per agent).
pub struct Network {
    nl: netlink::Netlink,
    nft: nft::Nft,
    state: Mutex<State>,
    /// Where groups and bridge users are remembered; None in tests that
    /// play a fresh process.
    store: Option<persist::StateStore>,
}

impl Network {
    /// Opens netlink in the calling thread's network namespace; must run
    /// inside a tokio runtime. nft runs as `nft` from PATH.
    pub fn new() -> Result<Self> {
        Self::with_nft(nft::Nft::default())
    }

    pub fn with_nft(nft: nft::Nft) -> Result<Self> {
        Ok(Self {
            nl: netlink::Netlink::connect()?,
            nft,
            state: Mutex::new(State::default()),
            store: None,
        })
    }

    /// Remembers groups and bridge users in `path` from now on, starting
    /// from what it already holds: an agent that restarted extends the
    /// tables in force instead of replacing them with one VM's group. A
    /// damaged file is set aside (renamed `.damaged`) and reported; the
    /// state is then rebuilt from the next commands and [`Network::restore`].
    pub fn remember_in(mut self, path: PathBuf) -> Self {
        let store = persist::StateStore::new(path);
        let mut st = State::default();
        match store.load() {
            Ok(r) => {
                st.bridges.rebuild(&r.bridge_users);
                st.applied.fingerprints = r
                    .groups
                    .iter()
                    .map(|(k, v)| (*k, v.fingerprint()))
                    .collect();
                st.applied.vms = r.groups;
            }
            Err(e) => {
                let aside = store.path().with_extension("damaged");
                let _ = std::fs::rename(store.path(), &aside);
                tracing::error!(error = %e, moved_to = %aside.display(), "network state not restored");
            }
        }
        self.state = Mutex::new(st);
        self.store = Some(store);
        self
    }

    /// Agent start, once libvirt listed the VMs: puts the remembered group
    /// of every running VM back in force in one transaction (after a host
    /// reboot the kernel has none) and forgets the groups of VMs that are no
    /// longer running. Returns how many groups are in force.
    pub async fn restore(&self, running: &[VmUuid]) -> Result<usize> {
        let keep: Vec<VmRules> = {
            let st = self.state.lock().await;
            if st.applied.vms.is_empty() {
                // Nothing remembered (first start): leave the kernel alone.
                return Ok(0);
            }
            st.applied
                .vms
                .values()
                .filter(|v| running.contains(&v.vm))
                .cloned()
                .collect()
        };
        self.reapply_all(&keep).await?;
        Ok(keep.len())
    }

    /// Writes the state file; a failure is logged, not returned: the kernel
    /// change it follows has already happened and must be reported as done.
    fn remember(&self, st: &State) {
        let Some(store) = &self.store else { return };
        let r = persist::Remembered {
            groups: st.applied.vms.clone(),
            bridge_users: st.bridges.pairs(),
        };
        if let Err(e) = store.save(&r) {
            tracing::error!(error = %e, "network state not saved; an agent restart would forget it");
        }
    }

    /// Makes sure `spec`'s bridge exists (creating bridge and uplink if
    /// needed) and records `vm` as one of its users. Returns the bridge name
    /// to put in the domain XML.
    pub async fn ensure_network(&self, vm: VmUuid, spec: &NetworkSpec) -> Result<IfName> {
        let mut st = self.state.lock().await;
        let br = bridge::ensure(&self.nl, spec, &mut st.bridges).await?;
        st.bridges.add_user(&br, vm);
        self.remember(&st);
        Ok(br)
    }

    /// `vm` no longer uses `bridge`; deletes it (and its uplink) when no
    /// csagent VM uses it and no other port is attached. True if deleted.
    pub async fn release_network(&self, vm: VmUuid, bridge: &IfName) -> Result<bool> {
        let mut st = self.state.lock().await;
        let unused = st.bridges.remove_user(bridge, vm);
        self.remember(&st);
        if !unused {
            return Ok(false);
        }
        let before = self.nl.link(bridge.as_str()).await?.is_some();
        bridge::remove(&self.nl, bridge).await?;
        Ok(before && self.nl.link(bridge.as_str()).await?.is_none())
    }

    /// Releases every bridge `vm` uses (VM stopped or destroyed).
    pub async fn release_vm(&self, vm: VmUuid) -> Result<()> {
        let bridges = self.state.lock().await.bridges.of_vm(vm);
        for br in bridges {
            self.release_network(vm, &br).await?;
        }
        Ok(())
    }

    /// Agent start: the (VM, bridge) pairs in use, read from libvirt domains.
    pub async fn rebuild_users(&self, in_use: &[(VmUuid, IfName)]) {
        self.state.lock().await.bridges.rebuild(in_use);
    }

    /// Number of csagent VMs using `bridge`.
    pub async fn bridge_users(&self, bridge: &IfName) -> usize {
        self.state.lock().await.bridges.users(bridge)
    }

    /// Puts `rules` in force for its VM, replacing its previous group in the
    /// same transaction (no open window). Returns false when nothing changed
    /// (no nft run).
    pub async fn apply_security_group(&self, rules: VmRules) -> Result<bool> {
        rules.validate()?;
        let mut st = self.state.lock().await;
        if st.applied.unchanged(&rules) {
            return Ok(false);
        }
        check_br_netfilter()?;
        let mut next = st.applied.vms.clone();
        let (vm, fp) = (rules.vm, rules.fingerprint());
        let same_ports = next.get(&vm).is_some_and(|old| old.ports == rules.ports);
        next.insert(vm, rules);
        secgroup::check_unique(&next)?;
        self.install_changed(vm, same_ports, &next).await?;
        st.applied.vms = next;
        st.applied.fingerprints.insert(vm, fp);
        self.remember(&st);
        Ok(true)
    }

    /// Removes `vm`'s rules (a no-op if it has none).
    pub async fn remove_security_group(&self, vm: VmUuid) -> Result<()> {
        let mut st = self.state.lock().await;
        if !st.applied.vms.contains_key(&vm) {
            return Ok(());
        }
        let mut next = st.applied.vms.clone();
        next.remove(&vm);
        self.install(&next).await?;
        st.applied.vms = next;
        st.applied.fingerprints.remove(&vm);
        self.remember(&st);
        Ok(())
    }

    /// Agent restart: replaces csagent's tables with the groups of every
    /// running VM in one transaction (stale VMs' rules disappear).
    pub async fn reapply_all(&self, all: &[VmRules]) -> Result<()> {
        for r in all {
            r.validate()?;
        }
        let mut st = self.state.lock().await;
        let next: std::collections::BTreeMap<VmUuid, VmRules> =
            all.iter().map(|r| (r.vm, r.clone())).collect();
        secgroup::check_unique(&next)?;
        if !next.is_empty() {
            check_br_netfilter()?;
        }
        self.install(&next).await?;
        st.applied.fingerprints = next.iter().map(|(k, v)| (*k, v.fingerprint())).collect();
        st.applied.vms = next;
        self.remember(&st);
        Ok(())
    }

    /// Only the rules of `vm` changed when its ports did not: rewrite its
    /// two chains alone. If that fails (someone removed csagent's tables),
    /// the whole ruleset is installed instead, still atomically.
    async fn install_changed(
        &self,
        vm: VmUuid,
        same_ports: bool,
        next: &std::collections::BTreeMap<VmUuid, VmRules>,
    ) -> Result<()> {
        if same_ports {
            if let Some(v) = next.get(&vm) {
                match self.nft.apply(&ruleset::render_vm_update(v)).await {
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        tracing::warn!(%vm, error = %e, "incremental rule update failed; reinstalling csagent's tables")
                    }
                }
            }
        }
        self.install(next).await
    }

    async fn install(&self, vms: &std::collections::BTreeMap<VmUuid, VmRules>) -> Result<()> {
        let doc = if vms.is_empty() {
            ruleset::render_delete()
        } else {
            ruleset::render(vms)
        };
        self.nft.apply(&doc).await
    }

    /// Counters of `taps` and of every csagent network.
    pub async fn counters(&self, taps: &[IfName]) -> Result<TrafficReport> {
        counters::read(&self.nl, taps).await
    }
}

/// Stateful filtering of bridged traffic needs br_netfilter (it hands
/// bridged IP packets to conntrack and the inet hooks).
fn check_br_netfilter() -> Result<()> {
    if Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists() {
        Ok(())
    } else {
        Err(NetworkError::Unavailable {
            what: "filter bridged traffic statefully".into(),
            module: "br_netfilter",
            detail: "/proc/sys/net/bridge is missing".into(),
        })
    }
}
