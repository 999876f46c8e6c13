//! First-fit placement for the reference management plane: the first host,
//! in the order given, that is not critical and has the vCPUs and memory
//! wins; when none fits the answer is "Insufficient capacity" with each
//! host's reason.
//!
//! Pure logic over host summaries (admission.rs's rule); it knows nothing of
//! streams, databases or proto types.

use super::admission::{check_summary, AdmissionError, HostSummary, Request};
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PlacementError {
    #[error("Insufficient capacity: no host can take {vcpus} vCPUs and {memory_mib} MiB: {}", details(.rejected))]
    NoHostFits {
        vcpus: u32,
        memory_mib: u64,
        /// (host, why it was skipped), in the order tried.
        rejected: Vec<(String, String)>,
    },
    #[error("invalid VM size: {0}")]
    InvalidRequest(String),
}

fn details(rejected: &[(String, String)]) -> String {
    if rejected.is_empty() {
        return "no hosts are connected".into();
    }
    rejected
        .iter()
        .map(|(h, why)| format!("{h}: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Index of the first host that can take `req`. Critical hosts are always
/// skipped: the plane must not place on a host that refuses anyway.
pub fn first_fit(hosts: &[HostSummary], req: &Request) -> Result<usize, PlacementError> {
    let mut rejected = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        match check_summary(h, req, true) {
            Ok(()) => return Ok(i),
            Err(AdmissionError::InvalidRequest(m)) => {
                return Err(PlacementError::InvalidRequest(m))
            }
            Err(e) => rejected.push((h.host.clone(), e.to_string())),
        }
    }
    Err(PlacementError::NoHostFits {
        vcpus: req.vcpus,
        memory_mib: req.memory.0,
        rejected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::HealthState;
    use crate::units::MiB;

    fn host(name: &str, state: HealthState, vcpus: u32, mem: u64) -> HostSummary {
        HostSummary {
            host: name.into(),
            state,
            critical: (state == HealthState::Critical).then(|| {
                (
                    "coretemp@coretemp.0/temp1".into(),
                    "101.0 C >= critical 100.0 C".into(),
                )
            }),
            vcpu_free: vcpus,
            memory_free: MiB(mem),
            memory_available_for_vms: None,
        }
    }

    #[test]
    fn skips_critical_and_full_hosts() {
        let hosts = [
            host("hot", HealthState::Critical, 64, 65536),
            host("small", HealthState::Ok, 1, 512),
            host("warm", HealthState::Warning, 8, 8192),
            host("big", HealthState::Ok, 64, 65536),
        ];
        let req = Request {
            vcpus: 2,
            memory: MiB(2048),
        };
        assert_eq!(first_fit(&hosts, &req), Ok(2));
    }

    #[test]
    fn physical_memory_counts_without_overcommit() {
        let mut h = host("busy", HealthState::Ok, 8, 16384);
        h.memory_available_for_vms = Some(MiB(1000));
        let err = first_fit(
            &[h],
            &Request {
                vcpus: 1,
                memory: MiB(2048),
            },
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("memory available now short by 1048 MiB"),
            "{msg}"
        );
    }

    #[test]
    fn none_fits_names_every_reason() {
        let hosts = [
            host("hot", HealthState::Critical, 64, 65536),
            host("small", HealthState::Ok, 1, 512),
        ];
        let err = first_fit(
            &hosts,
            &Request {
                vcpus: 2,
                memory: MiB(2048),
            },
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("Insufficient capacity"), "{msg}");
        assert!(msg.contains("hot: host is critical"), "{msg}");
        assert!(msg.contains("coretemp@coretemp.0/temp1"), "{msg}");
        assert!(msg.contains("memory short by 1536 MiB"), "{msg}");
        assert!(msg.contains("vCPUs short by 1"), "{msg}");
        let empty = first_fit(
            &[],
            &Request {
                vcpus: 1,
                memory: MiB(1),
            },
        )
        .unwrap_err();
        assert!(empty.to_string().contains("no hosts are connected"));
        assert!(matches!(
            first_fit(
                &hosts,
                &Request {
                    vcpus: 0,
                    memory: MiB(1)
                }
            ),
            Err(PlacementError::InvalidRequest(_))
        ));
    }
}
