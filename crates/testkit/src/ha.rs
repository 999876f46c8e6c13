//! High-availability test support: a plane with HA on, a TCP link that a
//! test can cut and heal (a network partition between one agent and the
//! plane, while everything else keeps running), and the two-host HA lab the
//! lab_ha tests and `cargo bench --bench ha` share.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use csagent::config::Config;
use csagent_mgmt::ha::{Fence, HaConfig};
use csagent_mgmt::{Liveness, Plane, PlaneConfig};
use csagent_proto::v1 as pb;

use crate::guest::{guest_image, guest_spec};
use crate::lab::{Lab, SHARED};
use crate::{
    agent_config, call, cmd, host_summary, run_in_process, spawn_agent, wait_for, workdir,
    InProcessAgent, Proc, TestPki,
};

/// An in-process plane with high availability on.
pub async fn start_plane_ha(pki: &TestPki, liveness: Liveness, ha: HaConfig) -> Plane {
    Plane::start(PlaneConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: pki.server.clone(),
        admin_socket: None,
        liveness,
        plane_id: "test-plane-ha".into(),
        max_message_bytes: 16 << 20,
        ha: Some(ha),
    })
    .await
    .unwrap()
}

/// A loopback TCP relay to `target`. `cut` ends every relayed connection
/// and refuses new ones (the agent sees its link fail and its redials
/// fail) until `heal`.
pub struct CutLink {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl CutLink {
    pub async fn start(target: SocketAddr) -> CutLink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let link = CutLink {
            addr,
            cut: Arc::default(),
            conns: Arc::new(Mutex::new(CancellationToken::new())),
            stop: CancellationToken::new(),
        };
        let (cut, conns, stop) = (
            Arc::clone(&link.cut),
            Arc::clone(&link.conns),
            link.stop.clone(),
        );
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((client, _)) = accepted else { continue };
                if cut.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let gone = conns.lock().unwrap().clone();
                tokio::spawn(relay(client, target, gone));
            }
        });
        link
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        let mut conns = self.conns.lock().unwrap();
        conns.cancel();
        *conns = CancellationToken::new();
    }

    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for CutLink {
    fn drop(&mut self) {
        self.stop.cancel();
        self.conns.lock().unwrap().cancel();
    }
}

async fn relay(mut client: TcpStream, target: SocketAddr, gone: CancellationToken) {
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    tokio::select! {
        _ = gone.cancelled() => {}
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
    }
}

pub fn lab_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/lab.sh")
}

/// Brings lab host 1 back after a test cut it, even when the test failed.
pub struct Revive;

impl Drop for Revive {
    fn drop(&mut self) {
        let out = Command::new("bash")
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

/// Lab host 1's agent as a real process behind a cuttable link, lab host
/// 2's in-process, one plane with HA on and the lab fence for host 1.
pub struct HaLab {
    pub lab: Lab,
    pub pki: TestPki,
    pub plane: Plane,
    pub link: CutLink,
    pub a: uuid::Uuid,
    pub b: uuid::Uuid,
    pub agent_a: Proc,
    /// Host 1's agent config, to start it again after a power cut.
    pub cfg_a: Config,
    pub agent_b: Option<InProcessAgent>,
    pub work: tempfile::TempDir,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

/// The clocks of an HA run.
#[derive(Clone, Debug)]
pub struct HaTiming {
    pub liveness: Liveness,
    pub storage_heartbeat_secs: u64,
    pub recheck: Duration,
}

impl HaTiming {
    /// What the tests use: a silent host is in Alert after 3 s.
    pub fn fast() -> HaTiming {
        HaTiming {
            liveness: Liveness {
                heartbeat_interval: Duration::from_millis(500),
                alert_after: Duration::from_secs(3),
                down_after: Duration::from_secs(10),
                host_report_interval: Duration::from_secs(2),
            },
            storage_heartbeat_secs: 1,
            recheck: Duration::from_secs(5),
        }
    }

    /// The shipped defaults of csagent-mgmt serve and of [ha].
    pub fn defaults() -> HaTiming {
        HaTiming {
            liveness: Liveness::default(),
            storage_heartbeat_secs: csagent::config::HaSection::default().heartbeat_interval_secs,
            recheck: HaConfig::default().recheck,
        }
    }
}

fn ha_agent(lab: &Lab, cfg: Config, i: usize, t: &HaTiming) -> Config {
    let mut cfg = lab.agent_config(cfg, i);
    cfg.ha.pools = vec![PathBuf::from(SHARED)];
    cfg.ha.heartbeat_interval_secs = t.storage_heartbeat_secs;
    cfg.ha.timeout_secs = 5;
    cfg.management.backoff_initial_ms = 200;
    cfg.management.backoff_max_ms = 1000;
    cfg
}

impl HaLab {
    /// Sends `body` to host 2 directly (2 min to answer); its result.
    pub async fn send_to_b(&self, body: pb::command::Body) -> pb::CommandResult {
        call(
            &self.plane,
            &self.b,
            cmd("", 120_000, body),
            Duration::from_secs(120),
        )
        .await
    }

    /// Host 1's agent started again (after its host came back), logging
    /// to agent-a-back.log; stopped when the Proc drops.
    pub fn agent_a_again(&self) -> Proc {
        spawn_agent(&self.cfg_a, self.work.path(), "agent-a-back")
    }

    /// vCPUs host 2 has free by its latest report (0 without one).
    pub fn b_vcpus_free(&self) -> u32 {
        host_summary(&self.plane, &self.b)
            .and_then(|s| s.last_report)
            .and_then(|r| r.capacity)
            .map_or(0, |c| c.vcpu_free)
    }

    /// The lab's two hosts under HA, or why not.
    pub async fn start(t: &HaTiming) -> Result<HaLab, String> {
        Self::start_tuned(t, |_| {}).await
    }

    /// As `start`, with host 2's agent config changed by `tune_b`.
    pub async fn start_tuned(
        t: &HaTiming,
        tune_b: impl FnOnce(&mut Config),
    ) -> Result<HaLab, String> {
        let turn = crate::lab::turn().await;
        let lab = Lab::get(2)?;
        let pki = TestPki::new(&["localhost", "127.0.0.1"]);
        let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        let ha = HaConfig {
            recheck: t.recheck,
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
        let plane = start_plane_ha(&pki, t.liveness.clone(), ha).await;
        let link = CutLink::start(plane.addr).await;
        let work = workdir();
        let dir = |n: &str| {
            let d = work.path().join(n);
            std::fs::create_dir_all(&d).unwrap();
            d
        };
        let cfg_a = agent_config(&a, &pki.agent(&a), &[link.addr.to_string()], &dir("a"));
        let cfg_a = ha_agent(&lab, cfg_a, 1, t);
        let agent_a = spawn_agent(&cfg_a, work.path(), "agent-a");
        let cfg_b = agent_config(&b, &pki.agent(&b), &[plane.addr.to_string()], &dir("b"));
        let mut cfg_b = ha_agent(&lab, cfg_b, 2, t);
        tune_b(&mut cfg_b);
        let agent_b = Some(run_in_process(cfg_b));
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
            cfg_a,
            agent_b,
            work,
            _turn: turn,
        })
    }
}

/// A test-made qcow2 disk on the shared storage, removed on drop.
pub struct SharedDisk(pub PathBuf);

impl SharedDisk {
    pub fn new(tag: &str) -> SharedDisk {
        let dir = Path::new(SHARED).join("csat-ha");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!(
            "{tag}-{}.qcow2",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        let out = Command::new("qemu-img")
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
pub struct Guest {
    pub ha: bool,
    /// It writes its disk every second (the guest image's disk ticks).
    pub writes: bool,
}

/// Starts a 128 MiB TCG guest with a disk on the shared storage on host 1.
pub async fn start_on_a(h: &HaLab, name: &str, g: Guest, disk: &SharedDisk) -> uuid::Uuid {
    let (uuid, start) = start_vm_body(h, name, g, disk);
    start_body_on_a(h, uuid, start).await;
    uuid
}

/// Sends `start` (of VM `uuid`) to host 1 and waits until its heartbeats
/// list the VM running.
pub async fn start_body_on_a(h: &HaLab, uuid: uuid::Uuid, start: pb::command::Body) {
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
}

/// The StartVm of a 128 MiB TCG guest with its disk on the shared storage.
pub fn start_vm_body(
    h: &HaLab,
    name: &str,
    g: Guest,
    disk: &SharedDisk,
) -> (uuid::Uuid, pb::command::Body) {
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
    (uuid, start)
}

pub const HA_QUIET: Guest = Guest {
    ha: true,
    writes: false,
};

pub fn state(h: &HaLab, host: &uuid::Uuid) -> (i32, String) {
    host_summary(&h.plane, host).map_or((0, String::new()), |s| (s.state, s.state_reason))
}

/// The HA steps the plane announced about `vm`, as (kind, text).
pub fn ha_actions(
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

/// Host 1 loses power: its agent is killed and the lab's cut ends its
/// libvirtd and QEMUs at once. Host 1 is revived when the guard drops.
pub fn cut_power(h: &HaLab) -> Revive {
    h.agent_a.signal(nix::sys::signal::Signal::SIGKILL);
    let out = Command::new("bash")
        .arg(lab_script())
        .args(["cut", "1"])
        .output()
        .expect("run lab.sh cut 1");
    assert!(out.status.success(), "lab.sh cut 1: {out:?}");
    Revive
}
