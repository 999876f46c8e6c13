//! Two planes: killing the one in use moves the agent to the other, and a
//! command sent during the cut is answered after it. Real processes, SIGKILL.

use std::time::{Duration, Instant};

use csagent_mgmt::admin;
use csagent_proto::v1 as pb;
use csagent_testkit::*;
use tokio_stream::StreamExt;

async fn registered_on(admin_sock: &std::path::Path, host: &uuid::Uuid) -> bool {
    let Ok(mut c) = admin::connect(admin_sock).await else {
        return false;
    };
    let Ok(r) = c.list_hosts(pb::ListHostsRequest {}).await else {
        return false;
    };
    r.into_inner()
        .hosts
        .iter()
        .any(|h| h.host_uuid == host.to_string() && h.connected)
}

async fn wait_registered(admin_sock: &std::path::Path, host: &uuid::Uuid, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if registered_on(admin_sock, host).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn killing_the_plane_in_use_fails_over_and_answers_queued_commands() {
    let pki = TestPki::new(&["localhost", "127.0.0.1"]);
    let work = workdir();
    let a = spawn_plane(
        &pki,
        work.path(),
        "plane-a",
        free_port(),
        &["--heartbeat-interval-ms", "500"],
    );
    let b = spawn_plane(
        &pki,
        work.path(),
        "plane-b",
        free_port(),
        &["--heartbeat-interval-ms", "500"],
    );
    assert!(
        wait_port(a.addr, Duration::from_secs(10)).await,
        "{}",
        a.proc.log_text()
    );
    assert!(
        wait_port(b.addr, Duration::from_secs(10)).await,
        "{}",
        b.proc.log_text()
    );
    let host = uuid::Uuid::new_v4();
    // Default link settings: the figure measured here is what operators get.
    let mut cfg = agent_config(
        &host,
        &pki.agent(&host),
        &[a.addr.to_string(), b.addr.to_string()],
        work.path(),
    );
    let defaults = csagent::config::Config::default().management;
    cfg.management.connect_timeout_ms = defaults.connect_timeout_ms;
    cfg.management.keepalive_interval_ms = defaults.keepalive_interval_ms;
    cfg.management.keepalive_timeout_ms = defaults.keepalive_timeout_ms;
    let agent = spawn_agent(&cfg, work.path(), "agent");
    assert!(
        wait_registered(&a.admin, &host, Duration::from_secs(10)).await,
        "agent never registered on plane A: {}",
        agent.log_text()
    );

    // A long command on A, then A dies before answering.
    let (long, killed) = long_command_then_kill(a, &host, "survives-failover", 1500).await;

    // During the cut, B queues a new command for the host...
    let mut admin_b = admin::connect(&b.admin).await.unwrap();
    let mut during = admin_b
        .send_command(pb::SendCommandRequest {
            host_uuid: host.to_string(),
            command: Some(pb::Command {
                id: "sent-during-cut".into(),
                deadline_ms: 0,
                body: Some(echo("queued", 0)),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    // ...and re-sends the one A never answered, as a plane taking over would.
    let mut resent = admin_b
        .send_command(pb::SendCommandRequest {
            host_uuid: host.to_string(),
            command: Some(long),
        })
        .await
        .unwrap()
        .into_inner();

    assert!(
        wait_registered(&b.admin, &host, Duration::from_secs(10)).await,
        "no failover to plane B: {}",
        agent.log_text()
    );
    let failover = killed.elapsed();
    println!(
        "failover: plane A killed -> agent registered on plane B in {} ms",
        failover.as_millis()
    );

    for (stream, want) in [(&mut during, "queued"), (&mut resent, "survives-failover")] {
        let res = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(u) = stream.next().await {
                if let Some(pb::command_update::Update::Result(r)) = u.unwrap().update {
                    return r;
                }
            }
            panic!("stream ended without a result");
        })
        .await
        .expect("no result after failover");
        assert_eq!(res.status, pb::CommandStatus::Ok as i32, "{res:?}");
        match res.result {
            Some(pb::command_result::Result::Echo(e)) => assert_eq!(e.payload, want),
            other => panic!("{other:?}"),
        }
    }
    // The VM list was carried over intact in the new Register.
    let mut c = admin::connect(&b.admin).await.unwrap();
    let hosts = c
        .list_hosts(pb::ListHostsRequest {})
        .await
        .unwrap()
        .into_inner()
        .hosts;
    assert_eq!(hosts[0].vms.len(), 1);
}

#[tokio::test]
async fn a_silent_plane_is_detected_by_keepalive_and_left() {
    // SIGSTOP: the plane's sockets stay open but nothing answers, as with a
    // power loss or a cut cable. No FIN or RST ever arrives.
    let pki = TestPki::new(&["localhost", "127.0.0.1"]);
    let work = workdir();
    let a = spawn_plane(&pki, work.path(), "plane-a", free_port(), &[]);
    let b = spawn_plane(&pki, work.path(), "plane-b", free_port(), &[]);
    assert!(wait_port(a.addr, Duration::from_secs(10)).await);
    assert!(wait_port(b.addr, Duration::from_secs(10)).await);
    let host = uuid::Uuid::new_v4();
    let mut cfg = agent_config(
        &host,
        &pki.agent(&host),
        &[a.addr.to_string(), b.addr.to_string()],
        work.path(),
    );
    cfg.management = csagent::config::ManagementSection {
        hosts: cfg.management.hosts.clone(),
        order: csagent::config::EndpointOrder::Static,
        ca_file: cfg.management.ca_file.clone(),
        cert_file: cfg.management.cert_file.clone(),
        key_file: cfg.management.key_file.clone(),
        ..Default::default()
    };
    let agent = spawn_agent(&cfg, work.path(), "agent");
    assert!(
        wait_registered(&a.admin, &host, Duration::from_secs(10)).await,
        "{}",
        agent.log_text()
    );
    let frozen = Instant::now();
    a.proc.signal(nix::sys::signal::Signal::SIGSTOP);
    assert!(
        wait_registered(&b.admin, &host, Duration::from_secs(15)).await,
        "agent stayed with the silent plane: {}",
        agent.log_text()
    );
    println!(
        "silent plane: frozen -> agent registered on plane B in {} ms",
        frozen.elapsed().as_millis()
    );
    let left_after = frozen.elapsed();
    a.proc.signal(nix::sys::signal::Signal::SIGCONT);
    // Which check noticed: the transport's keepalive ends the stream with a
    // connection error; the agent's own heartbeat-ack check would say "no
    // heartbeat ack" and could fire only after ping_retries heartbeats.
    let log = agent.log_text();
    let lost = log
        .lines()
        .find(|l| l.contains("lost the management plane"))
        .unwrap_or_else(|| panic!("the agent never said it lost the plane: {log}"));
    assert!(
        !lost.contains("no heartbeat ack"),
        "the heartbeat-ack check fired, not keepalive: {lost}"
    );
    let m = &cfg.management;
    // csagent-mgmt serve heartbeats every 2 s by default.
    let ack_check = Duration::from_secs(2) * m.ping_retries;
    assert!(
        left_after < ack_check,
        "left after {left_after:?}, no sooner than the heartbeat-ack check ({ack_check:?}) would have: {lost}"
    );
}

#[tokio::test]
async fn results_produced_while_disconnected_are_delivered_after_reconnect() {
    let pki = TestPki::new(&["localhost", "127.0.0.1"]);
    let work = workdir();
    let port = free_port();
    let plane = spawn_plane(&pki, work.path(), "plane-1", port, &[]);
    assert!(wait_port(plane.addr, Duration::from_secs(10)).await);
    let host = uuid::Uuid::new_v4();
    let cfg = agent_config(
        &host,
        &pki.agent(&host),
        &[plane.addr.to_string()],
        work.path(),
    );
    let agent = spawn_agent(&cfg, work.path(), "agent");
    assert!(
        wait_registered(&plane.admin, &host, Duration::from_secs(10)).await,
        "{}",
        agent.log_text()
    );
    let (long, _) = long_command_then_kill(plane, &host, "finishes-offline", 600).await;
    // The command finishes while no plane is there.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(agent.log_text().contains("done"), "{}", agent.log_text());
    let restarted = spawn_plane(&pki, work.path(), "plane-1b", port, &[]);
    assert!(
        wait_registered(&restarted.admin, &host, Duration::from_secs(15)).await,
        "{}",
        agent.log_text()
    );
    let mut c = admin::connect(&restarted.admin).await.unwrap();
    let mut late = 0;
    for _ in 0..100 {
        let hosts = c
            .list_hosts(pb::ListHostsRequest {})
            .await
            .unwrap()
            .into_inner()
            .hosts;
        late = hosts[0].late_results;
        if late > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(late, 1, "the result produced offline was not delivered");
    // Asking again returns that result without running the command again.
    let mut again = c
        .send_command(pb::SendCommandRequest {
            host_uuid: host.to_string(),
            command: Some(long),
        })
        .await
        .unwrap()
        .into_inner();
    let started = Instant::now();
    loop {
        let u = again.next().await.unwrap().unwrap();
        if let Some(pb::command_update::Update::Result(r)) = u.update {
            assert_eq!(r.status, pb::CommandStatus::Ok as i32);
            break;
        }
    }
    assert!(started.elapsed() < Duration::from_millis(300));
    let log = agent.log_text();
    let runs = log
        .lines()
        .filter(|l| l.contains("finishes-offline") && l.contains("done"))
        .count();
    assert_eq!(runs, 1, "{log}");
}

/// Sends `host` an echo command that takes `ms` through `plane`, lets the
/// agent start it, then kills the plane (SIGKILL) before it can answer.
/// Returns the command, to re-send, and when the plane died.
async fn long_command_then_kill(
    mut plane: PlaneProc,
    host: &uuid::Uuid,
    id: &str,
    ms: u32,
) -> (pb::Command, Instant) {
    let mut admin = admin::connect(&plane.admin).await.unwrap();
    let long = pb::Command {
        id: id.into(),
        deadline_ms: 0,
        body: Some(echo(id, ms)),
    };
    let _ = admin
        .send_command(pb::SendCommandRequest {
            host_uuid: host.to_string(),
            command: Some(long.clone()),
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let killed = Instant::now();
    plane.proc.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = plane.proc.wait_exit(Duration::from_secs(5)).await;
    (long, killed)
}
