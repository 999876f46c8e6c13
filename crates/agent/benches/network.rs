//! Guest network timings inside a namespace this bench creates
//! (`csat-net-bench-<pid>`, deleted at the end): ensuring a VXLAN network
//! cold and when it exists, applying a 100-rule security group when it
//! changes and when it does not. Goals: < 50 ms cold, < 1 ms unchanged.
//!
//! Needs root. Run: `cargo bench --bench network`.

// Benchmarks run the tool a user would use instead (virsh, qemu-img) side
// by side: the boundary rules of clippy.toml are for the product code.
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::os::fd::AsFd;
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::Criterion;
use csagent_network::{
    Cidr, Direction, IfName, Network, NetworkSpec, PortRange, Protocol, Rule, VmPort, VmRules,
    VmUuid, Vni, VxlanFlood,
};

struct NsGuard(String);

impl Drop for NsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("run ip");
    assert!(st.success(), "ip {args:?} failed");
}

fn spec(vni: u32) -> NetworkSpec {
    NetworkSpec::Vxlan {
        vni: Vni::new(vni).expect("vni"),
        underlay: IfName::new("u0").expect("name"),
        flood: VxlanFlood::Peers(vec!["192.168.90.2".parse().expect("ip")]),
        mtu: None,
    }
}

/// A group of 100 rules; `variant` changes one port so it differs.
fn group(variant: u32) -> VmRules {
    let rules = (0..100u32)
        .map(|i| Rule {
            direction: if i % 4 == 0 {
                Direction::Egress
            } else {
                Direction::Ingress
            },
            protocol: if i % 2 == 0 {
                Protocol::Tcp
            } else {
                Protocol::Udp
            },
            ports: Some(PortRange::new(1000 + i * 10, 1000 + i * 10 + variant).expect("range")),
            icmp: None,
            cidrs: vec![
                format!("10.{}.0.0/16", i % 250)
                    .parse::<Cidr>()
                    .expect("cidr"),
                format!("fd00:{i:x}::/32").parse::<Cidr>().expect("cidr"),
            ],
        })
        .collect();
    VmRules {
        vm: VmUuid(uuid::Uuid::from_bytes([7; 16])),
        ports: vec![VmPort {
            tap: IfName::new("vnet0").expect("name"),
            bridge: IfName::new("brvx-100").expect("name"),
            mac: csagent_network::parse_mac("52:54:00:00:00:07").expect("mac"),
            ips: vec![
                "10.100.0.7".parse().expect("ip"),
                "fd00::7".parse().expect("ip"),
            ],
        }],
        rules,
    }
}

/// User+system CPU seconds of this thread and of reaped children: the
/// cost of an operation independent of how loaded the machine is.
fn cpu() -> (f64, f64) {
    let usage = |who| {
        // SAFETY: rusage is plain integers; all-zero is a valid value.
        let mut r: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage only writes into the struct we pass.
        unsafe { libc::getrusage(who, &mut r) };
        let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
        t(r.ru_utime) + t(r.ru_stime)
    };
    (usage(libc::RUSAGE_THREAD), usage(libc::RUSAGE_CHILDREN))
}

/// Prints CPU time per operation (criterion reports wall time, which on a
/// shared CI machine is mostly waiting for a core).
fn cpu_figures(rt: &tokio::runtime::Runtime, net: &Network, vm: VmUuid) {
    const N: u32 = 200;
    let (s0, _) = cpu();
    for _ in 0..N {
        black_box(
            rt.block_on(net.ensure_network(vm, &spec(100)))
                .expect("ensure"),
        );
    }
    let (s1, _) = cpu();
    println!(
        "cpu ensure_network_exists: {:.1} us/op",
        (s1 - s0) / f64::from(N) * 1e6
    );
    let nl = rt
        .block_on(async { csagent_network::netlink::Netlink::connect() })
        .expect("netlink");
    let (s0, _) = cpu();
    for _ in 0..N {
        black_box(rt.block_on(nl.link("brvx-100")).expect("get"));
    }
    let (s1, _) = cpu();
    println!(
        "cpu one netlink get: {:.1} us/op",
        (s1 - s0) / f64::from(N) * 1e6
    );
    let mut all = std::collections::BTreeMap::new();
    all.insert(vm, group(0));
    let doc = csagent_network::ruleset::render(&all);
    let t = Instant::now();
    for _ in 0..N {
        black_box(csagent_network::ruleset::render(&all));
    }
    println!(
        "wall render 100 rules: {:.1} us/op",
        t.elapsed().as_secs_f64() / f64::from(N) * 1e6
    );
    let t = Instant::now();
    for _ in 0..N {
        black_box(serde_json::to_vec(&doc).expect("json"));
    }
    println!(
        "wall serialise 100 rules: {:.1} us/op",
        t.elapsed().as_secs_f64() / f64::from(N) * 1e6
    );
    const M: u32 = 20;
    let (s0, c0) = cpu();
    for i in 0..M {
        rt.block_on(net.apply_security_group(group(i % 2 + 2)))
            .expect("apply");
    }
    let (s1, c1) = cpu();
    println!(
        "cpu security_group_100_rules_apply: agent {:.2} ms/op + nft {:.2} ms/op",
        (s1 - s0) / f64::from(M) * 1e3,
        (c1 - c0) / f64::from(M) * 1e3
    );
}

fn main() {
    let ns = NsGuard(format!("csat-net-bench-{}", std::process::id()));
    ip(&["netns", "add", &ns.0]);
    ip(&[
        "-n", &ns.0, "link", "add", "u0", "type", "veth", "peer", "name", "u1",
    ]);
    ip(&["-n", &ns.0, "addr", "add", "192.168.90.1/24", "dev", "u0"]);
    let fd = std::fs::File::open(format!("/run/netns/{}", ns.0)).expect("netns");
    nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let net = rt.block_on(async { Network::new() }).expect("netlink");
    let vm = VmUuid(uuid::Uuid::from_bytes([1; 16]));
    let mut c = Criterion::default()
        .sample_size(30)
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();

    c.bench_function("ensure_network_cold", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let br = rt
                    .block_on(net.ensure_network(vm, &spec(200)))
                    .expect("ensure");
                total += t.elapsed();
                rt.block_on(net.release_network(vm, &br)).expect("release");
            }
            total
        })
    });
    rt.block_on(net.ensure_network(vm, &spec(100)))
        .expect("ensure");
    c.bench_function("ensure_network_exists", |b| {
        b.iter(|| {
            black_box(
                rt.block_on(net.ensure_network(vm, &spec(100)))
                    .expect("ensure"),
            )
        })
    });
    let mut flip = 0;
    c.bench_function("security_group_100_rules_apply", |b| {
        b.iter(|| {
            flip = 1 - flip;
            assert!(rt
                .block_on(net.apply_security_group(group(flip)))
                .expect("apply"));
        })
    });
    c.bench_function("security_group_100_rules_unchanged", |b| {
        b.iter(|| {
            black_box(
                rt.block_on(net.apply_security_group(group(flip)))
                    .expect("apply"),
            )
        })
    });
    c.final_summary();
    cpu_figures(&rt, &net, vm);
    drop(net);
    drop(rt);
}
