//! The plane's book of HA VMs through a real agent on libvirt's test
//! driver: it outlives the plane (a plane with a book file stopped and
//! started again still knows which VMs of which host to restart, and a VM
//! destroyed afterwards leaves the book), and it settles a host's return:
//! a host that comes back still running a VM HA restarted elsewhere has
//! that copy destroyed at once, and the plane says so.

use std::time::Duration;

use csagent_mgmt::{ha::HaConfig, Plane, PlaneConfig};
use csagent_proto::v1 as pb;
use csagent_testkit::ha::CutLink;
use csagent_testkit::InProcessAgent;
use csagent_testkit::*;

use super::ha_isolation::{vm, TURN};

async fn plane_with_book(pki: &TestPki, listen: &str, book: &std::path::Path) -> Plane {
    Plane::start(PlaneConfig {
        listen: listen.parse().unwrap(),
        tls: pki.server.clone(),
        admin_socket: None,
        liveness: fast_liveness(),
        plane_id: "test-plane".into(),
        max_message_bytes: 16 << 20,
        ha: Some(HaConfig {
            book_file: Some(book.to_path_buf()),
            ..Default::default()
        }),
    })
    .await
    .unwrap()
}

fn booked(plane: &Plane, host: &uuid::Uuid) -> Vec<String> {
    let on = plane.registry.book().on_host(&host.to_string());
    on.into_iter().map(|(vm, _)| vm).collect()
}

fn listed(plane: &Plane, host: &uuid::Uuid, vm: &uuid::Uuid) -> bool {
    host_summary(plane, host).is_some_and(|h| h.vms.iter().any(|v| v.vm_uuid == vm.to_string()))
}

/// An agent on the test driver behind `link` to `plane`, Up and running
/// one HA VM it started through the plane: (agent, host, VM).
async fn host_with_ha_vm(
    pki: &TestPki,
    plane: &Plane,
    link: &CutLink,
    state: &std::path::Path,
) -> (InProcessAgent, uuid::Uuid, uuid::Uuid) {
    let host = uuid::Uuid::new_v4();
    std::fs::create_dir_all(state).unwrap();
    let mut cfg = agent_config(&host, &pki.agent(&host), &[link.addr.to_string()], state);
    cfg.host.capacity.reserved_memory_mib = 0;
    // The test driver's own sample domain takes its vCPUs.
    cfg.host.capacity.cpu_overcommit = 16.0;
    cfg.management.backoff_initial_ms = 100;
    cfg.management.backoff_max_ms = 500;
    let agent = run_in_process(cfg);
    assert!(wait_for(Duration::from_secs(10), || is_up(plane, &host)).await);
    let (uuid, spec) = vm(true);
    let start = pb::command::Body::StartVm(pb::StartVm {
        spec: Some(spec),
        ..Default::default()
    });
    let r = call(plane, &host, cmd("", 0, start), Duration::from_secs(30)).await;
    assert_eq!(r.status, pb::CommandStatus::Ok as i32, "{r:?}");
    let listed = wait_for(Duration::from_secs(10), || listed(plane, &host, &uuid)).await;
    assert!(listed, "the host's heartbeats never listed VM {uuid}");
    (agent, host, uuid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_plane_still_knows_its_ha_vms_from_the_book_file() {
    let _turn = TURN.lock().await;
    let pki = TestPki::new(&["localhost", "127.0.0.1"]);
    let work = workdir();
    let book = work.path().join("plane").join("ha-book.json");
    let first = plane_with_book(&pki, "127.0.0.1:0", &book).await;
    let addr = first.addr.to_string();
    // An in-process plane's open streams outlive its stop: the agent goes
    // through a link the test cuts, as a dead plane process would.
    let link = CutLink::start(first.addr).await;
    let (agent, host, uuid) =
        host_with_ha_vm(&pki, &first, &link, &work.path().join("agent")).await;
    let id = uuid.to_string();
    assert_eq!(booked(&first, &host), vec![id.clone()]);
    let written = wait_for(Duration::from_secs(5), || {
        std::fs::read_to_string(&book).is_ok_and(|t| t.contains(&id))
    })
    .await;
    assert!(written, "the book file never named the VM");

    link.cut();
    first.stop().await;
    let second = plane_with_book(&pki, &addr, &book).await;
    assert_eq!(
        booked(&second, &host),
        vec![id.clone()],
        "the restarted plane forgot the HA VM"
    );

    link.heal();
    // Destroyed on purpose: no longer HA's business, in memory and on disk.
    let up = wait_for(Duration::from_secs(10), || is_up(&second, &host)).await;
    assert!(up, "{:?}", host_summary(&second, &host));
    let d = pb::command::Body::DestroyVm(pb::DestroyVm {
        vm_uuid: id.clone(),
    });
    let r = call(&second, &host, cmd("", 0, d), Duration::from_secs(10)).await;
    assert_eq!(r.status, pb::CommandStatus::Ok as i32, "{r:?}");
    assert!(booked(&second, &host).is_empty());
    let gone = wait_for(Duration::from_secs(5), || {
        std::fs::read_to_string(&book).is_ok_and(|t| !t.contains(&id))
    })
    .await;
    assert!(gone, "the book file still names the destroyed VM");
    agent.stop().await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_returns_with_a_vm_restarted_elsewhere_has_that_copy_destroyed() {
    let _turn = TURN.lock().await;
    let pki = TestPki::new(&["localhost", "127.0.0.1"]);
    let work = workdir();
    let plane =
        csagent_testkit::ha::start_plane_ha(&pki, fast_liveness(), HaConfig::default()).await;
    let link = CutLink::start(plane.addr).await;
    let (agent, host, uuid) = host_with_ha_vm(&pki, &plane, &link, work.path()).await;

    // While the host is away, HA restarts the VM on another host.
    let elsewhere = uuid::Uuid::new_v4().to_string();
    link.cut();
    plane
        .registry
        .book()
        .restarted(&uuid.to_string(), &host.to_string(), &elsewhere);
    let mut events = plane.registry.subscribe();
    link.heal();

    // The plane says what it did, and the copy goes at once, not after a
    // two-minute shutdown request.
    let mut said = Vec::new();
    let told = wait_for(Duration::from_secs(10), || {
        said.extend(csagent_testkit::ha::ha_actions(&mut events, &uuid));
        said.iter()
            .any(|(k, _)| *k == pb::ha_action::Kind::StoppedStaleCopy as i32)
    })
    .await;
    assert!(told, "{said:?}");
    let m = &said[0].1;
    assert!(m.contains(&elsewhere) && m.contains("destroyed"), "{m}");
    let gone = wait_for(Duration::from_secs(5), || !listed(&plane, &host, &uuid)).await;
    let vms = host_summary(&plane, &host).map(|h| h.vms);
    assert!(gone, "the returning host still has its copy: {vms:?}");
    // The book keeps the VM where HA put it.
    assert!(booked(&plane, &host).is_empty());
    let on = plane.registry.book().on_host(&elsewhere);
    assert_eq!(
        on.len(),
        1,
        "the stale copy's destroy took the VM out of the book"
    );
    agent.stop().await;
}
