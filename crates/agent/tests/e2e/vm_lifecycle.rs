//! VM lifecycle through the plane: StartVm, StopVm, DestroyVm and friends on
//! libvirt's test driver (fast) and on a real libvirtd with QEMU (TCG).

use std::time::Duration;

use csagent_proto::v1 as pb;
use csagent_testkit::*;

/// The minimal golden spec under a fresh UUID and a csat- name.
fn spec(disk: &str) -> (uuid::Uuid, pb::VmSpec) {
    let text = std::fs::read_to_string("tests/golden/domain/minimal.json").unwrap();
    let mut s: pb::VmSpec = serde_json::from_str(&text).unwrap();
    let uuid = uuid::Uuid::new_v4();
    s.uuid = uuid.to_string();
    s.name = format!("csat-vm-{}", &uuid.simple().to_string()[..8]);
    s.disks[0].source = disk.to_string();
    (uuid, s)
}

fn start(s: &pb::VmSpec) -> pb::command::Body {
    pb::command::Body::StartVm(pb::StartVm {
        spec: Some(s.clone()),
        ..Default::default()
    })
}

fn stop(uuid: &uuid::Uuid, force: bool, timeout_ms: u32) -> pb::command::Body {
    pb::command::Body::StopVm(pb::StopVm {
        vm_uuid: uuid.to_string(),
        force,
        timeout_ms,
    })
}

fn destroy(uuid: &uuid::Uuid) -> pb::Command {
    cmd(
        "",
        0,
        pb::command::Body::DestroyVm(pb::DestroyVm {
            vm_uuid: uuid.to_string(),
        }),
    )
}

fn state(uuid: &uuid::Uuid) -> pb::Command {
    cmd(
        "",
        0,
        pb::command::Body::GetVmState(pb::GetVmState {
            vm_uuid: uuid.to_string(),
        }),
    )
}

async fn updates(
    plane: &csagent_mgmt::Plane,
    host: &uuid::Uuid,
    body: pb::command::Body,
) -> (Vec<pb::Event>, pb::CommandResult) {
    let (_, mut rx) = plane.registry.send(&host.to_string(), cmd("", 0, body));
    let mut events = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(u) = rx.recv().await {
            match u.update {
                Some(pb::command_update::Update::Event(e)) => events.push(e),
                Some(pb::command_update::Update::Result(r)) => return r,
                _ => {}
            }
        }
        panic!("no result");
    })
    .await
    .expect("no result in 60 s");
    (events, r)
}

/// The power state a lifecycle command's result reports.
fn answered_state(r: &pb::CommandResult) -> i32 {
    match &r.result {
        Some(pb::command_result::Result::VmStatus(s)) => s.state,
        other => panic!("no VM status in {other:?}"),
    }
}

/// The VM's power state as libvirt has it now, asked separately.
async fn power(plane: &csagent_mgmt::Plane, host: &uuid::Uuid, vm: &uuid::Uuid) -> i32 {
    let r = call(plane, host, state(vm), Duration::from_secs(5)).await;
    answered_state(&r)
}

fn states(events: &[pb::Event]) -> Vec<i32> {
    events.iter().map(|e| e.state).collect()
}

/// A plane and a registered agent on the test driver, with room for a few
/// VMs.
async fn test_driver_agent() -> (Fixture, InProcessAgent) {
    let f = Fixture::new(fast_liveness()).await;
    let mut cfg = f.config();
    cfg.host.capacity.cpu_overcommit = 8.0;
    let agent = run_in_process(cfg);
    f.wait_up(String::new).await;
    (f, agent)
}

#[tokio::test]
async fn lifecycle_on_the_test_driver() {
    let (f, agent) = test_driver_agent().await;
    let (plane, host) = (&f.plane, f.host);
    let (uuid, s) = spec("/var/lib/libvirt/images/csat-vm-test.qcow2");

    let (events, r) = updates(plane, &host, start(&s)).await;
    assert_eq!(r.status, pb::CommandStatus::Ok as i32, "{r:?}");
    assert_eq!(
        states(&events),
        vec![
            pb::VmPowerState::Starting as i32,
            pb::VmPowerState::Running as i32
        ]
    );
    match r.result {
        Some(pb::command_result::Result::StartVm(res)) => {
            let vm = res.vm.unwrap();
            assert!(vm.managed && vm.domain_id > 0, "{vm:?}");
        }
        other => panic!("{other:?}"),
    }
    // Same spec again: success, nothing changes.
    let (_, r) = updates(plane, &host, start(&s)).await;
    assert_eq!(r.status, pb::CommandStatus::Ok as i32, "{r:?}");
    // Same UUID, other definition: CONFLICT.
    let mut other = s.clone();
    other.memory.as_mut().unwrap().size_kib *= 2;
    let (_, r) = updates(plane, &host, start(&other)).await;
    assert_eq!(r.error_code, pb::ErrorCode::Conflict as i32, "{r:?}");

    // The test driver's own "test" domain is not csagent's: never changed.
    let list = call(
        plane,
        &host,
        cmd("", 0, pb::command::Body::ListVms(pb::ListVms::default())),
        Duration::from_secs(5),
    )
    .await;
    let Some(pb::command_result::Result::VmList(l)) = list.result else {
        panic!()
    };
    let foreign = l.vms.iter().find(|v| v.name == "test").unwrap();
    assert!(!foreign.managed);
    let r = call(
        plane,
        &host,
        cmd(
            "",
            0,
            pb::command::Body::DestroyVm(pb::DestroyVm {
                vm_uuid: foreign.vm_uuid.clone(),
            }),
        ),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        r.error_code,
        pb::ErrorCode::PermissionDenied as i32,
        "{r:?}"
    );

    let r = call(
        plane,
        &host,
        cmd(
            "",
            0,
            pb::command::Body::PauseVm(pb::PauseVm {
                vm_uuid: uuid.to_string(),
            }),
        ),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(r.status, pb::CommandStatus::Ok as i32, "{r:?}");
    assert_eq!(answered_state(&r), pb::VmPowerState::Paused as i32, "{r:?}");
    assert_eq!(
        power(plane, &host, &uuid).await,
        pb::VmPowerState::Paused as i32
    );
    let r = call(
        plane,
        &host,
        cmd(
            "",
            0,
            pb::command::Body::ResumeVm(pb::ResumeVm {
                vm_uuid: uuid.to_string(),
            }),
        ),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(r.status, pb::CommandStatus::Ok as i32, "{r:?}");
    assert_eq!(
        answered_state(&r),
        pb::VmPowerState::Running as i32,
        "{r:?}"
    );
    assert_eq!(
        power(plane, &host, &uuid).await,
        pb::VmPowerState::Running as i32
    );

    let (events, r) = updates(plane, &host, stop(&uuid, true, 2000)).await;
    assert_eq!(r.status, pb::CommandStatus::Ok as i32, "{r:?}");
    assert_eq!(
        events.last().map(|e| e.state),
        Some(pb::VmPowerState::Stopped as i32)
    );
    // Stopping a stopped VM succeeds.
    let (_, r) = updates(plane, &host, stop(&uuid, false, 500)).await;
    assert_eq!(r.status, pb::CommandStatus::Ok as i32, "{r:?}");
    let r = call(plane, &host, destroy(&uuid), Duration::from_secs(5)).await;
    assert_eq!(r.status, pb::CommandStatus::Ok as i32, "{r:?}");
    let r = call(plane, &host, state(&uuid), Duration::from_secs(5)).await;
    assert_eq!(r.error_code, pb::ErrorCode::NotFound as i32, "{r:?}");

    // Admission: a VM larger than the host is refused, naming what is short.
    let (_, mut huge) = spec("/var/lib/libvirt/images/csat-vm-huge.qcow2");
    huge.memory.as_mut().unwrap().size_kib = 1 << 40;
    let (_, r) = updates(plane, &host, start(&huge)).await;
    assert_eq!(
        r.error_code,
        pb::ErrorCode::InsufficientCapacity as i32,
        "{r:?}"
    );
    assert!(
        r.message.starts_with("Insufficient capacity"),
        "{}",
        r.message
    );
    agent.stop().await;
}

/// Removes the test's libvirt domain and disk even if the test fails.
struct Cleanup(uuid::Uuid, std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let u = self.0.to_string();
        let _ = std::process::Command::new("virsh")
            .args(["-c", "qemu:///system", "destroy", &u])
            .output();
        let _ = std::process::Command::new("virsh")
            .args(["-c", "qemu:///system", "undefine", &u, "--nvram"])
            .output();
        let _ = std::fs::remove_file(&self.1);
    }
}

#[tokio::test]
async fn real_qemu_start_stop_destroy_and_rollback() {
    let f = Fixture::new(fast_liveness()).await;
    let mut cfg = f.config();
    cfg.hypervisor.uri = "qemu:///system".into();
    cfg.host.capacity.reserved_memory_mib = 0;
    // Guests of other tests may run on the same qemu:///system meanwhile;
    // the memory refusal below is what this test asserts, not a vCPU count.
    cfg.host.capacity.cpu_overcommit = 16.0;
    let agent = run_in_process(cfg);
    f.wait_up(String::new).await;
    let (plane, host) = (&f.plane, f.host);

    // A real (empty) disk in libvirt's image directory, where QEMU may read it.
    let disk = std::path::PathBuf::from(format!(
        "/var/lib/libvirt/images/csat-vm-{}.qcow2",
        uuid::Uuid::new_v4().simple()
    ));
    let out = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg("16M")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let (uuid, mut s) = spec(disk.to_str().unwrap());
    let _cleanup = Cleanup(uuid, disk.clone());
    s.memory.as_mut().unwrap().size_kib = 64 * 1024;
    s.graphics = vec![pb::VmGraphics {
        r#type: "vnc".into(),
        autoport: true,
        listen: "127.0.0.1".into(),
        ..Default::default()
    }];

    let (events, r) = updates(plane, &host, start(&s)).await;
    assert_eq!(r.status, pb::CommandStatus::Ok as i32, "{r:?}");
    assert_eq!(
        states(&events).last(),
        Some(&(pb::VmPowerState::Running as i32))
    );
    let Some(pb::command_result::Result::StartVm(res)) = r.result else {
        panic!()
    };
    assert!(res.vnc_port >= 5900, "{res:?}");
    let qemu_running = std::process::Command::new("virsh")
        .args(["-c", "qemu:///system", "domstate", &uuid.to_string()])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&qemu_running.stdout).trim(),
        "running"
    );

    // No OS answers ACPI: the graceful stop times out, force powers off.
    let (_, r) = updates(plane, &host, stop(&uuid, false, 700)).await;
    assert_eq!(
        r.error_code,
        pb::ErrorCode::DeadlineExceeded as i32,
        "{r:?}"
    );
    assert!(r.message.contains("force"), "{}", r.message);
    let (_, r) = updates(plane, &host, stop(&uuid, true, 700)).await;
    assert_eq!(r.status, pb::CommandStatus::Ok as i32, "{r:?}");
    let r = call(plane, &host, destroy(&uuid), Duration::from_secs(10)).await;
    assert_eq!(r.status, pb::CommandStatus::Ok as i32, "{r:?}");
    let gone = std::process::Command::new("virsh")
        .args(["-c", "qemu:///system", "dominfo", &uuid.to_string()])
        .output()
        .unwrap();
    assert!(
        !gone.status.success(),
        "domain still defined after DestroyVm"
    );

    // A bad image path: start fails, the step is named, nothing stays defined.
    let (bad_uuid, bad) = spec("/var/lib/libvirt/images/csat-vm-does-not-exist.qcow2");
    let _bad_cleanup = Cleanup(bad_uuid, std::path::PathBuf::from("/nonexistent"));
    let (_, r) = updates(plane, &host, start(&bad)).await;
    assert_eq!(r.status, pb::CommandStatus::Error as i32, "{r:?}");
    assert!(r.message.contains("define-and-start"), "{}", r.message);
    let left = std::process::Command::new("virsh")
        .args(["-c", "qemu:///system", "dominfo", &bad_uuid.to_string()])
        .output()
        .unwrap();
    assert!(
        !left.status.success(),
        "a failed start left a domain behind"
    );
    agent.stop().await;
}

#[tokio::test]
async fn a_critical_host_refuses_start_vm_naming_the_sensor() {
    // A sysfs copy with one CPU package sensor past its critical limit.
    let sys = tempfile::Builder::new()
        .prefix("csat-sys-")
        .tempdir()
        .unwrap();
    let chip = sys.path().join("devices/platform/coretemp.0/hwmon/hwmon0");
    std::fs::create_dir_all(&chip).unwrap();
    for (file, value) in [
        ("name", "coretemp"),
        ("temp1_label", "Package id 0"),
        ("temp1_input", "99000"),
        ("temp1_max", "85000"),
        ("temp1_crit", "95000"),
    ] {
        std::fs::write(chip.join(file), format!("{value}\n")).unwrap();
    }
    std::fs::create_dir_all(sys.path().join("class/hwmon")).unwrap();
    std::os::unix::fs::symlink(&chip, sys.path().join("class/hwmon/hwmon0")).unwrap();

    let f = Fixture::new(fast_liveness()).await;
    let mut cfg = f.config();
    cfg.host.sysfs_root = sys.path().to_path_buf();
    cfg.host.capacity.cpu_overcommit = 8.0;
    let agent = run_in_process(cfg);
    f.wait_up(String::new).await;
    let (plane, host) = (&f.plane, f.host);
    // Health travels in heartbeats; Register alone does not carry it.
    let critical = |p: &csagent_mgmt::Plane| {
        host_summary(p, &host)
            .and_then(|h| h.health)
            .is_some_and(|h| h.state == pb::HealthState::Critical as i32)
    };
    assert!(
        wait_for(Duration::from_secs(10), || critical(plane)).await,
        "heartbeats never said critical: {:?}",
        host_summary(plane, &host).and_then(|h| h.health)
    );

    let (uuid, s) = spec("/var/lib/libvirt/images/csat-vm-hot.qcow2");
    let (events, r) = updates(plane, &host, start(&s)).await;
    assert_eq!(r.error_code, pb::ErrorCode::HostUnhealthy as i32, "{r:?}");
    assert!(
        r.message.contains("Package id 0") || r.message.contains("coretemp"),
        "the refusal must name the sensor: {}",
        r.message
    );
    assert!(events.is_empty(), "nothing may start on a critical host");
    let r = call(plane, &host, state(&uuid), Duration::from_secs(5)).await;
    assert_eq!(
        r.error_code,
        pb::ErrorCode::NotFound as i32,
        "a refused VM must not be defined: {r:?}"
    );
    agent.stop().await;
}

/// libvirt's test driver ships a domain "test" csagent never defined.
const FOREIGN_TEST_DOMAIN: &str = "6695eb01-f6a4-8304-79aa-97f2502e193f";

#[tokio::test]
async fn start_vm_on_a_foreign_domains_uuid_is_refused_without_touching_it() {
    let (f, agent) = test_driver_agent().await;
    let (_, mut s) = spec("/var/lib/libvirt/images/csat-foreign.qcow2");
    s.uuid = FOREIGN_TEST_DOMAIN.into();
    let foreign = uuid::Uuid::parse_str(FOREIGN_TEST_DOMAIN).unwrap();
    let before = call(&f.plane, &f.host, state(&foreign), Duration::from_secs(10)).await;
    let r = call(
        &f.plane,
        &f.host,
        cmd("", 0, start(&s)),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(r.status, pb::CommandStatus::Error as i32, "{r:?}");
    assert_eq!(
        r.error_code,
        pb::ErrorCode::PermissionDenied as i32,
        "{r:?}"
    );
    assert!(
        r.message.contains("not defined by csagent"),
        "{}",
        r.message
    );
    let after = call(&f.plane, &f.host, state(&foreign), Duration::from_secs(10)).await;
    assert_eq!(before.result, after.result, "the foreign domain changed");
    agent.stop().await;
}

#[tokio::test]
async fn a_name_taken_by_another_uuid_is_a_conflict_and_a_missing_vm_not_found() {
    let (f, agent) = test_driver_agent().await;
    let (first, s) = spec("/var/lib/libvirt/images/csat-name-1.qcow2");
    let r = call(
        &f.plane,
        &f.host,
        cmd("", 0, start(&s)),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(r.status, pb::CommandStatus::Ok as i32, "{r:?}");
    // Same name, another UUID: libvirt refuses the define.
    let (other, mut same_name) = spec("/var/lib/libvirt/images/csat-name-2.qcow2");
    same_name.name = s.name.clone();
    let r = call(
        &f.plane,
        &f.host,
        cmd("", 0, start(&same_name)),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(r.error_code, pb::ErrorCode::Conflict as i32, "{r:?}");
    assert!(r.message.contains("already exists"), "{}", r.message);
    let r = call(&f.plane, &f.host, state(&other), Duration::from_secs(10)).await;
    assert_eq!(r.error_code, pb::ErrorCode::NotFound as i32, "{r:?}");
    let _ = call(&f.plane, &f.host, destroy(&first), Duration::from_secs(10)).await;
    agent.stop().await;
}

/// The owner, group and mode of a host file, to show it was not touched.
fn owner_and_mode(p: &str) -> (u32, u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).unwrap();
    (m.uid(), m.gid(), m.mode())
}

// libvirt hands what a domain names to the QEMU user: a host file named as
// a disk or a kernel, directly or through a link in an allowed directory,
// is refused before libvirt sees the domain, and the file keeps its owner.
#[tokio::test]
async fn host_files_outside_the_allowed_roots_are_refused_as_disk_and_kernel() {
    let f = Fixture::new(fast_liveness()).await;
    let mut cfg = f.config();
    cfg.hypervisor.uri = "qemu:///system".into();
    let agent = run_in_process(cfg);
    f.wait_up(String::new).await;
    let (plane, host) = (&f.plane, f.host);
    let before = owner_and_mode("/etc/shadow");
    let link = format!(
        "/var/lib/libvirt/images/csat-link-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    std::os::unix::fs::symlink("/etc/shadow", &link).unwrap();
    struct Gone(String);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _link = Gone(link.clone());

    let as_disk = spec("/etc/shadow");
    let mut as_kernel = spec("/var/lib/libvirt/images/csat-vm-nodisk.qcow2");
    as_kernel.1.boot.get_or_insert_with(Default::default).kernel = "/etc/shadow".into();
    let via_link = spec(&link);
    for ((uuid, s), field) in [
        (as_disk, "disk vda source /etc/shadow refused"),
        (as_kernel, "kernel /etc/shadow refused"),
        (via_link, "resolves to /etc/shadow"),
    ] {
        let r = call(plane, &host, cmd("", 0, start(&s)), Duration::from_secs(30)).await;
        assert_eq!(
            r.error_code,
            pb::ErrorCode::PermissionDenied as i32,
            "{r:?}"
        );
        assert!(r.message.contains(field), "{field:?} not in: {}", r.message);
        let state = pb::command::Body::GetVmState(pb::GetVmState {
            vm_uuid: uuid.to_string(),
        });
        let r = call(plane, &host, cmd("", 0, state), Duration::from_secs(10)).await;
        assert_eq!(
            r.error_code,
            pb::ErrorCode::NotFound as i32,
            "a domain was defined: {r:?}"
        );
    }
    assert_eq!(owner_and_mode("/etc/shadow"), before);
    agent.stop().await;
}

// A busy host's whole list may not fit one stream message: ListVms pages
// it, in UUID order, and the pages add up to the whole list.
#[tokio::test]
async fn list_vms_in_pages_adds_up_to_the_whole_list() {
    let (f, agent) = test_driver_agent().await;
    let (plane, host) = (&f.plane, f.host);
    let mut made = Vec::new();
    for i in 0..3 {
        let (uuid, s) = spec(&format!("/var/lib/libvirt/images/csat-page-{i}.qcow2"));
        let (_, r) = updates(plane, &host, start(&s)).await;
        assert_eq!(r.status, pb::CommandStatus::Ok as i32, "{r:?}");
        made.push(uuid);
    }
    let list = |page_size: u32, page_token: String| {
        let body = pb::command::Body::ListVms(pb::ListVms {
            page_size,
            page_token,
        });
        call(plane, &host, cmd("", 0, body), Duration::from_secs(5))
    };
    let uuids = |r: &pb::CommandResult| match &r.result {
        Some(pb::command_result::Result::VmList(l)) => (
            l.vms.iter().map(|v| v.vm_uuid.clone()).collect::<Vec<_>>(),
            l.next_page_token.clone(),
        ),
        other => panic!("{other:?}"),
    };
    let (all, last) = uuids(&list(0, String::new()).await);
    assert!(last.is_empty());
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let (page, next) = uuids(&list(2, token).await);
        assert!(page.len() <= 2, "{page:?}");
        paged.extend(page);
        if next.is_empty() {
            break;
        }
        token = next;
    }
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(
        paged, sorted,
        "the pages are not the whole list in UUID order"
    );
    for u in &made {
        assert!(paged.contains(&u.to_string()));
    }
    let r = list(2, "not-a-token".into()).await;
    assert_eq!(r.error_code, pb::ErrorCode::InvalidArgument as i32, "{r:?}");
    for u in made {
        let _ = call(plane, &host, destroy(&u), Duration::from_secs(5)).await;
    }
    agent.stop().await;
}
