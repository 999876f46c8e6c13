//! Admission: may this host start a VM of this size now? Refuses when the
//! host is critical (configurable) naming the sensor and why, and when the
//! VM does not fit the free vCPUs or memory ("Insufficient capacity",
//! naming what is short and by how much).
//!
//! Pure decision over the latest report: no I/O, no side effects. The same
//! rule serves the plane's placement (placement.rs).

use super::collector::HostReport;
use super::health::{HealthConfig, HealthState};
use super::units::MiB;
use std::fmt;
use thiserror::Error;

/// The size of the VM to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub vcpus: u32,
    pub memory: MiB,
}

/// What a host can take, reduced to what admission needs. The plane builds
/// it from a proto HostReport (convert.rs), the agent from its own report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSummary {
    pub host: String,
    pub state: HealthState,
    /// Source and message of the first critical finding, when critical.
    pub critical: Option<(String, String)>,
    pub vcpu_free: u32,
    pub memory_free: MiB,
    /// What a new VM can get right now (MemAvailable - reserve), when known.
    pub memory_available_for_vms: Option<MiB>,
}

impl HostSummary {
    pub fn from_report(host: &str, r: &HostReport) -> Self {
        HostSummary {
            host: host.to_string(),
            state: r.health.state,
            critical: r
                .health
                .first_critical()
                .map(|f| (f.source.clone(), f.message.clone())),
            vcpu_free: r.capacity.vcpu_free,
            memory_free: r.capacity.memory_free,
            memory_available_for_vms: r.capacity.memory_available_for_vms,
        }
    }
}

/// One resource that does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortage {
    Vcpus {
        requested: u32,
        free: u32,
    },
    Memory {
        requested: MiB,
        free: MiB,
    },
    /// Allocations fit, but the kernel cannot give that much memory now.
    MemoryNow {
        requested: MiB,
        available: MiB,
    },
}

impl fmt::Display for Shortage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Shortage::Vcpus { requested, free } => write!(
                f,
                "vCPUs short by {} (requested {requested}, free {free})",
                requested - free
            ),
            Shortage::Memory { requested, free } => write!(
                f,
                "memory short by {} (requested {requested}, free {free})",
                requested.saturating_sub(free)
            ),
            Shortage::MemoryNow {
                requested,
                available,
            } => write!(
                f,
                "memory available now short by {} (requested {requested}, MemAvailable after the \
                 host reserve {available})",
                requested.saturating_sub(available)
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AdmissionError {
    #[error(
        "host is critical and refuses new VMs: sensor {sensor}: {message}; fix the cause or set \
         host.health.refuse_when_critical = false"
    )]
    HostCritical { sensor: String, message: String },
    #[error("Insufficient capacity on this host: {}", join(.shortages))]
    InsufficientCapacity { shortages: Vec<Shortage> },
    #[error("invalid VM size: {0}")]
    InvalidRequest(String),
}

impl AdmissionError {
    /// True for "Insufficient capacity" (ERROR_CODE_INSUFFICIENT_CAPACITY),
    /// false for an unhealthy host (ERROR_CODE_HOST_UNHEALTHY) or bad input.
    pub fn is_capacity(&self) -> bool {
        matches!(self, AdmissionError::InsufficientCapacity { .. })
    }
}

fn join(s: &[Shortage]) -> String {
    s.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// May the host of `report` start a VM of `req`?
pub fn check(report: &HostReport, req: &Request, cfg: &HealthConfig) -> Result<(), AdmissionError> {
    check_summary(
        &HostSummary::from_report("", report),
        req,
        cfg.refuse_when_critical,
    )
}

/// The rule itself, over a summary.
pub fn check_summary(
    h: &HostSummary,
    req: &Request,
    refuse_when_critical: bool,
) -> Result<(), AdmissionError> {
    if req.vcpus == 0 || req.memory.0 == 0 {
        return Err(AdmissionError::InvalidRequest(format!(
            "{} vCPUs and {} requested; both must be at least 1",
            req.vcpus, req.memory
        )));
    }
    if refuse_when_critical && h.state == HealthState::Critical {
        let (sensor, message) = h
            .critical
            .clone()
            .unwrap_or_else(|| ("unknown".into(), "host reported critical".into()));
        return Err(AdmissionError::HostCritical { sensor, message });
    }
    let mut shortages = Vec::new();
    if req.vcpus > h.vcpu_free {
        shortages.push(Shortage::Vcpus {
            requested: req.vcpus,
            free: h.vcpu_free,
        });
    }
    if req.memory > h.memory_free {
        shortages.push(Shortage::Memory {
            requested: req.memory,
            free: h.memory_free,
        });
    }
    match h.memory_available_for_vms {
        // Report the allocation shortage alone when both apply: it is the
        // one the plane can act on.
        Some(available) if req.memory > available && req.memory <= h.memory_free => {
            shortages.push(Shortage::MemoryNow {
                requested: req.memory,
                available,
            });
        }
        _ => {}
    }
    if shortages.is_empty() {
        Ok(())
    } else {
        Err(AdmissionError::InsufficientCapacity { shortages })
    }
}
