//! ScaleVm: vCPUs and memory of a csagent VM, within the ceilings it was
//! defined with.
//!
//! Owns the limits and their order: every check passes before anything is
//! changed, memory (reversible) goes before vCPUs, and a failed vCPU step
//! puts the memory back. A running VM is changed live and in its definition,
//! and only grown; a stopped VM only in its definition. Domains csagent did
//! not define are refused. libvirt calls live in hypervisor/devices.rs.

use crate::domain::{self, KiB, VmSpec};
use crate::error::{CommandError, ErrorKind};
use crate::hypervisor::devices::{self, Scope};
use crate::hypervisor::{lifecycle, Hypervisor, PowerState, VmInfo};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScaleRequest {
    pub vm: uuid::Uuid,
    pub vcpus: Option<u32>,
    /// New balloon target (currentMemory).
    pub memory: Option<KiB>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Scaled {
    pub info: VmInfo,
    pub max_vcpus: u32,
    pub max_memory: KiB,
    pub changed: bool,
}

/// What actually changes, checked against the domain's definition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub vcpus: Option<u32>,
    pub memory: Option<KiB>,
    /// The values before, to put memory back when the vCPU step fails.
    pub old_memory: KiB,
}

/// The ceilings and current values a request is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Current {
    pub running: bool,
    pub vcpus: u32,
    pub max_vcpus: u32,
    pub memory: KiB,
    pub max_memory: KiB,
    pub balloon: bool,
}

impl Current {
    pub fn of(spec: &VmSpec, running: bool) -> Current {
        Current {
            running,
            vcpus: spec.vcpu.current.unwrap_or(spec.vcpu.max),
            max_vcpus: spec.vcpu.max,
            memory: spec.memory.current.unwrap_or(spec.memory.size),
            max_memory: spec.memory.size,
            balloon: spec.devices.balloon.is_some(),
        }
    }
}

/// Checks a request; Ok holds only the fields that change.
pub fn plan(req: &ScaleRequest, cur: &Current) -> Result<Plan, CommandError> {
    let vm = req.vm;
    let mut p = Plan {
        old_memory: cur.memory,
        ..Plan::default()
    };
    if let Some(n) = req.vcpus {
        if n == 0 || n > cur.max_vcpus {
            return Err(CommandError::invalid(format!(
                "VM {vm}: {n} vCPUs is outside 1..{} (the <vcpu> maximum it was defined with); redefine the VM to raise it",
                cur.max_vcpus
            )));
        }
        if cur.running && n < cur.vcpus {
            return Err(shrink(vm, "vCPUs", u64::from(cur.vcpus), u64::from(n)));
        }
        p.vcpus = (n != cur.vcpus).then_some(n);
    }
    if let Some(m) = req.memory {
        if m.0 == 0 || m > cur.max_memory {
            return Err(CommandError::invalid(format!(
                "VM {vm}: {} KiB of memory is outside 1..{} KiB (the <memory> maximum it was defined with); redefine the VM to raise it",
                m.0, cur.max_memory.0
            )));
        }
        if cur.running && m < cur.memory {
            return Err(shrink(vm, "memory KiB", cur.memory.0, m.0));
        }
        if m != cur.memory {
            if cur.running && !cur.balloon {
                return Err(CommandError::new(
                    ErrorKind::Conflict,
                    format!("VM {vm} has no balloon device (memballoon model none), so its memory can change only while it is stopped"),
                ));
            }
            p.memory = Some(m);
        }
    }
    Ok(p)
}

fn shrink(vm: uuid::Uuid, what: &str, from: u64, to: u64) -> CommandError {
    CommandError::new(
        ErrorKind::Conflict,
        format!("VM {vm} is running: shrinking {what} from {from} to {to} needs the guest's cooperation and is not done live; stop the VM and scale it while stopped"),
    )
}

pub async fn scale(h: &Hypervisor, req: ScaleRequest) -> Result<Scaled, CommandError> {
    let uuid = req.vm;
    super::managed(h, uuid).await?;
    // The persistent definition holds the targets csagent set; the live
    // balloon figure follows the guest's driver and can lag or be absent.
    let xml = h
        .call("get_xml_desc", move |c| lifecycle::xml(c, &uuid, true))
        .await
        .map_err(super::hv)?
        .ok_or_else(|| {
            CommandError::new(
                ErrorKind::NotFound,
                format!("VM {uuid} not found on this host"),
            )
        })?;
    let spec = domain::parse(&xml)
        .map_err(|e| {
            CommandError::new(
                ErrorKind::Internal,
                format!("VM {uuid}: cannot read its domain XML: {e}"),
            )
        })?
        .spec;
    let info = h.vm(uuid).await.map_err(super::hv)?;
    let running = info.state != PowerState::Stopped && info.id.is_some();
    let cur = Current::of(&spec, running);
    let p = plan(&req, &cur)?;
    let scope = Scope::for_running(running);
    if let Some(m) = p.memory {
        h.call("set_memory", move |c| {
            devices::set_memory(c, &uuid, m.0, scope)
        })
        .await
        .map_err(super::hv)?;
    }
    if let Some(n) = p.vcpus {
        let r = h
            .call("set_vcpus", move |c| devices::set_vcpus(c, &uuid, n, scope))
            .await;
        if let Err(e) = r {
            if p.memory.is_some() {
                let old = p.old_memory.0;
                // Best effort: the error below is what the plane must see.
                let _ = h
                    .call("set_memory", move |c| {
                        devices::set_memory(c, &uuid, old, scope)
                    })
                    .await;
            }
            return Err(CommandError::new(
                e.kind(),
                format!("VM {uuid}: setting {n} vCPUs failed (memory was put back): {e}"),
            ));
        }
    }
    Ok(Scaled {
        info: h.vm(uuid).await.map_err(super::hv)?,
        max_vcpus: cur.max_vcpus,
        max_memory: cur.max_memory,
        changed: p.vcpus.is_some() || p.memory.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cur(running: bool) -> Current {
        Current {
            running,
            vcpus: 2,
            max_vcpus: 4,
            memory: KiB(65536),
            max_memory: KiB(131072),
            balloon: true,
        }
    }

    fn req(vcpus: Option<u32>, mem: Option<u64>) -> ScaleRequest {
        ScaleRequest {
            vm: uuid::Uuid::from_u128(7),
            vcpus,
            memory: mem.map(KiB),
        }
    }

    #[test]
    fn within_limits_plans_only_changes() {
        let p = plan(&req(Some(4), Some(65536)), &cur(true)).unwrap();
        assert_eq!(p.vcpus, Some(4));
        assert_eq!(p.memory, None);
    }

    #[test]
    fn beyond_limits_names_the_limit() {
        let e = plan(&req(Some(5), None), &cur(true)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert!(e.message.contains("1..4"), "{}", e.message);
        let e = plan(&req(Some(3), Some(131073)), &cur(false)).unwrap_err();
        assert!(e.message.contains("131072 KiB"), "{}", e.message);
    }

    #[test]
    fn running_vm_only_grows() {
        let e = plan(&req(Some(1), None), &cur(true)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Conflict);
        assert_eq!(
            plan(&req(Some(1), Some(32768)), &cur(false)).unwrap().vcpus,
            Some(1)
        );
    }

    #[test]
    fn no_balloon_no_live_memory() {
        let mut c = cur(true);
        c.balloon = false;
        let e = plan(&req(None, Some(100000)), &c).unwrap_err();
        assert!(e.message.contains("balloon"), "{}", e.message);
    }
}
