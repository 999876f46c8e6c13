//! `[ha] on_isolation` through the real agent on libvirt's test driver: the
//! link to the plane is cut and the only shared pool breaks (a file where its
//! directory was), so the agent is isolated. With `stop-ha-vms` it powers
//! off its HA VM and leaves the other running; with `none` it touches
//! nothing; either way the next Register says what it did. The plane alone
//! going away is not isolation.

use std::time::Duration;

use csagent::isolation::OnIsolation;
use csagent_proto::v1 as pb;
use csagent_testkit::ha::CutLink;
use csagent_testkit::*;

pub(crate) fn vm(ha: bool) -> (uuid::Uuid, pb::VmSpec) {
    let text = std::fs::read_to_string("tests/golden/domain/minimal.json").unwrap();
    let mut s: pb::VmSpec = serde_json::from_str(&text).unwrap();
    let uuid = uuid::Uuid::new_v4();
    s.uuid = uuid.to_string();
    s.name = format!("csat-iso-{}", &uuid.simple().to_string()[..8]);
    s.disks[0].source = format!("/var/lib/libvirt/images/csat-iso-{}.qcow2", uuid.simple());
    s.ha = ha;
    s.ids = Some(pb::VmCloudIds {
        instance_id: s.name.clone(),
        ..Default::default()
    });
    (uuid, s)
}

async fn power(plane: &csagent_mgmt::Plane, host: &uuid::Uuid, vm: &uuid::Uuid) -> i32 {
    let body = pb::command::Body::GetVmState(pb::GetVmState {
        vm_uuid: vm.to_string(),
    });
    let r = call(plane, host, cmd("", 0, body), Duration::from_secs(10)).await;
    match r.result {
        Some(pb::command_result::Result::VmStatus(s)) => s.state,
        other => panic!("GetVmState answered {other:?} ({})", r.message),
    }
}

/// An agent with storage heartbeats on `pool` and `policy`, behind a link
/// the test can cut, running an HA VM and another.
struct Host {
    _turn: tokio::sync::MutexGuard<'static, ()>,
    f: Fixture,
    link: CutLink,
    agent: InProcessAgent,
    ha_vm: uuid::Uuid,
    plain_vm: uuid::Uuid,
}

/// libvirt's test:///default is one state per process: an agent applying
/// stop-ha-vms would power off the HA VM of a test running beside it, so
/// these tests take turns.
pub(crate) static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn host_with_vms(
    policy: OnIsolation,
    pool: impl FnOnce(&Fixture) -> std::path::PathBuf,
) -> Host {
    let turn = TURN.lock().await;
    let f = Fixture::new(fast_liveness()).await;
    let link = CutLink::start(f.plane.addr).await;
    let pool = pool(&f);
    std::fs::create_dir_all(&pool).unwrap();
    let mut cfg = f.config();
    cfg.management.hosts = vec![link.addr.to_string()];
    cfg.ha.pools = vec![pool.clone()];
    cfg.ha.heartbeat_interval_secs = 1;
    cfg.ha.timeout_secs = 1;
    cfg.ha.on_isolation = policy;
    cfg.ha.isolation_after_secs = 2;
    cfg.host.capacity.reserved_memory_mib = 0;
    cfg.host.capacity.cpu_overcommit = 16.0;
    cfg.management.backoff_initial_ms = 100;
    cfg.management.backoff_max_ms = 500;
    let agent = run_in_process(cfg);
    f.wait_up(String::new).await;
    let (ha_vm, ha_spec) = vm(true);
    let (plain_vm, plain_spec) = vm(false);
    for s in [&ha_spec, &plain_spec] {
        let start = pb::command::Body::StartVm(pb::StartVm {
            spec: Some(s.clone()),
            ..Default::default()
        });
        let r = call(
            &f.plane,
            &f.host,
            cmd("", 0, start),
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(r.status, pb::CommandStatus::Ok as i32, "{r:?}");
    }
    Host {
        _turn: turn,
        f,
        link,
        agent,
        ha_vm,
        plain_vm,
    }
}

impl Host {
    /// (HA VM state, other VM state, isolation actions the plane was told);
    /// destroys both VMs and stops the agent.
    async fn finish(self) -> (i32, i32, Vec<String>) {
        let (plane, host) = (&self.f.plane, self.f.host);
        let actions = host_summary(plane, &host)
            .map(|s| s.isolation_actions)
            .unwrap_or_default();
        let states = (
            power(plane, &host, &self.ha_vm).await,
            power(plane, &host, &self.plain_vm).await,
        );
        for v in [self.ha_vm, self.plain_vm] {
            let d = pb::command::Body::DestroyVm(pb::DestroyVm {
                vm_uuid: v.to_string(),
            });
            let _ = call(plane, &host, cmd("", 0, d), Duration::from_secs(10)).await;
        }
        self.agent.stop().await;
        (states.0, states.1, actions)
    }
}

/// Starts an HA VM and another, isolates the agent, then heals the link;
/// returns (HA VM state, other VM state, the
/// isolation actions of the Register).
async fn isolate(policy: OnIsolation, break_pool: bool) -> (i32, i32, Vec<String>) {
    let h = host_with_vms(policy, |f| f.work.path().join("pool")).await;
    let (link, pool) = (&h.link, h.f.work.path().join("pool"));
    link.cut();
    if break_pool {
        std::fs::remove_dir_all(&pool).unwrap();
        std::fs::write(&pool, b"not a directory").unwrap();
    }
    // Two isolation periods and a heartbeat interval.
    tokio::time::sleep(Duration::from_secs(6)).await;
    link.heal();
    let (plane, host) = (&h.f.plane, h.f.host);
    assert!(
        wait_for(Duration::from_secs(15), || is_up(plane, &host)).await,
        "the agent never registered again"
    );
    h.finish().await
}

const RUNNING: i32 = pb::VmPowerState::Running as i32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_ha_vms_powers_off_only_the_ha_vm_and_says_so_in_the_register() {
    let (ha, plain, actions) = isolate(OnIsolation::StopHaVms, true).await;
    assert_eq!(ha, pb::VmPowerState::Stopped as i32, "{actions:?}");
    assert_eq!(plain, RUNNING);
    assert!(
        actions
            .iter()
            .any(|a| a.contains("isolated") && a.contains("powered off HA VM")),
        "{actions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn none_only_reports_the_isolation() {
    let (ha, plain, actions) = isolate(OnIsolation::None, true).await;
    assert_eq!((ha, plain), (RUNNING, RUNNING));
    assert!(
        actions
            .iter()
            .any(|a| a.contains("on_isolation none: nothing done")),
        "{actions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plane_outage_with_storage_working_is_not_isolation() {
    let (ha, plain, actions) = isolate(OnIsolation::StopHaVms, false).await;
    assert_eq!((ha, plain), (RUNNING, RUNNING));
    assert!(actions.is_empty(), "{actions:?}");
}

// HA fault 5: the shared pool hangs (a FUSE server that never answers) while
// the plane is reachable. Health names the pool as failing, the host stays
// Up, and stop-ha-vms does not fire: the plane can still see and fence it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_pool_with_the_plane_reachable_is_reported_and_not_isolation() {
    let pool = tempfile::Builder::new()
        .prefix("csat-iso-hang-")
        .tempdir()
        .unwrap();
    let dir = pool.path().to_path_buf();
    let h = host_with_vms(OnIsolation::StopHaVms, |_| dir.clone()).await;
    let mut hang = match csagent_testkit::fuse::HungMount::over(&dir) {
        Ok(m) => m,
        Err(why) => {
            csagent_testkit::skip!("{why}");
            h.finish().await;
            return;
        }
    };
    let (plane, host) = (&h.f.plane, h.f.host);
    let failing = |p: &csagent_mgmt::Plane| {
        host_summary(p, &host).is_some_and(|s| {
            s.storage_heartbeats
                .iter()
                .any(|b| b.pool == dir.to_string_lossy() && !b.ok && !b.error.is_empty())
        })
    };
    let reported = wait_for(Duration::from_secs(10), || failing(plane)).await;
    // Past two isolation periods with the storage hung.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let up = is_up(plane, &host);
    let summary = host_summary(plane, &host).unwrap_or_default();
    hang.release();
    let (ha, plain, actions) = h.finish().await;
    assert!(
        reported,
        "health never said the pool fails: {:?}",
        summary.storage_heartbeats
    );
    assert!(
        up,
        "the host left Up: {} ({})",
        summary.state, summary.state_reason
    );
    assert_eq!((ha, plain), (RUNNING, RUNNING), "{actions:?}");
    assert!(actions.is_empty(), "{actions:?}");
}
