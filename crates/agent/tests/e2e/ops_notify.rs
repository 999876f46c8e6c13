//! systemd's notify protocol from the real binary: the test binds the
//! datagram socket systemd would and passes it as NOTIFY_SOCKET. READY=1
//! comes only once the configuration is loaded (a bad config sends none),
//! WATCHDOG=1 pings come at half of WATCHDOG_USEC, STOPPING=1 on SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use csagent_testkit::*;

fn spawn_notified(config: &Path, socket: &Path, watchdog_usec: u64, log: &Path) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_csagent"))
        .args(["run", "--config", config.to_str().unwrap()])
        .env("NOTIFY_SOCKET", socket)
        .env("WATCHDOG_USEC", watchdog_usec.to_string())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    Proc {
        child,
        log: log.to_path_buf(),
    }
}

/// Datagrams received until `limit`, each with its arrival time.
fn receive(
    sock: &UnixDatagram,
    limit: Duration,
    mut until: impl FnMut(&str) -> bool,
) -> Vec<(Instant, String)> {
    let end = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let stop = until(&msg);
                got.push((Instant::now(), msg));
                if stop {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_then_watchdog_pings_then_stopping() {
    let f = Fixture::new(fast_liveness()).await;
    let sock_path = f.work.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let cfg_path = f.work.path().join("agent.toml");
    std::fs::write(&cfg_path, toml::to_string(&f.config()).unwrap()).unwrap();
    let agent = spawn_notified(
        &cfg_path,
        &sock_path,
        400_000,
        &f.work.path().join("agent.log"),
    );

    // READY first, then pings at ~200 ms (half of 400 ms).
    let msgs = tokio::task::block_in_place(|| {
        receive(&sock, Duration::from_secs(10), {
            let mut pings = 0;
            move |m| {
                if m.contains("WATCHDOG=1") {
                    pings += 1;
                }
                pings >= 5
            }
        })
    });
    assert!(!msgs.is_empty(), "no notification: {}", agent.log_text());
    assert!(
        msgs[0].1.starts_with("READY=1\nSTATUS="),
        "first was {:?}",
        msgs[0].1
    );
    let pings: Vec<Instant> = msgs
        .iter()
        .filter(|(_, m)| m.starts_with("WATCHDOG=1\nSTATUS="))
        .map(|(t, _)| *t)
        .collect();
    assert!(pings.len() >= 5, "{msgs:?}\n{}", agent.log_text());
    let span = *pings.last().unwrap() - pings[0];
    let avg = span / (pings.len() as u32 - 1);
    // Loose bounds: the point is "about half of WATCHDOG_USEC", not timing.
    assert!(
        avg >= Duration::from_millis(120) && avg <= Duration::from_millis(400),
        "ping interval {avg:?}"
    );
    // The STATUS= line follows the link.
    assert!(
        wait_for(Duration::from_secs(10), || is_up(&f.plane, &f.host)).await,
        "{}",
        agent.log_text()
    );
    let later = tokio::task::block_in_place(|| {
        receive(&sock, Duration::from_secs(3), |m| {
            m.contains("connected to")
        })
    });
    assert!(
        later
            .last()
            .is_some_and(|(_, m)| m.contains("STATUS=connected to")),
        "{later:?}"
    );

    agent.signal(nix::sys::signal::Signal::SIGTERM);
    let end = tokio::task::block_in_place(|| {
        receive(&sock, Duration::from_secs(10), |m| m.contains("STOPPING=1"))
    });
    assert!(
        end.iter().any(|(_, m)| m.starts_with("STOPPING=1")),
        "{end:?}"
    );
    f.plane.stop().await;
}

#[test]
fn a_config_that_does_not_load_sends_no_ready() {
    let dir = workdir();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let cfg_path = dir.path().join("agent.toml");
    std::fs::write(&cfg_path, "[management]\nhosts = []\n").unwrap();
    let mut agent = spawn_notified(
        &cfg_path,
        &sock_path,
        400_000,
        &dir.path().join("agent.log"),
    );
    let status = agent.child.wait().unwrap();
    assert_eq!(status.code(), Some(2));
    sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 256];
    assert!(
        sock.recv(&mut buf).is_err(),
        "READY sent for a config that did not load"
    );
}
