//! Revert of a VM to an external disk-only snapshot. libvirt does it itself
//! from 9.9 on; older libvirt (Debian 12 ships 9.0) refuses external
//! reverts, and then the agent does it: with the VM shut off, each disk's
//! overlay is replaced by a fresh empty qcow2 on the same backing file.
//! That discards everything written since the snapshot, and libvirt's
//! snapshot metadata stays valid because the overlay paths do not change.
//!
//! Owns: the checks that make the agent's revert safe and the
//! all-or-nothing swap of the overlays. Must not: revert disks under a
//! running guest (a disk-only snapshot holds no memory state), revert
//! anything but the newest snapshot of the chain, or leave some disks
//! reverted and others not.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tokio::sync::OwnedMutexGuard;
use virt::connect::Connect;
use virt::domain::Domain;
use virt::domain_snapshot::DomainSnapshot;
use virt::error::{ErrorNumber, ErrorNumberEnum};
use virt::sys;

use super::error::StorageError;
use super::lock::{temp_path_beside, TempFile};
use super::names::SnapshotName;
use super::probe::probe;
use super::qemu_img::RunCtl;
use super::snapshot::lookup_domain;
use super::xml::{self, Node};
use super::{ImageFormat, Storage};

const STEP: &str = "revert snapshot";

/// What asking libvirt first came to.
enum ByLibvirt {
    Reverted,
    /// libvirt cannot revert this external snapshot (before 9.9); its words.
    Unsupported(String),
}

/// One disk to revert: the overlay the snapshot made, and the image that
/// was the disk's source when the snapshot was taken (the overlay's base).
#[derive(Debug, Clone, PartialEq, Eq)]
struct DiskRevert {
    target: String,
    overlay: PathBuf,
    base: PathBuf,
    /// The base's format per the snapshot's domain XML.
    base_format: Option<String>,
}

/// The base as the overlay's header names it, checked against the plan.
struct Backing {
    file: PathBuf,
    format: ImageFormat,
}

/// A new empty overlay, made under a temp name beside the old one.
struct Fresh {
    tmp: TempFile,
    overlay: PathBuf,
}

/// One `<disk>` of a domain XML.
struct DiskSource {
    target: String,
    file: Option<PathBuf>,
    format: Option<String>,
}

impl Storage {
    /// Reverts VM `domain` to its snapshot `name`: by libvirt when it can,
    /// else (external disk-only snapshot, libvirt < 9.9) by the agent.
    pub(super) async fn revert_domain_snapshot(
        &self,
        domain: String,
        name: SnapshotName,
        ctl: &RunCtl,
    ) -> Result<(), StorageError> {
        match self.revert_by_libvirt(&domain, &name, ctl).await? {
            ByLibvirt::Reverted => Ok(()),
            ByLibvirt::Unsupported(why) => {
                tracing::info!(vm = %domain, snapshot = %name, libvirt = %why,
                    "libvirt cannot revert this external snapshot; the agent reverts it");
                self.revert_by_agent(&domain, &name, ctl).await
            }
        }
    }

    /// A disk-only snapshot is refused on a running VM whatever libvirt's
    /// version, so the outcome does not depend on which path reverts.
    async fn revert_by_libvirt(
        &self,
        domain: &str,
        name: &SnapshotName,
        ctl: &RunCtl,
    ) -> Result<ByLibvirt, StorageError> {
        let (d, n) = (domain.to_string(), name.to_string());
        self.libvirt(STEP, domain, ctl, move |conn| {
            let (dom, snap) = lookup_snapshot(conn, &d, &n)?;
            let disk_only = is_external_disk_only(&snapshot_nodes(&snap, &d, &n)?);
            if disk_only {
                ensure_shut_off(&dom, &d)?;
            }
            match snap.revert(0) {
                Ok(()) => Ok(ByLibvirt::Reverted),
                Err(e) if disk_only && is_unsupported(&e) => {
                    Ok(ByLibvirt::Unsupported(e.message().to_string()))
                }
                Err(e) => Err(StorageError::libvirt(STEP, snap_object(&n, &d), e)),
            }
        })
        .await
    }

    async fn revert_by_agent(
        &self,
        domain: &str,
        name: &SnapshotName,
        ctl: &RunCtl,
    ) -> Result<(), StorageError> {
        let plan = self.revert_plan(domain, name, ctl).await?;
        let _locks = self.lock_overlays(&plan, ctl).await?;
        let mut backings = Vec::with_capacity(plan.len());
        for d in &plan {
            backings.push(self.check_overlay(d, ctl).await?);
        }
        let mut fresh = Vec::with_capacity(plan.len());
        for (d, b) in plan.iter().zip(&backings) {
            fresh.push(self.fresh_overlay(d, b, ctl).await?);
        }
        // Last look right before the swap: the VM may have been started or
        // snapshotted while the overlays were made (dropping `fresh`
        // removes them).
        if self.revert_plan(domain, name, ctl).await? != plan {
            return Err(StorageError::conflict(
                snap_object(name.as_str(), domain),
                "the VM or its disks changed during the revert; retry",
            ));
        }
        ctl.check(STEP, domain)?;
        let first = plan.first().map(|d| d.overlay.clone()).unwrap_or_default();
        self.fs("swap overlays", &first, ctl, move || swap_all(fresh))
            .await
    }

    /// Reads, in one libvirt call, whether and what the agent may revert.
    async fn revert_plan(
        &self,
        domain: &str,
        name: &SnapshotName,
        ctl: &RunCtl,
    ) -> Result<Vec<DiskRevert>, StorageError> {
        let (d, n) = (domain.to_string(), name.to_string());
        self.libvirt(STEP, domain, ctl, move |conn| {
            let (dom, snap) = lookup_snapshot(conn, &d, &n)?;
            ensure_shut_off(&dom, &d)?;
            ensure_newest(&snap, &d, &n)?;
            let persistent = dom
                .xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)
                .map_err(|e| StorageError::libvirt("read domain XML", &d, e))?;
            let now = xml::nodes(&persistent, "read domain XML")?;
            plan_disks(&snapshot_nodes(&snap, &d, &n)?, &now, &d, &n)
        })
        .await
    }

    /// Locks every overlay in one global (path) order, so two operations
    /// locking overlapping sets cannot deadlock.
    async fn lock_overlays(
        &self,
        plan: &[DiskRevert],
        ctl: &RunCtl,
    ) -> Result<Vec<OwnedMutexGuard<()>>, StorageError> {
        let mut paths: Vec<&Path> = plan.iter().map(|d| d.overlay.as_path()).collect();
        paths.sort();
        paths.dedup();
        let mut guards = Vec::with_capacity(paths.len());
        for p in paths {
            guards.push(self.locks.lock(p, ctl).await?);
        }
        Ok(guards)
    }

    /// The overlay must be a plain qcow2 file on the snapshot-time source,
    /// and no process may have it open.
    async fn check_overlay(&self, d: &DiskRevert, ctl: &RunCtl) -> Result<Backing, StorageError> {
        let o = d.overlay.clone();
        let (meta, h) = self
            .fs("read snapshot overlay", &d.overlay, ctl, move || {
                let meta = std::fs::symlink_metadata(&o)
                    .map_err(|e| StorageError::io("read snapshot overlay", &o, e))?;
                Ok((meta, probe(&o)?))
            })
            .await?;
        if !meta.is_file() || h.format != ImageFormat::Qcow2 || h.encrypted || h.external_data_file
        {
            return Err(StorageError::invalid(
                format!("overlay {} of disk {}", d.overlay.display(), d.target),
                "is not a plain qcow2 file (symlink, raw, encrypted or with a data file); the agent reverts only overlays libvirt made",
            ));
        }
        let info = self
            .qemu_img
            .info(&d.overlay, Some(ImageFormat::Qcow2), false, ctl)
            .await?;
        let info = info
            .into_iter()
            .next()
            .ok_or_else(|| StorageError::Internal {
                step: STEP,
                reason: format!("qemu-img info printed nothing for {}", d.overlay.display()),
            })?;
        let full = info.full_backing_filename.or(info.backing_filename.clone());
        let (Some(full), Some(written)) = (full, info.backing_filename) else {
            return Err(chain_changed(d, "has no backing file"));
        };
        if Path::new(&full) != d.base {
            return Err(chain_changed(d, &format!("sits on {full}")));
        }
        let format = info.backing_filename_format.or(d.base_format.clone());
        let format = ImageFormat::parse(format.as_deref().unwrap_or("unknown"))?;
        self.qemu_img
            .ensure_unused(&d.overlay, ImageFormat::Qcow2, ctl)
            .await?;
        Ok(Backing {
            file: PathBuf::from(written),
            format,
        })
    }

    /// An empty qcow2 on the same backing file as the written header says
    /// (a relative name resolves the same: same directory), with the old
    /// overlay's owner and mode, flushed to disk before it can replace it.
    async fn fresh_overlay(
        &self,
        d: &DiskRevert,
        b: &Backing,
        ctl: &RunCtl,
    ) -> Result<Fresh, StorageError> {
        let tmp = TempFile::new(temp_path_beside(&d.overlay)?);
        let backing = Some((b.file.as_path(), b.format));
        self.qemu_img
            .create(tmp.path(), ImageFormat::Qcow2, None, backing, ctl)
            .await?;
        let (o, t) = (d.overlay.clone(), tmp.path().to_path_buf());
        self.fs("prepare fresh overlay", tmp.path(), ctl, move || {
            copy_owner_and_mode(&o, &t)?;
            sync_path(&t)
        })
        .await?;
        Ok(Fresh {
            tmp,
            overlay: d.overlay.clone(),
        })
    }
}

fn lookup_snapshot(
    conn: &Connect,
    d: &str,
    n: &str,
) -> Result<(Domain, DomainSnapshot), StorageError> {
    let dom = lookup_domain(conn, d)?;
    let snap = Domain::lookup_snapshot_by_name(&dom, n, 0)
        .map_err(|e| StorageError::libvirt(STEP, snap_object(n, d), e))?;
    Ok((dom, snap))
}

fn snapshot_nodes(snap: &DomainSnapshot, d: &str, n: &str) -> Result<Vec<Node>, StorageError> {
    let x = snap
        .xml_desc(0)
        .map_err(|e| StorageError::libvirt("read snapshot XML", snap_object(n, d), e))?;
    xml::nodes(&x, "read snapshot XML")
}

fn snap_object(n: &str, d: &str) -> String {
    format!("snapshot {n} of VM {d}")
}

/// No memory state, and at least one disk in an external overlay.
fn is_external_disk_only(snap: &[Node]) -> bool {
    let memory = xml::find(snap, "domainsnapshot/memory").and_then(|m| m.attr("snapshot"));
    let kinds: Vec<&str> = snap
        .iter()
        .filter(|n| n.path == "domainsnapshot/disks/disk")
        .filter_map(|n| n.attr("snapshot"))
        .collect();
    memory == Some("no") && kinds.contains(&"external") && !kinds.contains(&"internal")
}

fn is_unsupported(e: &virt::error::Error) -> bool {
    matches!(
        e.code(),
        ErrorNumberEnum::Known(ErrorNumber::ConfigUnsupported | ErrorNumber::OperationUnsupported)
    )
}

fn ensure_shut_off(dom: &Domain, d: &str) -> Result<(), StorageError> {
    let active = dom
        .is_active()
        .map_err(|e| StorageError::libvirt("read VM state", d, e))?;
    if active {
        return Err(StorageError::conflict(
            format!("revert of VM {d}"),
            "the VM is running and a disk-only snapshot holds no memory state, so \
             reverting its disks under the guest would corrupt it; stop the VM first, then revert",
        ));
    }
    Ok(())
}

fn ensure_newest(snap: &DomainSnapshot, d: &str, n: &str) -> Result<(), StorageError> {
    let later = snap
        .list_all_children(0)
        .map_err(|e| StorageError::libvirt("list later snapshots", snap_object(n, d), e))?;
    if later.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = later.iter().filter_map(|s| s.name().ok()).collect();
    Err(StorageError::conflict(
        format!("revert to {}", snap_object(n, d)),
        format!(
            "later snapshots exist ({}); only the newest snapshot can be reverted: \
             delete the later snapshots first",
            names.join(", ")
        ),
    ))
}

fn chain_changed(d: &DiskRevert, found: &str) -> StorageError {
    StorageError::conflict(
        format!("revert of disk {}", d.target),
        format!(
            "its overlay {} {found}, not on {} where the snapshot left it: the disk chain \
             was changed; delete the later snapshots first",
            d.overlay.display(),
            d.base.display()
        ),
    )
}

/// The disks to revert: every external disk of the snapshot, whose overlay
/// must still be that disk's persistent source (else a later snapshot or
/// an edit moved the disk on).
fn plan_disks(
    snap: &[Node],
    now: &[Node],
    d: &str,
    n: &str,
) -> Result<Vec<DiskRevert>, StorageError> {
    let then = disk_sources(snap, "domainsnapshot/domain/devices/disk");
    let now = disk_sources(now, "domain/devices/disk");
    let mut out = Vec::new();
    for g in xml::groups(snap, "domainsnapshot/disks/disk") {
        if g[0].attr("snapshot") != Some("external") {
            continue;
        }
        let target = g[0].attr("name").unwrap_or_default().to_string();
        let what = || format!("disk {target} of {}", snap_object(n, d));
        let overlay = xml::group_attr(g, "domainsnapshot/disks/disk/source", "file")
            .map(PathBuf::from)
            .ok_or_else(|| StorageError::invalid(what(), "has no overlay file"))?;
        let old = by_target(&then, &target);
        let Some((base, base_format)) = old.and_then(|s| Some((s.file.clone()?, s.format.clone())))
        else {
            return Err(StorageError::invalid(what(), "has no recorded source file"));
        };
        let current = by_target(&now, &target).and_then(|s| s.file.clone());
        if current.as_deref() != Some(overlay.as_path()) {
            return Err(later_chain(&what(), current.as_deref(), &overlay));
        }
        out.push(DiskRevert {
            target,
            overlay,
            base,
            base_format,
        });
    }
    if out.is_empty() {
        return Err(StorageError::invalid(
            snap_object(n, d),
            "has no external disk",
        ));
    }
    Ok(out)
}

fn later_chain(what: &str, current: Option<&Path>, overlay: &Path) -> StorageError {
    let now = current.map_or("not a file disk".to_string(), |p| p.display().to_string());
    StorageError::conflict(
        format!("revert of {what}"),
        format!(
            "the disk is now {now}, not the snapshot's overlay {}: a later snapshot exists \
             or the disk was changed; delete the later snapshots first",
            overlay.display()
        ),
    )
}

fn by_target<'a>(disks: &'a [DiskSource], target: &str) -> Option<&'a DiskSource> {
    disks.iter().find(|s| s.target == target)
}

fn disk_sources(nodes: &[Node], disk: &str) -> Vec<DiskSource> {
    let (target, source, driver) = (
        format!("{disk}/target"),
        format!("{disk}/source"),
        format!("{disk}/driver"),
    );
    xml::groups(nodes, disk)
        .into_iter()
        .map(|g| DiskSource {
            target: xml::group_attr(g, &target, "dev")
                .unwrap_or_default()
                .to_string(),
            file: xml::group_attr(g, &source, "file").map(PathBuf::from),
            format: xml::group_attr(g, &driver, "type").map(str::to_string),
        })
        .collect()
}

fn copy_owner_and_mode(from: &Path, to: &Path) -> Result<(), StorageError> {
    let m = std::fs::metadata(from).map_err(|e| StorageError::io("read overlay owner", from, e))?;
    std::os::unix::fs::chown(to, Some(m.uid()), Some(m.gid()))
        .map_err(|e| StorageError::io("set overlay owner", to, e))?;
    std::fs::set_permissions(to, m.permissions())
        .map_err(|e| StorageError::io("set overlay mode", to, e))
}

fn sync_path(p: &Path) -> Result<(), StorageError> {
    std::fs::File::open(p)
        .and_then(|f| f.sync_all())
        .map_err(|e| StorageError::io("flush overlay", p, e))
}

/// Renames every new overlay over its old one. The old ones are first
/// hard-linked aside, so a failed rename puts the earlier ones back and
/// the VM keeps its disks as they were; the links go when this returns.
fn swap_all(fresh: Vec<Fresh>) -> Result<(), StorageError> {
    let overlays: Vec<PathBuf> = fresh.iter().map(|f| f.overlay.clone()).collect();
    let mut kept = Vec::with_capacity(fresh.len());
    for o in &overlays {
        let k = TempFile::new(temp_path_beside(o)?);
        std::fs::hard_link(o, k.path())
            .map_err(|e| StorageError::io("keep old overlay aside", o, e))?;
        kept.push(k);
    }
    for (i, f) in fresh.into_iter().enumerate() {
        if let Err(e) = f.tmp.replace(&f.overlay) {
            put_back(&kept[..i], &overlays);
            return Err(e);
        }
    }
    for dir in overlays.iter().filter_map(|o| o.parent()) {
        if let Err(e) = sync_path(dir) {
            tracing::warn!(error = %e, "could not flush directory after snapshot revert");
        }
    }
    Ok(())
}

fn put_back(kept: &[TempFile], overlays: &[PathBuf]) {
    for (k, o) in kept.iter().zip(overlays) {
        if let Err(e) = std::fs::rename(k.path(), o) {
            tracing::error!(overlay = %o.display(), kept = %k.path().display(), error = %e,
                "could not restore the old overlay after a failed revert; rename it back by hand");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNAP: &str = "<domainsnapshot><name>s1</name><state>disk-snapshot</state>\
        <memory snapshot='no'/><disks>\
        <disk name='vda' snapshot='external' type='file'><driver type='qcow2'/>\
        <source file='/p/root.s1'/></disk>\
        <disk name='hdc' snapshot='no'/></disks>\
        <domain type='qemu'><devices>\
        <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
        <source file='/p/root'/><backingStore/><target dev='vda'/></disk>\
        </devices></domain></domainsnapshot>";

    fn nodes(x: &str) -> Vec<Node> {
        xml::nodes(x, "test").unwrap()
    }

    fn domain(src: &str) -> Vec<Node> {
        nodes(&format!(
            "<domain><devices><disk type='file' device='disk'><driver type='qcow2'/>\
             <source file='{src}'/><backingStore type='file'><source file='/p/root'/>\
             </backingStore><target dev='vda'/></disk></devices></domain>"
        ))
    }

    #[test]
    fn plans_the_newest_overlay() {
        let plan = plan_disks(&nodes(SNAP), &domain("/p/root.s1"), "vm", "s1").unwrap();
        assert_eq!(
            plan,
            vec![DiskRevert {
                target: "vda".into(),
                overlay: "/p/root.s1".into(),
                base: "/p/root".into(),
                base_format: Some("qcow2".into()),
            }]
        );
    }

    #[test]
    fn refuses_a_disk_moved_on() {
        let e = plan_disks(&nodes(SNAP), &domain("/p/root.s1.s2"), "vm", "s1").unwrap_err();
        assert_eq!(e.kind(), super::super::ErrorKind::Conflict);
        assert!(
            e.to_string().contains("delete the later snapshots first"),
            "{e}"
        );
    }

    #[test]
    fn only_external_disk_only_snapshots_qualify() {
        assert!(is_external_disk_only(&nodes(SNAP)));
        let with_memory = SNAP.replace("snapshot='no'/><disks>", "snapshot='external'/><disks>");
        assert!(!is_external_disk_only(&nodes(&with_memory)));
        let internal = SNAP.replace("'external' type", "'internal' type");
        assert!(!is_external_disk_only(&nodes(&internal)));
    }
}
