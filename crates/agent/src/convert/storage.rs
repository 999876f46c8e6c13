//! Conversions between the wire's storage messages (proto/csagent/v1/
//! storage.proto) and the storage module's own types.
//!
//! Owns: the edge. Every field is validated on the way in (names, formats,
//! sizes), so a malformed command is InvalidArgument before any side
//! effect. Must not: perform storage operations.

use std::path::PathBuf;

use csagent_proto::v1 as pb;

use csagent_storage::ceph_secret::{CephKey, CephSecret};
use csagent_storage::error::StorageError;
use csagent_storage::pool::Monitor;
use csagent_storage::template::ChecksumAlgo;
use csagent_storage::{
    Bytes, Checksum, CloneMode, CopyTemplate, CreateFromTemplate, CreateVolume, ImageFormat,
    PoolDef, PoolKind, PoolName, PoolState, PoolStatus, Progress, ResizeVolume, SnapshotInfo,
    SnapshotName, SnapshotTarget, TemplateSource, VolumeInfo, VolumeName,
};

fn format(f: pb::VolumeFormat) -> Result<ImageFormat, StorageError> {
    match f {
        pb::VolumeFormat::Qcow2 => Ok(ImageFormat::Qcow2),
        pb::VolumeFormat::Raw => Ok(ImageFormat::Raw),
        pb::VolumeFormat::Unspecified => {
            Err(StorageError::invalid("format", "must be qcow2 or raw"))
        }
    }
}

fn missing(what: &str) -> StorageError {
    StorageError::invalid(what.to_string(), "is missing")
}

/// Pool and volume names of a DeleteVolume / GetVolumeInfo.
pub fn volume_ref(pool: &str, name: &str) -> Result<(PoolName, VolumeName), StorageError> {
    Ok((PoolName::new(pool)?, VolumeName::new(name)?))
}

pub fn create_volume(m: &pb::CreateVolume) -> Result<CreateVolume, StorageError> {
    Ok(CreateVolume {
        pool: PoolName::new(&m.pool)?,
        name: VolumeName::new(&m.name)?,
        format: format(m.format())?,
        size: Bytes(m.size_bytes),
    })
}

pub fn create_from_template(
    m: &pb::CreateVolumeFromTemplate,
) -> Result<CreateFromTemplate, StorageError> {
    let mode = match m.mode() {
        pb::CloneMode::Linked => Some(CloneMode::Linked),
        pb::CloneMode::Full => Some(CloneMode::Full {
            format: format(m.format())?,
        }),
        // The host's [guest] create_full_clone decides.
        pb::CloneMode::Unspecified => None,
    };
    Ok(CreateFromTemplate {
        pool: PoolName::new(&m.pool)?,
        name: VolumeName::new(&m.name)?,
        template: VolumeName::new(&m.template)?,
        mode,
        size: (m.size_bytes > 0).then_some(Bytes(m.size_bytes)),
    })
}

pub fn resize_volume(m: &pb::ResizeVolume) -> Result<ResizeVolume, StorageError> {
    Ok(ResizeVolume {
        pool: PoolName::new(&m.pool)?,
        name: VolumeName::new(&m.name)?,
        size: Bytes(m.size_bytes),
        allow_shrink: m.allow_shrink,
    })
}

pub fn copy_template(m: &pb::CopyTemplate) -> Result<CopyTemplate, StorageError> {
    use pb::copy_template::Source;
    let source = match &m.source {
        Some(Source::Path(p)) => TemplateSource::Path(PathBuf::from(p)),
        Some(Source::Url(u)) => TemplateSource::Url(u.clone()),
        None => return Err(missing("template source (path or url)")),
    };
    let algo = match m.checksum_algorithm() {
        pb::ChecksumAlgorithm::Unspecified => None,
        pb::ChecksumAlgorithm::Sha256 => Some(ChecksumAlgo::Sha256),
        pb::ChecksumAlgorithm::Sha512 => Some(ChecksumAlgo::Sha512),
        pb::ChecksumAlgorithm::Md5 => {
            return Err(StorageError::invalid(
                "checksum algorithm MD5",
                "MD5 is not accepted (collisions are cheap to make); give a SHA-256 or SHA-512",
            ))
        }
    };
    let checksum = match (algo, m.checksum.is_empty()) {
        (None, true) => None,
        (Some(algo), false) => Some(Checksum {
            algo,
            hex: m.checksum.clone(),
        }),
        (None, false) => return Err(missing("checksum algorithm")),
        (Some(_), true) => return Err(missing("checksum")),
    };
    Ok(CopyTemplate {
        pool: PoolName::new(&m.pool)?,
        name: VolumeName::new(&m.name)?,
        source,
        format: format(m.format())?,
        checksum,
        unverified: m.unverified,
    })
}

/// Target and name of Create/Revert/DeleteSnapshot.
pub fn snapshot_request(
    target: Option<&pb::SnapshotTarget>,
    name: &str,
) -> Result<(SnapshotTarget, SnapshotName), StorageError> {
    Ok((snapshot_target(target)?, SnapshotName::new(name)?))
}

pub fn snapshot_target(t: Option<&pb::SnapshotTarget>) -> Result<SnapshotTarget, StorageError> {
    use pb::snapshot_target::Target;
    match t.and_then(|t| t.target.as_ref()) {
        Some(Target::Volume(v)) => Ok(SnapshotTarget::Volume {
            pool: PoolName::new(&v.pool)?,
            volume: VolumeName::new(&v.name)?,
        }),
        Some(Target::Vm(d)) if !d.is_empty() => Ok(SnapshotTarget::Domain { domain: d.clone() }),
        _ => Err(missing("snapshot target (volume or vm)")),
    }
}

fn port(p: u32) -> Result<Option<u16>, StorageError> {
    match p {
        0 => Ok(None),
        p => u16::try_from(p)
            .map(Some)
            .map_err(|_| StorageError::invalid(format!("port {p}"), "must be 1..65535")),
    }
}

pub fn pool_def(m: &pb::PoolDefinition) -> Result<PoolDef, StorageError> {
    use pb::pool_definition::Kind;
    let kind = match &m.kind {
        Some(Kind::Dir(d)) => PoolKind::Dir {
            path: d.path.clone().into(),
        },
        Some(Kind::Nfs(n)) => PoolKind::Netfs {
            host: n.host.clone(),
            export: n.export.clone(),
            path: n.path.clone().into(),
        },
        Some(Kind::SharedMountPoint(s)) => PoolKind::SharedMountPoint {
            path: s.path.clone().into(),
        },
        Some(Kind::Rbd(r)) => PoolKind::Rbd {
            monitors: r
                .monitors
                .iter()
                .map(|m| {
                    Ok(Monitor {
                        host: m.host.clone(),
                        port: port(m.port)?,
                    })
                })
                .collect::<Result<_, StorageError>>()?,
            ceph_pool: r.ceph_pool.clone(),
            auth_user: r.auth_user.clone(),
            secret_uuid: secret_uuid(&r.secret_uuid)?,
        },
        Some(Kind::Iscsi(i)) => PoolKind::Iscsi {
            host: i.host.clone(),
            port: port(i.port)?,
            iqn: i.iqn.clone(),
        },
        None => return Err(missing("pool kind")),
    };
    let def = PoolDef {
        name: PoolName::new(&m.name)?,
        kind,
    };
    def.validate()?;
    Ok(def)
}

fn secret_uuid(s: &str) -> Result<uuid::Uuid, StorageError> {
    uuid::Uuid::parse_str(s)
        .map_err(|e| StorageError::invalid(format!("secret uuid {s:?}"), e.to_string()))
}

pub fn ceph_secret(m: &pb::PutCephSecret) -> Result<CephSecret, StorageError> {
    Ok(CephSecret {
        uuid: secret_uuid(&m.uuid)?,
        user: m.user.clone(),
        key: CephKey::new(m.key.clone())?,
    })
}

/// UUID of a RemoveCephSecret.
pub fn remove_ceph_secret(m: &pb::RemoveCephSecret) -> Result<uuid::Uuid, StorageError> {
    secret_uuid(&m.uuid)
}

pub fn volume_info(v: &VolumeInfo) -> pb::VolumeInfo {
    pb::VolumeInfo {
        pool: v.pool.clone(),
        name: v.name.clone(),
        path: v.path.display().to_string(),
        format: v.format.clone(),
        virtual_size_bytes: v.virtual_size.0,
        actual_size_bytes: v.actual_size.0,
        unverified: v.unverified,
        backing_chain: v
            .backing_chain
            .iter()
            .map(|b| pb::BackingFile {
                path: b.path.clone(),
                format: b.format.clone(),
            })
            .collect(),
    }
}

pub fn snapshot_info(s: &SnapshotInfo) -> pb::SnapshotInfo {
    pb::SnapshotInfo {
        name: s.name.clone(),
        kind: s.kind.clone(),
        created_unix: s.created_unix,
        vm_state_size_bytes: s.vm_state_size.0,
        quiesced: s.quiesced,
        files: s.files.iter().map(|f| f.display().to_string()).collect(),
    }
}

pub fn pool_state(s: PoolState) -> pb::PoolState {
    match s {
        PoolState::Running => pb::PoolState::Running,
        PoolState::Inactive => pb::PoolState::Inactive,
        PoolState::Building => pb::PoolState::Building,
        PoolState::Degraded => pb::PoolState::Degraded,
        PoolState::Inaccessible => pb::PoolState::Inaccessible,
        PoolState::Unmounted => pb::PoolState::Unmounted,
        PoolState::Unreachable => pb::PoolState::Unreachable,
    }
}

pub fn pool_status(p: &PoolStatus) -> pb::PoolStatus {
    pb::PoolStatus {
        name: p.name.clone(),
        r#type: p.pool_type.clone(),
        path: p
            .path
            .as_ref()
            .map(|x| x.display().to_string())
            .unwrap_or_default(),
        state: pool_state(p.state) as i32,
        capacity_bytes: p.capacity.0,
        allocation_bytes: p.allocation.0,
        available_bytes: p.available.0,
        message: p.message.clone(),
    }
}

/// A CommandProgress for a storage step ("copy-template", "full-copy").
pub fn progress(command_id: &str, stage: &str, p: Progress) -> pb::CommandProgress {
    pb::CommandProgress {
        command_id: command_id.to_string(),
        stage: stage.to_string(),
        done: p.done.0,
        total: p.total.0,
        migration: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use csagent_core::ErrorKind;

    #[test]
    fn bad_wire_input_is_invalid_argument() {
        let m = pb::CreateVolume {
            pool: "p".into(),
            name: "../x".into(),
            format: 1,
            size_bytes: 1,
        };
        assert_eq!(
            create_volume(&m).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        let m = pb::CreateVolume {
            pool: "p".into(),
            name: "x".into(),
            format: 99,
            size_bytes: 1,
        };
        assert_eq!(
            create_volume(&m).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        let m = pb::CopyTemplate {
            pool: "p".into(),
            name: "t".into(),
            source: None,
            ..Default::default()
        };
        assert!(copy_template(&m).is_err());
        let m = pb::CopyTemplate {
            pool: "p".into(),
            name: "t".into(),
            source: Some(pb::copy_template::Source::Url("http://h/t".into())),
            format: pb::VolumeFormat::Qcow2 as i32,
            checksum_algorithm: pb::ChecksumAlgorithm::Md5 as i32,
            checksum: String::new(),
            unverified: false,
        };
        assert!(copy_template(&m).is_err());
        let d = pb::PoolDefinition {
            name: "p".into(),
            kind: Some(pb::pool_definition::Kind::Iscsi(pb::IscsiPool {
                host: "h".into(),
                port: 70000,
                iqn: "iqn.x".into(),
            })),
        };
        assert!(pool_def(&d).is_err());
    }

    #[test]
    fn wire_round_trip_of_a_linked_clone() {
        let m = pb::CreateVolumeFromTemplate {
            pool: "p".into(),
            name: "vm-root".into(),
            template: "tpl".into(),
            mode: pb::CloneMode::Linked as i32,
            format: 0,
            size_bytes: 0,
        };
        let r = create_from_template(&m).unwrap();
        assert_eq!((r.mode, r.size), (Some(CloneMode::Linked), None));
    }
}
