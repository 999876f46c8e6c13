//! Storage and network commands through the whole path: plane -> mTLS
//! stream -> dispatch -> module -> real qemu-img and libvirt -> result.

use std::time::Duration;

use csagent_proto::v1 as pb;
use csagent_testkit::*;

fn ok(r: &pb::CommandResult) {
    assert_eq!(r.status, pb::CommandStatus::Ok as i32, "{r:?}");
}

#[tokio::test]
async fn storage_and_network_commands_reach_the_real_thing() {
    let mut liveness = fast_liveness();
    liveness.host_report_interval = Duration::from_millis(500);
    let f = Fixture::new(liveness).await;
    let (plane, host) = (&f.plane, f.host);
    let mut cfg = f.config();
    cfg.hypervisor.uri = "qemu:///system".into();
    let agent = run_in_process(cfg);
    f.wait_up(String::new).await;
    let t = Duration::from_secs(30);
    use pb::command::Body as B;

    let pool_dir = tempfile::Builder::new()
        .prefix("csat-link-pool-")
        .tempdir()
        .unwrap();
    let pool = format!(
        "csat-link-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let def = pb::PoolDefinition {
        name: pool.clone(),
        kind: Some(pb::pool_definition::Kind::Dir(pb::DirPool {
            path: pool_dir.path().to_str().unwrap().into(),
        })),
    };
    let r = call(
        plane,
        &host,
        cmd("", 0, B::AddPool(pb::AddPool { pool: Some(def) })),
        t,
    )
    .await;
    ok(&r);
    // The next host report shows the pool with its state.
    let has_pool = |p: &csagent_mgmt::Plane| {
        host_summary(p, &host)
            .and_then(|h| h.last_report)
            .is_some_and(|r| {
                r.pool_status
                    .iter()
                    .any(|s| s.name == pool && s.state == pb::PoolState::Running as i32)
            })
    };

    let create = pb::CreateVolume {
        pool: pool.clone(),
        name: "root.qcow2".into(),
        format: pb::VolumeFormat::Qcow2 as i32,
        size_bytes: 64 << 20,
    };
    let r = call(plane, &host, cmd("", 0, B::CreateVolume(create.clone())), t).await;
    ok(&r);
    match r.result {
        Some(pb::command_result::Result::Volume(v)) => assert_eq!(v.virtual_size_bytes, 64 << 20),
        other => panic!("{other:?}"),
    }
    assert!(
        pool_dir.path().join("root.qcow2").exists(),
        "qemu-img made no file"
    );
    // The same volume again: refused, the file untouched.
    let r = call(plane, &host, cmd("", 0, B::CreateVolume(create)), t).await;
    assert_eq!(r.error_code, pb::ErrorCode::AlreadyExists as i32, "{r:?}");
    // A name with a path separator: refused before anything happens.
    let evil = pb::CreateVolume {
        pool: pool.clone(),
        name: "../escape".into(),
        format: pb::VolumeFormat::Raw as i32,
        size_bytes: 1 << 20,
    };
    let r = call(plane, &host, cmd("", 0, B::CreateVolume(evil)), t).await;
    assert_eq!(r.error_code, pb::ErrorCode::InvalidArgument as i32, "{r:?}");
    assert!(!pool_dir.path().parent().unwrap().join("escape").exists());

    // Reports go every host_report_interval (500 ms here).
    assert!(
        wait_for(Duration::from_secs(8), || has_pool(plane)).await,
        "pool not in host report"
    );

    let del = pb::DeleteVolume {
        pool: pool.clone(),
        name: "root.qcow2".into(),
    };
    ok(&call(plane, &host, cmd("", 0, B::DeleteVolume(del)), t).await);
    assert!(!pool_dir.path().join("root.qcow2").exists());
    ok(&call(
        plane,
        &host,
        cmd("", 0, B::RemovePool(pb::RemovePool { name: pool })),
        t,
    )
    .await);

    // Network: an out-of-range VLAN is refused before anything is created.
    let bad = pb::EnsureNetwork {
        vm_uuid: uuid::Uuid::new_v4().to_string(),
        network: Some(pb::ensure_network::Network::Vlan(pb::VlanNetwork {
            physical_device: "lo".into(),
            vlan_id: 5000,
            mtu: 0,
        })),
    };
    let r = call(plane, &host, cmd("", 0, B::EnsureNetwork(bad)), t).await;
    assert_eq!(r.error_code, pb::ErrorCode::InvalidArgument as i32, "{r:?}");
    let r = call(
        plane,
        &host,
        cmd(
            "",
            0,
            B::GetNetworkCounters(pb::GetNetworkCounters { taps: vec![] }),
        ),
        t,
    )
    .await;
    ok(&r);

    agent.stop().await;
    f.plane.stop().await;
}
