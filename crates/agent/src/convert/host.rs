//! Conversions between the host module's own types and the wire types of
//! proto/csagent/v1/host.proto. The only file of src/host/ that sees proto
//! types; it holds no logic beyond mapping fields and units.

use csagent_host::capacity::{Capacity, InterfaceStats, PoolUsage};
use csagent_host::clock::ClockStatus;
use csagent_host::collector::HostReport;
use csagent_host::facts::{CpuInfo, HostFacts, HugePages, InterfaceAddrs, NumaNode, PciDevice};
use csagent_host::health::{Finding, HealthState, HostHealth, Sensor};
use csagent_host::libvirt_caps::LibvirtFacts;
use csagent_host::selfstat::AgentSelf;
use csagent_host::sensors::SensorKind;
use csagent_proto::v1 as pb;

pub fn health_state_to_proto(s: HealthState) -> pb::HealthState {
    match s {
        HealthState::Ok => pb::HealthState::Ok,
        HealthState::Warning => pb::HealthState::Warning,
        HealthState::Critical => pb::HealthState::Critical,
    }
}

/// Facts for Register / GetHostFacts.
pub fn facts_to_proto(f: &HostFacts, agent_version: &str) -> pb::HostFacts {
    pb::HostFacts {
        hostname: f.hostname.clone(),
        kernel: f.kernel.clone(),
        os: f.os.clone(),
        cpu_threads: f.cpu.threads,
        memory_total_bytes: f.memory_total.0,
        agent_version: agent_version.to_string(),
        cpu: Some(cpu_to_proto(&f.cpu)),
        numa_nodes: f.numa.iter().map(numa_to_proto).collect(),
        hugepages: f.hugepages.iter().map(hugepages_to_proto).collect(),
        interfaces: f.interfaces.iter().map(interface_to_proto).collect(),
        kvm: Some(pb::KvmStatus {
            usable: f.kvm.usable,
            detail: f.kvm.detail.clone(),
        }),
        pci_devices: f.pci_devices.iter().map(pci_to_proto).collect(),
        libvirt: f.libvirt.as_ref().map(libvirt_to_proto),
    }
}

fn cpu_to_proto(c: &CpuInfo) -> pb::CpuInfo {
    pb::CpuInfo {
        vendor: c.vendor.clone(),
        model: c.model.clone(),
        sockets: c.sockets,
        cores: c.cores,
        threads: c.threads,
        mhz: c.mhz,
        flags: c.flags.clone(),
    }
}

fn numa_to_proto(n: &NumaNode) -> pb::HostNumaNode {
    pb::HostNumaNode {
        id: n.id,
        cpus: n.cpus.clone(),
        memory_total_bytes: n.memory_total.0,
        memory_free_bytes: n.memory_free.0,
        hugepages: n.hugepages.iter().map(hugepages_to_proto).collect(),
        distances: n.distances.clone(),
    }
}

fn hugepages_to_proto(h: &HugePages) -> pb::HostHugePages {
    pb::HostHugePages {
        page_size_kib: h.page_size_kib,
        total: h.total,
        free: h.free,
    }
}

fn interface_to_proto(i: &InterfaceAddrs) -> pb::InterfaceAddresses {
    pb::InterfaceAddresses {
        name: i.name.clone(),
        mac: i.mac.clone(),
        addresses: i.addresses.clone(),
    }
}

fn pci_to_proto(p: &PciDevice) -> pb::HostPciDevice {
    pb::HostPciDevice {
        address: p.address.clone(),
        class_code: p.class,
        class_name: p.class_name.clone(),
        vendor_id: u32::from(p.vendor_id),
        device_id: u32::from(p.device_id),
        driver: p.driver.clone().unwrap_or_default(),
        iommu_group: p
            .iommu_group
            .and_then(|g| i32::try_from(g).ok())
            .unwrap_or(-1),
        numa_node: p.numa_node.unwrap_or(-1),
    }
}

pub fn libvirt_to_proto(l: &LibvirtFacts) -> pb::LibvirtInfo {
    pb::LibvirtInfo {
        libvirt_version: l.libvirt_version,
        qemu_version: l.qemu_version,
        arch: l.arch.clone(),
        host_cpu_model: l.host_cpu_model.clone(),
        host_cpu_vendor: l.host_cpu_vendor.clone(),
        host_model: l.host_model.clone().unwrap_or_default(),
        host_passthrough: l.host_passthrough,
        usable_cpu_models: l.usable_cpu_models.clone(),
        domain_types: l.domain_types.clone(),
        machine_types: l
            .machine_types
            .iter()
            .map(|m| pb::LibvirtMachineType {
                name: m.name.clone(),
                canonical: m.canonical.clone().unwrap_or_default(),
                max_cpus: m.max_cpus,
                deprecated: m.deprecated,
            })
            .collect(),
        uefi_firmware: l.uefi_firmware.clone(),
        secure_boot: l.secure_boot,
        max_vcpus: l.max_vcpus,
        iommu: l.iommu,
    }
}

/// Heartbeat health.
pub fn health_to_proto(h: &HostHealth) -> pb::HostHealth {
    pb::HostHealth {
        state: health_state_to_proto(h.state) as i32,
        reasons: h.findings.iter().map(|f| f.message.clone()).collect(),
        findings: h.findings.iter().map(finding_to_proto).collect(),
    }
}

fn finding_to_proto(f: &Finding) -> pb::HealthFinding {
    pb::HealthFinding {
        source: f.source.clone(),
        state: health_state_to_proto(f.state) as i32,
        message: f.message.clone(),
    }
}

/// A periodic host report. `vms` is the number of VMs behind the allocation.
pub fn report_to_proto(r: &HostReport, vms: u32) -> pb::HostReport {
    let s = &r.stats;
    pb::HostReport {
        collected_at_unix_ms: r.collected_at_unix_ms,
        health: Some(health_to_proto(&r.health)),
        memory_total_bytes: s.memory_total.0,
        memory_available_bytes: s.memory_available.0,
        cpu_threads: r.capacity.cpu_threads,
        load_average_1m: s.load_1m,
        load_average_5m: s.load_5m,
        load_average_15m: s.load_15m,
        cpu_utilisation: s.cpu_utilisation,
        cpu_steal: s.cpu_steal,
        swap_total_bytes: s.swap_total.0,
        swap_free_bytes: s.swap_free.0,
        capacity: Some(capacity_to_proto(&r.capacity, vms)),
        interfaces: s.interfaces.iter().map(interface_stats_to_proto).collect(),
        sensors: r.sensors.iter().map(sensor_to_proto).collect(),
        pools: r.pools.iter().map(pool_to_proto).collect(),
        agent: r.agent.as_ref().map(agent_to_proto),
        clock: Some(clock_to_proto(&r.clock)),
        // The storage module fills this; the host module only sees usage.
        pool_status: Vec::new(),
    }
}

fn capacity_to_proto(c: &Capacity, vms: u32) -> pb::HostCapacity {
    pb::HostCapacity {
        vcpu_total: c.vcpu_total,
        vcpu_allocated: c.vcpu_allocated,
        vcpu_free: c.vcpu_free,
        memory_total_mib: c.memory_total.0,
        memory_reserved_mib: c.memory_reserved.0,
        memory_offered_mib: c.memory_offered.0,
        memory_allocated_mib: c.memory_allocated.0,
        memory_free_mib: c.memory_free.0,
        vms,
        memory_available_for_vms_mib: c.memory_available_for_vms.map(|m| m.0),
    }
}

fn interface_stats_to_proto(i: &InterfaceStats) -> pb::HostInterfaceStats {
    pb::HostInterfaceStats {
        name: i.name.clone(),
        rx_bytes_per_s: i.rx_bytes_per_s,
        tx_bytes_per_s: i.tx_bytes_per_s,
        rx_packets_per_s: i.rx_packets_per_s,
        tx_packets_per_s: i.tx_packets_per_s,
        errors: i.errors,
        rx_bytes_total: i.rx_bytes_total,
        tx_bytes_total: i.tx_bytes_total,
    }
}

fn sensor_kind_to_proto(k: SensorKind) -> pb::SensorKind {
    match k {
        SensorKind::Temperature => pb::SensorKind::Temperature,
        SensorKind::Fan => pb::SensorKind::Fan,
        SensorKind::Voltage => pb::SensorKind::Voltage,
        SensorKind::Current => pb::SensorKind::Current,
        SensorKind::Power => pb::SensorKind::Power,
    }
}

fn sensor_to_proto(s: &Sensor) -> pb::Sensor {
    let (r, h) = (&s.reading, &s.health);
    pb::Sensor {
        id: r.id.clone(),
        chip: r.chip.clone(),
        label: r.label.clone(),
        kind: sensor_kind_to_proto(r.kind) as i32,
        value: r.value,
        low_critical: h.thresholds.low_critical,
        low_warning: h.thresholds.low_warning,
        high_warning: h.thresholds.high_warning,
        high_critical: h.thresholds.high_critical,
        state: health_state_to_proto(h.state) as i32,
        reason: h.reason.clone().unwrap_or_default(),
        ignored: h.ignored,
    }
}

fn pool_to_proto(p: &PoolUsage) -> pb::HostPoolUsage {
    pb::HostPoolUsage {
        name: p.name.clone(),
        capacity_bytes: p.capacity.0,
        allocation_bytes: p.allocation.0,
        available_bytes: p.available.0,
    }
}

fn agent_to_proto(a: &AgentSelf) -> pb::AgentSelf {
    pb::AgentSelf {
        rss_bytes: a.rss.0,
        cpu_user_ms: a.cpu_user_ms,
        cpu_system_ms: a.cpu_system_ms,
        open_fds: a.open_fds,
        threads: a.threads,
    }
}

fn clock_to_proto(c: &ClockStatus) -> pb::ClockStatus {
    pb::ClockStatus {
        ntp_synced: c.ntp.is_some_and(|n| n.synced),
        ntp_known: c.ntp.is_some(),
        ntp_estimated_error_us: c.ntp.map_or(0, |n| n.estimated_error_us),
        ntp_max_error_us: c.ntp.map_or(0, |n| n.max_error_us),
        skew_ms: c.skew.map_or(0, |s| s.offset_ms),
        skew_known: c.skew.is_some(),
        skew_round_trip_ms: c.skew.map_or(0, |s| s.round_trip_ms),
    }
}
