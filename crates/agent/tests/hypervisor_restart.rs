//! libvirtd restarted or hung under a running agent: heartbeats keep coming
//! and say the hypervisor is unavailable, the agent reconnects and
//! re-subscribes to events by itself, and the running VMs are not touched.
//!
//! These tests stop the host's libvirtd: they run one at a time (a mutex),
//! and a guard always brings libvirtd back, even when a test fails.

// Tests drive the real tools (virsh, qemu-img, ip, nft) and take std locks
// directly: the boundary rules of clippy.toml are for the product code.
#![allow(clippy::disallowed_methods)]

use std::process::Command;
use std::time::{Duration, Instant};

use csagent_proto::v1 as pb;
use csagent_testkit::vm_events::*;
use csagent_testkit::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pb::VmPowerState as S;

const PREFIX: &str = "cstest-ev-";
static LIBVIRTD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The pid of the host's own libvirtd, from its pidfile (or systemd's
/// MainPID): never by process name, because other libvirtds (the lab's
/// hosts, containers) may run on the same machine in other namespaces.
fn libvirtd_pid() -> Option<Pid> {
    let pid = if systemd() {
        let out = Command::new("systemctl")
            .args(["show", "--property=MainPID", "--value", "libvirtd"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<i32>()
            .ok()?
    } else {
        std::fs::read_to_string("/run/libvirtd.pid")
            .ok()?
            .trim()
            .parse::<i32>()
            .ok()?
    };
    Some(Pid::from_raw(pid)).filter(|&p| p.as_raw() > 0 && kill(p, None).is_ok())
}

fn systemd() -> bool {
    std::path::Path::new("/run/systemd/system").exists()
}

fn stop_libvirtd() {
    if systemd() {
        let s = Command::new("systemctl")
            .args(["stop", "libvirtd"])
            .status();
        assert!(s.is_ok_and(|s| s.success()), "systemctl stop libvirtd");
        return;
    }
    let pid = libvirtd_pid().expect("libvirtd is running with /run/libvirtd.pid");
    kill(pid, Signal::SIGTERM).unwrap();
    let t = Instant::now();
    while kill(pid, None).is_ok() && t.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(kill(pid, None).is_err(), "libvirtd did not stop");
}

/// Starts libvirtd the way scripts/start-services.sh does and waits until
/// it answers.
fn start_libvirtd() {
    if libvirtd_pid().is_none() {
        if systemd() {
            let _ = Command::new("systemctl")
                .args(["start", "libvirtd"])
                .status();
        } else {
            let _ = Command::new("/usr/sbin/libvirtd").arg("--daemon").status();
        }
    }
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(15) {
        if virsh(QEMU, &["version"]).status.success() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("libvirtd did not come back");
}

/// Brings libvirtd back (running, not stopped) whatever happens.
struct Revive;

impl Drop for Revive {
    fn drop(&mut self) {
        if let Some(pid) = libvirtd_pid() {
            let _ = kill(pid, Signal::SIGCONT);
        }
        start_libvirtd();
    }
}

/// (heartbeat seq, hypervisor_available) of the latest heartbeat.
fn hb(f: &Fixture) -> (u64, bool) {
    host_summary(&f.plane, &f.host)
        .map(|h| (h.heartbeat_seq, h.hypervisor_available))
        .unwrap_or_default()
}

async fn wait_available(f: &Fixture, want: bool, limit: Duration) -> Duration {
    let t = Instant::now();
    assert!(
        wait_for(limit, || {
            host_summary(&f.plane, &f.host).is_some_and(|h| h.hypervisor_available == want)
        })
        .await,
        "heartbeats never said hypervisor_available={want}: {:?}",
        hb(f)
    );
    t.elapsed()
}

/// An agent on qemu:///system whose libvirt calls give up after
/// `call_timeout_ms` (a hang is only noticed through timeouts).
async fn agent_on_qemu(f: &Fixture, call_timeout_ms: u64) -> InProcessAgent {
    let mut cfg = f.config();
    cfg.hypervisor.uri = QEMU.into();
    cfg.hypervisor.call_timeout_ms = call_timeout_ms;
    cfg.host.capacity.reserved_memory_mib = 0;
    // Other tests' VMs may share this host: admission is not under test.
    cfg.host.capacity.cpu_overcommit = 8.0;
    let agent = run_in_process(cfg);
    f.wait_up(String::new).await;
    wait_available(f, true, Duration::from_secs(10)).await;
    agent
}

fn qemu_pid(name: &str) -> Option<i32> {
    std::fs::read_to_string(format!("/run/libvirt/qemu/{name}.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirtd_restart_is_survived_and_events_resume() {
    let _serial = LIBVIRTD.lock().await;
    let _revive = Revive;
    let f = Fixture::new(fast_liveness()).await;
    // A stop is seen by the close callback, not by timeouts.
    let agent = agent_on_qemu(&f, 20_000).await;
    let disk = TinyDisk::new(PREFIX);
    let (uuid, spec) = tcg_spec(PREFIX, &disk.path);
    let u = uuid.to_string();
    let _dom = QemuDomain(u.clone());
    start_vm(&f.plane, &f.host, &spec).await;
    let pid = qemu_pid(&spec.name).expect("QEMU pid file");

    stop_libvirtd();
    let took = wait_available(&f, false, Duration::from_secs(5)).await;
    println!("libvirtd stopped: heartbeats said unavailable after {took:?}");
    let (seq, _) = hb(&f);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(hb(&f).0 > seq, "heartbeats stopped while libvirtd was down");

    start_libvirtd();
    let took = wait_available(&f, true, Duration::from_secs(15)).await;
    println!("libvirtd back: heartbeats said available after {took:?}");
    assert_eq!(qemu_pid(&spec.name), Some(pid), "the VM's QEMU changed");
    assert!(kill(Pid::from_raw(pid), None).is_ok(), "the VM's QEMU died");
    assert_eq!(domstate(QEMU, &u), "running");

    // Re-subscribed: an outside destroy is still reported.
    let mut tap = EventTap::new(&f.plane);
    let t = virsh_ok(QEMU, &["destroy", &u]);
    let seen = tap
        .until(&u, Duration::from_secs(5), is_state(S::Stopped))
        .await;
    println!(
        "after the restart, virsh destroy seen after {:?}",
        t.elapsed()
    );
    assert_eq!(seen.last().unwrap().reason, "destroyed");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_libvirtd_does_not_stop_heartbeats() {
    let _serial = LIBVIRTD.lock().await;
    let _revive = Revive;
    let f = Fixture::new(fast_liveness()).await;
    let agent = agent_on_qemu(&f, 1000).await;

    let pid = libvirtd_pid().expect("libvirtd is running");
    kill(pid, Signal::SIGSTOP).unwrap();
    let took = wait_available(&f, false, Duration::from_secs(5)).await;
    println!("libvirtd hung: heartbeats said unavailable after {took:?}");
    let (seq, _) = hb(&f);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (later, available) = hb(&f);
    assert!(
        later >= seq + 3,
        "heartbeats slowed during the hang: {seq} -> {later}"
    );
    assert!(!available);

    kill(pid, Signal::SIGCONT).unwrap();
    let took = wait_available(&f, true, Duration::from_secs(10)).await;
    println!("libvirtd resumed: heartbeats said available after {took:?}");
    agent.stop().await;
}
