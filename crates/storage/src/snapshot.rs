//! Volume snapshots. A stopped VM's qcow2 volume gets internal snapshots
//! through `qemu-img snapshot`; a running VM gets an external disk-only
//! snapshot through libvirt (guest agent quiesced when one answers).
//! Reverting a VM snapshot is snapshot_revert.rs's (libvirt < 9.9 cannot).
//!
//! Owns: snapshot XML and the choice of mechanism. Must not: snapshot a
//! volume a running VM writes to with qemu-img (qemu's image lock refuses
//! it, and we report that as "use a VM snapshot").

use std::path::PathBuf;

use virt::domain::Domain;
use virt::sys;

use super::error::StorageError;
use super::names::{volume_path, PoolName, SnapshotName, VolumeName};
use super::probe::probe;
use super::qemu_img::{RunCtl, SnapshotOp};
use super::xml;
use super::{Bytes, CallOpts, ImageFormat, Op, Storage};

/// What to snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotTarget {
    /// A qcow2 volume of a stopped VM: internal snapshot.
    Volume { pool: PoolName, volume: VolumeName },
    /// A running VM (libvirt name or UUID): external disk-only snapshot of
    /// all its file disks, overlays written next to each disk.
    Domain { domain: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub name: String,
    /// "internal" (qcow2) or "external" (libvirt overlay files).
    pub kind: String,
    pub created_unix: i64,
    pub vm_state_size: Bytes,
    /// True when the guest agent froze filesystems for the snapshot.
    pub quiesced: bool,
    /// Overlay files of an external snapshot.
    pub files: Vec<PathBuf>,
}

/// A file disk of a domain, from its XML.
#[derive(Debug, Clone)]
struct DomainDisk {
    target: String,
    source: PathBuf,
}

impl Storage {
    pub async fn create_snapshot(
        &self,
        target: SnapshotTarget,
        name: SnapshotName,
        opts: CallOpts,
    ) -> Result<SnapshotInfo, StorageError> {
        let ctl = self.ctl(Op::Snapshot, &opts);
        match target {
            SnapshotTarget::Volume { pool, volume } => {
                let path = self.snap_volume(&pool, &volume, &ctl).await?;
                let _g = self.locks.lock(&path, &ctl).await?;
                if self.find_internal(&path, &name, &ctl).await?.is_some() {
                    return Err(StorageError::AlreadyExists {
                        what: format!("snapshot {name} of volume {volume}"),
                    });
                }
                self.qemu_img
                    .snapshot(SnapshotOp::Create, &path, name.as_str(), &ctl)
                    .await?;
                self.find_internal(&path, &name, &ctl)
                    .await?
                    .ok_or_else(|| StorageError::Internal {
                        step: "snapshot create",
                        reason: format!(
                            "snapshot {name} missing right after creation on {}",
                            path.display()
                        ),
                    })
            }
            SnapshotTarget::Domain { domain } => self.external_snapshot(domain, name, &ctl).await,
        }
    }

    pub async fn revert_snapshot(
        &self,
        target: SnapshotTarget,
        name: SnapshotName,
        opts: CallOpts,
    ) -> Result<(), StorageError> {
        if let SnapshotTarget::Domain { domain } = target {
            let ctl = self.ctl(Op::Snapshot, &opts);
            return self.revert_domain_snapshot(domain, name, &ctl).await;
        }
        self.internal_or_domain(target, name, opts, SnapshotOp::Apply)
            .await
    }

    pub async fn delete_snapshot(
        &self,
        target: SnapshotTarget,
        name: SnapshotName,
        opts: CallOpts,
    ) -> Result<(), StorageError> {
        self.internal_or_domain(target, name, opts, SnapshotOp::Delete)
            .await
    }

    pub async fn list_snapshots(
        &self,
        target: SnapshotTarget,
        opts: CallOpts,
    ) -> Result<Vec<SnapshotInfo>, StorageError> {
        let ctl = self.ctl(Op::Snapshot, &opts);
        match target {
            SnapshotTarget::Volume { pool, volume } => {
                let path = self.snap_volume(&pool, &volume, &ctl).await?;
                self.internal_list(&path, &ctl).await
            }
            SnapshotTarget::Domain { domain } => {
                let d = domain.clone();
                self.libvirt("list snapshots", &domain, &ctl, move |conn| {
                    let dom = lookup_domain(conn, &d)?;
                    let snaps = dom
                        .list_all_snapshots(0)
                        .map_err(|e| StorageError::libvirt("list snapshots", &d, e))?;
                    snaps.iter().map(|s| external_info(s, &d)).collect()
                })
                .await
            }
        }
    }

    async fn internal_or_domain(
        &self,
        target: SnapshotTarget,
        name: SnapshotName,
        opts: CallOpts,
        op: SnapshotOp,
    ) -> Result<(), StorageError> {
        let ctl = self.ctl(Op::Snapshot, &opts);
        match target {
            SnapshotTarget::Volume { pool, volume } => {
                let path = self.snap_volume(&pool, &volume, &ctl).await?;
                let _g = self.locks.lock(&path, &ctl).await?;
                if self.find_internal(&path, &name, &ctl).await?.is_none() {
                    return Err(StorageError::NotFound {
                        what: format!("snapshot {name} of volume {volume}"),
                    });
                }
                self.qemu_img.snapshot(op, &path, name.as_str(), &ctl).await
            }
            SnapshotTarget::Domain { domain } => {
                let n = name.to_string();
                let step = if op == SnapshotOp::Apply {
                    "revert snapshot"
                } else {
                    "delete snapshot"
                };
                self.libvirt(step, &domain.clone(), &ctl, move |conn| {
                    let dom = lookup_domain(conn, &domain)?;
                    let snap = Domain::lookup_snapshot_by_name(&dom, &n, 0).map_err(|e| {
                        StorageError::libvirt(step, format!("snapshot {n} of VM {domain}"), e)
                    })?;
                    let r = if op == SnapshotOp::Apply {
                        snap.revert(0)
                    } else {
                        snap.delete(0)
                    };
                    r.map_err(|e| {
                        StorageError::libvirt(step, format!("snapshot {n} of VM {domain}"), e)
                    })
                })
                .await
            }
        }
    }

    async fn snap_volume(
        &self,
        pool: &PoolName,
        volume: &VolumeName,
        ctl: &RunCtl,
    ) -> Result<PathBuf, StorageError> {
        let root = self.pool_dir(pool, ctl).await?;
        let path = volume_path(&root, volume);
        let (p, what) = (path.clone(), format!("volume {volume} in pool {pool}"));
        let header = self
            .fs("read volume header", &path, ctl, move || {
                if !p.is_file() {
                    return Err(StorageError::NotFound { what });
                }
                probe(&p)
            })
            .await?;
        if header.format != ImageFormat::Qcow2 {
            return Err(StorageError::invalid(
                format!("snapshot of volume {volume}"),
                "internal snapshots need a qcow2 volume",
            ));
        }
        Ok(path)
    }

    async fn internal_list(
        &self,
        path: &std::path::Path,
        ctl: &RunCtl,
    ) -> Result<Vec<SnapshotInfo>, StorageError> {
        let info = self
            .qemu_img
            .info(path, Some(ImageFormat::Qcow2), false, ctl)
            .await?;
        Ok(info
            .into_iter()
            .flat_map(|i| i.snapshots)
            .map(|s| SnapshotInfo {
                name: s.name,
                kind: "internal".into(),
                created_unix: s.date_sec,
                vm_state_size: Bytes(s.vm_state_size),
                quiesced: false,
                files: Vec::new(),
            })
            .collect())
    }

    async fn find_internal(
        &self,
        path: &std::path::Path,
        name: &SnapshotName,
        ctl: &RunCtl,
    ) -> Result<Option<SnapshotInfo>, StorageError> {
        Ok(self
            .internal_list(path, ctl)
            .await?
            .into_iter()
            .find(|s| s.name == name.as_str()))
    }

    async fn external_snapshot(
        &self,
        domain: String,
        name: SnapshotName,
        ctl: &RunCtl,
    ) -> Result<SnapshotInfo, StorageError> {
        let d = domain.clone();
        self.libvirt("create snapshot", &domain, ctl, move |conn| {
                let dom = lookup_domain(conn, &d)?;
                if !dom.is_active().unwrap_or(false) {
                    return Err(StorageError::invalid(
                        format!("snapshot of VM {d}"),
                        "the VM is not running; snapshot its volumes instead",
                    ));
                }
                if Domain::lookup_snapshot_by_name(&dom, name.as_str(), 0).is_ok() {
                    return Err(StorageError::AlreadyExists {
                        what: format!("snapshot {name} of VM {d}"),
                    });
                }
                let dxml = dom.xml_desc(0).map_err(|e| StorageError::libvirt("read domain XML", &d, e))?;
                let disks = file_disks(&dxml)?;
                let (sxml, files) = snapshot_xml(&name, &disks)?;
                for f in &files {
                    if f.symlink_metadata().is_ok() {
                        return Err(StorageError::AlreadyExists { what: format!("overlay file {}", f.display()) });
                    }
                }
                let base = sys::VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY | sys::VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC;
                let (snap, quiesced) = if has_guest_agent(&dxml) {
                    match dom.create_snapshot_xml(&sxml, base | sys::VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE) {
                        Ok(s) => (s, true),
                        Err(e) => {
                            // ATOMIC: a failed attempt changed nothing, so a
                            // crash-consistent snapshot is still possible.
                            tracing::warn!(vm = %d, error = %e, "quiesce failed; taking a crash-consistent snapshot");
                            (create(&dom, &sxml, base, &d)?, false)
                        }
                    }
                } else {
                    (create(&dom, &sxml, base, &d)?, false)
                };
                let mut info = external_info(&snap, &d)?;
                info.quiesced = quiesced;
                info.files = files;
                Ok(info)
            })
            .await
    }
}

fn create(
    dom: &Domain,
    xml: &str,
    flags: u32,
    d: &str,
) -> Result<virt::domain_snapshot::DomainSnapshot, StorageError> {
    dom.create_snapshot_xml(xml, flags)
        .map_err(|e| StorageError::libvirt("create snapshot", d, e))
}

pub(super) fn lookup_domain(
    conn: &virt::connect::Connect,
    d: &str,
) -> Result<Domain, StorageError> {
    let r = if uuid::Uuid::parse_str(d).is_ok() {
        conn.lookup_domain_by_uuid_string(d)
    } else {
        conn.lookup_domain_by_name(d)
    };
    r.map_err(|_| StorageError::NotFound {
        what: format!("VM {d}"),
    })
}

fn external_info(
    s: &virt::domain_snapshot::DomainSnapshot,
    d: &str,
) -> Result<SnapshotInfo, StorageError> {
    let name = s
        .name()
        .map_err(|e| StorageError::libvirt("read snapshot", d, e))?;
    let x = s
        .xml_desc(0)
        .map_err(|e| StorageError::libvirt("read snapshot XML", d, e))?;
    let nodes = xml::nodes(&x, "read snapshot XML")?;
    let created = xml::find(&nodes, "domainsnapshot/creationTime")
        .and_then(|n| n.text.trim().parse().ok())
        .unwrap_or(0);
    let files = nodes
        .iter()
        .filter(|n| n.path == "domainsnapshot/disks/disk/source")
        .filter_map(|n| n.attr("file").map(PathBuf::from))
        .collect();
    Ok(SnapshotInfo {
        name,
        kind: "external".into(),
        created_unix: created,
        vm_state_size: Bytes(0),
        quiesced: false,
        files,
    })
}

fn file_disks(dxml: &str) -> Result<Vec<DomainDisk>, StorageError> {
    let nodes = xml::nodes(dxml, "read domain XML")?;
    let out: Vec<DomainDisk> = xml::groups(&nodes, "domain/devices/disk")
        .into_iter()
        .filter(|g| g[0].attr("device") == Some("disk") && g[0].attr("type") == Some("file"))
        .filter_map(|g| {
            Some(DomainDisk {
                source: PathBuf::from(xml::group_attr(g, "domain/devices/disk/source", "file")?),
                target: xml::group_attr(g, "domain/devices/disk/target", "dev")?.to_string(),
            })
        })
        .collect();
    if out.is_empty() {
        return Err(StorageError::invalid(
            "VM disks",
            "the VM has no file disk to snapshot",
        ));
    }
    Ok(out)
}

fn has_guest_agent(dxml: &str) -> bool {
    xml::nodes(dxml, "read domain XML").is_ok_and(|nodes| {
        nodes.iter().any(|n| {
            n.path == "domain/devices/channel/target"
                && n.attr("name") == Some("org.qemu.guest_agent.0")
                && n.attr("state") == Some("connected")
        })
    })
}

/// Disk-only snapshot XML: one external qcow2 overlay per disk, named
/// "<disk file>.<snapshot>" next to it, so it stays in the disk's pool.
fn snapshot_xml(
    name: &SnapshotName,
    disks: &[DomainDisk],
) -> Result<(String, Vec<PathBuf>), StorageError> {
    let files: Vec<PathBuf> = disks
        .iter()
        .map(|d| {
            let mut s = d.source.clone().into_os_string();
            s.push(".");
            s.push(name.as_str());
            PathBuf::from(s)
        })
        .collect();
    let mut w = xml::writer();
    w.create_element("domainsnapshot")
        .write_inner_content(|w| {
            xml::text_elem(w, "name", name.as_str())?;
            w.create_element("memory")
                .with_attribute(("snapshot", "no"))
                .write_empty()?;
            w.create_element("disks").write_inner_content(|w| {
                for (d, f) in disks.iter().zip(&files) {
                    let file = f.to_string_lossy();
                    w.create_element("disk")
                        .with_attribute(("name", d.target.as_str()))
                        .with_attribute(("snapshot", "external"))
                        .write_inner_content(|w| {
                            w.create_element("driver")
                                .with_attribute(("type", "qcow2"))
                                .write_empty()?;
                            w.create_element("source")
                                .with_attribute(("file", file.as_ref()))
                                .write_empty()?;
                            Ok(())
                        })?;
                }
                Ok(())
            })?;
            Ok(())
        })
        .map_err(|e| xml::render_err("render snapshot XML", e))?;
    Ok((xml::finish(w, "render snapshot XML")?, files))
}
