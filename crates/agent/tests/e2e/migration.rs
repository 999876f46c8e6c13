//! Migration commands refused before anything happens, on one agent
//! (test:///default): the target's admission and disk checks, the source's
//! TLS policy and a VM it does not have. The moves themselves run in the
//! lab (lab_migration.rs).

use std::time::Duration;

use csagent_proto::v1 as pb;
use csagent_testkit::*;

async fn send(f: &Fixture, body: pb::command::Body) -> pb::CommandResult {
    call(
        &f.plane,
        &f.host,
        cmd("", 30_000, body),
        Duration::from_secs(30),
    )
    .await
}

fn prepare(vcpus: u32, disks: &[&str]) -> pb::command::Body {
    pb::command::Body::PrepareMigration(pb::PrepareMigration {
        vm_uuid: uuid::Uuid::new_v4().to_string(),
        vcpus,
        memory_kib: 64 * 1024,
        disk_paths: disks.iter().map(|d| d.to_string()).collect(),
    })
}

#[tokio::test]
async fn a_target_that_cannot_take_the_vm_refuses_it_naming_why() {
    let f = Fixture::new(fast_liveness()).await;
    let mut cfg = f.config();
    cfg.migration.address = "192.0.2.7".into();
    // test:///default's own domain holds vCPUs of this small host.
    cfg.host.capacity.cpu_overcommit = 4.0;
    let agent = run_in_process(cfg);
    f.wait_up(String::new).await;

    let r = send(&f, prepare(4096, &[])).await;
    assert_eq!(
        r.error_code,
        pb::ErrorCode::InsufficientCapacity as i32,
        "{r:?}"
    );
    assert!(r.message.contains("vCPU"), "{}", r.message);

    let missing = "/nonexistent/csat-mig-disk.qcow2";
    let r = send(&f, prepare(1, &[missing])).await;
    assert_eq!(r.error_code, pb::ErrorCode::NotFound as i32, "{r:?}");
    assert!(r.message.contains(missing), "{}", r.message);

    let r = send(&f, prepare(0, &[])).await;
    assert_eq!(r.error_code, pb::ErrorCode::InvalidArgument as i32, "{r:?}");

    // A VM it can take: the answer says where to send it, in TLS by default.
    let r = send(&f, prepare(1, &[])).await;
    assert_eq!(r.status, pb::CommandStatus::Ok as i32, "{r:?}");
    let Some(pb::command_result::Result::PrepareMigration(p)) = r.result else {
        panic!("{r:?}")
    };
    assert_eq!(p.libvirt_uri, "qemu+tls://192.0.2.7/system");
    assert_eq!(p.migrate_uri, "tcp://192.0.2.7");
    assert!(p.tls);
    agent.stop().await;
}

#[tokio::test]
async fn a_source_refuses_plain_tcp_and_vms_it_does_not_have() {
    let f = Fixture::new(fast_liveness()).await;
    let agent = run_in_process(f.config());
    f.wait_up(String::new).await;
    let migrate = |tls: bool| {
        pb::command::Body::MigrateVm(pb::MigrateVm {
            vm_uuid: uuid::Uuid::new_v4().to_string(),
            destination_libvirt_uri: "qemu+tls://192.0.2.7/system".into(),
            destination_migrate_uri: "tcp://192.0.2.7".into(),
            tls,
            ..Default::default()
        })
    };
    let r = send(&f, migrate(false)).await;
    assert_eq!(r.error_code, pb::ErrorCode::InvalidArgument as i32, "{r:?}");
    assert!(r.message.contains("tls = true"), "{}", r.message);
    let r = send(&f, migrate(true)).await;
    assert_eq!(r.error_code, pb::ErrorCode::NotFound as i32, "{r:?}");
    agent.stop().await;
}
