//! HostCollector: the one stateful object the agent keeps for the host. It
//! holds the configuration, discovered sensors, previous counters (for
//! rates) and the latest clock skew, and produces facts, reports and
//! heartbeat health.
//!
//! Collecting is cheap by design: a handful of small procfs/sysfs reads, no
//! child process, no libvirt call (VM allocations and pool usage are passed
//! in). Reads block briefly on sysfs; callers on an async runtime should use
//! spawn_blocking for `report` if sensor buses are slow on their hardware.

use super::capacity::{Allocated, Capacity, CapacityConfig, HostStats, PoolUsage, StatsSampler};
use super::clock::{self, ClockStatus, Skew};
use super::facts::{self, HostFacts};
use super::health::{self, HealthConfig, HostHealth, Sensor};
use super::selfstat::{self, AgentSelf};
use super::sensors::SensorSet;
use super::sysfs::SysRoots;
use super::units::MiB;
use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

/// `[host]` in agent.toml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostConfig {
    pub capacity: CapacityConfig,
    pub health: HealthConfig,
    /// The user QEMU runs as, for the /dev/kvm check. Default: libvirt-qemu
    /// (Debian/Ubuntu), then qemu (RHEL family).
    pub qemu_user: Option<String>,
    /// CPU speed to report instead of the measured one, MHz; 0: measured
    /// (CloudStack's host.cpu.manual.speed.mhz, for CPUs whose /proc/cpuinfo
    /// speed is misleading, e.g. with frequency scaling).
    pub cpu_manual_speed_mhz: u32,
    /// Where sysfs is read from (sensors, NUMA, PCI, network statistics).
    /// Change only to read a copy, e.g. a test's fixture tree.
    pub sysfs_root: std::path::PathBuf,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            capacity: CapacityConfig::default(),
            health: HealthConfig::default(),
            qemu_user: None,
            cpu_manual_speed_mhz: 0,
            sysfs_root: std::path::PathBuf::from("/sys"),
        }
    }
}

/// One periodic host report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostReport {
    pub collected_at_unix_ms: i64,
    pub health: HostHealth,
    pub capacity: Capacity,
    pub stats: HostStats,
    pub sensors: Vec<Sensor>,
    pub pools: Vec<PoolUsage>,
    /// None if /proc/self could not be read.
    pub agent: Option<AgentSelf>,
    pub clock: ClockStatus,
}

#[derive(Debug)]
pub struct HostCollector {
    cfg: HostConfig,
    roots: SysRoots,
    cpu_threads: u32,
    sensors: SensorSet,
    sampler: StatsSampler,
    skew: Option<Skew>,
    clock_error_logged: bool,
}

impl HostCollector {
    /// Discovers sensors and takes the first counter sample.
    pub fn new(cfg: HostConfig, roots: SysRoots) -> Self {
        let cpu_threads = facts::cpu_info(&roots.proc).threads;
        HostCollector {
            sensors: SensorSet::new(&roots.sys),
            sampler: StatsSampler::new(&roots.proc),
            cfg,
            roots,
            cpu_threads,
            skew: None,
            clock_error_logged: false,
        }
    }

    pub fn config(&self) -> &HostConfig {
        &self.cfg
    }

    /// Facts for Register. libvirt's part is left None for the caller to set
    /// from `libvirt_caps::parse`.
    pub fn facts(&self) -> HostFacts {
        let mut f = facts::collect(
            &self.roots,
            self.cfg.qemu_user.as_deref(),
            &self.cfg.capacity.skip_interface_prefixes,
        );
        if self.cfg.cpu_manual_speed_mhz > 0 {
            f.cpu.mhz = f64::from(self.cfg.cpu_manual_speed_mhz);
        }
        f
    }

    /// Records the skew measured from the latest heartbeat ack.
    pub fn record_skew(&mut self, skew: Skew) {
        self.skew = Some(skew);
    }

    /// Sensors and clock only: cheap enough for every heartbeat.
    pub fn health(&mut self) -> HostHealth {
        let sensors = health::evaluate_all(self.sensors.read(), &self.cfg.health);
        let clock = self.clock_status();
        health::host_health(&sensors, &clock, &self.cfg.health)
    }

    /// A full report. `allocated` is what the host's VMs were given;
    /// `pools` comes from the storage module.
    pub fn report(&mut self, allocated: &Allocated, pools: &[PoolUsage]) -> HostReport {
        let stats = self
            .sampler
            .sample(&self.cfg.capacity.skip_interface_prefixes);
        let sensors = health::evaluate_all(self.sensors.read(), &self.cfg.health);
        let clock = self.clock_status();
        let health = health::host_health(&sensors, &clock, &self.cfg.health);
        let capacity = Capacity::compute(
            self.cpu_threads,
            stats.memory_total.to_mib(),
            stats.memory_available.to_mib(),
            allocated,
            &self.cfg.capacity,
        );
        HostReport {
            collected_at_unix_ms: now_unix_ms(),
            health,
            capacity,
            stats,
            sensors,
            pools: pools.to_vec(),
            agent: selfstat::read(&self.roots.proc)
                .inspect_err(|e| tracing::debug!("agent self stats: {e}"))
                .ok(),
            clock,
        }
    }

    /// Host memory (MemTotal), for callers that need it before a report exists.
    pub fn memory_total(&self) -> MiB {
        super::capacity::memory_total(&self.roots.proc).to_mib()
    }

    fn clock_status(&mut self) -> ClockStatus {
        let ntp = match clock::ntp_status() {
            Ok(n) => Some(n),
            Err(e) => {
                if !std::mem::replace(&mut self.clock_error_logged, true) {
                    tracing::warn!("{e}; NTP status is left out of host reports");
                }
                None
            }
        };
        ClockStatus {
            ntp,
            skew: self.skew,
        }
    }
}

/// Wall clock now, Unix ms (0 if the clock is before 1970).
pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_config_from_toml() {
        let cfg: HostConfig = toml::from_str(
            r#"
            qemu_user = "qemu"
            [capacity]
            reserved_memory_mib = 4096
            cpu_overcommit = 4.0
            [health]
            refuse_when_critical = false
            "#,
        )
        .unwrap();
        assert_eq!(cfg.qemu_user.as_deref(), Some("qemu"));
        assert_eq!(cfg.capacity.reserved_memory_mib, 4096);
        assert_eq!(cfg.capacity.reserved_cpus, 0, "unset keys keep defaults");
        assert!(!cfg.health.refuse_when_critical);
        assert!(toml::from_str::<HostConfig>("[capacity]\nreserved_mem = 1").is_err());
        assert_eq!(
            toml::from_str::<HostConfig>("").unwrap(),
            HostConfig::default()
        );
    }
}
