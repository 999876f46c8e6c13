//! The Prometheus endpoint of a running agent (a child process): command
//! counters and latency buckets after a few echo commands, heartbeat age,
//! sessions and reconnects, per-VM gauges; a bad
//! request gets a 4xx and the server keeps serving; off by default.

use std::time::Duration;

use csagent_proto::v1 as pb;
use csagent_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn raw(port: u16, request: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(request).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

async fn scrape(port: u16) -> String {
    let r = raw(port, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    assert!(r.contains("Content-Type: text/plain; version=0.0.4"), "{r}");
    r
}

/// The value of a sample line (`name{labels} value`).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_count_commands_heartbeats_sessions_and_vms() {
    let f = Fixture::new(fast_liveness()).await;
    let port = free_port();
    let mut cfg = f.config();
    cfg.metrics.enabled = true;
    cfg.metrics.port = port;
    let agent = spawn_agent(&cfg, f.work.path(), "agent");
    f.wait_up(|| agent.log_text()).await;
    for i in 0..3 {
        let r = call(
            &f.plane,
            &f.host,
            cmd(&format!("m-{i}"), 0, echo("hi", 0)),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(r.status, pb::CommandStatus::Ok as i32);
    }
    let bad = call(
        &f.plane,
        &f.host,
        cmd(
            "m-bad",
            0,
            pb::command::Body::GetVmState(pb::GetVmState {
                vm_uuid: uuid::Uuid::new_v4().to_string(),
            }),
        ),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(bad.status, pb::CommandStatus::Error as i32);
    let undecodable = call(
        &f.plane,
        &f.host,
        cmd(
            "m-undecodable",
            0,
            pb::command::Body::GetVmState(pb::GetVmState {
                vm_uuid: "not-a-uuid".into(),
            }),
        ),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(undecodable.status, pb::CommandStatus::Error as i32);

    let text = scrape(port).await;
    assert_eq!(
        sample(
            &text,
            "csagent_commands_total{type=\"undecodable\",outcome=\"invalid_argument\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "csagent_commands_total{type=\"echo\",outcome=\"ok\"}"
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "csagent_commands_total{type=\"get_vm_state\",outcome=\"not_found\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "csagent_command_duration_seconds_bucket{type=\"echo\",le=\"+Inf\"}"
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "csagent_command_duration_seconds_bucket{type=\"echo\",le=\"600\"}"
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "csagent_command_duration_seconds_count{type=\"echo\"}"
        ),
        Some(3.0)
    );
    assert!(text.contains("# TYPE csagent_command_duration_seconds histogram"));
    assert_eq!(sample(&text, "csagent_link_connected"), Some(1.0));
    assert_eq!(sample(&text, "csagent_link_reconnects_total"), Some(0.0));
    let age = sample(&text, "csagent_heartbeat_age_seconds").unwrap();
    assert!((0.0..5.0).contains(&age), "heartbeat age {age}");
    assert!(
        text.contains("csagent_vm_info{uuid=") && text.contains("name=\"test\",state=\"running\""),
        "{text}"
    );
    assert_eq!(
        sample(&text, "csagent_vms{state=\"running\"}"),
        Some(1.0),
        "{text}"
    );
    assert!(sample(&text, "csagent_host_health").is_some());

    // Bad requests get a 4xx; the server keeps serving.
    assert!(raw(port, b"garbage\r\n\r\n")
        .await
        .starts_with("HTTP/1.1 400 "));
    assert!(raw(port, b"GET / HTTP/1.1\r\n\r\n")
        .await
        .starts_with("HTTP/1.1 404 "));
    assert!(raw(port, b"POST /metrics HTTP/1.1\r\n\r\n")
        .await
        .starts_with("HTTP/1.1 405 "));
    let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 20_000));
    assert!(raw(port, &huge).await.starts_with("HTTP/1.1 431 "));
    scrape(port).await;

    // Counting reconnects is unit-tested in status::state (an in-process
    // plane's stop does not end established streams, so it cannot force one).
    assert_eq!(sample(&text, "csagent_link_sessions_total"), Some(1.0));
    drop(agent);
    f.plane.stop().await;
}

#[test]
fn metrics_are_off_by_default() {
    let d = csagent::config::Config::default();
    assert!(!d.metrics.enabled);
}
