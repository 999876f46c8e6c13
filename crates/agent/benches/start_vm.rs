//! Agent overhead of StartVm: csagent's start path (render, look up, define
//! and start through the agent's libvirt thread, read state and live XML)
//! against `virsh define` + `virsh start` of the same XML, and against the
//! bare libvirt API (define + create) in this process, on qemu:///system
//! with a tiny diskless TCG domain. Goal: agent overhead under 10 % of virsh.
//! Teardown (destroy + undefine) is not measured.
//!
//! Run: `cargo bench --bench start_vm`. Needs root and a running libvirtd.

// Benchmarks run the tool a user would use instead (virsh, qemu-img) side
// by side: the boundary rules of clippy.toml are for the product code.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use csagent::ctx::Ctx;
use csagent::outbox::Outbox;
use csagent_domain::VmSpec;
use csagent_libvirt::Hypervisor;
use csagent_proto::v1 as pb;

const URI: &str = "qemu:///system";

/// A fresh tiny domain (64 MiB, 1 vCPU, no disk, no kernel: it idles in
/// the firmware, so a running guest costs no CPU between samples).
fn spec() -> VmSpec {
    let u = uuid::Uuid::new_v4();
    let p = pb::VmSpec {
        domain_type: "qemu".into(),
        name: format!("cstest-gb-bench-{}", &u.simple().to_string()[..8]),
        uuid: u.to_string(),
        memory: Some(pb::VmMemory {
            size_kib: 64 * 1024,
            ..Default::default()
        }),
        cpu: Some(pb::VmCpu {
            vcpus: 1,
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut s = csagent::convert::domain::spec_from_proto(&p).expect("bench spec converts");
    s.meta = Some(csagent_domain::CsagentMeta {
        instance_id: s.name.clone(),
        ..Default::default()
    });
    s
}

fn virsh(args: &[&str]) {
    let out = std::process::Command::new("virsh")
        .args(["-c", URI])
        .args(args)
        .output()
        .expect("run virsh");
    assert!(
        out.status.success(),
        "virsh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn remove(s: &VmSpec) {
    let u = s.uuid.0.to_string();
    let _ = std::process::Command::new("virsh")
        .args(["-c", URI, "destroy", &u])
        .output();
    let _ = std::process::Command::new("virsh")
        .args(["-c", URI, "undefine", &u, "--nvram"])
        .output();
    let _ = std::fs::remove_file(format!("/var/log/libvirt/qemu/{}.log", s.name));
}

fn ctx() -> Ctx {
    Ctx {
        command_id: "bench".into(),
        cancel: tokio_util::sync::CancellationToken::new(),
        deadline: Instant::now() + Duration::from_secs(120),
        outbox: Arc::new(Outbox::new(1024)),
        progress: Arc::new(|_, _| {}),
        events: Arc::new(|_| {}),
    }
}

/// Runs `start` on `iters` fresh domains; only `start` is timed.
fn timed(iters: u64, mut start: impl FnMut(&VmSpec)) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let s = spec();
        let t = Instant::now();
        start(&s);
        total += t.elapsed();
        remove(&s);
    }
    total
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let hv = rt.block_on(async { Hypervisor::start(URI, Duration::from_secs(60)) });
    let dir = tempfile::tempdir().expect("temp dir");
    let mut g = c.benchmark_group("start_vm");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(20));
    g.bench_function("csagent_vm_start", |b| {
        b.iter_custom(|n| {
            timed(n, |s| {
                rt.block_on(csagent::vm::start(&hv, s.clone(), &ctx()))
                    .expect("agent start");
            })
        })
    });
    g.bench_function("virsh_define_and_start", |b| {
        b.iter_custom(|n| {
            timed(n, |s| {
                let xml = csagent_domain::render(s).expect("render");
                let path = dir.path().join("d.xml");
                std::fs::write(&path, xml).expect("write xml");
                virsh(&["define", path.to_str().expect("utf-8 path")]);
                virsh(&["start", &s.name]);
            })
        })
    });
    let conn = virt::connect::Connect::open(Some(URI)).expect("connect");
    g.bench_function("libvirt_api_define_and_create", |b| {
        b.iter_custom(|n| {
            timed(n, |s| {
                let xml = csagent_domain::render(s).expect("render");
                let d = conn.define_domain_xml(&xml).expect("define");
                d.create().expect("create");
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
