//! Live migration through csagent, between two lab hosts (scripts/lab.sh):
//! one plane, two agents (each driving its lab host's libvirtd over that
//! host's own socket), a real TCG guest. PrepareMigration on the target,
//! MigrateVm on the source; a cancelled migration leaves the VM where it was;
//! the target's agent killed mid-migration loses nothing: the VM lands on
//! the target, and the agent, started again, reports it there; nor does
//! the plane dying mid-migration: a new plane hears the truth from both.

use std::time::Duration;

use csagent_proto::v1 as pb;
use csagent_testkit::guest::{guest_image, guest_spec};
use csagent_testkit::lab::{domain_name, Lab, LabAgents, LabDomain};
use csagent_testkit::skip;
use csagent_testkit::*;

struct Hosts {
    lab: Lab,
    a: LabAgents,
    /// This test's turn on the lab, held while it runs.
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

/// The lab's two hosts as csagent hosts of one plane, or why not; the
/// plane also serves csagent-mgmt on `admin` when given.
async fn two_hosts_with(admin: Option<std::path::PathBuf>) -> Result<Hosts, String> {
    let _turn = csagent_testkit::lab::turn().await;
    let lab = Lab::get(2)?;
    let a = LabAgents::start(&lab, admin).await;
    Ok(Hosts { lab, a, _turn })
}

/// The lab's hosts for the calling test, or a skip (in that test's name)
/// saying why there are none.
macro_rules! hosts_or_skip {
    ($admin:expr) => {
        match two_hosts_with($admin).await {
            Ok(h) => h,
            Err(why) => {
                skip!("{why}");
                return;
            }
        }
    };
}

fn body_cmd(body: pb::command::Body) -> pb::Command {
    cmd("", 120_000, body)
}

/// Starts a 128 MiB TCG guest on the source through the plane.
async fn start_guest(h: &Hosts, name: &str) -> uuid::Uuid {
    let uuid = uuid::Uuid::new_v4();
    let img = h.lab.shared_guest(&guest_image());
    let spec = guest_spec(&uuid, name, &img, 128);
    let start = pb::command::Body::StartVm(pb::StartVm {
        spec: Some(spec),
        ..Default::default()
    });
    let r = call(
        &h.a.f.plane,
        &h.a.f.host,
        body_cmd(start),
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(r.status, pb::CommandStatus::Ok as i32, "{r:?}");
    uuid
}

async fn prepare(h: &Hosts, vm: &uuid::Uuid) -> pb::PrepareMigrationResult {
    let body = pb::command::Body::PrepareMigration(pb::PrepareMigration {
        vm_uuid: vm.to_string(),
        vcpus: 1,
        memory_kib: 128 * 1024,
        disk_paths: Vec::new(),
    });
    let r = call(
        &h.a.f.plane,
        &h.a.target,
        body_cmd(body),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(r.status, pb::CommandStatus::Ok as i32, "{r:?}");
    match r.result {
        Some(pb::command_result::Result::PrepareMigration(p)) => p,
        other => panic!("PrepareMigration answered {other:?}"),
    }
}

fn migrate_body(
    vm: &uuid::Uuid,
    p: &pb::PrepareMigrationResult,
    bandwidth_mib_s: u64,
) -> pb::command::Body {
    pb::command::Body::MigrateVm(pb::MigrateVm {
        vm_uuid: vm.to_string(),
        destination_libvirt_uri: p.libvirt_uri.clone(),
        destination_migrate_uri: p.migrate_uri.clone(),
        tls: p.tls,
        bandwidth_mib_s,
        max_downtime_ms: 300,
        ..Default::default()
    })
}

async fn state_on(h: &Hosts, host: &uuid::Uuid, vm: &uuid::Uuid) -> pb::CommandResult {
    let body = pb::command::Body::GetVmState(pb::GetVmState {
        vm_uuid: vm.to_string(),
    });
    call(&h.a.f.plane, host, body_cmd(body), Duration::from_secs(30)).await
}

/// Waits (30 s at most) for the migration's first progress with figures.
async fn until_data_flows(rx: &mut tokio::sync::mpsc::UnboundedReceiver<pb::CommandUpdate>) {
    let seen = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(u) = rx.recv().await {
            if matches!(&u.update, Some(pb::command_update::Update::Progress(p)) if p.migration.is_some()) {
                return;
            }
        }
    })
    .await;
    assert!(seen.is_ok(), "no migration progress");
}

/// A guest started on the source and migrating to the target at 16 MiB/s
/// (about 10 s: slow enough for a fault mid-way), once data flows; the
/// MigrateVm's updates.
async fn migrating_slowly(
    h: &Hosts,
    name: &str,
) -> (
    uuid::Uuid,
    tokio::sync::mpsc::UnboundedReceiver<pb::CommandUpdate>,
) {
    let vm = start_guest(h, name).await;
    let p = prepare(h, &vm).await;
    let body = migrate_body(&vm, &p, 16);
    let (_, mut rx) =
        h.a.f
            .plane
            .registry
            .send(&h.a.f.host.to_string(), body_cmd(body));
    until_data_flows(&mut rx).await;
    (vm, rx)
}

fn running(r: &pb::CommandResult) -> bool {
    matches!(&r.result, Some(pb::command_result::Result::VmStatus(s)) if s.state == pb::VmPowerState::Running as i32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_moves_live_to_the_prepared_host_and_only_it_reports_the_vm() {
    let h = hosts_or_skip!(None);
    let name = domain_name("test-mv");
    let _domain = LabDomain {
        lab: &h.lab,
        name: name.clone(),
    };
    let vm = start_guest(&h, &name).await;
    let p = prepare(&h, &vm).await;
    assert_eq!(
        p.libvirt_uri,
        format!("qemu+tcp://{}/system", h.lab.hosts[1].addr)
    );

    let r = call(
        &h.a.f.plane,
        &h.a.f.host,
        body_cmd(migrate_body(&vm, &p, 0)),
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(r.status, pb::CommandStatus::Ok as i32, "{r:?}");
    let Some(pb::command_result::Result::MigrateVm(m)) = r.result else {
        panic!("MigrateVm answered {r:?}")
    };
    println!(
        "csagent migrate: total {} ms, downtime {} ms, {} bytes",
        m.total_ms, m.downtime_ms, m.data_total_bytes
    );
    assert!(m.data_total_bytes > 0, "{m:?}");

    assert!(
        running(&state_on(&h, &h.a.target, &vm).await),
        "the target does not run the VM"
    );
    let gone = state_on(&h, &h.a.f.host, &vm).await;
    assert_eq!(
        gone.error_code,
        pb::ErrorCode::NotFound as i32,
        "the source still has the VM: {gone:?}"
    );
    assert_eq!(h.lab.domstate(2, &name).as_deref(), Some("running"));
    assert_eq!(h.lab.domstate(1, &name), None);

    // A second move to the same host is refused before anything happens.
    let body = pb::command::Body::PrepareMigration(pb::PrepareMigration {
        vm_uuid: vm.to_string(),
        vcpus: 1,
        memory_kib: 128 * 1024,
        disk_paths: Vec::new(),
    });
    let again = call(
        &h.a.f.plane,
        &h.a.target,
        body_cmd(body),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        again.error_code,
        pb::ErrorCode::AlreadyExists as i32,
        "{again:?}"
    );
    h.a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_migration_reports_progress_and_leaves_the_vm_running_on_the_source() {
    let h = hosts_or_skip!(None);
    let name = domain_name("test-cx");
    let _domain = LabDomain {
        lab: &h.lab,
        name: name.clone(),
    };
    let vm = start_guest(&h, &name).await;
    let p = prepare(&h, &vm).await;

    // 1 MiB/s: 128 MiB would take minutes, so the job is surely running
    // when the cancel comes.
    let (id, mut rx) =
        h.a.f
            .plane
            .registry
            .send(&h.a.f.host.to_string(), body_cmd(migrate_body(&vm, &p, 1)));
    let progress = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(u) = rx.recv().await {
            if let Some(pb::command_update::Update::Progress(p)) = u.update {
                if let Some(m) = p.migration {
                    return m;
                }
            }
        }
        panic!("updates ended without migration progress");
    })
    .await
    .expect("no migration progress in 30 s");
    assert!(progress.data_total_bytes > 0, "{progress:?}");
    h.a.f.plane.registry.cancel(&h.a.f.host.to_string(), &id);
    let r = result_of(&mut rx, Duration::from_secs(60)).await;
    assert_eq!(r.error_code, pb::ErrorCode::Cancelled as i32, "{r:?}");
    assert!(
        r.message.contains("keeps running on this host"),
        "{}",
        r.message
    );

    assert!(
        running(&state_on(&h, &h.a.f.host, &vm).await),
        "the source no longer runs the VM"
    );
    assert_eq!(
        h.lab.domstate(2, &name),
        None,
        "the target kept a half-migrated VM"
    );
    h.a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csagent_mgmt_migrate_moves_a_vm_there_and_back() {
    let dir = workdir();
    let socket = dir.path().join("admin.sock");
    let h = hosts_or_skip!(Some(socket.clone()));
    let name = domain_name("test-cli");
    let _domain = LabDomain {
        lab: &h.lab,
        name: name.clone(),
    };
    let vm = start_guest(&h, &name).await;
    for (to, lab_host) in [(h.a.target, 2), (h.a.f.host, 1)] {
        let out = tokio::process::Command::new(mgmt_bin())
            .args(["migrate", "--admin-socket", socket.to_str().unwrap()])
            .args([
                "--vm",
                &vm.to_string(),
                "--to",
                &to.to_string(),
                "--max-downtime-ms",
                "300",
            ])
            .output()
            .await
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        assert!(said.contains(&format!("moved to {to}")), "{said}");
        println!("{}", said.trim());
        assert_eq!(h.lab.domstate(lab_host, &name).as_deref(), Some("running"));
        assert_eq!(h.lab.domstate(3 - lab_host, &name), None);
    }
    // Moving it where it already is is refused, naming why.
    let out = tokio::process::Command::new(mgmt_bin())
        .args(["migrate", "--admin-socket", socket.to_str().unwrap()])
        .args(["--vm", &vm.to_string(), "--to", &h.a.f.host.to_string()])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(why.contains("already runs on"), "{why}");
    h.a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_drains_the_host_and_it_takes_no_new_vms_until_off() {
    let dir = workdir();
    let socket = dir.path().join("admin.sock");
    let h = hosts_or_skip!(Some(socket.clone()));
    let names = [domain_name("test-mt1"), domain_name("test-mt2")];
    let _domains: Vec<_> = names
        .iter()
        .map(|n| LabDomain {
            lab: &h.lab,
            name: n.clone(),
        })
        .collect();
    let mut uuids = Vec::new();
    for n in &names {
        uuids.push(start_guest(&h, n).await.to_string());
    }
    let source = h.a.f.host.to_string();
    let summary = |h: &Hosts| host_summary(&h.a.f.plane, &h.a.f.host).unwrap();
    // The plane places on hosts with a report; wait for the target's.
    assert!(
        wait_for(Duration::from_secs(20), || host_summary(
            &h.a.f.plane,
            &h.a.target
        )
        .is_some_and(|s| s.last_report.is_some()))
        .await
    );
    let both_running = |h: &Hosts| {
        let vms = summary(h).vms;
        uuids.iter().all(|u| {
            vms.iter().any(|v| {
                &v.vm_uuid == u && v.managed && v.state == pb::VmPowerState::Running as i32
            })
        })
    };
    assert!(
        wait_for(Duration::from_secs(20), || both_running(&h)).await,
        "the source's heartbeat never listed both VMs running: {:?}",
        summary(&h).vms
    );
    let mgmt = |args: &[&str]| {
        let mut c = tokio::process::Command::new(mgmt_bin());
        c.args([
            "maintenance",
            "--admin-socket",
            socket.to_str().unwrap(),
            "--host",
            &source,
        ]);
        c.args(args);
        c.output()
    };
    let out = mgmt(&["on", "--concurrency", "2"]).await.unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        said.contains("2 VMs moved"),
        "{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for n in &names {
        assert_eq!(h.lab.domstate(2, n).as_deref(), Some("running"), "{n}");
        assert_eq!(h.lab.domstate(1, n), None, "{n}");
    }
    assert_eq!(summary(&h).maintenance, pb::MaintenanceState::On as i32);

    // A host in maintenance is sent no StartVm.
    let img = h.lab.shared_guest(&guest_image());
    let spec = guest_spec(&uuid::Uuid::new_v4(), &domain_name("test-mt3"), &img, 64);
    let start = pb::command::Body::StartVm(pb::StartVm {
        spec: Some(spec),
        ..Default::default()
    });
    let r = call(
        &h.a.f.plane,
        &h.a.f.host,
        body_cmd(start),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(r.error_code, pb::ErrorCode::Unavailable as i32, "{r:?}");
    assert!(r.message.contains("maintenance"), "{}", r.message);

    let out = mgmt(&["off"]).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(summary(&h).maintenance, pb::MaintenanceState::Off as i32);
    h.a.stop().await;
}

/// Brings a lab host's network back however the test ends.
struct LinkDown<'a>(&'a Lab, usize);

impl Drop for LinkDown<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(self.1, &["ip", "link", "set", "eth0", "up"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_cut_off_from_its_target_is_aborted_and_the_vm_stays_on_the_source() {
    let h = hosts_or_skip!(None);
    let name = domain_name("test-cut");
    let _domain = LabDomain {
        lab: &h.lab,
        name: name.clone(),
    };
    let vm = start_guest(&h, &name).await;
    let p = prepare(&h, &vm).await;
    let mut body = migrate_body(&vm, &p, 2);
    if let pb::command::Body::MigrateVm(m) = &mut body {
        m.completion_timeout_ms = 8_000;
    }
    let (_, mut rx) =
        h.a.f
            .plane
            .registry
            .send(&h.a.f.host.to_string(), body_cmd(body));
    // Cut the target's network once data flows.
    until_data_flows(&mut rx).await;
    let _restore = LinkDown(&h.lab, 2);
    let out = h.lab.run(2, &["ip", "link", "set", "eth0", "down"]);
    assert!(out.status.success(), "{out:?}");

    let r = result_of(&mut rx, Duration::from_secs(90)).await;
    assert_eq!(r.status, pb::CommandStatus::Error as i32, "{r:?}");
    assert!(
        r.message.contains("keeps running on this host"),
        "{}",
        r.message
    );
    println!("cut-off migration answered: {}", r.message);
    assert!(
        running(&state_on(&h, &h.a.f.host, &vm).await),
        "the source no longer runs the VM"
    );
    drop(_restore);
    // The target's half-made incoming VM goes once libvirt notices.
    assert!(
        csagent_testkit::lab::wait_for(Duration::from_secs(60), || h
            .lab
            .domstate(2, &name)
            .is_none()),
        "the target kept the half-migrated VM"
    );
    h.a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_target_agent_killed_mid_migration_finds_the_vm_it_received_when_it_is_back() {
    let _turn = csagent_testkit::lab::turn().await;
    let lab = match Lab::get(2) {
        Ok(l) => l,
        Err(why) => {
            skip!("{why}");
            return;
        }
    };
    let (a, mut target) = LabAgents::start_with_target_process(&lab).await;
    let h = Hosts { lab, a, _turn };
    let name = domain_name("test-tkill");
    let _domain = LabDomain {
        lab: &h.lab,
        name: name.clone(),
    };
    let (vm, mut rx) = migrating_slowly(&h, &name).await;
    target.kill();
    let killed = std::time::Instant::now();

    // libvirt moves the VM daemon to daemon: the source's answer is OK.
    let r = result_of(&mut rx, Duration::from_secs(120)).await;
    println!(
        "migration finished {:.1} s after the target's agent was killed",
        killed.elapsed().as_secs_f64()
    );
    assert_eq!(r.status, pb::CommandStatus::Ok as i32, "{r:?}");
    assert_eq!(h.lab.domstate(2, &name).as_deref(), Some("running"));
    assert!(
        h.lab.domstate(1, &name).is_none(),
        "still defined on the source"
    );

    // Back, the target's agent reports the VM; the source does not.
    target.start();
    let back = wait_for(Duration::from_secs(30), || {
        host_summary(&h.a.f.plane, &h.a.target).is_some_and(|s| {
            s.connected
                && s.vms.iter().any(|v| {
                    v.vm_uuid == vm.to_string() && v.state == pb::VmPowerState::Running as i32
                })
        })
    })
    .await;
    assert!(
        back,
        "the target never reported the VM: {}",
        target.log_text()
    );
    let source_vms = || host_summary(&h.a.f.plane, &h.a.f.host).map(|s| s.vms);
    let off_source = wait_for(Duration::from_secs(10), || {
        source_vms().is_some_and(|vms| !vms.iter().any(|v| v.vm_uuid == vm.to_string()))
    })
    .await;
    assert!(
        off_source,
        "the source still reports the VM: {:?}",
        source_vms()
    );
    assert!(running(&state_on(&h, &h.a.target, &vm).await));
    target.kill();
    h.a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plane_dying_mid_migration_leaves_the_vm_on_one_host_and_the_new_plane_hears_so() {
    let mut h = hosts_or_skip!(None);
    let name = domain_name("test-pdie");
    let _domain = LabDomain {
        lab: &h.lab,
        name: name.clone(),
    };
    let (vm, _rx) = migrating_slowly(&h, &name).await;
    h.a.f.restart_plane().await;

    // The agents carry on without a plane, then register with the new one.
    let (source, target) = (h.a.f.host, h.a.target);
    let landed = wait_for(Duration::from_secs(120), || {
        h.lab.domstate(2, &name).as_deref() == Some("running") && h.lab.domstate(1, &name).is_none()
    })
    .await;
    assert!(
        landed,
        "the VM did not move: host 1 {:?}, host 2 {:?}",
        h.lab.domstate(1, &name),
        h.lab.domstate(2, &name)
    );
    let plane = &h.a.f.plane;
    let lists = |host: &uuid::Uuid| {
        host_summary(plane, host).map(|s| {
            (
                s.connected,
                s.vms.iter().any(|v| v.vm_uuid == vm.to_string()),
            )
        })
    };
    let truth = wait_for(Duration::from_secs(30), || {
        lists(&source) == Some((true, false)) && lists(&target) == Some((true, true))
    })
    .await;
    assert!(
        truth,
        "the new plane hears source {:?}, target {:?}",
        lists(&source),
        lists(&target)
    );
    assert!(running(&state_on(&h, &target, &vm).await));
    h.a.stop().await;
}
