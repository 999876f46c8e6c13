//! Guest networks on this host: bridges, VLAN and VXLAN plumbing, per-VM
//! security groups and traffic counters.
pub mod error;
pub mod names;
pub mod netlink;
pub mod bridge;

/// A VM's identity (its libvirt/CloudStack UUID).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VmUuid(pub uuid::Uuid);

impl std::fmt::Display for VmUuid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
