//! The link over real TLS on loopback: registration, heartbeats, liveness
//! states, commands with deadlines, cancellation and deduplication.

use std::time::{Duration, Instant};

use csagent_proto::v1 as pb;
use csagent_testkit::*;

struct Running {
    plane: csagent_mgmt::Plane,
    host: uuid::Uuid,
    agent: InProcessAgent,
    _pki: TestPki,
    _work: tempfile::TempDir,
}

/// A plane and an in-process agent connected to it.
async fn running(liveness: csagent_mgmt::Liveness, workers: usize) -> Running {
    let f = Fixture::new(liveness).await;
    let mut cfg = f.config();
    cfg.agent.workers = workers;
    let agent = run_in_process(cfg);
    f.wait_up(String::new).await;
    let Fixture {
        pki,
        plane,
        host,
        work,
    } = f;
    Running {
        plane,
        host,
        agent,
        _pki: pki,
        _work: work,
    }
}

impl Running {
    async fn shutdown(self) {
        self.agent.stop().await;
        self.plane.stop().await;
    }
}

#[tokio::test]
async fn register_carries_vms_and_heartbeats_flow() {
    let r = running(fast_liveness(), 5).await;
    let h = host_summary(&r.plane, &r.host).unwrap();
    // libvirt's test driver always has one running domain named "test".
    assert_eq!(h.vms.len(), 1);
    assert_eq!(h.vms[0].state, pb::VmPowerState::Running as i32);
    assert!(h.hypervisor_available);
    assert!(h.facts.as_ref().is_some_and(|f| !f.hostname.is_empty()));
    assert!(
        wait_for(Duration::from_secs(5), || host_summary(&r.plane, &r.host)
            .unwrap()
            .heartbeat_seq
            >= 3)
        .await,
        "heartbeats did not arrive"
    );
    let h = host_summary(&r.plane, &r.host).unwrap();
    assert!(
        h.clock_skew_ms.abs() < 1000,
        "skew {} ms on one machine",
        h.clock_skew_ms
    );
    r.shutdown().await;
}

#[tokio::test]
async fn commands_return_typed_results() {
    let r = running(fast_liveness(), 5).await;
    let res = call(
        &r.plane,
        &r.host,
        cmd("", 0, pb::command::Body::ListVms(pb::ListVms::default())),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(res.status, pb::CommandStatus::Ok as i32, "{res:?}");
    match res.result {
        Some(pb::command_result::Result::VmList(l)) => assert_eq!(l.vms[0].name, "test"),
        other => panic!("{other:?}"),
    }
    let bad = pb::command::Body::GetVmState(pb::GetVmState {
        vm_uuid: "../etc".into(),
    });
    let res = call(&r.plane, &r.host, cmd("", 0, bad), Duration::from_secs(5)).await;
    assert_eq!(res.error_code, pb::ErrorCode::InvalidArgument as i32);
    assert!(res.message.contains("not a UUID"), "{}", res.message);
    let missing = pb::command::Body::GetVmState(pb::GetVmState {
        vm_uuid: uuid::Uuid::new_v4().to_string(),
    });
    let res = call(
        &r.plane,
        &r.host,
        cmd("", 0, missing),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(res.error_code, pb::ErrorCode::NotFound as i32);
    r.shutdown().await;
}

#[tokio::test]
async fn unknown_command_is_unimplemented_not_a_crash() {
    let r = running(fast_liveness(), 5).await;
    // What an older agent sees of a newer plane's command: an id, no body it knows.
    let unknown = pb::Command {
        id: "unknown-1".into(),
        deadline_ms: 0,
        body: None,
    };
    let res = call(&r.plane, &r.host, unknown, Duration::from_secs(5)).await;
    assert_eq!(res.error_code, pb::ErrorCode::Unimplemented as i32);
    // The agent still works.
    let res = call(
        &r.plane,
        &r.host,
        cmd("", 0, echo("still here", 0)),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(res.status, pb::CommandStatus::Ok as i32);
    r.shutdown().await;
}

#[tokio::test]
async fn deadline_exceeded_and_cancel() {
    let r = running(fast_liveness(), 5).await;
    let started = Instant::now();
    let res = call(
        &r.plane,
        &r.host,
        cmd("slow-1", 200, echo("x", 5000)),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        res.error_code,
        pb::ErrorCode::DeadlineExceeded as i32,
        "{res:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));

    let (_, mut rx) = r
        .plane
        .registry
        .send(&r.host.to_string(), cmd("cancel-me", 0, echo("x", 10_000)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    r.plane.registry.cancel(&r.host.to_string(), "cancel-me");
    let res = result_of(&mut rx, Duration::from_secs(5)).await;
    assert_eq!(res.error_code, pb::ErrorCode::Cancelled as i32, "{res:?}");
    r.shutdown().await;
}

#[tokio::test]
async fn repeated_id_runs_once() {
    let r = running(fast_liveness(), 5).await;
    let first = call(
        &r.plane,
        &r.host,
        cmd("once-1", 0, echo("first", 300)),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(first.status, pb::CommandStatus::Ok as i32);
    // Same id, different body: a re-execution would echo "second" and take
    // 300 ms again; the cache answers at once with the first result.
    let started = Instant::now();
    let again = call(
        &r.plane,
        &r.host,
        cmd("once-1", 0, echo("second", 300)),
        Duration::from_secs(5),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "re-executed? {:?}",
        started.elapsed()
    );
    assert_eq!(again, first);
    r.shutdown().await;
}

#[tokio::test]
async fn worker_limit_and_per_vm_order() {
    let r = running(fast_liveness(), 2).await;
    let host = r.host.to_string();
    let started = Instant::now();
    // Four 300 ms commands on two workers: two rounds.
    let mut rxs = Vec::new();
    for i in 0..4 {
        rxs.push(
            r.plane
                .registry
                .send(&host, cmd(&format!("w-{i}"), 0, echo("x", 300)))
                .1,
        );
    }
    for mut rx in rxs {
        result_of(&mut rx, Duration::from_secs(5)).await;
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(590),
        "4 x 300 ms on 2 workers took {took:?}"
    );

    // Two commands on the same VM never overlap, even with free workers.
    let vm = uuid::Uuid::new_v4().to_string();
    let body = |p: &str| {
        pb::command::Body::Echo(pb::Echo {
            payload: p.into(),
            delay_ms: 300,
            vm_uuid: vm.clone(),
        })
    };
    let started = Instant::now();
    let (_, mut a) = r.plane.registry.send(&host, cmd("vm-a", 0, body("a")));
    let (_, mut b) = r.plane.registry.send(&host, cmd("vm-b", 0, body("b")));
    for rx in [&mut a, &mut b] {
        result_of(rx, Duration::from_secs(5)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_millis(590),
        "same-VM commands overlapped"
    );
    r.shutdown().await;
}

#[tokio::test]
async fn host_goes_alert_then_down_then_up() {
    let f = Fixture::new(fast_liveness()).await;
    let (plane, host, work) = (&f.plane, f.host, &f.work);
    let cfg = f.config();
    let agent = spawn_agent(&cfg, work.path(), "agent");
    assert!(
        wait_for(Duration::from_secs(10), || is_up(plane, &host)).await,
        "{}",
        agent.log_text()
    );
    let state =
        |p: &csagent_mgmt::Plane| host_summary(p, &host).map(|h| h.state).unwrap_or_default();
    // Freeze the agent: its connection stays open but heartbeats stop.
    agent.signal(nix::sys::signal::Signal::SIGSTOP);
    assert!(
        wait_for(Duration::from_secs(5), || state(plane)
            == pb::HostState::Alert as i32)
        .await
    );
    assert!(
        wait_for(Duration::from_secs(5), || state(plane)
            == pb::HostState::Down as i32)
        .await
    );
    agent.signal(nix::sys::signal::Signal::SIGCONT);
    assert!(
        wait_for(Duration::from_secs(10), || is_up(plane, &host)).await,
        "host did not come back Up: {}",
        agent.log_text()
    );
    f.plane.stop().await;
}

#[tokio::test]
async fn sigterm_finishes_in_flight_and_exits_zero() {
    let f = Fixture::new(fast_liveness()).await;
    let (plane, host, work) = (&f.plane, f.host, &f.work);
    let cfg = f.config();
    let mut agent = spawn_agent(&cfg, work.path(), "agent");
    assert!(
        wait_for(Duration::from_secs(10), || is_up(plane, &host)).await,
        "{}",
        agent.log_text()
    );
    let (_, mut rx) = plane
        .registry
        .send(&host.to_string(), cmd("in-flight", 0, echo("done", 700)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    let res = result_of(&mut rx, Duration::from_secs(5)).await;
    assert_eq!(
        res.status,
        pb::CommandStatus::Ok as i32,
        "in-flight command lost on SIGTERM: {res:?}"
    );
    let status = agent
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("agent did not exit");
    assert_eq!(status.code(), Some(0), "{}", agent.log_text());
    assert!(
        agent.log_text().contains("stream closed cleanly"),
        "{}",
        agent.log_text()
    );
    // The plane shows the stopped host as disconnected at once, not Up.
    let state = |h: &pb::HostSummary| (h.state, h.connected);
    assert!(
        wait_for(Duration::from_secs(1), || host_summary(plane, &host)
            .is_some_and(
                |h| state(&h) == (pb::HostState::Disconnected as i32, false)
            ))
        .await,
        "{:?}",
        host_summary(plane, &host)
    );
    assert!(
        wait_for(Duration::from_secs(3), || !host_summary(plane, &host)
            .unwrap()
            .connected)
        .await
    );
    f.plane.stop().await;
}

#[tokio::test]
async fn json_logs_carry_command_id_and_vm_on_every_command_line() {
    let f = Fixture::new(fast_liveness()).await;
    let (plane, host, work) = (&f.plane, f.host, &f.work);
    let mut cfg = f.config();
    cfg.log.format = csagent::config::LogFormat::Json;
    cfg.log.level = "debug".into();
    let mut agent = spawn_agent(&cfg, work.path(), "agent");
    assert!(
        wait_for(Duration::from_secs(10), || is_up(plane, &host)).await,
        "{}",
        agent.log_text()
    );
    let vm = uuid::Uuid::new_v4().to_string();
    let body = pb::command::Body::Echo(pb::Echo {
        payload: "p".into(),
        delay_ms: 0,
        vm_uuid: vm.clone(),
    });
    call(
        plane,
        &host,
        cmd("logged-1", 0, body),
        Duration::from_secs(5),
    )
    .await;
    let bad = pb::command::Body::GetVmState(pb::GetVmState {
        vm_uuid: vm.clone(),
    });
    call(
        plane,
        &host,
        cmd("logged-2", 0, bad),
        Duration::from_secs(5),
    )
    .await;
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    agent
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("agent did not exit");
    let log = agent.log_text();
    let mut seen = 0;
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let span = &v["span"];
        if span["name"] == "command" {
            seen += 1;
            assert!(
                span["command_id"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("logged-")),
                "{line}"
            );
            assert_eq!(span["vm"], vm.as_str(), "{line}");
        }
    }
    assert!(
        seen >= 4,
        "expected start/done/failed lines for both commands:\n{log}"
    );
    f.plane.stop().await;
}

/// The echo payload whose Command is exactly `limit` bytes on the wire: its
/// result is a few bytes larger, so it is the smallest answer that cannot fit.
fn payload_filling(limit: usize) -> String {
    use prost::Message;
    let msg = |n: usize| pb::PlaneMessage {
        msg: Some(pb::plane_message::Msg::Command(cmd(
            "big-1",
            0,
            echo(&"x".repeat(n), 0),
        ))),
    };
    let mut n = limit - 64;
    while msg(n + 1).encoded_len() <= limit {
        n += 1;
    }
    "x".repeat(n)
}

#[tokio::test]
async fn a_result_too_large_is_resource_exhausted_and_the_session_stays_up() {
    const LIMIT: usize = 256 * 1024;
    let pki = TestPki::new(&["localhost", "127.0.0.1"]);
    let plane = start_plane(&pki, fast_liveness(), LIMIT).await;
    let host = uuid::Uuid::new_v4();
    let work = workdir();
    let mut cfg = agent_config(
        &host,
        &pki.agent(&host),
        &[plane.addr.to_string()],
        work.path(),
    );
    cfg.management.max_message_bytes = LIMIT;
    let agent = run_in_process(cfg);
    assert!(wait_for(Duration::from_secs(10), || is_up(&plane, &host)).await);
    let peer = host_summary(&plane, &host).unwrap().peer_address;

    let big = pb::command::Body::Echo(pb::Echo {
        payload: payload_filling(LIMIT),
        delay_ms: 0,
        vm_uuid: String::new(),
    });
    let res = call(
        &plane,
        &host,
        cmd("big-1", 0, big.clone()),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        res.error_code,
        pb::ErrorCode::ResourceExhausted as i32,
        "{}",
        res.message
    );
    assert!(
        res.message.contains(&LIMIT.to_string()) && res.message.contains("bytes"),
        "the message names the size and the limit: {}",
        res.message
    );
    // A resend of the same id gets the same answer, and it too fits.
    let again = call(&plane, &host, cmd("big-1", 0, big), Duration::from_secs(10)).await;
    assert_eq!(again, res);
    // Same session: no reconnect happened, and it still serves commands.
    let ok = call(
        &plane,
        &host,
        cmd("", 0, echo("after", 0)),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(ok.status, pb::CommandStatus::Ok as i32, "{ok:?}");
    let h = host_summary(&plane, &host).unwrap();
    assert!(
        h.connected && h.peer_address == peer,
        "the session was replaced: {peer} -> {}",
        h.peer_address
    );
    agent.stop().await;
    plane.stop().await;
}

// On the multi-thread runtime, where tasks spawned in order need not run in
// order: each 50 ms command on one VM must start after the one sent before
// it ended, so the time from receipt to result grows with its place in line
// (by 50 ms a step, far more than the few ms between two receipts).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_commands_on_one_vm_run_in_arrival_order() {
    let r = running(fast_liveness(), 8).await;
    let host = r.host.to_string();
    let vm = uuid::Uuid::new_v4().to_string();
    let mut rxs = Vec::new();
    for i in 0..24 {
        let body = pb::command::Body::Echo(pb::Echo {
            payload: i.to_string(),
            delay_ms: 50,
            vm_uuid: vm.clone(),
        });
        rxs.push(
            r.plane
                .registry
                .send(&host, cmd(&format!("order-{i}"), 0, body))
                .1,
        );
    }
    let mut elapsed = Vec::new();
    for mut rx in rxs {
        let res = result_of(&mut rx, Duration::from_secs(10)).await;
        assert_eq!(res.status, pb::CommandStatus::Ok as i32, "{res:?}");
        elapsed.push(res.elapsed_ms);
    }
    for (i, w) in elapsed.windows(2).enumerate() {
        assert!(
            w[1] > w[0],
            "order-{} finished {} ms after receipt, order-{} {} ms: not run in arrival order ({elapsed:?})",
            i + 1,
            w[1],
            i,
            w[0]
        );
    }
    r.shutdown().await;
}

#[tokio::test]
async fn past_max_queued_commands_a_command_is_refused_at_once_and_runs_when_resent() {
    let f = Fixture::new(fast_liveness()).await;
    let mut cfg = f.config();
    cfg.agent.workers = 1;
    cfg.agent.max_queued_commands = 3;
    let agent = run_in_process(cfg);
    f.wait_up(String::new).await;
    let host = f.host.to_string();
    let mut busy = Vec::new();
    for i in 0..3 {
        busy.push(
            f.plane
                .registry
                .send(&host, cmd(&format!("busy-{i}"), 0, echo("x", 500)))
                .1,
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let r = call(
        &f.plane,
        &f.host,
        cmd("extra-1", 0, echo("late", 0)),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        r.error_code,
        pb::ErrorCode::ResourceExhausted as i32,
        "{r:?}"
    );
    assert!(r.message.contains("max_queued_commands"), "{}", r.message);
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "refused only after {:?}",
        started.elapsed()
    );
    for mut rx in busy {
        let done = result_of(&mut rx, Duration::from_secs(5)).await;
        assert_eq!(done.status, pb::CommandStatus::Ok as i32, "{done:?}");
    }
    // The refusal was not remembered as the command's result.
    let r = call(
        &f.plane,
        &f.host,
        cmd("extra-1", 0, echo("late", 0)),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(r.status, pb::CommandStatus::Ok as i32, "{r:?}");
    agent.stop().await;
    f.plane.stop().await;
}
