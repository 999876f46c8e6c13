//! Every wire command the other tests do not send, through the whole path:
//! plane -> mTLS stream -> dispatch -> module -> real libvirt, qemu-img,
//! netlink or nftables -> result, each checked against the real component
//! with its own tool (virsh, qemu-img, nft, ip).

use std::process::Command;
use std::time::Duration;

use csagent_proto::v1 as pb;
use csagent_testkit::guest::Cleanup;
use csagent_testkit::storage::{info_json, qemu_img};
use csagent_testkit::*;
use pb::command::Body as B;
use pb::command_result::Result as R;

const LIMIT: Duration = Duration::from_secs(60);

/// A plane and an in-process agent on `uri`; on qemu:///system also a dir
/// pool of the test's own (removed by `stop`).
struct Wire {
    f: Fixture,
    agent: InProcessAgent,
    /// Removes the test's pool from libvirt even when the test fails.
    _cleanup: Cleanup,
    pool: String,
    dir: tempfile::TempDir,
    templates: tempfile::TempDir,
}

async fn wire(uri: &str) -> Wire {
    let f = Fixture::new(fast_liveness()).await;
    let templates = tempfile::Builder::new()
        .prefix("csat-wire-tpl-")
        .tempdir()
        .unwrap();
    let mut cfg = f.config();
    cfg.hypervisor.uri = uri.into();
    cfg.host.capacity.cpu_overcommit = 8.0;
    cfg.storage.template_roots = vec![templates.path().to_path_buf()];
    let agent = run_in_process(cfg);
    f.wait_up(String::new).await;
    let dir = tempfile::Builder::new()
        .prefix("csat-wire-pool-")
        .tempdir()
        .unwrap();
    let pool = format!(
        "csat-wire-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let w = Wire {
        f,
        agent,
        _cleanup: {
            let c = Cleanup::default();
            c.pool(&pool);
            c
        },
        pool,
        dir,
        templates,
    };
    if uri == "qemu:///system" {
        let def = pb::PoolDefinition {
            name: w.pool.clone(),
            kind: Some(pb::pool_definition::Kind::Dir(pb::DirPool {
                path: w.dir.path().to_str().unwrap().into(),
            })),
        };
        w.ok(B::AddPool(pb::AddPool { pool: Some(def) })).await;
    }
    w
}

impl Wire {
    /// Sends `body`; the command must succeed. Returns its result body.
    async fn ok(&self, body: B) -> R {
        let r = call(&self.f.plane, &self.f.host, cmd("", 0, body), LIMIT).await;
        assert_eq!(r.status, pb::CommandStatus::Ok as i32, "{r:?}");
        r.result.expect("an OK result without a body")
    }

    fn volume(&self, name: &str, size: u64) -> B {
        B::CreateVolume(pb::CreateVolume {
            pool: self.pool.clone(),
            name: name.into(),
            format: pb::VolumeFormat::Qcow2 as i32,
            size_bytes: size,
        })
    }

    fn target(&self, name: &str) -> pb::SnapshotTarget {
        pb::SnapshotTarget {
            target: Some(pb::snapshot_target::Target::Volume(pb::VolumeRef {
                pool: self.pool.clone(),
                name: name.into(),
            })),
        }
    }

    async fn stop(self) {
        if !self.pool.is_empty() && virsh(&["pool-info", &self.pool]).is_some() {
            let _ = call(
                &self.f.plane,
                &self.f.host,
                cmd(
                    "",
                    0,
                    B::RemovePool(pb::RemovePool {
                        name: self.pool.clone(),
                    }),
                ),
                LIMIT,
            )
            .await;
        }
        self.agent.stop().await;
    }
}

/// virsh on qemu:///system: its output when it succeeded.
fn virsh(args: &[&str]) -> Option<String> {
    let out = csagent_testkit::guest::virsh(args);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn reboot_vm_through_the_link_reboots_a_running_vm() {
    let w = wire("test:///default").await;
    let text = std::fs::read_to_string("tests/golden/domain/minimal.json").unwrap();
    let mut s: pb::VmSpec = serde_json::from_str(&text).unwrap();
    let uuid = uuid::Uuid::new_v4();
    s.uuid = uuid.to_string();
    s.name = format!("csat-wire-{}", &uuid.simple().to_string()[..8]);
    s.disks[0].source = format!("/var/lib/libvirt/images/csat-wire-{}.qcow2", uuid.simple());
    w.ok(B::StartVm(pb::StartVm {
        spec: Some(s),
        ..Default::default()
    }))
    .await;
    let vm = uuid.to_string();
    match w
        .ok(B::RebootVm(pb::RebootVm {
            vm_uuid: vm.clone(),
        }))
        .await
    {
        R::VmStatus(v) => assert_eq!(v.state, pb::VmPowerState::Running as i32, "{v:?}"),
        other => panic!("{other:?}"),
    }
    // A VM that does not exist is NOT_FOUND, not a crash.
    let r = call(
        &w.f.plane,
        &w.f.host,
        cmd(
            "",
            0,
            B::RebootVm(pb::RebootVm {
                vm_uuid: uuid::Uuid::new_v4().to_string(),
            }),
        ),
        LIMIT,
    )
    .await;
    assert_eq!(r.error_code, pb::ErrorCode::NotFound as i32, "{r:?}");
    w.ok(B::DestroyVm(pb::DestroyVm { vm_uuid: vm })).await;
    w.stop().await;
}

#[tokio::test]
async fn get_host_facts_through_the_link_describes_this_host() {
    let w = wire("test:///default").await;
    let me = nix::unistd::gethostname().unwrap().into_string().unwrap();
    match w.ok(B::GetHostFacts(pb::GetHostFacts {})).await {
        R::HostFacts(f) => {
            assert_eq!(f.hostname, me);
            let cpus = std::thread::available_parallelism().unwrap().get() as u32;
            assert!(f.cpu.as_ref().is_some_and(|c| c.threads >= cpus), "{f:?}");
        }
        other => panic!("{other:?}"),
    }
    w.stop().await;
}

#[tokio::test]
async fn resize_and_get_volume_info_through_the_link_match_qemu_img() {
    let w = wire("qemu:///system").await;
    w.ok(w.volume("root.qcow2", 32 << 20)).await;
    let file = w.dir.path().join("root.qcow2");
    let grown = w
        .ok(B::ResizeVolume(pb::ResizeVolume {
            pool: w.pool.clone(),
            name: "root.qcow2".into(),
            size_bytes: 64 << 20,
            allow_shrink: false,
        }))
        .await;
    assert!(matches!(grown, R::Volume(v) if v.virtual_size_bytes == 64 << 20));
    assert_eq!(info_json(&file)["virtual-size"], 64 << 20);
    match w
        .ok(B::GetVolumeInfo(pb::GetVolumeInfo {
            pool: w.pool.clone(),
            name: "root.qcow2".into(),
        }))
        .await
    {
        R::Volume(v) => {
            assert_eq!(v.path, file.to_str().unwrap());
            assert_eq!(v.format, "qcow2");
            assert_eq!(v.virtual_size_bytes, 64 << 20);
        }
        other => panic!("{other:?}"),
    }
    w.stop().await;
}

#[tokio::test]
async fn list_and_refresh_pools_through_the_link_see_what_libvirt_sees() {
    let w = wire("qemu:///system").await;
    match w.ok(B::ListPools(pb::ListPools {})).await {
        R::PoolList(l) => {
            let p = l
                .pools
                .iter()
                .find(|p| p.name == w.pool)
                .expect("our pool listed");
            assert_eq!(p.state, pb::PoolState::Running as i32, "{p:?}");
        }
        other => panic!("{other:?}"),
    }
    // A file put there behind libvirt's back appears after RefreshPool.
    std::fs::write(w.dir.path().join("outside.raw"), vec![0u8; 1 << 20]).unwrap();
    w.ok(B::RefreshPool(pb::RefreshPool {
        name: w.pool.clone(),
    }))
    .await;
    let vols = virsh(&["vol-list", &w.pool]).expect("virsh vol-list");
    assert!(vols.contains("outside.raw"), "{vols}");
    w.stop().await;
}

#[tokio::test]
async fn copy_template_through_the_link_copies_and_verifies_it() {
    let w = wire("qemu:///system").await;
    let src = w.templates.path().join("tpl.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", src.to_str().unwrap(), "16M"]);
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(std::fs::read(&src).unwrap()))
    };
    let copy = |checksum: &str| {
        B::CopyTemplate(pb::CopyTemplate {
            pool: w.pool.clone(),
            name: "tpl.qcow2".into(),
            source: Some(pb::copy_template::Source::Path(
                src.to_str().unwrap().into(),
            )),
            format: pb::VolumeFormat::Qcow2 as i32,
            checksum_algorithm: pb::ChecksumAlgorithm::Sha256 as i32,
            checksum: checksum.into(),
            unverified: false,
        })
    };
    let refused = |body: B, why: &'static str| {
        let (plane, host) = (&w.f.plane, w.f.host);
        async move {
            let r = call(plane, &host, cmd("", 0, body), LIMIT).await;
            assert_eq!(r.error_code, pb::ErrorCode::InvalidArgument as i32, "{r:?}");
            assert!(r.message.contains(why), "{why:?} not in {}", r.message);
        }
    };
    // No checksum and no word that none is wanted; MD5: both refused.
    let mut none = copy("");
    if let B::CopyTemplate(m) = &mut none {
        m.checksum_algorithm = pb::ChecksumAlgorithm::Unspecified as i32;
    }
    refused(none.clone(), "needs a SHA-256 or SHA-512 checksum").await;
    let mut md5 = copy(&"0".repeat(32));
    if let B::CopyTemplate(m) = &mut md5 {
        m.checksum_algorithm = pb::ChecksumAlgorithm::Md5 as i32;
    }
    refused(md5, "MD5 is not accepted").await;
    // A VMDK declared raw: qemu-img reads what it is.
    let vmdk = w.templates.path().join("disk.vmdk");
    qemu_img(&["create", "-q", "-f", "vmdk", vmdk.to_str().unwrap(), "1M"]);
    let as_raw = B::CopyTemplate(pb::CopyTemplate {
        pool: w.pool.clone(),
        name: "disk.raw".into(),
        source: Some(pb::copy_template::Source::Path(
            vmdk.to_str().unwrap().into(),
        )),
        format: pb::VolumeFormat::Raw as i32,
        unverified: true,
        ..Default::default()
    });
    refused(as_raw, "reads it as a vmdk image").await;
    assert!(!w.dir.path().join("disk.raw").exists());
    // Unverified on the caller's word: copied, and the result says so.
    if let B::CopyTemplate(m) = &mut none {
        m.unverified = true;
        m.name = "unverified.qcow2".into();
    }
    match w.ok(none).await {
        R::Volume(v) => assert!(v.unverified, "{v:?}"),
        other => panic!("{other:?}"),
    }
    // A wrong checksum: refused, nothing left in the pool.
    let r = call(
        &w.f.plane,
        &w.f.host,
        cmd("", 0, copy(&"0".repeat(64))),
        LIMIT,
    )
    .await;
    assert_eq!(r.error_code, pb::ErrorCode::InvalidArgument as i32, "{r:?}");
    assert!(!w.dir.path().join("tpl.qcow2").exists());
    match w.ok(copy(&sha)).await {
        R::Volume(v) => assert!(!v.unverified, "{v:?}"),
        other => panic!("{other:?}"),
    }
    let dst = w.dir.path().join("tpl.qcow2");
    assert_eq!(std::fs::read(&dst).unwrap(), std::fs::read(&src).unwrap());
    w.stop().await;
}

#[tokio::test]
async fn create_list_revert_and_delete_snapshot_through_the_link_on_a_volume() {
    let w = wire("qemu:///system").await;
    w.ok(w.volume("snap.qcow2", 16 << 20)).await;
    let file = w.dir.path().join("snap.qcow2");
    let snaps = || qemu_img(&["snapshot", "-l", "-U", file.to_str().unwrap()]);
    match w
        .ok(B::CreateSnapshot(pb::CreateSnapshot {
            target: Some(w.target("snap.qcow2")),
            name: "before".into(),
        }))
        .await
    {
        R::Snapshot(s) => assert_eq!(s.name, "before"),
        other => panic!("{other:?}"),
    }
    assert!(snaps().contains("before"), "{}", snaps());
    match w
        .ok(B::ListSnapshots(pb::ListSnapshots {
            target: Some(w.target("snap.qcow2")),
        }))
        .await
    {
        R::SnapshotList(l) => assert_eq!(
            l.snapshots
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            ["before"]
        ),
        other => panic!("{other:?}"),
    }
    // Data written after the snapshot is gone once reverted.
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x5a 0 64k"])
        .arg(&file)
        .output();
    let wrote = out.as_ref().is_ok_and(|o| o.status.success());
    w.ok(B::RevertSnapshot(pb::RevertSnapshot {
        target: Some(w.target("snap.qcow2")),
        name: "before".into(),
    }))
    .await;
    if wrote {
        let text = qemu_img(&["map", "--output=json", "-U", file.to_str().unwrap()]);
        assert!(
            !text.contains("\"data\": true"),
            "the write survived the revert: {text}"
        );
    }
    w.ok(B::DeleteSnapshot(pb::DeleteSnapshot {
        target: Some(w.target("snap.qcow2")),
        name: "before".into(),
    }))
    .await;
    assert!(!snaps().contains("before"), "{}", snaps());
    w.stop().await;
}

#[tokio::test]
async fn put_and_remove_ceph_secret_through_the_link_make_and_drop_the_libvirt_secret() {
    let w = wire("qemu:///system").await;
    let uuid = uuid::Uuid::new_v4().to_string();
    let key = "QVFCc2VjcmV0a2V5Zm9yY3NhZ2VudHRlc3Rz";
    struct Gone(String);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = virsh(&["secret-undefine", &self.0]);
        }
    }
    let _gone = Gone(uuid.clone());
    w.ok(B::PutCephSecret(pb::PutCephSecret {
        uuid: uuid.clone(),
        user: "csat-wire".into(),
        key: key.into(),
    }))
    .await;
    // Private: libvirt never hands the key back out, not even to virsh.
    let xml = virsh(&["secret-dumpxml", &uuid]).expect("the secret exists");
    assert!(xml.contains("ceph") && xml.contains("csat-wire"), "{xml}");
    w.ok(B::RemoveCephSecret(pb::RemoveCephSecret {
        uuid: uuid.clone(),
    }))
    .await;
    assert!(
        virsh(&["secret-dumpxml", &uuid]).is_none(),
        "the secret is still there"
    );
    w.stop().await;
}

fn nft_table(family: &str) -> Option<String> {
    let out = Command::new("nft")
        .args(["list", "table", family, "csagent"])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn apply_and_remove_security_group_through_the_link_in_nftables() {
    if nft_table("inet").is_some() {
        csagent_testkit::skip!(
            "a csagent nftables table already exists on this host; not touching it"
        );
        return;
    }
    struct Gone;
    impl Drop for Gone {
        fn drop(&mut self) {
            for family in ["inet", "bridge"] {
                let _ = Command::new("nft")
                    .args(["delete", "table", family, "csagent"])
                    .output();
            }
        }
    }
    let _gone = Gone;
    let w = wire("test:///default").await;
    let vm = uuid::Uuid::new_v4().to_string();
    let nic = pb::VmNic {
        tap: "cswire0".into(),
        bridge: "cswirebr0".into(),
        mac: "02:00:00:c5:a9:01".into(),
        ips: vec!["192.0.2.10".into()],
    };
    let rule = pb::SecurityGroupRule {
        direction: pb::RuleDirection::Ingress as i32,
        protocol: pb::RuleProtocol::Tcp as i32,
        ports: Some(pb::PortRange { start: 22, end: 22 }),
        cidrs: vec!["198.51.100.0/24".into()],
        ..Default::default()
    };
    w.ok(B::ApplySecurityGroup(pb::ApplySecurityGroup {
        vm_uuid: vm.clone(),
        nics: vec![nic],
        rules: vec![rule],
    }))
    .await;
    let chain = format!("vm-{}", vm.replace('-', ""));
    let table = nft_table("inet").expect("no csagent table after ApplySecurityGroup");
    assert!(
        table.contains(&chain) && table.contains("198.51.100.0/24") && table.contains("192.0.2.10"),
        "{table}"
    );
    w.ok(B::RemoveSecurityGroup(pb::RemoveSecurityGroup {
        vm_uuid: vm,
    }))
    .await;
    let left = nft_table("inet").unwrap_or_default();
    assert!(!left.contains(&chain), "the VM's rules stayed: {left}");
    w.stop().await;
}

#[tokio::test]
async fn release_network_through_the_link_removes_the_bridge_it_made() {
    let w = wire("test:///default").await;
    let vm = uuid::Uuid::new_v4().to_string();
    // A documentation-range VNI peer over loopback: nothing leaves the host.
    let vni = 15_000_000 + u32::from(rand::random::<u16>());
    let ensured = w
        .ok(B::EnsureNetwork(pb::EnsureNetwork {
            vm_uuid: vm.clone(),
            network: Some(pb::ensure_network::Network::Vxlan(pb::VxlanNetwork {
                vni,
                underlay_device: "lo".into(),
                peers: vec!["192.0.2.1".into()],
                ..Default::default()
            })),
        }))
        .await;
    let bridge = match ensured {
        R::EnsureNetwork(e) => e.bridge,
        other => panic!("{other:?}"),
    };
    let exists = csagent_testkit::guest::link_exists;
    assert!(exists(&bridge), "no bridge {bridge} after EnsureNetwork");
    w.ok(B::ReleaseNetwork(pb::ReleaseNetwork {
        vm_uuid: vm,
        bridge: bridge.clone(),
    }))
    .await;
    assert!(
        !exists(&bridge),
        "bridge {bridge} stayed after its last user released it"
    );
    w.stop().await;
}
