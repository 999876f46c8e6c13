//! The host as the plane sees it: facts at Register, health in heartbeats,
//! reports with capacity, and first-fit placement over them.

use std::time::Duration;

use csagent_host::{placement::PlacementError, MiB, Request};
use csagent_proto::v1 as pb;
use csagent_testkit::*;

#[tokio::test]
async fn plane_sees_facts_health_reports_and_places_by_them() {
    let f = Fixture::new(fast_liveness()).await;
    let (plane, host) = (&f.plane, f.host);
    let mut cfg = f.config();
    // libvirt's test driver runs a 2-vCPU domain; on a 2-thread CI machine
    // that takes every thread unless vCPUs may be overcommitted.
    cfg.host.capacity.cpu_overcommit = 4.0;
    let agent = run_in_process(cfg);
    f.wait_up(String::new).await;
    assert!(
        wait_for(Duration::from_secs(10), || host_summary(plane, &host)
            .is_some_and(|h| h.last_report.is_some() && h.health.is_some()))
        .await,
        "no host report or no heartbeat health"
    );
    let h = host_summary(plane, &host).unwrap();
    let facts = h.facts.unwrap();
    let cpu = facts.cpu.expect("cpu facts");
    assert!(cpu.threads >= 1, "{cpu:?}");
    assert!(facts.memory_total_bytes > 0);
    assert!(facts.kvm.is_some());
    let report = h.last_report.unwrap();
    let cap = report.capacity.expect("capacity in report");
    assert!(cap.memory_total_mib > 0, "{cap:?}");
    assert!(report.agent.is_some_and(|a| a.rss_bytes > 0));
    let health = h.health.expect("health in heartbeats");
    assert_ne!(health.state, pb::HealthState::Unspecified as i32);

    let small = Request {
        vcpus: 1,
        memory: MiB(16),
    };
    assert_eq!(plane.registry.place(&small, &[]).unwrap(), host.to_string());
    let huge = Request {
        vcpus: 100_000,
        memory: MiB(16),
    };
    let e = plane.registry.place(&huge, &[]).unwrap_err();
    assert!(matches!(e, PlacementError::NoHostFits { .. }));
    let msg = e.to_string();
    assert!(msg.starts_with("Insufficient capacity"), "{msg}");
    assert!(
        msg.contains(&host.to_string()),
        "the reason must name the host: {msg}"
    );
    agent.stop().await;
    f.plane.stop().await;
}
