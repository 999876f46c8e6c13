//! HA's storage evidence through the whole path: two agents write their
//! heartbeat on one shared directory, the plane sees it in heartbeats, and
//! one agent, asked by the plane, judges the other alive, then dead.

use std::time::Duration;

use csagent_proto::v1 as pb;
use csagent_testkit::*;

fn check(about: &uuid::Uuid, pools: &[String], window_ms: u32) -> pb::Command {
    cmd(
        &format!("check-{}", uuid::Uuid::new_v4()),
        30_000,
        pb::command::Body::CheckHost(pb::CheckHost {
            host_uuid: about.to_string(),
            pools: pools.to_vec(),
            window_ms,
            ..Default::default()
        }),
    )
}

fn checked(r: &pb::CommandResult) -> pb::CheckHostResult {
    assert_eq!(r.status, pb::CommandStatus::Ok as i32, "{r:?}");
    match &r.result {
        Some(pb::command_result::Result::CheckHost(c)) => c.clone(),
        other => panic!("not a CheckHost result: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_neighbour_judges_a_writing_host_alive_and_a_stopped_one_dead() {
    let f = Fixture::new(fast_liveness()).await;
    let shared = tempfile::Builder::new()
        .prefix("csat-ha-pool-")
        .tempdir()
        .unwrap();
    let pool = shared.path().to_str().unwrap().to_string();
    // Host A, the one that will fall silent.
    let mut a_cfg = f.config();
    a_cfg.ha.pools = vec![shared.path().to_path_buf()];
    a_cfg.ha.heartbeat_interval_secs = 1;
    let a = run_in_process(a_cfg);
    f.wait_up(String::new).await;
    // Host B, its neighbour, with its own identity and state.
    let b_host = uuid::Uuid::new_v4();
    let b_state = workdir();
    let mut b_cfg = agent_config(
        &b_host,
        &f.pki.agent(&b_host),
        &[f.plane.addr.to_string()],
        b_state.path(),
    );
    b_cfg.ha.pools = vec![shared.path().to_path_buf()];
    b_cfg.ha.heartbeat_interval_secs = 1;
    let b = run_in_process(b_cfg);
    assert!(wait_for(Duration::from_secs(10), || is_up(&f.plane, &b_host)).await);

    // The plane sees A's record moving in A's heartbeats.
    let counter = || {
        host_summary(&f.plane, &f.host)
            .and_then(|h| h.storage_heartbeats.first().cloned())
            .filter(|s| s.ok && s.pool == pool)
            .map(|s| s.counter)
    };
    assert!(wait_for(Duration::from_secs(10), || counter().is_some()).await);
    let first = counter().unwrap();
    assert!(wait_for(Duration::from_secs(10), || counter() > Some(first)).await);

    let t = Duration::from_secs(30);
    let r = checked(&call(&f.plane, &b_host, check(&f.host, &[], 2500), t).await);
    assert_eq!(r.verdict, pb::HostVerdict::Alive as i32, "{r:?}");
    assert_eq!(r.evidence[0].sign, pb::EvidenceSign::Life as i32, "{r:?}");
    assert!(r.evidence[0].source.contains(&pool), "{r:?}");

    a.stop().await;
    let r = checked(&call(&f.plane, &b_host, check(&f.host, &[], 2500), t).await);
    assert_eq!(r.verdict, pb::HostVerdict::Dead as i32, "{r:?}");
    assert_eq!(r.evidence[0].sign, pb::EvidenceSign::Still as i32, "{r:?}");

    // A host never seen on the pool is UNKNOWN, not DEAD.
    let stranger = uuid::Uuid::new_v4();
    let r = checked(&call(&f.plane, &b_host, check(&stranger, &[], 1000), t).await);
    assert_eq!(r.verdict, pb::HostVerdict::Unknown as i32, "{r:?}");

    // Nonsense is refused by name and reads nothing.
    let r = call(&f.plane, &b_host, check(&b_host, &[], 1000), t).await;
    assert_eq!(r.error_code, pb::ErrorCode::InvalidArgument as i32, "{r:?}");
    assert!(r.message.contains("not about itself"), "{}", r.message);
    let r = call(
        &f.plane,
        &b_host,
        check(&f.host, &["shared".into()], 1000),
        t,
    )
    .await;
    assert_eq!(r.error_code, pb::ErrorCode::InvalidArgument as i32, "{r:?}");
    assert!(r.message.contains("pools"), "{}", r.message);
    b.stop().await;
}

#[tokio::test]
async fn a_pool_that_cannot_be_written_is_a_health_warning_in_the_heartbeat() {
    let f = Fixture::new(fast_liveness()).await;
    let shared = tempfile::Builder::new()
        .prefix("csat-ha-bad-")
        .tempdir()
        .unwrap();
    // A file where the records' directory belongs: every write fails.
    std::fs::write(shared.path().join(".csagent-ha"), b"").unwrap();
    let mut cfg = f.config();
    cfg.ha.pools = vec![shared.path().to_path_buf()];
    cfg.ha.heartbeat_interval_secs = 1;
    let a = run_in_process(cfg);
    f.wait_up(String::new).await;
    let warned = || {
        host_summary(&f.plane, &f.host).is_some_and(|h| {
            let beat_failed = h
                .storage_heartbeats
                .iter()
                .any(|s| !s.ok && !s.error.is_empty());
            let health = h.health.unwrap_or_default();
            beat_failed
                && health.state == pb::HealthState::Warning as i32
                && health
                    .findings
                    .iter()
                    .any(|x| x.source.starts_with("ha-heartbeat"))
        })
    };
    assert!(
        wait_for(Duration::from_secs(10), warned).await,
        "{:?}",
        host_summary(&f.plane, &f.host)
    );
    a.stop().await;
}
