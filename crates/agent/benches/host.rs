//! Cost of host collection: one full report and one heartbeat health on this
//! machine, and on a synthetic 2-socket server's sensor tree (64 hwmon
//! sensors, since CI machines and VMs often have none); then the agent's
//! idle CPU use with heartbeats and reports running in real time.
//!
//! Run: `cargo bench --bench host`. `CSAGENT_BENCH_IDLE_SECS` sets the
//! length of the idle run (default 6 s).

use criterion::{criterion_group, Criterion};
use csagent_host::{Allocated, HostCollector, HostConfig, MiB, SysRoots};
use std::fs;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

/// Heartbeat and report intervals assumed for the idle figure (the plane
/// sets them in RegisterAck; these are CloudStack-like defaults).
const HEARTBEAT: Duration = Duration::from_secs(5);
const REPORT: Duration = Duration::from_secs(60);

/// 8 chips x 8 temperatures with max/crit/alarm, like a 2-socket server
/// with DIMM and VRM sensors.
fn server_sysfs(root: &Path) {
    for chip in 0..8 {
        let dir = root.join(format!(
            "sys/devices/platform/chip.{chip}/hwmon/hwmon{chip}"
        ));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("name"), "coretemp\n").unwrap();
        for t in 1..=8 {
            for (suffix, v) in [
                ("input", 45_000),
                ("max", 80_000),
                ("crit", 100_000),
                ("crit_alarm", 0),
            ] {
                fs::write(dir.join(format!("temp{t}_{suffix}")), format!("{v}\n")).unwrap();
            }
            fs::write(dir.join(format!("temp{t}_label")), format!("Core {t}\n")).unwrap();
        }
        let class = root.join("sys/class/hwmon");
        fs::create_dir_all(&class).unwrap();
        std::os::unix::fs::symlink(&dir, class.join(format!("hwmon{chip}"))).unwrap();
    }
}

fn collect(c: &mut Criterion) {
    let alloc = Allocated {
        vcpus: 4,
        memory: MiB(8192),
        vms: 3,
    };
    let mut real = HostCollector::new(HostConfig::default(), SysRoots::host());
    c.bench_function("host_report_this_machine", |b| {
        b.iter(|| black_box(real.report(&alloc, &[])))
    });
    c.bench_function("host_health_this_machine", |b| {
        b.iter(|| black_box(real.health()))
    });

    let dir = tempfile::tempdir().unwrap();
    server_sysfs(dir.path());
    let roots = SysRoots {
        sys: dir.path().join("sys"),
        ..SysRoots::host()
    };
    let mut server = HostCollector::new(HostConfig::default(), roots);
    c.bench_function("host_report_64_sensors", |b| {
        b.iter(|| black_box(server.report(&alloc, &[])))
    });
    c.bench_function("host_health_64_sensors", |b| {
        b.iter(|| black_box(server.health()))
    });
    c.bench_function("host_facts_this_machine", |b| {
        b.iter(|| black_box(real.facts()))
    });
}

fn cpu_time() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

/// Runs heartbeats and reports at 5x the default rates in real time for a
/// few seconds and prints the CPU share, then scales it to the defaults.
fn idle_cpu() {
    let secs: u64 = std::env::var("CSAGENT_BENCH_IDLE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let (hb, rep) = (HEARTBEAT / 5, REPORT / 5);
    let alloc = Allocated {
        vcpus: 4,
        memory: MiB(8192),
        vms: 3,
    };
    let mut c = HostCollector::new(HostConfig::default(), SysRoots::host());
    let (start, cpu0) = (Instant::now(), cpu_time());
    let (mut next_hb, mut next_rep) = (start, start);
    let (mut beats, mut reports) = (0u32, 0u32);
    while start.elapsed() < Duration::from_secs(secs) {
        let now = Instant::now();
        if now >= next_hb {
            black_box(c.health());
            beats += 1;
            next_hb += hb;
        }
        if now >= next_rep {
            black_box(c.report(&alloc, &[]));
            reports += 1;
            next_rep += rep;
        }
        std::thread::sleep(
            next_hb
                .min(next_rep)
                .saturating_duration_since(Instant::now()),
        );
    }
    let (wall, cpu) = (start.elapsed(), cpu_time() - cpu0);
    let share = cpu.as_secs_f64() / wall.as_secs_f64() * 100.0;
    println!(
        "idle collector at 5x default rates ({beats} heartbeats, {reports} reports in {:.1} s): \
         {:.1} us CPU, {share:.4} % of one core; at defaults (heartbeat {}s, report {}s) about {:.4} %",
        wall.as_secs_f64(),
        cpu.as_secs_f64() * 1e6,
        HEARTBEAT.as_secs(),
        REPORT.as_secs(),
        share / 5.0
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = collect
}

fn main() {
    benches();
    idle_cpu();
    Criterion::default().configure_from_args().final_summary();
}
