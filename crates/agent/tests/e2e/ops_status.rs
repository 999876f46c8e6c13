//! `csagent status` (the binary) against a running agent (a child process)
//! and a real plane: link state, endpoint, heartbeats, in-flight commands,
//! VMs (libvirt's test driver has one, "test"), and the socket's mode.
//! The root-only rule (peer uid 0 or the agent's own) cannot be exercised
//! by a test running as root; it rests on the 0600 mode checked here and
//! on the peer-credential check in src/status/server.rs.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use csagent_testkit::*;

fn status(socket: &Path, json: bool) -> std::process::Output {
    let mut args = vec!["status", "--socket", socket.to_str().unwrap()];
    if json {
        args.push("--json");
    }
    Command::new(env!("CARGO_BIN_EXE_csagent"))
        .args(&args)
        .output()
        .unwrap()
}

fn status_json(socket: &Path) -> serde_json::Value {
    let out = status(socket, true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn status_shows_link_heartbeat_commands_and_vms() {
    let f = Fixture::new(fast_liveness()).await;
    let cfg = f.config();
    let socket = cfg.status.socket.clone();
    let agent = spawn_agent(&cfg, f.work.path(), "agent");
    f.wait_up(|| agent.log_text()).await;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "status socket must be root-only");

    // Heartbeats every 200 ms: wait for one acknowledged.
    assert!(
        wait_for(Duration::from_secs(5), || status_json(&socket)["link"]
            ["last_heartbeat_ack_unix_ms"]
            .as_i64()
            .unwrap_or(0)
            > 0)
        .await,
        "{}",
        agent.log_text()
    );
    let (_, _rx) = f
        .plane
        .registry
        .send(&f.host.to_string(), cmd("status-slow", 0, echo("x", 3000)));
    assert!(
        wait_for(Duration::from_secs(3), || status_json(&socket)
            ["in_flight_commands"]
            .as_array()
            .is_some_and(|a| a.iter().any(|c| c == "status-slow")))
        .await,
        "in-flight command not shown"
    );

    let doc = status_json(&socket);
    assert_eq!(doc["link"]["state"], "connected");
    assert_eq!(doc["link"]["endpoint"], f.plane.addr.to_string());
    assert_eq!(doc["link"]["plane_id"], "test-plane");
    assert_eq!(doc["host_uuid"], f.host.to_string());
    assert_eq!(doc["hypervisor_available"], true);
    let vms = doc["vms"].as_array().unwrap();
    assert!(
        vms.iter()
            .any(|v| v["name"] == "test" && v["state"] == "running"),
        "{doc}"
    );

    let out = status(&socket, false);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "link:            connected since",
        &format!("endpoint:        {}", f.plane.addr),
        "plane:           test-plane",
        "last heartbeat:  #",
        "in flight:       1 status-slow",
        "host health:",
        "vms:             1",
        "running",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(!text.contains("acked never"), "{text}");
    drop(agent);
    f.plane.stop().await;
}

#[test]
fn status_without_a_running_agent_says_what_to_check() {
    let dir = workdir();
    let out = status(&dir.path().join("none.sock"), false);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the agent's status socket")
            && err.contains("is csagent running"),
        "{err}"
    );
}

#[tokio::test]
async fn a_stale_socket_is_replaced_and_a_live_one_left_alone() {
    let dir = workdir();
    let path = dir.path().join("run/status.sock");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    // A socket file nobody listens on, as a killed agent leaves behind.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let live = csagent::status::server::bind(&path).await.unwrap();
    let second = csagent::status::server::bind(&path).await;
    assert!(
        matches!(second, Err(csagent::status::server::StatusError::InUse(_))),
        "a live agent's socket must not be taken over"
    );
    assert!(path.exists());
    drop(live);
    assert!(!path.exists(), "the socket is removed with its server");
}
