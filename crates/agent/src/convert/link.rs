//! Conversions between the crate's types and the wire's, for the link.

use csagent_libvirt::{PowerState, VmInfo};
use csagent_proto::v1 as pb;

pub fn power_state(s: PowerState) -> pb::VmPowerState {
    match s {
        PowerState::Running => pb::VmPowerState::Running,
        PowerState::Paused => pb::VmPowerState::Paused,
        PowerState::Stopping => pb::VmPowerState::Stopping,
        PowerState::Stopped => pb::VmPowerState::Stopped,
        PowerState::Crashed => pb::VmPowerState::Crashed,
        PowerState::Suspended => pb::VmPowerState::Suspended,
        PowerState::Unknown => pb::VmPowerState::Unknown,
    }
}

pub fn vm_status(v: &VmInfo) -> pb::VmStatus {
    pb::VmStatus {
        vm_uuid: v.uuid.clone(),
        name: v.name.clone(),
        state: power_state(v.state) as i32,
        reason: v.reason.clone(),
        managed: v.managed,
        vcpus: v.vcpus,
        memory_kib: v.memory_kib,
        domain_id: v.id.unwrap_or(0),
    }
}

pub fn vm_power(v: &VmInfo) -> pb::VmPower {
    pb::VmPower {
        vm_uuid: v.uuid.clone(),
        state: power_state(v.state) as i32,
        reason: v.reason.clone(),
        managed: v.managed,
    }
}
