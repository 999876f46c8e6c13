//! Snapshots: qcow2 internal snapshots on a stopped VM's volume (create,
//! list, revert restores the data, delete); an external disk-only snapshot
//! of a running TCG domain on qemu:///system through libvirt, and its
//! revert once the VM is stopped (by the agent where libvirt < 9.9).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use csagent_storage::{
    Bytes, CallOpts, CreateVolume, ErrorKind, ImageFormat, SnapshotName, SnapshotTarget,
};
use csagent_testkit::storage::*;

fn qemu_io(path: &Path, cmd: &str) -> bool {
    Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", cmd])
        .arg(path)
        .output()
        .map(|o| {
            o.status.success()
                && !String::from_utf8_lossy(&o.stdout).contains("Pattern verification failed")
        })
        .unwrap_or(false)
}

fn snap(s: &str) -> SnapshotName {
    SnapshotName::new(s).unwrap()
}

#[tokio::test]
async fn internal_snapshots_create_list_revert_delete() {
    let p = TestPool::new("isnap").await;
    let s = &p.storage;
    let req = CreateVolume {
        pool: p.name.clone(),
        name: vol("root"),
        format: ImageFormat::Qcow2,
        size: Bytes(8 << 20),
    };
    s.create_volume(req, CallOpts::default()).await.unwrap();
    let path = p.dir.join("root");
    assert!(qemu_io(&path, "write -P 0xaa 0 64k"));
    let target = SnapshotTarget::Volume {
        pool: p.name.clone(),
        volume: vol("root"),
    };

    let info = s
        .create_snapshot(target.clone(), snap("before-upgrade"), CallOpts::default())
        .await
        .unwrap();
    assert_eq!(
        (info.name.as_str(), info.kind.as_str()),
        ("before-upgrade", "internal")
    );
    let e = s
        .create_snapshot(target.clone(), snap("before-upgrade"), CallOpts::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);

    assert!(qemu_io(&path, "write -P 0xbb 0 64k"));
    s.revert_snapshot(target.clone(), snap("before-upgrade"), CallOpts::default())
        .await
        .unwrap();
    assert!(
        qemu_io(&path, "read -P 0xaa 0 64k"),
        "revert did not restore the data"
    );

    let list = s
        .list_snapshots(target.clone(), CallOpts::default())
        .await
        .unwrap();
    assert_eq!(
        list.iter().map(|x| x.name.as_str()).collect::<Vec<_>>(),
        vec!["before-upgrade"]
    );
    s.delete_snapshot(target.clone(), snap("before-upgrade"), CallOpts::default())
        .await
        .unwrap();
    assert!(s
        .list_snapshots(target.clone(), CallOpts::default())
        .await
        .unwrap()
        .is_empty());
    let e = s
        .revert_snapshot(target.clone(), snap("before-upgrade"), CallOpts::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);

    // Raw volumes have no internal snapshots: a clear refusal.
    let raw = CreateVolume {
        pool: p.name.clone(),
        name: vol("data"),
        format: ImageFormat::Raw,
        size: Bytes(1 << 20),
    };
    s.create_volume(raw, CallOpts::default()).await.unwrap();
    let t = SnapshotTarget::Volume {
        pool: p.name.clone(),
        volume: vol("data"),
    };
    assert_eq!(
        s.create_snapshot(t, snap("x"), CallOpts::default())
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidArgument
    );
}

struct DomainGuard(String);

impl Drop for DomainGuard {
    fn drop(&mut self) {
        if let Ok(c) = virt::connect::Connect::open(Some(URI)) {
            if let Ok(d) = c.lookup_domain_by_name(&self.0) {
                let _ = d.destroy();
                let _ = d.undefine_flags(virt::sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA);
            }
        }
    }
}

fn domain_xml(name: &str, disks: &[PathBuf]) -> String {
    // Test fixture only; the agent renders domain XML in src/domain/.
    let disks: String = disks
        .iter()
        .zip(["vda", "vdb"])
        .map(|(d, dev)| {
            format!(
                "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
                 <source file='{}'/><target dev='{dev}' bus='virtio'/></disk>",
                d.display()
            )
        })
        .collect();
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>\
         <devices>{disks}\
         <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>\
         </devices></domain>"
    )
}

/// A pool whose qcow2 volume "root" starts with 64 KiB of 0xaa, and a
/// running TCG domain (no OS) on it and on the qcow2 images `extra`
/// (written the same way), undefined on drop.
async fn vm_on_root(tag: &str, extra: &[PathBuf]) -> (TestPool, DomainGuard, virt::domain::Domain) {
    let p = TestPool::new(tag).await;
    std::fs::set_permissions(&p.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let req = CreateVolume {
        pool: p.name.clone(),
        name: vol("root"),
        format: ImageFormat::Qcow2,
        size: Bytes(16 << 20),
    };
    p.storage
        .create_volume(req, CallOpts::default())
        .await
        .unwrap();
    let mut disks = vec![p.dir.join("root")];
    disks.extend_from_slice(extra);
    for d in &disks {
        assert!(qemu_io(d, "write -P 0xaa 0 64k"));
    }
    let name = format!("csat-snp-{tag}-{:08x}", rand::random::<u32>());
    let g = DomainGuard(name.clone());
    let c = virt::connect::Connect::open(Some(URI)).unwrap();
    let dom = c.define_domain_xml(&domain_xml(&name, &disks)).unwrap();
    dom.create().unwrap();
    (p, g, dom)
}

/// `vm_on_root`, with the external snapshot "s1" taken while the VM runs,
/// and the snapshot target naming the VM.
async fn vm_with_s1(
    tag: &str,
    extra: &[PathBuf],
) -> (TestPool, DomainGuard, virt::domain::Domain, SnapshotTarget) {
    let (p, g, dom) = vm_on_root(tag, extra).await;
    let target = SnapshotTarget::Domain {
        domain: dom.name().unwrap(),
    };
    p.storage
        .create_snapshot(target.clone(), snap("s1"), CallOpts::default())
        .await
        .unwrap();
    (p, g, dom, target)
}

/// The VM's persistent disk source.
fn disk_source(dom: &virt::domain::Domain) -> PathBuf {
    let x = dom.xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE).unwrap();
    let nodes = csagent_storage::xml::nodes(&x, "test").unwrap();
    let src = csagent_storage::xml::find(&nodes, "domain/devices/disk/source").unwrap();
    PathBuf::from(src.attr("file").unwrap())
}

/// Identity and content of a file, to prove "nothing changed".
fn file_state(p: &Path) -> (u64, Vec<u8>) {
    (
        std::fs::metadata(p).unwrap().ino(),
        std::fs::read(p).unwrap(),
    )
}

fn names(list: &[csagent_storage::SnapshotInfo]) -> Vec<&str> {
    list.iter().map(|x| x.name.as_str()).collect()
}

/// libvirt reverts external snapshots itself from 9.9 on; before, the
/// agent does (and refuses what it cannot do safely).
fn agent_reverts(dom: &virt::domain::Domain) -> bool {
    dom.connect().unwrap().lib_version().unwrap() < 9_009_000
}

#[tokio::test]
async fn external_snapshot_of_running_vm() {
    let (p, _g, dom) = vm_on_root("xsnap", &[]).await;
    let s = &p.storage;
    let name = dom.name().unwrap();

    // The running VM holds qemu's write lock: qemu-img must not touch it.
    let offline = SnapshotTarget::Volume {
        pool: p.name.clone(),
        volume: vol("root"),
    };
    let e = s
        .create_snapshot(offline, snap("offline"), CallOpts::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    // Nor may its disk be deleted under it.
    let root = vol("root");
    let e = s
        .delete_volume(&p.name, &root, CallOpts::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(p.dir.join("root").exists());

    let target = SnapshotTarget::Domain {
        domain: name.clone(),
    };
    let info = s
        .create_snapshot(target.clone(), snap("s1"), CallOpts::default())
        .await
        .unwrap();
    assert_eq!(info.kind, "external");
    // No guest OS, so the agent channel is not connected: not quiesced.
    assert!(!info.quiesced);
    let overlay = p.dir.join("root.s1");
    assert_eq!(info.files, vec![overlay.clone()]);
    let j = info_json(&overlay);
    assert_eq!(
        j["backing-filename"],
        p.dir.join("root").to_str().unwrap(),
        "{j}"
    );
    let list = s
        .list_snapshots(target.clone(), CallOpts::default())
        .await
        .unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].files, vec![overlay]);

    // Same name again: refused before anything is made.
    let e = s
        .create_snapshot(target.clone(), snap("s1"), CallOpts::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    dom.destroy().unwrap();
    dom.create().unwrap();
    s.create_snapshot(target.clone(), snap("s3"), CallOpts::default())
        .await
        .unwrap();
    s.delete_snapshot(target.clone(), snap("s3"), CallOpts::default())
        .await
        .unwrap();
    let list = s
        .list_snapshots(target.clone(), CallOpts::default())
        .await
        .unwrap();
    assert!(!names(&list).contains(&"s3"), "{list:?}");
    // A stopped VM is snapshotted through its volumes instead.
    dom.destroy().unwrap();
    let e = s
        .create_snapshot(target.clone(), snap("s2"), CallOpts::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    let e = s
        .create_snapshot(
            SnapshotTarget::Domain {
                domain: "csat-snp-no-such-vm".into(),
            },
            snap("s"),
            CallOpts::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn revert_external_snapshot_once_the_vm_is_stopped() {
    let (p, _g, dom, target) = vm_with_s1("rsnap", &[]).await;
    let s = &p.storage;
    let revert = || s.revert_snapshot(target.clone(), snap("s1"), CallOpts::default());
    let overlay = p.dir.join("root.s1");

    // Running: a disk-only snapshot has no memory to go back to. Refused
    // whatever libvirt's version, and nothing changed.
    let before = file_state(&overlay);
    let e = revert().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert!(e.to_string().contains("stop the VM first"), "{e}");
    assert!(dom.is_active().unwrap());
    assert_eq!(file_state(&overlay), before);

    // Stopped, the disk gets data the revert must discard.
    dom.destroy().unwrap();
    assert!(qemu_io(&overlay, "write -P 0xbb 0 64k"));
    let agent = agent_reverts(&dom);
    if agent {
        later_snapshot_blocks_revert(s, &target, &dom, &overlay).await;
    }
    let meta = std::fs::metadata(&overlay).unwrap();

    revert().await.unwrap();
    let disk = disk_source(&dom);
    assert!(
        qemu_io(&disk, "read -P 0xaa 0 64k"),
        "revert did not restore the snapshot's data"
    );
    if agent {
        assert_agent_revert_kept(&p.dir, &disk, &meta);
    }

    // The VM runs from the reverted disk; s1 is still known and deletable.
    dom.create().unwrap();
    let list = s
        .list_snapshots(target.clone(), CallOpts::default())
        .await
        .unwrap();
    assert_eq!(names(&list), vec!["s1"]);
    s.delete_snapshot(target.clone(), snap("s1"), CallOpts::default())
        .await
        .unwrap();
    let list = s
        .list_snapshots(target.clone(), CallOpts::default())
        .await
        .unwrap();
    assert!(list.is_empty(), "{list:?}");
    dom.destroy().unwrap();
    assert_eq!(disk_source(&dom), p.dir.join("root"));
    assert!(qemu_io(&p.dir.join("root"), "read -P 0xaa 0 64k"));
    let e = revert().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}

/// With s2 taken after s1, reverting s1 is refused and changes nothing;
/// deleting s2 (merged into s1's overlay) makes s1 the newest again.
async fn later_snapshot_blocks_revert(
    s: &csagent_storage::Storage,
    target: &SnapshotTarget,
    dom: &virt::domain::Domain,
    overlay: &Path,
) {
    dom.create().unwrap();
    s.create_snapshot(target.clone(), snap("s2"), CallOpts::default())
        .await
        .unwrap();
    dom.destroy().unwrap();
    let top = disk_source(dom);
    let before = (file_state(overlay), file_state(&top));
    let e = s
        .revert_snapshot(target.clone(), snap("s1"), CallOpts::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert!(
        e.to_string().contains("delete the later snapshots first"),
        "{e}"
    );
    assert_eq!((file_state(overlay), file_state(&top)), before);
    assert_eq!(disk_source(dom), top);
    dom.create().unwrap();
    s.delete_snapshot(target.clone(), snap("s2"), CallOpts::default())
        .await
        .unwrap();
    dom.destroy().unwrap();
    assert_eq!(disk_source(dom), overlay);
    assert!(qemu_io(overlay, "read -P 0xbb 0 64k"));
}

/// The agent replaced the overlay in place: same path, owner, mode and
/// backing file, and no temp file left beside it.
fn assert_agent_revert_kept(dir: &Path, disk: &Path, before: &std::fs::Metadata) {
    assert_eq!(disk, dir.join("root.s1"));
    let m = std::fs::metadata(disk).unwrap();
    assert_ne!(m.ino(), before.ino(), "the overlay was not replaced");
    assert_eq!(
        (m.mode(), m.uid(), m.gid()),
        (before.mode(), before.uid(), before.gid())
    );
    let j = info_json(disk);
    assert_eq!(j["backing-filename"], dir.join("root").to_str().unwrap());
    assert_eq!(j["backing-filename-format"], "qcow2");
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "temp files left: {left:?}");
}

/// Fills the filesystem of `dir` with a file until writes fail.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let p = dir.join("filler");
    let mut f = std::fs::File::create(&p).unwrap();
    for chunk in [1 << 16, 512] {
        while f.write_all(&vec![0u8; chunk]).is_ok() {}
    }
    p
}

#[tokio::test]
async fn failed_revert_of_one_disk_leaves_every_disk_as_it_was() {
    let c = virt::connect::Connect::open(Some(URI)).unwrap();
    if c.lib_version().unwrap() >= 9_009_000 {
        csagent_testkit::skip!("libvirt >= 9.9 reverts external snapshots itself");
        return;
    }
    // vdb lives on a tiny tmpfs, so its new overlay cannot be made once
    // that is full, after vda's already was.
    let fs = Tmpfs::new(4);
    std::fs::set_permissions(fs.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = fs.path().join("data");
    qemu_img(&["create", "-q", "-f", "qcow2", data.to_str().unwrap(), "4M"]);
    let (p, _g, dom, target) = vm_with_s1("fsnap", std::slice::from_ref(&data)).await;
    let s = &p.storage;
    let revert = || s.revert_snapshot(target.clone(), snap("s1"), CallOpts::default());
    dom.destroy().unwrap();
    let overlays = [p.dir.join("root.s1"), fs.path().join("data.s1")];
    for o in &overlays {
        assert!(qemu_io(o, "write -P 0xbb 0 64k"));
    }
    let filler = fill(fs.path());
    let before: Vec<_> = overlays.iter().map(|o| file_state(o)).collect();
    let e = revert().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InsufficientCapacity, "{e}");
    let after: Vec<_> = overlays.iter().map(|o| file_state(o)).collect();
    assert!(after == before, "a failed revert changed an overlay");
    assert_eq!(list(&p.dir), vec!["root", "root.s1"]);
    assert_eq!(list(fs.path()), vec!["data", "data.s1", "filler"]);

    std::fs::remove_file(filler).unwrap();
    revert().await.unwrap();
    for o in &overlays {
        assert!(
            qemu_io(o, "read -P 0xaa 0 64k"),
            "{} not reverted",
            o.display()
        );
    }
    dom.create().unwrap();
    dom.destroy().unwrap();
}
