//! High availability in the lab (scripts/lab.sh): a plane with HA on, the
//! agent of lab host 1 as a real `csagent` process whose link to the plane
//! runs through a relay the test can cut, the agent of host 2 in-process,
//! both writing storage heartbeats on the lab's shared storage, and real
//! TCG guests whose disks are on that storage.
//!
//! Fault 1: host 1 loses power (its agent killed, the lab's cut ends its
//! libvirtd and QEMUs): its HA VM runs on host 2, once, and its other VM
//! does not; when host 1 comes back it runs neither, and is Up again. Fault 2: only host 1's link to the plane is cut: host 2 sees
//! its storage heartbeat move, host 1 stays Disconnected, nothing restarts.
//! Fault 3: host 1's agent is frozen (SIGSTOP) while its VM runs: no
//! heartbeat of any kind, but host 2 sees the VM's disk being written.
//! Fault 4: the same StartVm sent to host 2 while host 1 runs the VM: host
//! 2's libvirt refuses it through the disk's lease, a CONFLICT naming the
//! disk, and nothing of it stays on host 2. Capacity: host 1 dies while
//! host 2 is full; the restart is deferred as "Insufficient capacity" with
//! host 2's reason, and done once a VM on host 2 is destroyed.

use std::time::{Duration, Instant};

use csagent_proto::v1 as pb;
use csagent_testkit::ha::{
    cut_power, ha_actions, start_body_on_a, start_on_a, start_vm_body, state, Guest, HaLab,
    HaTiming, SharedDisk, HA_QUIET,
};
use csagent_testkit::lab::{domain_name, LabDomain};
use csagent_testkit::skip;
use csagent_testkit::*;

macro_rules! ha_lab_or_skip {
    () => {
        match HaLab::start(&HaTiming::fast()).await {
            Ok(h) => h,
            Err(why) => {
                skip!("{why}");
                return;
            }
        }
    };
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
    let cut_at = Instant::now();
    let revive = cut_power(&h);

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

    // Host 1 comes back: its agent registers again and runs nothing; the
    // HA VM stays on host 2 alone, where the plane books it.
    drop(revive);
    let again = h.agent_a_again();
    let back = wait_for(Duration::from_secs(60), || is_up(&h.plane, &h.a)).await;
    assert!(back, "host 1 never came back Up: {}", again.log_text());
    assert_ne!(h.lab.domstate(1, &ha_name).as_deref(), Some("running"));
    assert_eq!(h.lab.domstate(2, &ha_name).as_deref(), Some("running"));
    assert!(h.plane.registry.book().on_host(&h.a.to_string()).is_empty());
    assert_eq!(h.plane.registry.book().on_host(&h.b.to_string()).len(), 1);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_start_of_a_running_vm_on_another_host_is_refused_by_its_lease() {
    let mut h = ha_lab_or_skip!();
    let name = domain_name("test-lease");
    let _dom = LabDomain {
        lab: &h.lab,
        name: name.clone(),
    };
    let disk = SharedDisk::new("lease");
    let writes = Guest {
        ha: true,
        writes: true,
    };
    let (vm, start) = start_vm_body(&h, &name, writes, &disk);
    start_body_on_a(&h, vm, start.clone()).await;

    // Split brain attempted past the plane's judgement: host 2 is asked
    // directly to start the VM host 1 runs.
    let r = h.send_to_b(start).await;
    let disk_name = disk.0.to_string_lossy().into_owned();
    eprintln!("host 2's refusal: {}", r.message);
    assert_eq!(r.error_code, pb::ErrorCode::Conflict as i32, "{r:?}");
    assert!(
        r.message.contains(&format!("disk {disk_name} is in use")),
        "the refusal names the disk: {}",
        r.message
    );
    assert!(
        h.lab.domstate(2, &name).is_none(),
        "host 2 kept a definition of the refused VM"
    );
    assert_eq!(h.lab.domstate(1, &name).as_deref(), Some("running"));
    let before = std::fs::metadata(&disk.0).unwrap().modified().unwrap();
    let still_written = wait_for(Duration::from_secs(10), || {
        std::fs::metadata(&disk.0)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t > before)
    })
    .await;
    assert!(still_written, "host 1's copy stopped writing its disk");
    if let Some(b) = h.agent_b.take() {
        b.stop().await;
    }
}

/// vCPUs host 2 offers in the capacity test: few, whatever the machine.
const B_VCPUS: u32 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_that_fits_nowhere_is_deferred_naming_why_and_done_when_room_appears() {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get() as u32);
    let small_b = |cfg: &mut csagent::config::Config| {
        cfg.host.capacity.cpu_overcommit = 1.0;
        cfg.host.capacity.reserved_cpus = threads.saturating_sub(B_VCPUS);
    };
    let mut h = match HaLab::start_tuned(&HaTiming::fast(), small_b).await {
        Ok(h) => h,
        Err(why) => {
            skip!("{why}");
            return;
        }
    };
    let (ha_name, filler_name) = (domain_name("test-cap"), domain_name("test-fill"));
    let _doms = [&ha_name, &filler_name].map(|n| LabDomain {
        lab: &h.lab,
        name: n.clone(),
    });
    let disk = SharedDisk::new("cap");
    let ha_vm = start_on_a(&h, &ha_name, HA_QUIET, &disk).await;

    // Host 2 full: a VM there takes every vCPU it offers.
    let filler = uuid::Uuid::new_v4();
    let img = h.lab.shared_guest(&guest::guest_image());
    let mut spec = guest::guest_spec(&filler, &filler_name, &img, 64);
    let free = h.b_vcpus_free();
    assert!(free >= 1, "host 2 offers no vCPU at all");
    spec.cpu.as_mut().unwrap().vcpus = free;
    let start = pb::command::Body::StartVm(pb::StartVm {
        spec: Some(spec),
        ..Default::default()
    });
    let r = h.send_to_b(start).await;
    assert_eq!(r.status, pb::CommandStatus::Ok as i32, "{r:?}");
    let full = wait_for(Duration::from_secs(20), || h.b_vcpus_free() == 0).await;
    assert!(full, "host 2's report never showed it full");
    let mut events = h.plane.registry.subscribe();

    let _revive = cut_power(&h);
    let deferred = |a: &[(i32, String)]| {
        a.iter()
            .find(|(k, _)| *k == pb::ha_action::Kind::Deferred as i32)
            .map(|(_, m)| m.clone())
    };
    let mut seen = Vec::new();
    let told = wait_for(Duration::from_secs(90), || {
        seen.extend(ha_actions(&mut events, &ha_vm));
        deferred(&seen).is_some()
    })
    .await;
    let (st, reason) = state(&h, &h.a);
    assert!(
        told,
        "no deferral; host 1 is {st} ({reason}); HA said {seen:?}"
    );
    let why = deferred(&seen).unwrap_or_default();
    eprintln!("HA deferral: {why}");
    assert!(why.contains("Insufficient capacity"), "{why}");
    assert!(
        why.contains(&h.b.to_string()) && why.contains("vCPU"),
        "host 2's reason: {why}"
    );
    assert!(
        h.lab.domstate(2, &ha_name).is_none(),
        "started although it did not fit"
    );

    // Room appears: the next re-check restarts it there, once.
    let d = pb::command::Body::DestroyVm(pb::DestroyVm {
        vm_uuid: filler.to_string(),
    });
    let r = h.send_to_b(d).await;
    assert_eq!(r.status, pb::CommandStatus::Ok as i32, "{r:?}");
    let on_b = wait_for(Duration::from_secs(60), || {
        h.lab.domstate(2, &ha_name).as_deref() == Some("running")
    })
    .await;
    seen.extend(ha_actions(&mut events, &ha_vm));
    assert!(
        on_b,
        "never restarted once host 2 had room; HA said {seen:?}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    seen.extend(ha_actions(&mut events, &ha_vm));
    let restarts = seen
        .iter()
        .filter(|(k, _)| *k == pb::ha_action::Kind::Restarted as i32)
        .count();
    assert_eq!(restarts, 1, "{seen:?}");
    if let Some(b) = h.agent_b.take() {
        b.stop().await;
    }
}
