//! Helpers for VM event tests: watch the plane's VM events, drive libvirt
//! from outside with virsh (a child process, arguments as a list), and
//! domains/disks that clean up after themselves.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use csagent_mgmt::Plane;
use csagent_proto::v1 as pb;
use tokio::sync::broadcast;

pub const QEMU: &str = "qemu:///system";

/// VM events as the plane publishes them, from the moment of creation.
pub struct EventTap(broadcast::Receiver<pb::PlaneEvent>);

impl EventTap {
    pub fn new(plane: &Plane) -> EventTap {
        EventTap(plane.registry.subscribe())
    }

    /// The next event of `uuid` that `want` accepts, with every event of
    /// that VM seen before it (accepted one last). Panics after `limit`.
    pub async fn until(
        &mut self,
        uuid: &str,
        limit: Duration,
        want: impl Fn(&pb::Event) -> bool,
    ) -> Vec<pb::Event> {
        let mut seen = Vec::new();
        let wait = async {
            loop {
                match self.0.recv().await {
                    Ok(pb::PlaneEvent {
                        event: Some(pb::plane_event::Event::Vm(e)),
                        ..
                    }) if e.vm_uuid == uuid => {
                        let done = want(&e);
                        seen.push(e);
                        if done {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(e) => panic!("plane event stream ended: {e}"),
                }
            }
        };
        if tokio::time::timeout(limit, wait).await.is_err() {
            panic!("no matching event for {uuid} within {limit:?}; saw {seen:?}");
        }
        seen
    }
}

pub fn is_state(s: pb::VmPowerState) -> impl Fn(&pb::Event) -> bool {
    move |e| e.state == s as i32
}

/// Runs virsh on `uri` and returns its output (never through a shell).
pub fn virsh(uri: &str, args: &[&str]) -> Output {
    Command::new("virsh")
        .arg("-c")
        .arg(uri)
        .args(args)
        .output()
        .expect("virsh runs")
}

/// Runs virsh and checks it succeeded; returns when virsh returned (the
/// change is done then), and prints how long virsh itself took.
pub fn virsh_ok(uri: &str, args: &[&str]) -> Instant {
    let started = Instant::now();
    let out = virsh(uri, args);
    assert!(out.status.success(), "virsh {args:?}: {out:?}");
    println!("virsh {args:?} took {:?}", started.elapsed());
    Instant::now()
}

pub fn domstate(uri: &str, uuid: &str) -> String {
    String::from_utf8_lossy(&virsh(uri, &["domstate", uuid]).stdout)
        .trim()
        .to_string()
}

/// A domain on qemu:///system destroyed and undefined on drop.
pub struct QemuDomain(pub String);

impl Drop for QemuDomain {
    fn drop(&mut self) {
        let _ = virsh(QEMU, &["destroy", &self.0]);
        let _ = virsh(QEMU, &["undefine", &self.0, "--nvram"]);
    }
}

/// A directory under libvirt's image directory (QEMU may read there), with
/// a tiny qcow2 made by qemu-img; removed on drop.
pub struct TinyDisk {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl TinyDisk {
    pub fn new(prefix: &str) -> TinyDisk {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in("/var/lib/libvirt/images")
            .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("disk.qcow2");
        let out = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&path)
            .arg("16M")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        TinyDisk { dir, path }
    }
}

/// A spec for a TCG VM on `disk`, named with `prefix`.
pub fn tcg_spec(prefix: &str, disk: &Path) -> (uuid::Uuid, pb::VmSpec) {
    let text = std::fs::read_to_string("tests/golden/domain/minimal.json").unwrap();
    let mut s: pb::VmSpec = serde_json::from_str(&text).unwrap();
    let uuid = uuid::Uuid::new_v4();
    s.uuid = uuid.to_string();
    s.name = format!("{prefix}{}", &uuid.simple().to_string()[..8]);
    s.disks[0].source = disk.to_str().unwrap().to_string();
    s.memory.as_mut().unwrap().size_kib = 64 * 1024;
    (uuid, s)
}

/// Domain XML of a diskless TCG domain without csagent's metadata: what
/// another tool on the host might define.
pub fn foreign_xml(name: &str, uuid: &uuid::Uuid, domain_type: &str) -> String {
    format!(
        "<domain type='{domain_type}'><name>{name}</name><uuid>{uuid}</uuid>\
         <memory unit='KiB'>32768</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64'>hvm</type></os><devices/></domain>"
    )
}

/// Starts `spec` through the plane and waits for success.
pub async fn start_vm(plane: &Plane, host: &uuid::Uuid, spec: &pb::VmSpec) {
    let body = pb::command::Body::StartVm(pb::StartVm {
        spec: Some(spec.clone()),
        ..Default::default()
    });
    let r = super::call(
        plane,
        host,
        super::cmd("", 0, body),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(r.status, pb::CommandStatus::Ok as i32, "{r:?}");
}

/// The VM's line in the latest heartbeat, if any.
pub fn heartbeat_vm(plane: &Plane, host: &uuid::Uuid, uuid: &str) -> Option<pb::VmPower> {
    super::host_summary(plane, host)?
        .vms
        .into_iter()
        .find(|v| v.vm_uuid == uuid)
}
