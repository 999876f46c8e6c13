//! Live migration through csagent against bare `virsh migrate --live`, in
//! the lab (scripts/lab.sh up 2): one idle TCG guest per size (256 MiB and
//! 1 GiB) moves h1 → h2 through the plane (PrepareMigration, MigrateVm) and
//! back h2 → h1 with virsh, ROUNDS times, same VM, same hosts, same run.
//! Prints the median total time and downtime (libvirt's completed job) of
//! each; goal: csagent's total ≤ 1.05 × virsh's.
//!
//! Run: `bash scripts/lab.sh up 2 && cargo bench --bench migrate`
//! (ROUNDS=N to change the number of rounds, default 3). Without the lab it
//! says so and exits.

// Benchmarks run the tool a user would use instead (virsh) side by side:
// the boundary rules of clippy.toml are for the product code.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use csagent_proto::v1 as pb;
use csagent_testkit::guest::{guest_image, guest_spec};
use csagent_testkit::lab::{Lab, LabAgents, LabDomain};
use csagent_testkit::*;

const MAX_DOWNTIME_MS: u64 = 300;

fn main() {
    let lab = match Lab::get(2) {
        Ok(l) => l,
        Err(why) => {
            println!("migrate bench skipped: {why}");
            return;
        }
    };
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(run(&lab, rounds));
}

struct Figures {
    total_ms: Vec<u64>,
    downtime_ms: Vec<u64>,
}

impl Figures {
    fn new() -> Figures {
        Figures {
            total_ms: Vec::new(),
            downtime_ms: Vec::new(),
        }
    }
}

fn median(v: &[u64]) -> u64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

async fn run(lab: &Lab, rounds: usize) {
    let agents = LabAgents::start(lab, None).await;
    let (f, target) = (&agents.f, agents.target);
    let img = lab.shared_guest(&guest_image());
    for mib in [256u64, 1024] {
        let name = format!("cslab-bench-mig-{mib}");
        let _domain = LabDomain {
            lab,
            name: name.clone(),
        };
        let vm = uuid::Uuid::new_v4();
        let start = pb::command::Body::StartVm(pb::StartVm {
            spec: Some(guest_spec(&vm, &name, &img, mib)),
            ..Default::default()
        });
        let r = call(
            &f.plane,
            &f.host,
            cmd("", 120_000, start),
            Duration::from_secs(120),
        )
        .await;
        assert_eq!(r.status, pb::CommandStatus::Ok as i32, "{r:?}");
        // Let the guest boot before the first move.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (mut ours, mut theirs) = (Figures::new(), Figures::new());
        for _ in 0..rounds {
            let (total, down) = through_csagent(f, &target, &vm, mib).await;
            ours.total_ms.push(total);
            ours.downtime_ms.push(down);
            let (total, down) = with_virsh(lab, &name);
            theirs.total_ms.push(total);
            theirs.downtime_ms.push(down);
        }
        let (o, t) = (median(&ours.total_ms), median(&theirs.total_ms));
        println!(
            "migrate {mib} MiB idle TCG guest, median of {rounds}: csagent {o} ms (downtime {} ms), virsh {t} ms (downtime {} ms), csagent/virsh {:.2}",
            median(&ours.downtime_ms),
            median(&theirs.downtime_ms),
            o as f64 / t.max(1) as f64
        );
    }
    agents.stop().await;
}

/// h1 → h2 through the plane; (total ms as the operator waits, downtime).
async fn through_csagent(
    f: &Fixture,
    target: &uuid::Uuid,
    vm: &uuid::Uuid,
    mib: u64,
) -> (u64, u64) {
    let t = Instant::now();
    let prepare = pb::command::Body::PrepareMigration(pb::PrepareMigration {
        vm_uuid: vm.to_string(),
        vcpus: 1,
        memory_kib: mib * 1024,
        disk_paths: Vec::new(),
    });
    let r = call(
        &f.plane,
        target,
        cmd("", 60_000, prepare),
        Duration::from_secs(60),
    )
    .await;
    let Some(pb::command_result::Result::PrepareMigration(p)) = r.result else {
        panic!("prepare: {r:?}")
    };
    let body = pb::command::Body::MigrateVm(pb::MigrateVm {
        vm_uuid: vm.to_string(),
        destination_libvirt_uri: p.libvirt_uri,
        destination_migrate_uri: p.migrate_uri,
        tls: p.tls,
        max_downtime_ms: MAX_DOWNTIME_MS,
        ..Default::default()
    });
    let r = call(
        &f.plane,
        &f.host,
        cmd("", 600_000, body),
        Duration::from_secs(600),
    )
    .await;
    let Some(pb::command_result::Result::MigrateVm(m)) = r.result else {
        panic!("migrate: {r:?}")
    };
    (
        u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX),
        m.downtime_ms,
    )
}

/// h2 → h1 with virsh, as an operator would; (total ms, downtime from the
/// completed job on h1).
fn with_virsh(lab: &Lab, name: &str) -> (u64, u64) {
    let dst = &lab.hosts[0].addr;
    let t = Instant::now();
    let out = lab.virsh(
        2,
        &[
            "migrate",
            "--live",
            "--persistent",
            "--undefinesource",
            name,
            &format!("qemu+tcp://{dst}/system"),
            &format!("tcp://{dst}"),
        ],
    );
    let total = u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX);
    assert!(out.status.success(), "virsh migrate: {out:?}");
    let info = lab.virsh(1, &["domjobinfo", "--completed", name]);
    let text = String::from_utf8_lossy(&info.stdout);
    let downtime = text
        .lines()
        .find(|l| l.trim_start().starts_with("Total downtime:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .unwrap_or_default();
    (total, downtime)
}
