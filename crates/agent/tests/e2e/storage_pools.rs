//! Pools: dir pools on qemu:///system (add, idempotent re-add, conflict,
//! status, inactive and unmounted reported as such, remove); netfs, RBD and
//! iSCSI pool XML validated with virt-xml-validate and defined on
//! test:///default (no NFS server, Ceph or iSCSI target runs here).

use std::process::Command;

use csagent_storage::pool::Monitor;
use csagent_storage::{
    Bytes, CallOpts, CreateVolume, ErrorKind, ImageFormat, PoolDef, PoolKind, PoolName, PoolState,
    Storage, StorageConfig,
};
use csagent_testkit::storage::*;

fn validate(xml: &str) {
    let dir = tempfile::Builder::new()
        .prefix("csat-sto-xml-")
        .tempdir()
        .unwrap();
    let f = dir.path().join("pool.xml");
    std::fs::write(&f, xml).unwrap();
    let out = Command::new("virt-xml-validate")
        .arg(&f)
        .arg("storagepool")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{xml}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn remote_defs() -> Vec<PoolDef> {
    let n = |s: &str| PoolName::new(unique(s)).unwrap();
    vec![
        PoolDef {
            name: n("nfs"),
            kind: PoolKind::Netfs {
                host: "10.0.0.5".into(),
                export: "/export/primary".into(),
                path: "/mnt/csat-sto-nfs".into(),
            },
        },
        PoolDef {
            name: n("rbd"),
            kind: PoolKind::Rbd {
                monitors: vec![
                    Monitor {
                        host: "10.0.0.1".into(),
                        port: Some(6789),
                    },
                    Monitor {
                        host: "ceph-mon2.example".into(),
                        port: None,
                    },
                ],
                ceph_pool: "cloudstack".into(),
                auth_user: "admin".into(),
                secret_uuid: uuid::Uuid::new_v4(),
            },
        },
        PoolDef {
            name: n("iscsi"),
            kind: PoolKind::Iscsi {
                host: "10.0.0.9".into(),
                port: Some(3260),
                iqn: "iqn.2024-01.example:target0".into(),
            },
        },
    ]
}

#[tokio::test]
async fn remote_pool_xml_is_valid_and_defines_on_test_driver() {
    let s = Storage::new(
        StorageConfig {
            ..StorageConfig::default()
        },
        csagent_libvirt::Hypervisor::start("test:///default", std::time::Duration::from_secs(30)),
    );
    for def in remote_defs() {
        let xml = def.to_xml().unwrap();
        validate(&xml);
        let st = s.add_pool(def.clone(), CallOpts::default()).await.unwrap();
        assert_eq!(st.pool_type, def.kind.libvirt_type(), "{xml}");
        let listed = s.list_pools(CallOpts::default()).await.unwrap();
        assert!(listed.iter().any(|p| p.name == def.name.as_str()));
        s.remove_pool(&def.name, CallOpts::default()).await.unwrap();
    }
    // Volumes on RBD/iSCSI are not made by this agent: a clear refusal.
    let rbd = remote_defs().remove(1);
    s.add_pool(rbd.clone(), CallOpts::default()).await.unwrap();
    let req = CreateVolume {
        pool: rbd.name.clone(),
        name: vol("v"),
        format: ImageFormat::Raw,
        size: Bytes(1 << 20),
    };
    let e = s.create_volume(req, CallOpts::default()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
}

#[test]
fn bad_pool_definitions_are_refused() {
    let n = PoolName::new("csat-sto-bad").unwrap();
    let bad = [
        PoolKind::Dir {
            path: "relative/dir".into(),
        },
        PoolKind::Dir {
            path: "/var/../etc".into(),
        },
        PoolKind::Netfs {
            host: "evil host".into(),
            export: "/x".into(),
            path: "/mnt/x".into(),
        },
        PoolKind::Netfs {
            host: "h".into(),
            export: "no-slash".into(),
            path: "/mnt/x".into(),
        },
        PoolKind::Rbd {
            monitors: vec![],
            ceph_pool: "p".into(),
            auth_user: "u".into(),
            secret_uuid: uuid::Uuid::nil(),
        },
        PoolKind::Iscsi {
            host: "h".into(),
            port: None,
            iqn: "has space".into(),
        },
    ];
    for kind in bad {
        let def = PoolDef {
            name: n.clone(),
            kind,
        };
        assert_eq!(
            def.validate().unwrap_err().kind(),
            ErrorKind::InvalidArgument,
            "{def:?}"
        );
    }
    // Escaping: a name with XML metacharacters stays a name.
    let def = PoolDef {
        name: PoolName::new("csat-sto-<x>&'\"").unwrap(),
        kind: PoolKind::Dir {
            path: "/tmp/a<b".into(),
        },
    };
    validate(&def.to_xml().unwrap());
}

#[tokio::test]
async fn dir_pool_lifecycle_and_honest_status() {
    let p = TestPool::new("dir").await;
    let s = &p.storage;
    let st = s.refresh_pool(&p.name, CallOpts::default()).await.unwrap();
    assert_eq!(st.state, PoolState::Running);
    assert!(st.capacity.0 > 0 && st.available.0 > 0 && st.available <= st.capacity);
    assert_eq!(st.path.as_deref(), Some(p.dir.as_path()));

    // Same definition again: no-op; a different one under the name: refused.
    let same = PoolDef {
        name: p.name.clone(),
        kind: PoolKind::Dir {
            path: p.dir.clone(),
        },
    };
    s.add_pool(same, CallOpts::default()).await.unwrap();
    let other = PoolDef {
        name: p.name.clone(),
        kind: PoolKind::Dir {
            path: "/tmp/csat-sto-elsewhere".into(),
        },
    };
    assert_eq!(
        s.add_pool(other, CallOpts::default())
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::AlreadyExists
    );

    // Stopped behind our back: reported Inactive, not as an empty pool.
    let c = virt::connect::Connect::open(Some(URI)).unwrap();
    c.lookup_storage_pool_by_name(p.name.as_str())
        .unwrap()
        .destroy()
        .unwrap();
    let all = s.list_pools(CallOpts::default()).await.unwrap();
    let st = all.iter().find(|x| x.name == p.name.as_str()).unwrap();
    assert_eq!(st.state, PoolState::Inactive);
    assert_eq!(st.capacity.0, 0);
    assert!(!st.message.is_empty());
    let e = s
        .refresh_pool(&p.name, CallOpts::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    let st = s.start_pool(&p.name, CallOpts::default()).await.unwrap();
    assert_eq!(st.state, PoolState::Running);

    s.remove_pool(&p.name, CallOpts::default()).await.unwrap();
    assert!(c.lookup_storage_pool_by_name(p.name.as_str()).is_err());
    // Every command naming the pool now says the same plain thing.
    let gone = format!("pool {} not found", p.name);
    for e in [
        s.refresh_pool(&p.name, CallOpts::default()).await.err(),
        s.start_pool(&p.name, CallOpts::default()).await.err(),
        s.remove_pool(&p.name, CallOpts::default()).await.err(),
    ] {
        let e = e.expect("a command on a removed pool must fail");
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        assert_eq!(e.to_string(), gone);
    }
}

#[tokio::test]
async fn shared_mount_point_unmounted_is_reported() {
    let s = storage();
    let mp = MountPool::add(&s, "smp", 8).await;
    let (fs, pool, name) = (&mp.fs, mp.name.clone(), mp.name.to_string());
    assert_eq!(mp.added.state, PoolState::Running);
    let v = CreateVolume {
        pool: pool.clone(),
        name: vol("a"),
        format: ImageFormat::Qcow2,
        size: Bytes(1 << 20),
    };
    s.create_volume(v.clone(), CallOpts::default())
        .await
        .unwrap();

    fs.unmount();
    let all = s.list_pools(CallOpts::default()).await.unwrap();
    let st = all.iter().find(|x| x.name == name).unwrap();
    assert_eq!(st.state, PoolState::Unmounted, "{st:?}");
    assert_eq!(st.available.0, 0);
    let mut v2 = v;
    v2.name = vol("b");
    let e = s.create_volume(v2, CallOpts::default()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(
        list(fs.path()).is_empty(),
        "wrote into the bare mount point dir"
    );

    // Adding a shared mount point that is not mounted is refused.
    let name2 = unique("smp2");
    let def = PoolDef {
        name: PoolName::new(&name2).unwrap(),
        kind: PoolKind::SharedMountPoint {
            path: fs.path().to_path_buf(),
        },
    };
    assert_eq!(
        s.add_pool(def, CallOpts::default())
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Unavailable
    );
}

struct SecretGuard(uuid::Uuid);

impl Drop for SecretGuard {
    fn drop(&mut self) {
        if let Ok(c) = virt::connect::Connect::open(Some(URI)) {
            if let Ok(sec) = c.lookup_secret_by_uuid_string(&self.0.to_string()) {
                let _ = sec.undefine();
            }
        }
    }
}

#[tokio::test]
async fn ceph_secret_is_stored_private_and_removed() {
    use csagent_storage::ceph_secret::{CephKey, CephSecret};
    let uuid = uuid::Uuid::new_v4();
    let _g = SecretGuard(uuid);
    let key = CephKey::new("AQBzY2F0LXN0by10ZXN0LWtleS0xMjM0NTY3OA==").unwrap();
    assert!(!format!("{key:?}").contains("AQB"), "key leaked in Debug");
    assert!(CephKey::new("not base64 !!").is_err());
    let sec = CephSecret {
        uuid,
        user: "csat-sto".into(),
        key,
    };
    let xml = sec.to_xml().unwrap();
    let dir = tempfile::Builder::new()
        .prefix("csat-sto-xml-")
        .tempdir()
        .unwrap();
    std::fs::write(dir.path().join("s.xml"), &xml).unwrap();
    let ok = Command::new("virt-xml-validate")
        .arg(dir.path().join("s.xml"))
        .arg("secret")
        .status()
        .unwrap();
    assert!(ok.success(), "{xml}");

    let s = storage();
    s.put_ceph_secret(sec.clone(), CallOpts::default())
        .await
        .unwrap();
    // Same uuid again replaces the key: idempotent for a re-sent command.
    s.put_ceph_secret(sec, CallOpts::default()).await.unwrap();
    let c = virt::connect::Connect::open(Some(URI)).unwrap();
    let found = c.lookup_secret_by_uuid_string(&uuid.to_string()).unwrap();
    let desc = found.xml_desc(0).unwrap();
    assert!(desc.contains("private='yes'"), "{desc}");
    assert!(
        found.value(0).is_err(),
        "a private secret's value must not be readable"
    );
    s.remove_ceph_secret(uuid, CallOpts::default())
        .await
        .unwrap();
    assert!(c.lookup_secret_by_uuid_string(&uuid.to_string()).is_err());
    assert_eq!(
        s.remove_ceph_secret(uuid, CallOpts::default())
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
}
