//! Wire conversions for the VM change and watch commands (ScaleVm,
//! AttachDevice, DetachDevice, GetVmStats, GetConsole).
//!
//! The one edge where these commands meet generated types: proto requests
//! become the handlers' own types (every bad field is INVALID_ARGUMENT before
//! anything happens) and their results become proto messages. Nothing here
//! talks to libvirt or decides policy.

use csagent_core::error::CommandError;
use csagent_domain::{self as domain, DiskBus, KiB, MacAddr};
use csagent_proto::v1 as pb;

use crate::vm::console::Console;
use crate::vm::devices::{Attach, Detach, DeviceChange, Iso};
use crate::vm::scale::{ScaleRequest, Scaled};
use crate::vm::stats::VmStat;

fn vm(s: &str) -> Result<uuid::Uuid, CommandError> {
    uuid::Uuid::parse_str(s)
        .map_err(|_| CommandError::invalid(format!("vm_uuid {s:?} is not a UUID")))
}

pub fn scale_from_proto(m: &pb::ScaleVm) -> Result<ScaleRequest, CommandError> {
    let req = ScaleRequest {
        vm: vm(&m.vm_uuid)?,
        vcpus: m.vcpus,
        memory: m.memory_kib.map(KiB),
    };
    if req.vcpus.is_none() && req.memory.is_none() {
        return Err(CommandError::invalid(
            "scale_vm sets neither vcpus nor memory_kib; nothing to do",
        ));
    }
    Ok(req)
}

pub fn attach_from_proto(m: &pb::AttachDevice) -> Result<(uuid::Uuid, Attach), CommandError> {
    use pb::attach_device::Device as D;
    let uuid = vm(&m.vm_uuid)?;
    let bad = |e: domain::DomainError| CommandError::invalid(e.to_string());
    let a = match &m.device {
        Some(D::Disk(d)) => Attach::Disk(Box::new(
            crate::convert::domain::disk_from_proto(d).map_err(bad)?,
        )),
        Some(D::Interface(n)) => {
            Attach::Interface(crate::convert::domain::nic_from_proto(n).map_err(bad)?)
        }
        Some(D::Iso(i)) => Attach::Iso(iso_from_proto(i)?),
        None => {
            return Err(CommandError::invalid(
                "attach_device names no device (disk, interface or iso)",
            ))
        }
    };
    Ok((uuid, a))
}

fn iso_from_proto(i: &pb::InsertIso) -> Result<Iso, CommandError> {
    if i.path.is_empty() {
        return Err(CommandError::invalid(
            "iso.path is empty; to eject, send detach_device.eject_iso_target",
        ));
    }
    let bus = match i.bus.as_str() {
        "" => None,
        b => match DiskBus::from_str(b) {
            Some(DiskBus::Virtio) | None => {
                return Err(CommandError::invalid(format!(
                    "iso.bus {b:?} is not a CD-ROM bus; expected sata, ide or scsi"
                )))
            }
            Some(bus) => Some(bus),
        },
    };
    Ok(Iso {
        path: i.path.clone(),
        target: (!i.target.is_empty()).then(|| i.target.clone()),
        bus,
    })
}

pub fn detach_from_proto(m: &pb::DetachDevice) -> Result<(uuid::Uuid, Detach), CommandError> {
    use pb::detach_device::Device as D;
    let uuid = vm(&m.vm_uuid)?;
    let d =
        match &m.device {
            Some(D::DiskTarget(t)) if !t.is_empty() => Detach::Disk(t.clone()),
            Some(D::DiskTarget(_)) => {
                return Err(CommandError::invalid(
                    "detach_device.disk_target is empty; name the guest device (e.g. \"vdb\")",
                ))
            }
            Some(D::InterfaceMac(s)) => Detach::Interface(MacAddr::parse(s).ok_or_else(|| {
                CommandError::invalid(format!(
                    "detach_device.interface_mac {s:?} is not a MAC address like 52:54:00:12:34:56"
                ))
            })?),
            Some(D::EjectIsoTarget(t)) => Detach::EjectIso((!t.is_empty()).then(|| t.clone())),
            None => return Err(CommandError::invalid(
                "detach_device names no device (disk_target, interface_mac or eject_iso_target)",
            )),
        };
    Ok((uuid, d))
}

/// (collector, VM filter) of a GetVmStats.
pub fn stats_from_proto(m: &pb::GetVmStats) -> Result<(String, Vec<uuid::Uuid>), CommandError> {
    let vms = m
        .vm_uuids
        .iter()
        .map(|s| vm(s))
        .collect::<Result<Vec<_>, _>>()?;
    if m.collector.len() > 128 {
        return Err(CommandError::invalid(
            "get_vm_stats.collector is longer than 128 bytes",
        ));
    }
    Ok((m.collector.clone(), vms))
}

pub fn vm_uuid(s: &str) -> Result<uuid::Uuid, CommandError> {
    vm(s)
}

pub fn scaled_to_proto(s: &Scaled) -> pb::ScaleVmResult {
    pb::ScaleVmResult {
        vm: Some(crate::convert::link::vm_status(&s.info)),
        max_vcpus: s.max_vcpus,
        max_memory_kib: s.max_memory.0,
        changed: s.changed,
    }
}

pub fn device_to_proto(vm: &uuid::Uuid, d: &DeviceChange) -> pb::DeviceResult {
    pb::DeviceResult {
        vm_uuid: vm.to_string(),
        device: d.device.clone(),
        live: d.live,
        config: d.config,
        pending: d.pending,
        unchanged: d.unchanged,
    }
}

pub fn console_to_proto(vm: &uuid::Uuid, c: &Console) -> pb::VmConsole {
    pb::VmConsole {
        vm_uuid: vm.to_string(),
        host: c.host.clone(),
        port: u32::from(c.port),
        password: c.password.clone().unwrap_or_default(),
        listen: c.listen.clone(),
        r#type: "vnc".to_string(),
    }
}

/// libvirt's virDomainState number as the wire's power state.
fn libvirt_state(s: i32) -> pb::VmPowerState {
    use pb::VmPowerState as P;
    match s {
        1 | 2 => P::Running,
        3 => P::Paused,
        4 => P::Stopping,
        5 => P::Stopped,
        6 => P::Crashed,
        7 => P::Suspended,
        _ => P::Unknown,
    }
}

pub fn stats_to_proto(v: &[VmStat], collected_at_unix_ms: i64) -> pb::VmStatsList {
    pb::VmStatsList {
        vms: v.iter().map(vm_stats).collect(),
        collected_at_unix_ms,
    }
}

fn vm_stats(s: &VmStat) -> pb::VmStats {
    let r = &s.raw;
    pb::VmStats {
        vm_uuid: r.uuid.clone(),
        name: r.name.clone(),
        state: libvirt_state(r.state) as i32,
        unresponsive: s.unresponsive,
        cpu_percent: s.cpu.percent,
        first_sample: s.cpu.first_sample,
        interval_ms: u64::try_from(s.cpu.interval.as_millis()).unwrap_or(u64::MAX),
        vcpus: r.vcpus.unwrap_or(0),
        cpu_time_ns: r.cpu_time_ns.unwrap_or(0),
        memory_kib: r.balloon_current_kib,
        memory_max_kib: r.balloon_maximum_kib,
        memory_rss_kib: r.rss_kib,
        memory_unused_kib: r.unused_kib,
        memory_available_kib: r.available_kib,
        disks: r
            .disks
            .iter()
            .map(|d| pb::VmDiskStats {
                target: d.target.clone(),
                source: d.source.clone(),
                read_bytes: d.read_bytes,
                write_bytes: d.write_bytes,
                read_reqs: d.read_reqs,
                write_reqs: d.write_reqs,
                errors: d.errors,
                capacity_bytes: d.capacity,
                allocation_bytes: d.allocation,
            })
            .collect(),
        nics: r
            .nics
            .iter()
            .map(|n| pb::VmNicStats {
                name: n.name.clone(),
                rx_bytes: n.rx_bytes,
                rx_packets: n.rx_packets,
                rx_errors: n.rx_errors,
                rx_drops: n.rx_drops,
                tx_bytes: n.tx_bytes,
                tx_packets: n.tx_packets,
                tx_errors: n.tx_errors,
                tx_drops: n.tx_drops,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_requests_are_refused_before_anything() {
        let e = scale_from_proto(&pb::ScaleVm {
            vm_uuid: uuid::Uuid::new_v4().to_string(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.message.contains("nothing to do"));
        let e = detach_from_proto(&pb::DetachDevice {
            vm_uuid: uuid::Uuid::new_v4().to_string(),
            device: Some(pb::detach_device::Device::InterfaceMac("zz".into())),
        })
        .unwrap_err();
        assert!(e.message.contains("MAC"));
        let e = attach_from_proto(&pb::AttachDevice {
            vm_uuid: uuid::Uuid::new_v4().to_string(),
            device: Some(pb::attach_device::Device::Disk(pb::VmDisk {
                source_type: "file".into(),
                source: "/x.qcow2".into(),
                target: "vdb".into(),
                bus: "floppy".into(),
                ..Default::default()
            })),
        })
        .unwrap_err();
        assert!(e.message.contains("disk.bus"), "{}", e.message);
    }
}
