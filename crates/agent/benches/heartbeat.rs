//! Cost of the heartbeat's VM state report with 1,000 domains defined on
//! libvirt's test driver (half of them running): from asking libvirt for the
//! snapshot (one bulk-stats call) to the encoded Heartbeat message. Goal:
//! under 10 ms. Also prints the first (cold) snapshot, which fetches the
//! per-domain facts once.
//!
//! Run: `cargo bench --bench heartbeat`.

// The bench fills test:///default through its own libvirt connection: the
// boundary rules of clippy.toml are for the product code.
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use csagent::convert::link::vm_power;
use csagent_libvirt::Hypervisor;
use csagent_proto::v1 as pb;
use prost::Message;

const DOMAINS: usize = 1000;

fn define_domains() {
    let conn = virt::connect::Connect::open(Some("test:///default")).unwrap();
    for i in 0..DOMAINS {
        let uuid = uuid::Uuid::new_v4();
        let xml = format!(
            "<domain type='test'><name>cstest-ev-bench-{i}</name><uuid>{uuid}</uuid>\
             <memory unit='KiB'>65536</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64'>hvm</type></os></domain>"
        );
        let d = conn.define_domain_xml(&xml).unwrap();
        if i % 2 == 0 {
            d.create().unwrap();
        }
    }
}

async fn heartbeat(hv: &Hypervisor) -> Vec<u8> {
    let vms = hv.list_vms().await.unwrap();
    let hb = pb::Heartbeat {
        seq: 1,
        vms: vms.iter().map(vm_power).collect(),
        hypervisor_available: true,
        ..Default::default()
    };
    hb.encode_to_vec()
}

async fn per_domain(hv: &Hypervisor) -> usize {
    hv.call("per_domain", |c| {
        let doms = c.list_all_domains(0).unwrap();
        let mut n = 0;
        for d in &doms {
            let _ = d.info();
            let _ = d.state();
            n += usize::from(d.metadata(2, Some("urn:x"), 0).is_ok());
        }
        Ok(doms.len() + n)
    })
    .await
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let hv = rt.block_on(async { Hypervisor::start("test:///default", Duration::from_secs(30)) });
    define_domains();
    let t = Instant::now();
    let first = rt.block_on(heartbeat(&hv));
    println!(
        "cold snapshot ({DOMAINS} domains + the driver's own, facts fetched): {:?}, heartbeat {} bytes",
        t.elapsed(),
        first.len()
    );
    c.bench_function("heartbeat_state_1000_domains", |b| {
        b.iter(|| black_box(rt.block_on(heartbeat(&hv))))
    });
    // What a heartbeat itself costs: the snapshot is already in memory.
    let vms = rt.block_on(hv.list_vms()).unwrap();
    c.bench_function("heartbeat_from_snapshot_1000_domains", |b| {
        b.iter(|| {
            let hb = pb::Heartbeat {
                vms: vms.iter().map(vm_power).collect(),
                ..Default::default()
            };
            black_box(hb.encode_to_vec())
        })
    });
    // The old way, for comparison: list, then info, state and metadata per
    // domain (3 round trips each on a remote driver).
    c.bench_function("per_domain_calls_1000_domains", |b| {
        b.iter(|| black_box(rt.block_on(per_domain(&hv))))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(5));
    targets = bench
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
