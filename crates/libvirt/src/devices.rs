//! Device and size changes of a defined domain: attach, detach, update
//! (CD-ROM media), vCPU count and balloon target. Runs on the connection thread.
//!
//! Owns only the libvirt calls and which definitions they touch (`Scope`).
//! Device XML comes rendered from domain/, policy (what may change, limits,
//! managed-only) lives in vm/; this file must not decide either.

use virt::connect::Connect;
use virt::sys;

use super::lifecycle::lookup;
use super::HvError;

/// Which definitions a change applies to: the running VM (`live`) and/or
/// its persistent definition (`config`). A running VM is normally changed in
/// both, a stopped one only in its definition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scope {
    pub live: bool,
    pub config: bool,
}

impl Scope {
    pub fn for_running(running: bool) -> Scope {
        Scope {
            live: running,
            config: true,
        }
    }

    /// The same bit values serve device, vCPU and memory calls
    /// (VIR_DOMAIN_AFFECT_LIVE = 1, _CONFIG = 2).
    fn flags(self) -> u32 {
        let mut f = 0;
        if self.live {
            f |= sys::VIR_DOMAIN_AFFECT_LIVE;
        }
        if self.config {
            f |= sys::VIR_DOMAIN_AFFECT_CONFIG;
        }
        f
    }
}

pub fn attach(c: &Connect, uuid: &uuid::Uuid, xml: &str, scope: Scope) -> Result<(), HvError> {
    lookup(c, uuid)?
        .attach_device_flags(xml, scope.flags())
        .map_err(|e| HvError::libvirt("attach_device", e))
}

pub fn detach(c: &Connect, uuid: &uuid::Uuid, xml: &str, scope: Scope) -> Result<(), HvError> {
    lookup(c, uuid)?
        .detach_device_flags(xml, scope.flags())
        .map_err(|e| HvError::libvirt("detach_device", e))
}

/// Changes a device in place; for a CD-ROM this swaps (or ejects) the media.
pub fn update(c: &Connect, uuid: &uuid::Uuid, xml: &str, scope: Scope) -> Result<(), HvError> {
    lookup(c, uuid)?
        .update_device_flags(xml, scope.flags())
        .map_err(|e| HvError::libvirt("update_device", e))
}

pub fn set_vcpus(c: &Connect, uuid: &uuid::Uuid, n: u32, scope: Scope) -> Result<(), HvError> {
    lookup(c, uuid)?
        .set_vcpus_flags(n, scope.flags())
        .map_err(|e| HvError::libvirt("set_vcpus", e))
}

/// Sets the balloon target (currentMemory), KiB.
pub fn set_memory(c: &Connect, uuid: &uuid::Uuid, kib: u64, scope: Scope) -> Result<(), HvError> {
    lookup(c, uuid)?
        .set_memory_flags(kib, scope.flags())
        .map_err(|e| HvError::libvirt("set_memory", e))
}

/// The domain's XML with secrets (the VNC password) included.
pub fn secure_xml(c: &Connect, uuid: &uuid::Uuid) -> Result<String, HvError> {
    lookup(c, uuid)?
        .xml_desc(sys::VIR_DOMAIN_XML_SECURE)
        .map_err(|e| HvError::libvirt("get_xml_desc", e))
}
