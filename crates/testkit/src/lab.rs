//! The lab of hosts on one machine (scripts/lab.sh, docs/lab.md): each host
//! a libvirtd + virtlogd in its own network, mount and UTS namespaces,
//! reachable on 10.251.0.0/24 only from inside the lab.
//!
//! scripts/test.sh brings the lab up once per run and down at its end; a
//! test asks [`Lab::get`] for it and skips, saying why, when there is none.
//! Everything here is found through the lab's own state under /run/cslab,
//! never by process name.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::guest::GuestImage;

const RUN: &str = "/run/cslab";

/// One lab test at a time: a drain moves every VM of a host and a cut
/// takes a host's network down, so lab tests sharing the hosts would see
/// each other's VMs and outages.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits for this test's turn on the lab (async tests).
pub async fn turn() -> tokio::sync::MutexGuard<'static, ()> {
    TURN.lock().await
}

/// Waits for this test's turn on the lab (plain tests).
pub fn turn_blocking() -> tokio::sync::MutexGuard<'static, ()> {
    TURN.blocking_lock()
}
/// The same path in every lab host's mount namespace.
pub const SHARED: &str = "/var/lib/cslab/shared";

#[derive(Clone, Debug)]
pub struct LabHost {
    /// 1-based, as scripts/lab.sh numbers them.
    pub index: usize,
    pub name: String,
    /// The host's address on the lab network (its libvirtd listens there).
    pub addr: String,
}

#[derive(Clone, Debug)]
pub struct Lab {
    pub hosts: Vec<LabHost>,
    script: PathBuf,
}

impl Lab {
    /// The lab of this run, with at least `min` hosts whose libvirtd is
    /// alive (by its pidfile), or why there is none.
    pub fn get(min: usize) -> Result<Lab, String> {
        let count = std::fs::read_to_string(Path::new(RUN).join("hosts.count")).map_err(|e| {
            format!(
                "no lab is up ({RUN}/hosts.count: {e}); scripts/test.sh runs `scripts/lab.sh up 2`"
            )
        })?;
        let n: usize = count
            .trim()
            .parse()
            .map_err(|_| format!("{RUN}/hosts.count holds {count:?}"))?;
        if n < min {
            return Err(format!("the lab has {n} hosts, this test needs {min}"));
        }
        let hosts = (1..=n).map(host).collect::<Result<Vec<_>, String>>()?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/lab.sh");
        Ok(Lab { hosts, script })
    }

    /// Runs `args` inside lab host `i` (its network, mount and UTS
    /// namespaces).
    pub fn run(&self, i: usize, args: &[&str]) -> Output {
        Command::new("bash")
            .arg(&self.script)
            .arg("enter")
            .arg(i.to_string())
            .args(args)
            .output()
            .expect("run scripts/lab.sh enter")
    }

    /// `virsh -c qemu:///system ARGS` on lab host `i`.
    pub fn virsh(&self, i: usize, args: &[&str]) -> Output {
        let mut all = vec!["virsh", "-q", "-c", "qemu:///system"];
        all.extend_from_slice(args);
        self.run(i, &all)
    }

    /// A domain's state on host `i` ("running", "shut off"), or None when
    /// the host does not have it.
    pub fn domstate(&self, i: usize, name: &str) -> Option<String> {
        let out = self.virsh(i, &["domstate", name]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The test guest's kernel and initramfs copied where every lab host
    /// sees them (world-readable: QEMU runs as libvirt-qemu).
    pub fn shared_guest(&self, img: &GuestImage) -> GuestImage {
        let dir = Path::new(SHARED).join("images");
        std::fs::create_dir_all(&dir).expect("create the lab's shared image dir");
        // Tests run at once: a guest of another may be reading the copy, so
        // an identical copy is kept and a new one appears by rename, never
        // rewritten in place.
        let copy = |from: &Path, name: &str| {
            let to = dir.join(name);
            if std::fs::read(&to).ok() == std::fs::read(from).ok() {
                return to;
            }
            let tmp = dir.join(format!(".{name}.{}", uuid::Uuid::new_v4().simple()));
            std::fs::copy(from, &tmp).expect("copy the guest image into the lab");
            std::fs::rename(&tmp, &to).expect("move the guest image into place");
            to
        };
        GuestImage {
            kernel: copy(&img.kernel, "vmlinuz"),
            initrd: copy(&img.initrd, "initramfs.cpio.gz"),
        }
    }
}

fn host(index: usize) -> Result<LabHost, String> {
    let pidfile = Path::new(RUN).join(format!("h{index}/libvirtd.pid"));
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .map_err(|e| format!("{}: {e}", pidfile.display()))?
        .trim()
        .parse()
        .map_err(|_| format!("{} holds no pid", pidfile.display()))?;
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
        return Err(format!(
            "lab host {index}'s libvirtd (pid {pid}) is not running"
        ));
    }
    Ok(LabHost {
        index,
        name: format!("cslab-h{index}"),
        addr: format!("10.251.0.{}", 10 + index),
    })
}

/// Waits until `f` holds or `within` passes; true when it held.
pub fn wait_for(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < within {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

/// Destroys and undefines a lab domain on every host, even when the test
/// that made it failed.
pub struct LabDomain<'a> {
    pub lab: &'a Lab,
    pub name: String,
}

impl Drop for LabDomain<'_> {
    fn drop(&mut self) {
        for h in &self.lab.hosts {
            let _ = self.lab.virsh(h.index, &["destroy", &self.name]);
            let _ = self.lab.virsh(h.index, &["undefine", &self.name]);
        }
    }
}

/// A lab domain name with the test's `tag` and a random part, so runs and
/// tests never share one.
pub fn domain_name(tag: &str) -> String {
    format!(
        "cslab-{tag}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// One in-process plane and a csagent agent for each of lab hosts 1 and 2
/// (the Fixture's host on h1, `target` on h2), each driving its host's
/// libvirtd over that host's own socket and receiving migrations on its lab
/// address.
pub struct LabAgents {
    pub f: crate::Fixture,
    pub target: uuid::Uuid,
    pub agents: Vec<crate::InProcessAgent>,
}

impl LabAgents {
    /// Starts both agents and waits until both are registered; the plane
    /// also serves csagent-mgmt on `admin` when given.
    pub async fn start(lab: &Lab, admin: Option<PathBuf>) -> LabAgents {
        let (mut agents, (_, target_cfg)) = Self::source(lab, admin).await;
        agents
            .agents
            .push(crate::run_in_process(lab.agent_config(target_cfg, 2)));
        agents.wait_target().await;
        agents
    }

    /// As `start`, with the target's agent a real `csagent` process the
    /// test can kill and start again.
    pub async fn start_with_target_process(lab: &Lab) -> (LabAgents, TargetAgent) {
        let (agents, (_, cfg)) = Self::source(lab, None).await;
        let mut target = TargetAgent {
            cfg: lab.agent_config(cfg, 2),
            work: agents.f.work.path().to_path_buf(),
            proc: None,
        };
        target.start();
        agents.wait_target().await;
        (agents, target)
    }

    /// The plane, the source's in-process agent (registered), and the
    /// target's identity and config.
    async fn source(
        lab: &Lab,
        admin: Option<PathBuf>,
    ) -> (LabAgents, (uuid::Uuid, csagent::config::Config)) {
        let pki = crate::TestPki::new(&["localhost", "127.0.0.1"]);
        let f = crate::Fixture {
            plane: crate::start_plane_at(&pki, crate::fast_liveness(), 16 << 20, admin).await,
            host: uuid::Uuid::new_v4(),
            work: crate::workdir(),
            pki,
        };
        let target = uuid::Uuid::new_v4();
        let target_work = f.work.path().join("target");
        std::fs::create_dir_all(&target_work).expect("the target agent's work dir");
        let target_cfg = crate::agent_config(
            &target,
            &f.pki.agent(&target),
            &[f.plane.addr.to_string()],
            &target_work,
        );
        let agents = vec![crate::run_in_process(lab.agent_config(f.config(), 1))];
        f.wait_up(String::new).await;
        (LabAgents { f, target, agents }, (target, target_cfg))
    }

    async fn wait_target(&self) {
        let up = crate::wait_for(Duration::from_secs(20), || {
            crate::is_up(&self.f.plane, &self.target)
        })
        .await;
        assert!(up, "the target agent never registered");
    }

    pub async fn stop(self) {
        for a in self.agents {
            a.stop().await;
        }
    }
}

/// The target's agent as a `csagent` process (logs: target-N.log in the
/// work dir); killed when dropped.
pub struct TargetAgent {
    cfg: csagent::config::Config,
    work: PathBuf,
    pub proc: Option<crate::Proc>,
}

impl TargetAgent {
    /// Starts it (again).
    pub fn start(&mut self) {
        let n = std::fs::read_dir(&self.work).map_or(0, |d| d.count());
        let name = format!("target-{n}");
        self.proc = Some(crate::spawn_agent(&self.cfg, &self.work, &name));
    }

    /// SIGKILL, as a crash or the OOM killer would.
    pub fn kill(&mut self) {
        if let Some(p) = self.proc.take() {
            p.signal(nix::sys::signal::Signal::SIGKILL);
        }
    }

    pub fn log_text(&self) -> String {
        self.proc.as_ref().map(|p| p.log_text()).unwrap_or_default()
    }
}

impl Lab {
    /// `cfg` for an agent on lab host `i`: its libvirtd over the host's own
    /// socket, its lab address for migrations, plain TCP (the lab has no
    /// libvirt TLS), room for several tiny guests.
    pub fn agent_config(
        &self,
        mut cfg: csagent::config::Config,
        i: usize,
    ) -> csagent::config::Config {
        cfg.hypervisor.uri = format!("qemu+unix:///system?socket={RUN}/h{i}/run/libvirt-sock");
        cfg.hypervisor.call_timeout_ms = 60_000;
        cfg.host.capacity.reserved_memory_mib = 0;
        cfg.host.capacity.cpu_overcommit = 16.0;
        cfg.migration.tls = false;
        // The lab's VMs keep their disks and boot files on the shared storage.
        cfg.guest.path_roots.push(PathBuf::from(SHARED));
        cfg.migration.address = self.hosts[i - 1].addr.clone();
        cfg.metrics.enabled = false;
        cfg
    }
}
