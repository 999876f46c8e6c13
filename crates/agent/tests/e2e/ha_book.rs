//! The plane's book of HA VMs outlives the plane: a plane with a book file
//! that is stopped and started again (same file, same address) still knows
//! which VMs of which host to restart, and a VM destroyed afterwards leaves
//! the book. The agent runs on libvirt's test driver.

use std::time::Duration;

use csagent_mgmt::{ha::HaConfig, Plane, PlaneConfig};
use csagent_proto::v1 as pb;
use csagent_testkit::ha::CutLink;
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
    let host = uuid::Uuid::new_v4();
    let state = work.path().join("agent");
    std::fs::create_dir_all(&state).unwrap();
    let mut cfg = agent_config(&host, &pki.agent(&host), &[link.addr.to_string()], &state);
    cfg.host.capacity.reserved_memory_mib = 0;
    // The test driver's own sample domain takes its vCPUs.
    cfg.host.capacity.cpu_overcommit = 16.0;
    cfg.management.backoff_initial_ms = 100;
    cfg.management.backoff_max_ms = 500;
    let agent = run_in_process(cfg);
    assert!(wait_for(Duration::from_secs(10), || is_up(&first, &host)).await);
    let (uuid, spec) = vm(true);
    let start = pb::command::Body::StartVm(pb::StartVm {
        spec: Some(spec),
        ..Default::default()
    });
    let r = call(&first, &host, cmd("", 0, start), Duration::from_secs(30)).await;
    assert_eq!(r.status, pb::CommandStatus::Ok as i32, "{r:?}");
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
