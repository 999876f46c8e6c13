//! High availability in the lab (scripts/lab.sh): a plane with HA on, the
//! agent of lab host 1 as a real `csagent` process whose link to the plane
//! runs through a relay the test can cut, the agent of host 2 in-process,
//! both writing storage heartbeats on the lab's shared storage, and real
//! TCG guests whose disks are on that storage.
//!
//! Fault 1: host 1 loses power (its agent killed, the lab's cut ends its
//! libvirtd and QEMUs): its HA VM runs on host 2, once, and its other VM
//! does not. Fault 2: only host 1's link to the plane is cut: host 2 sees
//! its storage heartbeat move, host 1 stays Disconnected, nothing restarts.
//! Fault 3: host 1's agent is frozen (SIGSTOP) while its VM runs: no
//! heartbeat of any kind, but host 2 sees the VM's disk being written.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use csagent_mgmt::ha::{Fence, HaConfig};
use csagent_mgmt::Plane;
use csagent_proto::v1 as pb;
use csagent_testkit::guest::{guest_image, guest_spec};
use csagent_testkit::ha::{start_plane_ha, CutLink};
use csagent_testkit::lab::{domain_name, Lab, LabDomain, SHARED};
use csagent_testkit::skip;
use csagent_testkit::*;

fn lab_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/lab.sh")
}

/// Brings lab host 1 back after a test cut it, even when the test failed.
struct Revive;

impl Drop for Revive {
    fn drop(&mut self) {
        let out = std::process::Command::new("bash")
            .arg(lab_script())
            .args(["revive", "1"])
            .output()
            .expect("run lab.sh revive 1");
        assert!(
            out.status.success() || std::thread::panicking(),
            "lab.sh revive 1: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

struct HaLab {
    lab: Lab,
    pki: TestPki,
    plane: Plane,
    link: CutLink,
    a: uuid::Uuid,
    b: uuid::Uuid,
    agent_a: Proc,
    agent_b: Option<InProcessAgent>,
    work: tempfile::TempDir,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

fn liveness() -> csagent_mgmt::Liveness {
    csagent_mgmt::Liveness {
        heartbeat_interval: Duration::from_millis(500),
        alert_after: Duration::from_secs(3),
        down_after: Duration::from_secs(10),
        host_report_interval: Duration::from_secs(2),
    }
}

fn ha_agent(lab: &Lab, cfg: csagent::config::Config, i: usize) -> csagent::config::Config {
    let mut cfg = lab.agent_config(cfg, i);
    cfg.ha.pools = vec![PathBuf::from(SHARED)];
    cfg.ha.heartbeat_interval_secs = 1;
    cfg.ha.timeout_secs = 5;
    cfg.management.backoff_initial_ms = 200;
    cfg.management.backoff_max_ms = 1000;
    cfg
}

async fn ha_lab() -> Result<HaLab, String> {
    let turn = csagent_testkit::lab::turn().await;
    let lab = Lab::get(2)?;
    let pki = TestPki::new(&["localhost", "127.0.0.1"]);
    let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let ha = HaConfig {
        recheck: Duration::from_secs(5),
        fences: [(
            a.to_string(),
            Fence::Lab {
                script: lab_script(),
                index: 1,
            },
        )]
        .into(),
        ..Default::default()
    };
    let plane = start_plane_ha(&pki, liveness(), ha).await;
    let link = CutLink::start(plane.addr).await;
    let work = workdir();
    let dir = |n: &str| {
        let d = work.path().join(n);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    let cfg_a = agent_config(&a, &pki.agent(&a), &[link.addr.to_string()], &dir("a"));
    let agent_a = spawn_agent(&ha_agent(&lab, cfg_a, 1), work.path(), "agent-a");
    let cfg_b = agent_config(&b, &pki.agent(&b), &[plane.addr.to_string()], &dir("b"));
    let agent_b = Some(run_in_process(ha_agent(&lab, cfg_b, 2)));
    for (h, name) in [(&a, "host 1"), (&b, "host 2")] {
        let up = wait_for(Duration::from_secs(20), || {
            host_summary(&plane, h)
                .is_some_and(|s| s.state == pb::HostState::Up as i32 && s.last_report.is_some())
        })
        .await;
        assert!(
            up,
            "the agent of lab {name} never came Up with a report: {}",
            agent_a.log_text()
        );
    }
    Ok(HaLab {
        lab,
        pki,
        plane,
        link,
        a,
        b,
        agent_a,
        agent_b,
        work,
        _turn: turn,
    })
}

macro_rules! ha_lab_or_skip {
    () => {
        match ha_lab().await {
            Ok(h) => h,
            Err(why) => {
                skip!("{why}");
                return;
            }
        }
    };
}

/// A test-made qcow2 disk on the shared storage, removed on drop.
struct SharedDisk(PathBuf);

impl SharedDisk {
    fn new(tag: &str) -> SharedDisk {
        let dir = Path::new(SHARED).join("csat-ha");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!(
            "{tag}-{}.qcow2",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        let out = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&path)
            .arg("64M")
            .output()
            .unwrap();
        assert!(out.status.success(), "qemu-img create: {out:?}");
        SharedDisk(path)
    }
}

impl Drop for SharedDisk {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// How a test guest behaves.
#[derive(Clone, Copy)]
struct Guest {
    ha: bool,
    /// It writes its disk every second (the guest image's disk ticks).
    writes: bool,
}

/// Starts a 128 MiB TCG guest with a disk on the shared storage on host 1.
async fn start_on_a(h: &HaLab, name: &str, g: Guest, disk: &SharedDisk) -> uuid::Uuid {
    let uuid = uuid::Uuid::new_v4();
    let img = h.lab.shared_guest(&guest_image());
    let mut spec = guest_spec(&uuid, name, &img, 128);
    spec.ha = g.ha;
    if g.writes {
        let boot = spec.boot.as_mut().expect("the test guest boots a kernel");
        boot.cmdline.push_str(" csagent.disk_ticks");
    }
    spec.disks.push(pb::VmDisk {
        device: "disk".into(),
        source_type: "file".into(),
        source: disk.0.to_string_lossy().into_owned(),
        format: "qcow2".into(),
        target: "vda".into(),
        bus: "virtio".into(),
        ..Default::default()
    });
    let start = pb::command::Body::StartVm(pb::StartVm {
        spec: Some(spec),
        ..Default::default()
    });
    let r = call(
        &h.plane,
        &h.a,
        cmd("", 120_000, start),
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(r.status, pb::CommandStatus::Ok as i32, "{r:?}");
    let listed = wait_for(Duration::from_secs(20), || {
        host_summary(&h.plane, &h.a).is_some_and(|s| {
            s.vms.iter().any(|v| {
                v.vm_uuid == uuid.to_string() && v.state == pb::VmPowerState::Running as i32
            })
        })
    })
    .await;
    assert!(listed, "host 1's heartbeats never listed VM {uuid} running");
    uuid
}

const HA_QUIET: Guest = Guest {
    ha: true,
    writes: false,
};

fn state(h: &HaLab, host: &uuid::Uuid) -> (i32, String) {
    host_summary(&h.plane, host).map_or((0, String::new()), |s| (s.state, s.state_reason))
}

/// The HA steps the plane announced about `vm`, as (kind, text).
fn ha_actions(
    events: &mut tokio::sync::broadcast::Receiver<pb::PlaneEvent>,
    vm: &uuid::Uuid,
) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    while let Ok(e) = events.try_recv() {
        if let Some(pb::plane_event::Event::Ha(a)) = e.event {
            if a.vm_uuid == vm.to_string() {
                out.push((a.kind, a.message));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cut_of_a_host_restarts_its_ha_vm_on_the_other_once() {
    let mut h = ha_lab_or_skip!();
    let (ha_name, plain_name) = (domain_name("test-ha"), domain_name("test-noha"));
    let _doms = [&ha_name, &plain_name].map(|n| LabDomain {
        lab: &h.lab,
        name: n.clone(),
    });
    let (disk_ha, disk_plain) = (SharedDisk::new("ha"), SharedDisk::new("plain"));
    let ha_vm = start_on_a(&h, &ha_name, HA_QUIET, &disk_ha).await;
    let plain = Guest {
        ha: false,
        writes: false,
    };
    let plain_vm = start_on_a(&h, &plain_name, plain, &disk_plain).await;
    let mut events = h.plane.registry.subscribe();

    // The power cut: the agent dies with its host's daemons and guests.
    let _revive = Revive;
    let cut_at = Instant::now();
    h.agent_a.signal(nix::sys::signal::Signal::SIGKILL);
    let out = std::process::Command::new("bash")
        .arg(lab_script())
        .args(["cut", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "lab.sh cut 1: {out:?}");

    let on_b = wait_for(Duration::from_secs(120), || {
        h.lab.domstate(2, &ha_name).as_deref() == Some("running")
    })
    .await;
    let took = cut_at.elapsed();
    let (st, reason) = state(&h, &h.a);
    assert!(
        on_b,
        "the HA VM never ran on host 2; host 1 is {st} ({reason}); agent log: {}",
        h.agent_a.log_text()
    );
    eprintln!(
        "HA: power cut of host 1 -> VM running on host 2 in {:.1} s",
        took.as_secs_f64()
    );
    assert_eq!(st, pb::HostState::Down as i32, "host 1: {reason}");
    assert!(
        reason.contains("stands still") && reason.contains("fenced by lab host 1"),
        "{reason}"
    );

    // Once: a few more engine rounds add no second restart, and the
    // plane tracks the VM on host 2 now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let actions = ha_actions(&mut events, &ha_vm);
    let restarts = actions
        .iter()
        .filter(|(k, _)| *k == pb::ha_action::Kind::Restarted as i32)
        .count();
    assert_eq!(restarts, 1, "{actions:?}");
    assert_eq!(h.plane.registry.book().on_host(&h.b.to_string()).len(), 1);
    assert!(
        h.lab.domstate(2, &plain_name).is_none(),
        "a VM without ha must not be restarted"
    );
    assert!(ha_actions(&mut events, &plain_vm).is_empty());
    if let Some(b) = h.agent_b.take() {
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cut_off_from_the_plane_but_alive_is_disconnected_and_nothing_restarts() {
    let mut h = ha_lab_or_skip!();
    let name = domain_name("test-part");
    let _dom = LabDomain {
        lab: &h.lab,
        name: name.clone(),
    };
    let disk = SharedDisk::new("part");
    let vm = start_on_a(&h, &name, HA_QUIET, &disk).await;
    let mut events = h.plane.registry.subscribe();

    h.link.cut();
    let judged = wait_for(Duration::from_secs(30), || {
        let (st, reason) = state(&h, &h.a);
        st == pb::HostState::Disconnected as i32 && reason.contains("alive")
    })
    .await;
    let (st, reason) = state(&h, &h.a);
    assert!(judged, "host 1 is {st} ({reason})");
    assert!(
        reason.contains("heartbeat"),
        "the evidence is named: {reason}"
    );

    // Through more than one re-check: never Down, never on host 2.
    let until = Instant::now() + Duration::from_secs(12);
    while Instant::now() < until {
        let (st, reason) = state(&h, &h.a);
        assert_ne!(st, pb::HostState::Down as i32, "{reason}");
        assert!(
            h.lab.domstate(2, &name).is_none(),
            "the VM runs on host 2 as well"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(ha_actions(&mut events, &vm).is_empty());

    h.link.heal();
    assert!(
        wait_for(Duration::from_secs(30), || is_up(&h.plane, &h.a)).await,
        "host 1 never came back Up: {}",
        h.agent_a.log_text()
    );
    assert_eq!(h.lab.domstate(1, &name).as_deref(), Some("running"));
    let _ = (&h.pki, &h.work, &h.b);
    if let Some(b) = h.agent_b.take() {
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_agent_whose_vm_writes_its_disk_is_not_restarted() {
    let mut h = ha_lab_or_skip!();
    let name = domain_name("test-frozen");
    let _dom = LabDomain {
        lab: &h.lab,
        name: name.clone(),
    };
    let disk = SharedDisk::new("frozen");
    let writes = Guest {
        ha: true,
        writes: true,
    };
    let vm = start_on_a(&h, &name, writes, &disk).await;
    let mut events = h.plane.registry.subscribe();

    // Frozen: no heartbeat to the plane, no storage heartbeat; the guest
    // runs on and writes its disk.
    h.agent_a.signal(nix::sys::signal::Signal::SIGSTOP);
    let judged = wait_for(Duration::from_secs(30), || {
        let (st, reason) = state(&h, &h.a);
        st == pb::HostState::Disconnected as i32 && reason.contains("alive")
    })
    .await;
    let (st, reason) = state(&h, &h.a);
    h.agent_a.signal(nix::sys::signal::Signal::SIGCONT);
    assert!(judged, "host 1 is {st} ({reason})");
    let disk_name = disk.0.to_string_lossy().into_owned();
    assert!(
        reason.contains(&format!("disk {disk_name}")) && reason.contains("written"),
        "the evidence is the VM's disk: {reason}"
    );
    assert!(
        h.lab.domstate(2, &name).is_none(),
        "the VM runs on host 2 as well"
    );
    assert!(ha_actions(&mut events, &vm).is_empty());
    assert!(
        wait_for(Duration::from_secs(30), || is_up(&h.plane, &h.a)).await,
        "host 1 never came back Up after SIGCONT: {}",
        h.agent_a.log_text()
    );
    assert_eq!(h.lab.domstate(1, &name).as_deref(), Some("running"));
    if let Some(b) = h.agent_b.take() {
        b.stop().await;
    }
}
