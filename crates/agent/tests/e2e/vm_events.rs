//! VM events from libvirt reach the plane: a VM stopped, paused or reset
//! from outside csagent is reported as it happens, with its reason; a
//! reboot is one event; domains csagent did not define are reported as
//! unmanaged and never changed. Fast cases on libvirt's test driver, the
//! proof on a real libvirtd with QEMU (TCG).

use std::time::{Duration, Instant};

use csagent_proto::v1 as pb;
use csagent_testkit::vm_events::*;
use csagent_testkit::*;
use pb::VmPowerState as S;

const PREFIX: &str = "cstest-ev-";
/// Generous: the goal is under a second, measured and printed, not asserted.
const EVENT_LIMIT: Duration = Duration::from_secs(5);

/// A domain on this process's test:///default, removed on drop.
struct TestDomain(virt::domain::Domain);

impl Drop for TestDomain {
    fn drop(&mut self) {
        let _ = self.0.destroy();
        let _ = self.0.undefine();
    }
}

#[tokio::test]
async fn outside_changes_on_the_test_driver_are_events() {
    let f = Fixture::new(fast_liveness()).await;
    let agent = run_in_process(f.config());
    f.wait_up(String::new).await;
    let mut tap = EventTap::new(&f.plane);

    // Defined by "another tool": no csagent metadata.
    let uuid = uuid::Uuid::new_v4();
    let name = format!("{PREFIX}{}", &uuid.simple().to_string()[..8]);
    let conn = virt::connect::Connect::open(Some("test:///default")).unwrap();
    let d = TestDomain(
        conn.define_domain_xml(&foreign_xml(&name, &uuid, "test"))
            .unwrap(),
    );
    let u = uuid.to_string();

    let t = Instant::now();
    d.0.create().unwrap();
    let seen = tap.until(&u, EVENT_LIMIT, is_state(S::Running)).await;
    println!("test driver: start seen after {:?}", t.elapsed());
    let e = seen.last().unwrap();
    assert_eq!((e.reason.as_str(), e.managed), ("booted", false), "{e:?}");

    d.0.suspend().unwrap();
    let seen = tap.until(&u, EVENT_LIMIT, is_state(S::Paused)).await;
    assert_eq!(seen.last().unwrap().reason, "user");

    // Nothing acts on an unmanaged domain: it stays paused, and the
    // heartbeat reports it as not csagent's.
    assert!(
        wait_for(Duration::from_secs(5), || heartbeat_vm(
            &f.plane, &f.host, &u
        )
        .is_some_and(|v| v.state == S::Paused as i32 && !v.managed))
        .await,
        "heartbeat: {:?}",
        heartbeat_vm(&f.plane, &f.host, &u)
    );
    let (state, _) = d.0.state().unwrap();
    assert!(
        matches!(
            state,
            virt::enumutil::Enum::Known(virt::domain::DomainState::Paused)
        ),
        "{state:?}"
    );

    d.0.resume().unwrap();
    tap.until(&u, EVENT_LIMIT, is_state(S::Running)).await;

    let t = Instant::now();
    d.0.destroy().unwrap();
    let seen = tap.until(&u, EVENT_LIMIT, is_state(S::Stopped)).await;
    println!("test driver: destroy seen after {:?}", t.elapsed());
    assert_eq!(seen.last().unwrap().reason, "destroyed");
    agent.stop().await;
}

#[tokio::test]
async fn a_real_vm_killed_paused_and_reset_from_outside() {
    let f = Fixture::new(fast_liveness()).await;
    let mut cfg = f.config();
    cfg.hypervisor.uri = QEMU.into();
    cfg.host.capacity.reserved_memory_mib = 0;
    // Other tests' VMs may share this host: admission is not under test.
    cfg.host.capacity.cpu_overcommit = 8.0;
    // No state poll within the test: what the plane sees in time came
    // through libvirt's events, which is what this test is about.
    cfg.hypervisor.poll_interval_ms = 60_000;
    let agent = run_in_process(cfg);
    f.wait_up(String::new).await;
    let (plane, host) = (&f.plane, f.host);
    let mut tap = EventTap::new(plane);

    let disk = TinyDisk::new(PREFIX);
    let (uuid, spec) = tcg_spec(PREFIX, &disk.path);
    let u = uuid.to_string();
    let _dom = QemuDomain(u.clone());
    start_vm(plane, &host, &spec).await;
    // The command reports its own transition, once: libvirt's events for
    // it (started, unpaused) are not sent again.
    let seen = tap
        .until(&u, EVENT_LIMIT, |e| {
            e.state == S::Running as i32 && !e.command_id.is_empty()
        })
        .await;
    let running = seen.iter().filter(|e| e.state == S::Running as i32);
    assert_eq!(running.count(), 1, "{seen:?}");

    // Let a late libvirt event trail the command, then act from outside.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = virsh_ok(QEMU, &["suspend", &u]);
    let seen = tap.until(&u, EVENT_LIMIT, is_state(S::Paused)).await;
    assert!(
        seen.iter().all(|e| e.state != S::Running as i32),
        "{seen:?}"
    );
    println!("qemu: suspend seen after {:?}", t.elapsed());
    assert_eq!(seen.last().unwrap().reason, "user");
    assert!(seen.last().unwrap().managed);
    virsh_ok(QEMU, &["resume", &u]);
    tap.until(&u, EVENT_LIMIT, is_state(S::Running)).await;

    // A reset is a reboot: one event, never a stop in between.
    let t = virsh_ok(QEMU, &["reset", &u]);
    let seen = tap.until(&u, EVENT_LIMIT, is_state(S::Rebooting)).await;
    println!("qemu: reset seen after {:?}", t.elapsed());
    assert!(
        seen.iter().all(|e| e.state != S::Stopped as i32),
        "{seen:?}"
    );
    assert_eq!(domstate(QEMU, &u), "running");

    let t = virsh_ok(QEMU, &["destroy", &u]);
    let seen = tap.until(&u, EVENT_LIMIT, is_state(S::Stopped)).await;
    let latency = t.elapsed();
    println!("qemu: virsh destroy seen by the plane after {latency:?}");
    assert_eq!(seen.last().unwrap().reason, "destroyed");
    // The next heartbeats agree.
    assert!(
        wait_for(Duration::from_secs(5), || heartbeat_vm(plane, &host, &u)
            .is_some_and(|v| v.state == S::Stopped as i32 && v.managed))
        .await
    );
    agent.stop().await;
}

#[tokio::test]
async fn a_foreign_qemu_domain_is_reported_unmanaged_and_left_alone() {
    let f = Fixture::new(fast_liveness()).await;
    let mut cfg = f.config();
    cfg.hypervisor.uri = QEMU.into();
    let agent = run_in_process(cfg);
    f.wait_up(String::new).await;
    let mut tap = EventTap::new(&f.plane);

    let uuid = uuid::Uuid::new_v4();
    let u = uuid.to_string();
    let name = format!("{PREFIX}foreign-{}", &uuid.simple().to_string()[..8]);
    let dir = tempfile::Builder::new().prefix(PREFIX).tempdir().unwrap();
    let xml = dir.path().join("foreign.xml");
    std::fs::write(&xml, foreign_xml(&name, &uuid, "qemu")).unwrap();
    let _dom = QemuDomain(u.clone());
    virsh_ok(QEMU, &["define", xml.to_str().unwrap()]);
    virsh_ok(QEMU, &["start", &u]);
    let seen = tap.until(&u, EVENT_LIMIT, is_state(S::Running)).await;
    assert!(!seen.last().unwrap().managed, "{seen:?}");
    assert!(
        wait_for(Duration::from_secs(5), || heartbeat_vm(
            &f.plane, &f.host, &u
        )
        .is_some_and(|v| v.state == S::Running as i32 && !v.managed))
        .await
    );
    // Commands refuse it; it keeps running.
    let r = call(
        &f.plane,
        &f.host,
        cmd(
            "",
            0,
            pb::command::Body::StopVm(pb::StopVm {
                vm_uuid: u.clone(),
                force: true,
                timeout_ms: 100,
            }),
        ),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        r.error_code,
        pb::ErrorCode::PermissionDenied as i32,
        "{r:?}"
    );
    assert_eq!(domstate(QEMU, &u), "running");
    agent.stop().await;
}
