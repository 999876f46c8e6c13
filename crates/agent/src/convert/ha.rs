//! Wire conversions of high availability: the storage heartbeat in each
//! heartbeat, and CheckHost with its answer.
//!
//! A CheckHost becomes the handler's own `CheckRequest`, every bad field an
//! INVALID_ARGUMENT before anything is read; findings become proto
//! messages. Defaults (pools, window) are the handler's, not filled here.

use std::path::PathBuf;
use std::time::Duration;

use csagent_core::error::CommandError;
use csagent_ha::{Evidence, Finding, PoolBeat, Sign, Verdict};
use csagent_proto::v1 as pb;

use crate::convert::vm_ops::vm_uuid;
use crate::handlers::ha::CheckRequest;

pub fn beat_to_proto(b: &PoolBeat) -> pb::StorageHeartbeat {
    pb::StorageHeartbeat {
        pool: b.pool.display().to_string(),
        ok: b.ok,
        last_written_unix_ms: b.last_written_unix_ms,
        counter: b.counter,
        error: b.error.clone(),
    }
}

/// A pool whose heartbeat fails is a health warning: neighbours reading it
/// would judge this host still on that pool.
pub fn beat_findings(beats: &[PoolBeat], health: &mut pb::HostHealth) {
    for b in beats.iter().filter(|b| !b.ok) {
        let message = format!(
            "storage heartbeat on {} failing: {}",
            b.pool.display(),
            b.error
        );
        health.reasons.push(message.clone());
        health.findings.push(pb::HealthFinding {
            source: format!("ha-heartbeat {}", b.pool.display()),
            state: pb::HealthState::Warning.into(),
            message,
        });
        if health.state < i32::from(pb::HealthState::Warning) {
            health.state = pb::HealthState::Warning.into();
        }
    }
}

pub fn check_from_proto(m: &pb::CheckHost) -> Result<CheckRequest, CommandError> {
    let host = vm_uuid(&m.host_uuid)
        .map_err(|_| CommandError::invalid(format!("host_uuid {:?} is not a UUID", m.host_uuid)))?;
    Ok(CheckRequest {
        host,
        pools: absolute("pools", &m.pools)?,
        disks: absolute("disk_paths", &m.disk_paths)?,
        window: (m.window_ms > 0).then(|| Duration::from_millis(u64::from(m.window_ms))),
    })
}

fn absolute(field: &str, paths: &[String]) -> Result<Vec<PathBuf>, CommandError> {
    paths
        .iter()
        .map(|p| {
            let path = PathBuf::from(p);
            if path.is_absolute() && !p.split('/').any(|c| c == "..") {
                Ok(path)
            } else {
                Err(CommandError::invalid(format!(
                    "{field}: {p:?} is not an absolute path without '..'"
                )))
            }
        })
        .collect()
}

pub fn finding_to_proto(host: &uuid::Uuid, f: &Finding) -> pb::CheckHostResult {
    pb::CheckHostResult {
        host_uuid: host.to_string(),
        verdict: match f.verdict {
            Verdict::Alive => pb::HostVerdict::Alive,
            Verdict::Dead => pb::HostVerdict::Dead,
            Verdict::Unknown => pb::HostVerdict::Unknown,
        }
        .into(),
        evidence: f.evidence.iter().map(evidence).collect(),
    }
}

fn evidence(e: &Evidence) -> pb::HostEvidence {
    pb::HostEvidence {
        source: e.source.clone(),
        sign: match e.sign {
            Sign::Life => pb::EvidenceSign::Life,
            Sign::Still => pb::EvidenceSign::Still,
            Sign::Unreadable => pb::EvidenceSign::Unreadable,
        }
        .into(),
        detail: e.detail.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_or_climbing_path_is_refused_by_name() {
        let m = pb::CheckHost {
            host_uuid: uuid::Uuid::new_v4().to_string(),
            disk_paths: vec!["/pool/../etc/shadow".into()],
            ..Default::default()
        };
        let e = check_from_proto(&m).unwrap_err();
        assert!(e.message.contains("disk_paths"), "{e:?}");
        let m = pb::CheckHost {
            host_uuid: "nope".into(),
            ..Default::default()
        };
        assert!(check_from_proto(&m)
            .unwrap_err()
            .message
            .contains("host_uuid"));
    }
}
