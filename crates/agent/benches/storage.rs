//! Storage figures: (1) linked clone from a template, agent vs bare
//! `qemu-img create -b` (goal: < 5 ms added); (2) full copy of a 1 GiB
//! template of pseudo-random data, agent vs bare `qemu-img convert` on the
//! same files (goal: >= 95 % of its throughput).
//!
//! Needs root and libvirtd (a csat-sto-bench-* dir pool on qemu:///system
//! in a temp dir; removed at the end). Run: `cargo bench --bench storage`.

// Benchmarks run the tool a user would use instead (virsh, qemu-img) side
// by side: the boundary rules of clippy.toml are for the product code.
#![allow(clippy::disallowed_methods)]

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use csagent_storage::{
    CallOpts, CloneMode, CreateFromTemplate, ImageFormat, PoolDef, PoolKind, PoolName,
    ProgressSink, Storage, StorageConfig, VolumeName,
};

const URI: &str = "qemu:///system";
const GIB: u64 = 1 << 30;

struct Bench {
    storage: Arc<Storage>,
    pool: PoolName,
    dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
}

impl Drop for Bench {
    fn drop(&mut self) {
        if let Ok(c) = virt::connect::Connect::open(Some(URI)) {
            if let Ok(p) = c.lookup_storage_pool_by_name(self.pool.as_str()) {
                let _ = p.destroy();
                let _ = p.undefine();
            }
        }
    }
}

fn setup() -> Bench {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::Builder::new()
        .prefix("csat-sto-bench-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let storage = Arc::new(Storage::new(
        StorageConfig {
            ..Default::default()
        },
        csagent_libvirt::Hypervisor::start(URI, std::time::Duration::from_secs(30)),
    ));
    let pool = PoolName::new(format!("csat-sto-bench-{:08x}", rand::random::<u32>())).unwrap();
    let def = PoolDef {
        name: pool.clone(),
        kind: PoolKind::Dir {
            path: dir.path().to_path_buf(),
        },
    };
    rt.block_on(storage.add_pool(def, CallOpts::default()))
        .unwrap();
    Bench {
        storage,
        pool,
        dir,
        rt,
    }
}

fn random_raw(path: &Path, len: u64) {
    let mut f = std::io::BufWriter::with_capacity(4 << 20, std::fs::File::create(path).unwrap());
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; 4 << 20];
    for _ in 0..len / buf.len() as u64 {
        for c in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf).unwrap();
    }
    f.flush().unwrap();
}

fn qemu_img(args: &[&str]) {
    let st = Command::new("qemu-img").args(args).status().unwrap();
    assert!(st.success(), "qemu-img {args:?}");
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn linked_clone(c: &mut Criterion, b: &Bench) {
    let tpl = b.dir.path().join("tpl-small.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", p(&tpl), "1G"]);
    let mut g = c.benchmark_group("linked_clone");
    g.bench_function("bare_qemu_img_create_b", |bn| {
        bn.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for i in 0..iters {
                let dst = b.dir.path().join(format!("bare-{i}"));
                let t = Instant::now();
                qemu_img(&[
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    "-b",
                    p(&tpl),
                    "-F",
                    "qcow2",
                    p(&dst),
                ]);
                total += t.elapsed();
                std::fs::remove_file(&dst).unwrap();
            }
            total
        })
    });
    g.bench_function("agent_create_volume_from_template", |bn| {
        bn.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for i in 0..iters {
                let name = VolumeName::new(format!("agent-{i}")).unwrap();
                let req = CreateFromTemplate {
                    pool: b.pool.clone(),
                    name: name.clone(),
                    template: VolumeName::new("tpl-small.qcow2").unwrap(),
                    mode: Some(CloneMode::Linked),
                    size: None,
                };
                let t = Instant::now();
                b.rt.block_on(b.storage.create_volume_from_template(
                    req,
                    CallOpts::default(),
                    None,
                ))
                .unwrap();
                total += t.elapsed();
                std::fs::remove_file(b.dir.path().join(name.as_str())).unwrap();
            }
            total
        })
    });
    g.finish();
    std::fs::remove_file(&tpl).unwrap();
}

fn full_copy(c: &mut Criterion, b: &Bench) {
    let raw = b.dir.path().join("tpl.raw");
    let tpl = b.dir.path().join("tpl.qcow2");
    random_raw(&raw, GIB);
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", p(&raw), p(&tpl)]);
    std::fs::remove_file(&raw).unwrap();
    let mut g = c.benchmark_group("full_copy_1GiB");
    g.sample_size(10)
        .throughput(Throughput::Bytes(GIB))
        .measurement_time(Duration::from_secs(30));
    g.bench_function("bare_qemu_img_convert", |bn| {
        bn.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for i in 0..iters {
                let dst = b.dir.path().join(format!("bare-full-{i}"));
                let t = Instant::now();
                qemu_img(&["convert", "-f", "qcow2", "-O", "qcow2", p(&tpl), p(&dst)]);
                total += t.elapsed();
                std::fs::remove_file(&dst).unwrap();
            }
            total
        })
    });
    g.bench_function("agent_full_copy_with_progress", |bn| {
        bn.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for i in 0..iters {
                let name = VolumeName::new(format!("agent-full-{i}")).unwrap();
                let req = CreateFromTemplate {
                    pool: b.pool.clone(),
                    name: name.clone(),
                    template: VolumeName::new("tpl.qcow2").unwrap(),
                    mode: Some(CloneMode::Full {
                        format: ImageFormat::Qcow2,
                    }),
                    size: None,
                };
                let sink: ProgressSink = Arc::new(|_| {});
                let t = Instant::now();
                b.rt.block_on(b.storage.create_volume_from_template(
                    req,
                    CallOpts::default(),
                    Some(sink),
                ))
                .unwrap();
                total += t.elapsed();
                std::fs::remove_file(b.dir.path().join(name.as_str())).unwrap();
            }
            total
        })
    });
    g.finish();
}

/// Agent minus bare time of a linked clone, measured in interleaved pairs
/// so the load of a shared machine hits both sides alike; prints the
/// median and quartiles of the per-pair difference.
fn linked_clone_paired(b: &Bench) {
    let tpl = b.dir.path().join("tpl-paired.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", p(&tpl), "1G"]);
    let mut diffs = Vec::new();
    for i in 0..200 {
        let dst = b.dir.path().join(format!("pair-bare-{i}"));
        let t = Instant::now();
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            p(&tpl),
            "-F",
            "qcow2",
            p(&dst),
        ]);
        let bare = t.elapsed();
        std::fs::remove_file(&dst).unwrap();
        let name = VolumeName::new(format!("pair-agent-{i}")).unwrap();
        let req = CreateFromTemplate {
            pool: b.pool.clone(),
            name: name.clone(),
            template: VolumeName::new("tpl-paired.qcow2").unwrap(),
            mode: Some(CloneMode::Linked),
            size: None,
        };
        let t = Instant::now();
        b.rt.block_on(
            b.storage
                .create_volume_from_template(req, CallOpts::default(), None),
        )
        .unwrap();
        let agent = t.elapsed();
        std::fs::remove_file(b.dir.path().join(name.as_str())).unwrap();
        diffs.push(agent.as_secs_f64() * 1e3 - bare.as_secs_f64() * 1e3);
    }
    diffs.sort_by(f64::total_cmp);
    let q = |f: f64| diffs[((diffs.len() - 1) as f64 * f) as usize];
    println!(
        "linked_clone paired (agent - bare), 200 pairs: median {:+.2} ms, p25 {:+.2} ms, p75 {:+.2} ms",
        q(0.5),
        q(0.25),
        q(0.75)
    );
    std::fs::remove_file(&tpl).unwrap();
}

fn benches(c: &mut Criterion) {
    let b = setup();
    linked_clone_paired(&b);
    linked_clone(c, &b);
    full_copy(c, &b);
}

criterion_group!(storage, benches);
criterion_main!(storage);
