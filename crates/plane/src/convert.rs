//! The plane's edge for host reports: what placement needs, read from an
//! agent's latest wire `HostReport`. Must not: hold state or do I/O.

use csagent_core::MiB;
use csagent_host::admission::HostSummary;
use csagent_host::health::HealthState;
use csagent_proto::v1 as pb;

/// UNSPECIFIED (an older agent) and unknown values read as Ok: the plane
/// cannot know better, and refusing every old host would be worse.
fn health_state_from_proto(v: i32) -> HealthState {
    match pb::HealthState::try_from(v) {
        Ok(pb::HealthState::Warning) => HealthState::Warning,
        Ok(pb::HealthState::Critical) => HealthState::Critical,
        _ => HealthState::Ok,
    }
}

/// What the plane's placement needs from a host's latest proto report. A
/// report without capacity (an older agent) offers nothing.
pub fn summary_from_proto(host: &str, r: &pb::HostReport) -> HostSummary {
    let health = r.health.clone().unwrap_or_default();
    let state = health_state_from_proto(health.state);
    let critical = health
        .findings
        .iter()
        .find(|f| health_state_from_proto(f.state) == HealthState::Critical)
        .map(|f| (f.source.clone(), f.message.clone()))
        .or_else(|| {
            (state == HealthState::Critical)
                .then(|| ("host".to_string(), health.reasons.join("; ")))
        });
    let cap = r.capacity.unwrap_or_default();
    HostSummary {
        host: host.to_string(),
        state,
        critical,
        vcpu_free: cap.vcpu_free,
        memory_free: MiB(cap.memory_free_mib),
        memory_available_for_vms: cap.memory_available_for_vms_mib.map(MiB),
    }
}
