//! ScaleVm: vCPUs and memory of a csagent VM, within the ceilings it was
//! defined with.
//!
//! Owns the limits and their order: every check passes before anything is
//! changed. Memory moves the balloon target within `<memory>`; beyond it, a
//! VM defined for hotplug (`<maxMemory slots>` and a NUMA cell) gets a DIMM,
//! up to `<maxMemory>`. Reversible steps go first: the balloon, then vCPUs
//! (a failed vCPU step puts the balloon back), then the DIMM, which cannot be
//! pulled out of a running guest. A running VM is changed live and in its
//! definition, and only grown; a stopped VM only in its definition. Domains
//! csagent did not define are refused. libvirt calls live in
//! hypervisor/devices.rs.

use csagent_core::error::{CommandError, ErrorKind};
use csagent_domain::{self as domain, Device, Dimm, KiB, VmSpec};
use csagent_libvirt::devices::{self, Scope};
use csagent_libvirt::{lifecycle, Hypervisor, PowerState, VmInfo};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScaleRequest {
    pub vm: uuid::Uuid,
    pub vcpus: Option<u32>,
    /// New memory of the VM: the balloon target (currentMemory), growing
    /// `<memory>` by a DIMM when it passes it.
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
    /// New balloon target; set after the DIMM when there is one.
    pub memory: Option<KiB>,
    /// A module to hot-add, when the request passes `<memory>`.
    pub dimm: Option<Dimm>,
    /// The values before, to put memory back when the vCPU step fails.
    pub old_memory: KiB,
}

/// The ceilings and current values a request is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Current {
    pub running: bool,
    pub vcpus: u32,
    pub max_vcpus: u32,
    /// The balloon target.
    pub memory: KiB,
    /// `<memory>`: what the VM has, DIMMs included.
    pub max_memory: KiB,
    pub balloon: bool,
    /// Set when the VM was defined for memory hotplug.
    pub hotplug: Option<Hotplug>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hotplug {
    /// `<maxMemory>`.
    pub ceiling: KiB,
    /// DIMM slots still free.
    pub free_slots: u32,
    /// The NUMA cell new DIMMs join.
    pub node: u32,
}

impl Current {
    pub fn of(spec: &VmSpec, running: bool, dimms: u32) -> Current {
        let node = spec.cpu.as_ref().and_then(|c| c.numa.first()).map(|c| c.id);
        let hotplug = spec.memory.max.zip(node).map(|(max, node)| Hotplug {
            ceiling: max.size,
            free_slots: max.slots.saturating_sub(dimms),
            node,
        });
        Current {
            running,
            vcpus: spec.vcpu.current.unwrap_or(spec.vcpu.max),
            max_vcpus: spec.vcpu.max,
            memory: spec.memory.current.unwrap_or(spec.memory.size),
            max_memory: spec.memory.size,
            balloon: spec.devices.balloon.is_some(),
            hotplug,
        }
    }

    /// The most memory a request may ask for.
    pub fn ceiling(&self) -> KiB {
        self.hotplug.map_or(self.max_memory, |h| h.ceiling)
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
        plan_memory(vm, m, cur, &mut p)?;
    }
    Ok(p)
}

fn plan_memory(vm: uuid::Uuid, m: KiB, cur: &Current, p: &mut Plan) -> Result<(), CommandError> {
    let ceiling = cur.ceiling();
    if m.0 == 0 || m > ceiling {
        let what = if cur.hotplug.is_some() {
            "the <maxMemory> hotplug ceiling"
        } else {
            "the <memory> maximum; define it with maxMemory and a NUMA cell for hotplug"
        };
        return Err(CommandError::invalid(format!(
            "VM {vm}: {} KiB of memory is outside 1..{} KiB ({what} it was defined with); redefine the VM to raise it",
            m.0, ceiling.0
        )));
    }
    if cur.running && m < cur.memory {
        return Err(shrink(vm, "memory KiB", cur.memory.0, m.0));
    }
    if let Some(h) = cur.hotplug.filter(|_| m > cur.max_memory) {
        p.dimm = Some(dimm_for(vm, m, cur.max_memory, h)?);
        // libvirt raises the balloon target with the module; bring it to
        // the figure asked for (the module is rounded up to 2 MiB).
        p.memory = (cur.balloon || !cur.running).then_some(m);
        return Ok(());
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
    Ok(())
}

/// The DIMM that takes `<memory>` from `have` to at least `want`.
fn dimm_for(vm: uuid::Uuid, want: KiB, have: KiB, h: Hotplug) -> Result<Dimm, CommandError> {
    let step = Dimm::ALIGN.0;
    let size = (want.0 - have.0).div_ceil(step) * step;
    if have.0 + size > h.ceiling.0 {
        return Err(CommandError::invalid(format!(
            "VM {vm}: reaching {} KiB needs a {size} KiB DIMM (QEMU plugs 2 MiB steps), which would pass <maxMemory> ({} KiB)",
            want.0, h.ceiling.0
        )));
    }
    if h.free_slots == 0 {
        return Err(CommandError::new(
            ErrorKind::Conflict,
            format!("VM {vm}: every memory slot of <maxMemory> is in use; redefine the VM with more slots"),
        ));
    }
    Ok(Dimm {
        size: KiB(size),
        node: h.node,
    })
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
        .map_err(CommandError::from)?
        .ok_or_else(|| {
            CommandError::new(
                ErrorKind::NotFound,
                format!("VM {uuid} not found on this host"),
            )
        })?;
    let spec = super::spec_of(uuid, &xml)?;
    let info = h.vm(uuid).await.map_err(CommandError::from)?;
    let running = info.state != PowerState::Stopped && info.id.is_some();
    let cur = Current::of(&spec, running, count_dimms(&xml));
    let p = plan(&req, &cur)?;
    let machine = spec.os.machine.as_deref();
    let applied = apply(h, uuid, &p, Scope::for_running(running), machine).await;
    // Even a half-done change leaves the cached vCPUs and memory stale.
    h.forget_facts(&uuid);
    applied?;
    Ok(Scaled {
        info: h.vm(uuid).await.map_err(CommandError::from)?,
        max_vcpus: cur.max_vcpus,
        max_memory: cur.ceiling(),
        changed: p.vcpus.is_some() || p.memory.is_some() || p.dimm.is_some(),
    })
}

async fn apply(
    h: &Hypervisor,
    uuid: uuid::Uuid,
    p: &Plan,
    scope: Scope,
    machine: Option<&str>,
) -> Result<(), CommandError> {
    let balloon_first = p.dimm.is_none();
    if balloon_first {
        if let Some(m) = p.memory {
            set_memory(h, uuid, m, scope).await?;
        }
    }
    if let Some(n) = p.vcpus {
        let r = h
            .call("set_vcpus", move |c| devices::set_vcpus(c, &uuid, n, scope))
            .await;
        if let Err(e) = r {
            if balloon_first && p.memory.is_some() {
                // Best effort: the error below is what the plane must see.
                let _ = set_memory(h, uuid, p.old_memory, scope).await;
            }
            return Err(CommandError::new(
                e.kind(),
                format!("VM {uuid}: setting {n} vCPUs failed (memory is as it was): {e}"),
            ));
        }
    }
    if let Some(d) = p.dimm {
        add_dimm(h, uuid, d, scope, machine).await.map_err(|e| {
            let vcpus = p
                .vcpus
                .map_or(String::new(), |n| format!(" ({n} vCPUs are set)"));
            CommandError::new(e.kind, format!("{}{vcpus}", e.message))
        })?;
        if let Some(m) = p.memory {
            set_memory(h, uuid, m, scope).await?;
        }
    }
    Ok(())
}

async fn set_memory(
    h: &Hypervisor,
    uuid: uuid::Uuid,
    m: KiB,
    scope: Scope,
) -> Result<(), CommandError> {
    h.call("set_memory", move |c| {
        devices::set_memory(c, &uuid, m.0, scope)
    })
    .await
    .map_err(CommandError::from)
}

async fn add_dimm(
    h: &Hypervisor,
    uuid: uuid::Uuid,
    d: Dimm,
    scope: Scope,
    machine: Option<&str>,
) -> Result<(), CommandError> {
    let xml = domain::render_device(&Device::Dimm(d), machine)
        .map_err(|e| CommandError::invalid(format!("VM {uuid}: {e}")))?;
    h.call("attach_device", move |c| {
        devices::attach(c, &uuid, &xml, scope)
    })
    .await
    .map_err(|e| {
        CommandError::new(
            e.kind(),
            format!("VM {uuid}: adding a {} KiB DIMM failed: {e}", d.size.0),
        )
    })
}

/// DIMMs in `<devices>` (the model keeps no list of them). The XML is
/// libvirt's and was just parsed whole, so an unreadable one counts none.
fn count_dimms(xml: &str) -> u32 {
    let nodes = csagent_storage::xml::nodes(xml, "count memory modules").unwrap_or_default();
    let n = nodes
        .iter()
        .filter(|n| n.path == "domain/devices/memory")
        .count();
    u32::try_from(n).unwrap_or(u32::MAX)
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
            hotplug: None,
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

    #[test]
    fn past_memory_hotplug_adds_an_aligned_dimm() {
        let mut c = cur(true);
        c.hotplug = Some(Hotplug {
            ceiling: KiB(1 << 20),
            free_slots: 1,
            node: 0,
        });
        let p = plan(&req(None, Some(131072 + 100_000)), &c).unwrap();
        assert_eq!(p.dimm.map(|d| d.size), Some(KiB(100_352)));
        assert_eq!(p.memory, Some(KiB(231_072)));
        let e = plan(&req(None, Some((1 << 20) + 1)), &c).unwrap_err();
        assert!(e.message.contains("maxMemory"), "{}", e.message);
        c.hotplug = c.hotplug.map(|h| Hotplug { free_slots: 0, ..h });
        let e = plan(&req(None, Some(200_000)), &c).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Conflict);
        assert!(e.message.contains("slot"), "{}", e.message);
    }

    #[test]
    fn dimms_are_counted_in_devices_only() {
        let xml = "<domain><memory unit='KiB'>1</memory><numatune><memory mode='strict' nodeset='0'/></numatune><devices><memory model='dimm'><target/></memory><memory model='dimm'/><disk/></devices></domain>";
        assert_eq!(count_dimms(xml), 2);
    }
}
