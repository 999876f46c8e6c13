//! Test harness: real certificates, real planes and agents (in-process or as
//! child processes of the built binaries), all on loopback.
#![allow(dead_code)]
// Test support drives the real tools (virsh, qemu-img, ip) and takes std locks
// directly: the boundary rules of clippy.toml are for the product code.
#![allow(clippy::disallowed_methods)]

pub mod fuse;
pub mod guest;
pub mod ha;
pub mod skip;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use csagent::config::{Config, EndpointOrder};
use csagent_mgmt::{Liveness, Plane, PlaneConfig};
use csagent_proto::v1 as pb;
use csagent_tls::pki::{self, Ca, Validity};
use csagent_tls::TlsFiles;
use tempfile::TempDir;

/// A CA with a server certificate, and agent certificates on demand.
pub struct TestPki {
    pub dir: TempDir,
    pub ca: Ca,
    pub server: TlsFiles,
}

impl TestPki {
    pub fn new(server_names: &[&str]) -> TestPki {
        let dir = tempfile::Builder::new()
            .prefix("csat-pki-")
            .tempdir()
            .unwrap();
        let ca = Ca::generate("csagent test CA", Validity::for_lifetime(pki::CA_LIFETIME)).unwrap();
        let names: Vec<String> = server_names.iter().map(|s| s.to_string()).collect();
        let server = ca
            .issue_server(&names, Validity::for_lifetime(pki::LEAF_LIFETIME))
            .unwrap();
        let (cert, key) = pki::write_pair(dir.path(), "server", &server).unwrap();
        let (ca_path, _) = pki::write_pair(dir.path(), "ca", &ca.pem).unwrap();
        TestPki {
            server: TlsFiles {
                ca: ca_path,
                cert,
                key,
            },
            dir,
            ca,
        }
    }

    pub fn agent(&self, host: &uuid::Uuid) -> TlsFiles {
        self.agent_with(host, Validity::for_lifetime(pki::LEAF_LIFETIME))
    }

    pub fn agent_with(&self, host: &uuid::Uuid, validity: Validity) -> TlsFiles {
        let pem = self.ca.issue_agent(host, validity).unwrap();
        let dir = self
            .dir
            .path()
            .join("agents")
            .join(format!("{host}-{}", uuid::Uuid::new_v4()));
        let (cert, key) = pki::write_pair(&dir, "agent", &pem).unwrap();
        TlsFiles {
            ca: self.server.ca.clone(),
            cert,
            key,
        }
    }
}

pub fn fast_liveness() -> Liveness {
    Liveness {
        heartbeat_interval: Duration::from_millis(200),
        alert_after: Duration::from_millis(700),
        down_after: Duration::from_millis(1500),
        host_report_interval: Duration::from_secs(5),
    }
}

pub async fn start_plane(pki: &TestPki, liveness: Liveness, max_message_bytes: usize) -> Plane {
    start_plane_at(pki, liveness, max_message_bytes, None).await
}

/// An in-process plane that also serves operators (csagent-mgmt) on
/// `admin_socket`.
pub async fn start_plane_at(
    pki: &TestPki,
    liveness: Liveness,
    max_message_bytes: usize,
    admin_socket: Option<PathBuf>,
) -> Plane {
    plane_on(
        pki,
        liveness,
        max_message_bytes,
        admin_socket,
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap()
}

async fn plane_on(
    pki: &TestPki,
    liveness: Liveness,
    max_message_bytes: usize,
    admin_socket: Option<PathBuf>,
    listen: SocketAddr,
) -> Result<Plane, csagent_mgmt::PlaneError> {
    Plane::start(PlaneConfig {
        listen,
        tls: pki.server.clone(),
        admin_socket,
        liveness,
        plane_id: "test-plane".into(),
        max_message_bytes,
        ha: None,
    })
    .await
}

/// An agent config for loopback tests against libvirt's test driver.
pub fn agent_config(
    host: &uuid::Uuid,
    tls: &TlsFiles,
    endpoints: &[String],
    state: &Path,
) -> Config {
    let mut cfg = Config::default();
    cfg.agent.guid = host.to_string();
    cfg.agent.state_dir = state.to_path_buf();
    cfg.status.socket = state.join("status.sock");
    cfg.agent.shutdown_grace_secs = 5;
    cfg.management.hosts = endpoints.to_vec();
    cfg.management.order = EndpointOrder::Static;
    cfg.management.ca_file = tls.ca.clone();
    cfg.management.cert_file = tls.cert.clone();
    cfg.management.key_file = tls.key.clone();
    cfg.management.connect_timeout_ms = 1000;
    cfg.management.keepalive_interval_ms = 500;
    cfg.management.keepalive_timeout_ms = 1000;
    cfg.hypervisor.uri = "test:///default".into();
    cfg.hypervisor.poll_interval_ms = 200;
    cfg
}

/// Polls `cond` every 20 ms until it holds or `limit` passes.
pub async fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

pub fn host_summary(plane: &Plane, host: &uuid::Uuid) -> Option<pb::HostSummary> {
    plane
        .registry
        .list()
        .into_iter()
        .find(|h| h.host_uuid == host.to_string())
}

pub fn is_up(plane: &Plane, host: &uuid::Uuid) -> bool {
    host_summary(plane, host).is_some_and(|h| h.connected && h.state == pb::HostState::Up as i32)
}

/// Sends a command through the plane and waits for its result.
pub async fn call(
    plane: &Plane,
    host: &uuid::Uuid,
    cmd: pb::Command,
    limit: Duration,
) -> pb::CommandResult {
    let (_, mut rx) = plane.registry.send(&host.to_string(), cmd);
    result_of(&mut rx, limit).await
}

/// Waits for the result among a command's updates.
pub async fn result_of(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<pb::CommandUpdate>,
    limit: Duration,
) -> pb::CommandResult {
    let wait = async {
        while let Some(u) = rx.recv().await {
            if let Some(pb::command_update::Update::Result(r)) = u.update {
                return r;
            }
        }
        panic!("update stream ended without a result");
    };
    tokio::time::timeout(limit, wait)
        .await
        .expect("no result in time")
}

/// An agent running in this test's runtime.
pub struct InProcessAgent {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Result<(), csagent::agent::AgentError>>,
}

pub fn run_in_process(cfg: Config) -> InProcessAgent {
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(csagent::agent::run(cfg, stop.clone()));
    InProcessAgent { stop, task }
}

impl InProcessAgent {
    /// Shuts the agent down as SIGTERM would and checks it ended cleanly.
    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("agent did not stop")
            .unwrap()
            .unwrap();
    }
}

/// A CA, an in-process plane on loopback, a host identity with its
/// certificate, and a work directory: what most link tests start from.
pub struct Fixture {
    pub pki: TestPki,
    pub plane: Plane,
    pub host: uuid::Uuid,
    pub work: TempDir,
}

impl Fixture {
    pub async fn new(liveness: Liveness) -> Fixture {
        let pki = TestPki::new(&["localhost", "127.0.0.1"]);
        let plane = start_plane(&pki, liveness, 16 << 20).await;
        Fixture {
            plane,
            host: uuid::Uuid::new_v4(),
            work: workdir(),
            pki,
        }
    }

    /// An agent config for this host, pointing at this plane.
    pub fn config(&self) -> Config {
        agent_config(
            &self.host,
            &self.pki.agent(&self.host),
            &[self.plane.addr.to_string()],
            self.work.path(),
        )
    }

    /// The plane dies (its streams end, its memory is gone) and a new one
    /// starts on the same address with the same certificates, as a plane
    /// process restarted by its supervisor would. The new plane has
    /// `fast_liveness`, whatever the old one had.
    pub async fn restart_plane(&mut self) {
        let addr = self.plane.addr;
        self.plane.halt();
        let mut tries = 0;
        let new = loop {
            match plane_on(&self.pki, fast_liveness(), 16 << 20, None, addr).await {
                Ok(p) => break p,
                // The old listener closes once its server has noticed.
                Err(_) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("the plane did not start again on {addr}: {e}"),
            }
        };
        std::mem::replace(&mut self.plane, new).stop().await;
    }

    pub async fn wait_up(&self, log: impl Fn() -> String) {
        assert!(
            wait_for(Duration::from_secs(10), || is_up(&self.plane, &self.host)).await,
            "agent never registered: {}",
            log()
        );
    }
}

pub fn cmd(id: &str, deadline_ms: u64, body: pb::command::Body) -> pb::Command {
    pb::Command {
        id: id.into(),
        deadline_ms,
        body: Some(body),
    }
}

pub fn echo(payload: &str, delay_ms: u32) -> pb::command::Body {
    pb::command::Body::Echo(pb::Echo {
        payload: payload.into(),
        delay_ms,
        vm_uuid: String::new(),
    })
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed on drop, with its stderr kept in a file.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(bin: impl AsRef<std::ffi::OsStr>, args: &[&str], log: PathBuf) -> Proc {
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Proc { child, log }
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, sig).unwrap();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for exit up to `limit`; None if still running.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            // Async sleep: the test's runtime may also be running a plane.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A csagent-mgmt process with its own admin socket.
pub struct PlaneProc {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub admin: PathBuf,
}

pub fn spawn_plane(pki: &TestPki, work: &Path, name: &str, port: u16, extra: &[&str]) -> PlaneProc {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin = work.join(format!("{name}.sock"));
    let listen = addr.to_string();
    let tls_dir = pki.dir.path().to_str().unwrap().to_string();
    let admin_s = admin.to_str().unwrap().to_string();
    let mut args = vec![
        "serve",
        "--listen",
        &listen,
        "--tls-dir",
        &tls_dir,
        "--admin-socket",
        &admin_s,
        "--plane-id",
        name,
    ];
    args.extend_from_slice(extra);
    let proc = Proc::spawn(mgmt_bin(), &args, work.join(format!("{name}.log")));
    PlaneProc { proc, addr, admin }
}

/// Waits until a TCP port accepts connections.
pub async fn wait_port(addr: SocketAddr, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Writes a config as TOML and starts `csagent run` on it.
pub fn spawn_agent(cfg: &Config, work: &Path, name: &str) -> Proc {
    let path = work.join(format!("{name}.toml"));
    std::fs::write(&path, toml::to_string(cfg).unwrap()).unwrap();
    Proc::spawn(
        agent_bin(),
        &["run", "--config", path.to_str().unwrap()],
        work.join(format!("{name}.log")),
    )
}

pub fn workdir() -> TempDir {
    tempfile::Builder::new()
        .prefix("csat-link-")
        .tempdir()
        .unwrap()
}
pub mod identity;
pub mod lab;
pub mod storage;
pub mod vm_events;

/// A binary of the workspace, found in the target directory the running
/// test was built into (`target/debug/deps/<test>` → `target/debug/<name>`):
/// cargo names only a package's own binaries to its tests, so
/// scripts/test.sh builds every binary of the workspace first.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's own path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("a test binary lives in target/<profile>/deps");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// The csagent binary under test.
pub fn agent_bin() -> PathBuf {
    workspace_bin("csagent")
}

/// The csagent-mgmt binary.
pub fn mgmt_bin() -> PathBuf {
    workspace_bin("csagent-mgmt")
}
