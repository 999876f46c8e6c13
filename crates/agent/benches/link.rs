//! Link figures (issue: foundation): start-to-Register time, no-op command
//! round trip (latency and throughput), agent resident memory, and failover
//! time after a plane is killed or goes silent.
//!
//! Run: `cargo bench --bench link`. The agent and planes are the release
//! binaries, as real processes, over mutual TLS on loopback. In a debug build
//! (`cargo test --benches`) it runs a tiny smoke version.

// Benchmarks run the tool a user would use instead (virsh, qemu-img) side
// by side: the boundary rules of clippy.toml are for the product code.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use csagent_mgmt::Plane;
use csagent_proto::v1 as pb;
use csagent_testkit::*;

struct Scale {
    starts: usize,
    latency_samples: usize,
    throughput_cmds: usize,
    window: usize,
    failovers: usize,
}

fn main() {
    // A debug build (cargo test --benches) only checks that the bench runs.
    let smoke = std::env::args().any(|a| a == "--test") || cfg!(debug_assertions);
    let scale = if smoke {
        Scale {
            starts: 1,
            latency_samples: 50,
            throughput_cmds: 500,
            window: 64,
            failovers: 0,
        }
    } else {
        Scale {
            starts: 10,
            latency_samples: 5000,
            throughput_cmds: 200_000,
            window: 1024,
            failovers: 3,
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(scale));
}

fn uri() -> &'static str {
    // The remote driver is what a production agent uses; the test driver
    // would load libvirt's whole in-process driver into the agent.
    if std::process::Command::new("virsh")
        .args(["-c", "qemu:///system", "version"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        "qemu:///system"
    } else {
        "test:///default"
    }
}

async fn run(scale: Scale) {
    let pki = TestPki::new(&["localhost", "127.0.0.1"]);
    let plane = start_plane(&pki, csagent_mgmt::Liveness::default(), 16 << 20).await;
    let work = workdir();
    let uri = uri();
    println!("hypervisor uri for the agent: {uri}");

    let mut starts = Vec::new();
    for i in 0..scale.starts {
        let (agent, t) = start_agent(&plane, &pki, work.path(), &format!("start-{i}"), uri).await;
        starts.push(t);
        drop(agent);
    }
    starts.sort();
    println!(
        "start -> Register received: median {:.1} ms, max {:.1} ms over {} starts",
        ms(starts[starts.len() / 2]),
        ms(*starts.last().unwrap()),
        starts.len()
    );

    let (agent, host) = {
        let host = uuid::Uuid::new_v4();
        let mut cfg = agent_config(
            &host,
            &pki.agent(&host),
            &[plane.addr.to_string()],
            work.path(),
        );
        cfg.hypervisor.uri = uri.into();
        cfg.hypervisor.poll_interval_ms = 2000;
        let agent = spawn_agent(&cfg, work.path(), "bench-agent");
        assert!(
            wait_for(Duration::from_secs(10), || is_up(&plane, &host)).await,
            "{}",
            agent.log_text()
        );
        (agent, host)
    };
    tokio::time::sleep(Duration::from_secs(if scale.failovers == 0 {
        0
    } else {
        3
    }))
    .await;
    println!(
        "agent resident memory, idle and connected: {}",
        rss_mib(agent.child.id())
    );

    latency(&plane, &host, scale.latency_samples).await;
    throughput(&plane, &host, scale.throughput_cmds, scale.window).await;
    println!(
        "agent resident memory right after {} commands: {}",
        scale.throughput_cmds + scale.latency_samples,
        rss_mib(agent.child.id())
    );
    // What the host keeps paying: the agent returns a burst's freed heap
    // within a second of going idle (src/heap.rs).
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "agent resident memory 2 s later: {}",
        rss_mib(agent.child.id())
    );
    drop(agent);
    plane.stop().await;

    for i in 0..scale.failovers {
        failover(&pki, work.path(), i, false).await;
        failover(&pki, work.path(), i, true).await;
    }
}

async fn start_agent(
    plane: &Plane,
    pki: &TestPki,
    work: &std::path::Path,
    name: &str,
    uri: &str,
) -> (Proc, Duration) {
    let host = uuid::Uuid::new_v4();
    let mut cfg = agent_config(&host, &pki.agent(&host), &[plane.addr.to_string()], work);
    cfg.hypervisor.uri = uri.into();
    let mut events = plane.registry.subscribe();
    let path = work.join(format!("{name}.toml"));
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    let started = Instant::now();
    let agent = Proc::spawn(
        env!("CARGO_BIN_EXE_csagent"),
        &["run", "--config", path.to_str().unwrap()],
        work.join(format!("{name}.log")),
    );
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("no Register")
            .unwrap();
        if ev.host_uuid == host.to_string() {
            return (agent, started.elapsed());
        }
    }
}

fn noop(id: String) -> pb::Command {
    pb::Command {
        id,
        deadline_ms: 0,
        body: Some(pb::command::Body::Noop(pb::Noop {})),
    }
}

async fn latency(plane: &Plane, host: &uuid::Uuid, n: usize) {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let r = call(
            plane,
            host,
            noop(format!("lat-{i}")),
            Duration::from_secs(5),
        )
        .await;
        samples.push(t.elapsed());
        assert_eq!(r.status, pb::CommandStatus::Ok as i32);
    }
    samples.sort();
    let pct = |p: f64| ms(samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)]);
    println!(
        "no-op round trip plane->agent->plane, one at a time: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} samples)",
        pct(0.50),
        pct(0.99),
        ms(*samples.last().unwrap()),
        n
    );
}

async fn throughput(plane: &Plane, host: &uuid::Uuid, n: usize, window: usize) {
    let host_s = host.to_string();
    let started = Instant::now();
    let mut inflight = std::collections::VecDeque::new();
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let sent = Instant::now();
        let (_, rx) = plane.registry.send(&host_s, noop(format!("tp-{i}")));
        inflight.push_back((sent, rx));
        if inflight.len() >= window {
            lat.push(finish(inflight.pop_front().unwrap()).await);
        }
    }
    while let Some(x) = inflight.pop_front() {
        lat.push(finish(x).await);
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort();
    println!(
        "no-op throughput with {window} in flight: {:.0} commands/s ({n} commands in {secs:.2} s; p50 {:.3} ms, p99 {:.3} ms under load)",
        n as f64 / secs,
        ms(lat[lat.len() / 2]),
        ms(lat[lat.len() * 99 / 100]),
    );
}

async fn finish(
    (sent, mut rx): (
        Instant,
        tokio::sync::mpsc::UnboundedReceiver<pb::CommandUpdate>,
    ),
) -> Duration {
    while let Some(u) = rx.recv().await {
        if let Some(pb::command_update::Update::Result(r)) = u.update {
            assert_eq!(r.status, pb::CommandStatus::Ok as i32);
            return sent.elapsed();
        }
    }
    panic!("no result");
}

/// Kill (or freeze) the plane in use; time until the agent registered with
/// the other one. Default link settings.
async fn failover(pki: &TestPki, work: &std::path::Path, i: usize, silent: bool) {
    let tag = if silent { "silent" } else { "killed" };
    let a = spawn_plane(pki, work, &format!("fa-{tag}-{i}"), free_port(), &[]);
    let b = spawn_plane(pki, work, &format!("fb-{tag}-{i}"), free_port(), &[]);
    assert!(wait_port(a.addr, Duration::from_secs(10)).await);
    assert!(wait_port(b.addr, Duration::from_secs(10)).await);
    let host = uuid::Uuid::new_v4();
    let tls = pki.agent(&host);
    let mut cfg = csagent::config::Config::default();
    cfg.agent.guid = host.to_string();
    cfg.agent.state_dir = work.to_path_buf();
    cfg.management.hosts = vec![a.addr.to_string(), b.addr.to_string()];
    cfg.management.order = csagent::config::EndpointOrder::Static;
    cfg.management.ca_file = tls.ca;
    cfg.management.cert_file = tls.cert;
    cfg.management.key_file = tls.key;
    cfg.hypervisor.uri = "test:///default".into();
    let agent = spawn_agent(&cfg, work, &format!("fo-{tag}-{i}"));
    let mut ca = csagent_mgmt::admin::connect(&a.admin).await;
    for _ in 0..500 {
        if ca.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            ca = csagent_mgmt::admin::connect(&a.admin).await;
        }
    }
    let mut ca = ca.unwrap();
    let connected = |hosts: Vec<pb::HostSummary>| {
        hosts
            .iter()
            .any(|h| h.host_uuid == host.to_string() && h.connected)
    };
    while !connected(
        ca.list_hosts(pb::ListHostsRequest {})
            .await
            .unwrap()
            .into_inner()
            .hosts,
    ) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t = Instant::now();
    if silent {
        a.proc.signal(nix::sys::signal::Signal::SIGSTOP);
    } else {
        a.proc.signal(nix::sys::signal::Signal::SIGKILL);
    }
    let mut cb = csagent_mgmt::admin::connect(&b.admin).await.unwrap();
    while !connected(
        cb.list_hosts(pb::ListHostsRequest {})
            .await
            .unwrap()
            .into_inner()
            .hosts,
    ) {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no failover: {}",
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "failover, plane {tag}: registered with the other plane after {:.0} ms",
        ms(t.elapsed())
    );
    if silent {
        a.proc.signal(nix::sys::signal::Signal::SIGCONT);
    }
}

/// "VmRSS x MiB (anonymous y MiB, file-backed z MiB)": file-backed pages are
/// mostly shared libraries (libvirt's client library and what it links),
/// shared with libvirtd and every other libvirt client on the host.
fn rss_mib(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    format!(
        "VmRSS {:.1} MiB (anonymous {:.1} MiB, file-backed {:.1} MiB)",
        field("VmRSS:"),
        field("RssAnon:"),
        field("RssFile:")
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
