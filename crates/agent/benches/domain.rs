//! Render and parse speed of the domain model for a typical VM (2 disks,
//! 2 NICs, VNC, guest agent). Goals: >= 200,000 renders/s and >= 100,000
//! parses/s on one core. Run: `cargo bench --bench domain`.
//!
//! Instruction counts (deterministic, unlike time on a shared machine): with
//! `DOMAIN_BENCH_COUNT=parse:N` (or `walk:N`, `render:N`) the binary only
//! does N iterations and exits; run it under
//! `valgrind --tool=callgrind` for N=0 and N=1000 and divide the difference.

use std::hint::black_box;

use criterion::{criterion_group, Criterion, Throughput};

use csagent_domain as domain;

const SPEC_JSON: &str = include_str!("../tests/golden/domain/typical.json");
/// The same VM as `virsh dumpxml` prints it while running (addresses,
/// aliases, controllers, seclabels, devices the model does not know).
const DUMPXML: &str = include_str!("../tests/golden/domain/typical-running.xml");

fn typical_spec() -> domain::VmSpec {
    let proto: csagent_proto::v1::VmSpec = match serde_json::from_str(SPEC_JSON) {
        Ok(p) => p,
        Err(e) => panic!("typical.json: {e}"),
    };
    match csagent::convert::domain::spec_from_proto(&proto) {
        Ok(s) => s,
        Err(e) => panic!("typical.json: {e}"),
    }
}

fn bench(c: &mut Criterion) {
    let spec = typical_spec();
    let mut buf = Vec::with_capacity(8192);
    let mut g = c.benchmark_group("domain");
    g.throughput(Throughput::Elements(1));
    g.bench_function("render_typical_vm", |b| {
        b.iter(|| {
            buf.clear();
            let r = domain::render_into(black_box(&spec), &mut buf);
            black_box((r.is_ok(), buf.len()))
        })
    });
    g.bench_function("parse_typical_dumpxml", |b| {
        b.iter(|| black_box(domain::parse(black_box(DUMPXML)).map(|p| p.spec.devices.disks.len())))
    });
    let rendered = domain::render(&spec).unwrap_or_default();
    g.bench_function("parse_typical_rendered", |b| {
        b.iter(|| {
            black_box(domain::parse(black_box(&rendered)).map(|p| p.spec.devices.disks.len()))
        })
    });
    g.bench_function("quickxml_walk_dumpxml", |b| {
        b.iter(|| walk(black_box(DUMPXML)))
    });
    g.bench_function("is_managed_dumpxml", |b| {
        b.iter(|| black_box(domain::is_managed(black_box(DUMPXML))))
    });
    g.finish();
}

/// quick-xml alone walking every event of the document: the floor under any
/// parser built on its reader.
fn walk(xml: &str) {
    let mut r = quick_xml::Reader::from_str(xml);
    while !matches!(r.read_event(), Ok(quick_xml::events::Event::Eof) | Err(_)) {}
}

/// `DOMAIN_BENCH_COUNT=what:N`: runs N iterations of one operation, nothing
/// else, for an instruction counter. False when the variable is not set.
fn count_mode() -> bool {
    let Ok(v) = std::env::var("DOMAIN_BENCH_COUNT") else {
        return false;
    };
    let (what, n) = v.split_once(':').unwrap_or((&v, "1000"));
    let n: u32 = n
        .parse()
        .unwrap_or_else(|_| panic!("DOMAIN_BENCH_COUNT={v}: bad count"));
    let spec = typical_spec();
    let mut buf = Vec::with_capacity(8192);
    for _ in 0..n {
        match what {
            "parse" => drop(black_box(domain::parse(black_box(DUMPXML)))),
            "walk" => walk(black_box(DUMPXML)),
            "render" => {
                buf.clear();
                black_box(domain::render_into(black_box(&spec), &mut buf).is_ok());
            }
            _ => panic!("DOMAIN_BENCH_COUNT={v}: expected parse, walk or render"),
        }
    }
    true
}

/// On-CPU throughput, measured with the thread's CPU clock: the criterion
/// figures are wall time and inflate when other builds share the cores.
fn cpu_time_report() {
    use nix::time::{clock_gettime, ClockId};
    let cpu = || clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).map(std::time::Duration::from);
    let spec = typical_spec();
    let mut buf = Vec::with_capacity(8192);
    let rate = |n: u32, f: &mut dyn FnMut()| -> Option<f64> {
        let start = cpu().ok()?;
        for _ in 0..n {
            f();
        }
        Some(f64::from(n) / (cpu().ok()? - start).as_secs_f64())
    };
    let renders = rate(50_000, &mut || {
        buf.clear();
        black_box(domain::render_into(black_box(&spec), &mut buf).is_ok());
    });
    let parses = rate(20_000, &mut || {
        black_box(domain::parse(black_box(DUMPXML)).is_ok());
    });
    // Floor: quick-xml alone walking every event of the same document.
    let walks = rate(20_000, &mut || walk(black_box(DUMPXML)));
    if let (Some(r), Some(p), Some(w)) = (renders, parses, walks) {
        println!("on-CPU (thread clock): {r:.0} renders/s (goal 200000), {p:.0} parses/s (goal 100000); quick-xml event walk alone: {w:.0}/s");
    }
}

criterion_group!(benches, bench);

fn main() {
    if count_mode() {
        return;
    }
    cpu_time_report();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
