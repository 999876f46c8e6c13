//! Snapshots: qcow2 internal snapshots on a stopped VM's volume (create,
//! list, revert restores the data, delete); an external disk-only snapshot
//! of a running TCG domain on qemu:///system through libvirt.

mod storage_common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use csagent::storage::{
    Bytes, CallOpts, CreateVolume, ErrorKind, ImageFormat, SnapshotName, SnapshotTarget, VolumeName,
};
use storage_common::*;

fn qemu_io(path: &std::path::Path, cmd: &str) -> bool {
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
        name: VolumeName::new("root").unwrap(),
        format: ImageFormat::Qcow2,
        size: Bytes(8 << 20),
    };
    s.create_volume(req, CallOpts::default()).await.unwrap();
    let path = p.dir.join("root");
    assert!(qemu_io(&path, "write -P 0xaa 0 64k"));
    let target = SnapshotTarget::Volume {
        pool: p.name.clone(),
        volume: VolumeName::new("root").unwrap(),
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
        name: VolumeName::new("data").unwrap(),
        format: ImageFormat::Raw,
        size: Bytes(1 << 20),
    };
    s.create_volume(raw, CallOpts::default()).await.unwrap();
    let t = SnapshotTarget::Volume {
        pool: p.name.clone(),
        volume: VolumeName::new("data").unwrap(),
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

fn domain_xml(name: &str, disk: &std::path::Path) -> String {
    // Test fixture only; the agent renders domain XML in src/domain/.
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>\
         <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
         <source file='{}'/><target dev='vda' bus='virtio'/></disk>\
         <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>\
         </devices></domain>",
        disk.display()
    )
}

#[tokio::test]
async fn external_snapshot_of_running_vm() {
    let p = TestPool::new("xsnap").await;
    std::fs::set_permissions(&p.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let s = &p.storage;
    let req = CreateVolume {
        pool: p.name.clone(),
        name: VolumeName::new("root").unwrap(),
        format: ImageFormat::Qcow2,
        size: Bytes(16 << 20),
    };
    s.create_volume(req, CallOpts::default()).await.unwrap();
    let name = unique("vm");
    let _g = DomainGuard(name.clone());
    let c = virt::connect::Connect::open(Some(URI)).unwrap();
    let dom = c
        .define_domain_xml(&domain_xml(&name, &p.dir.join("root")))
        .unwrap();
    dom.create().unwrap();

    // The running VM holds qemu's write lock: qemu-img must not touch it.
    let vol = SnapshotTarget::Volume {
        pool: p.name.clone(),
        volume: VolumeName::new("root").unwrap(),
    };
    let e = s
        .create_snapshot(vol, snap("offline"), CallOpts::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    // Nor may its disk be deleted under it.
    let root = VolumeName::new("root").unwrap();
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
    // libvirt < 9.9 cannot revert to an external snapshot: a clear refusal
    // that changed nothing. Newer libvirt reverts.
    if let Err(e) = s
        .revert_snapshot(target.clone(), snap("s1"), CallOpts::default())
        .await
    {
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        assert!(e.to_string().contains("not supported"), "{e}");
    }
    dom.destroy().unwrap();
    dom.create().unwrap();
    s.create_snapshot(target.clone(), snap("s3"), CallOpts::default())
        .await
        .unwrap();
    s.delete_snapshot(target.clone(), snap("s3"), CallOpts::default())
        .await
        .unwrap();
    let names: Vec<String> = s
        .list_snapshots(target.clone(), CallOpts::default())
        .await
        .unwrap()
        .into_iter()
        .map(|x| x.name)
        .collect();
    assert!(!names.contains(&"s3".to_string()), "{names:?}");
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
                domain: "csat-sto-no-such-vm".into(),
            },
            snap("s"),
            CallOpts::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
}
