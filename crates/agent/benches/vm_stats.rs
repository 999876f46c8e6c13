//! Statistics for every VM: libvirt's bulk call (what GetVmStats uses) versus
//! the classic per-domain calls (info, XML dump, one call per disk and NIC,
//! as cloudstack-agent does), with 20 running TCG VMs on qemu:///system.
//!
//! The bench defines and starts the VMs itself (domain type 'qemu', 64 MiB, a
//! tiny qcow2 disk, no OS), all named cstest-ops-bench-*, and removes them and
//! their disks at the end, also on panic. Needs root and a running libvirtd.
//! Run: `cargo bench --bench vm_stats`; `CSAGENT_BENCH_VMS` sets the count.

// Benchmarks run the tool a user would use instead (virsh, qemu-img) side
// by side: the boundary rules of clippy.toml are for the product code.
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use criterion::Criterion;
use csagent_domain::{self as domain, DomainType, KiB, VmSpec, VmUuid};
use csagent_libvirt::stats::{self, Selection};
use virt::connect::Connect;

const URI: &str = "qemu:///system";

/// Domains and disks of this run; removed on drop.
struct Vms {
    conn: Connect,
    uuids: Vec<uuid::Uuid>,
    disks: Vec<PathBuf>,
}

impl Drop for Vms {
    fn drop(&mut self) {
        for u in &self.uuids {
            if let Ok(d) = self.conn.lookup_domain_by_uuid_string(&u.to_string()) {
                let _ = d.destroy();
                let _ = d.undefine();
            }
        }
        for p in &self.disks {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn spec(uuid: uuid::Uuid, disk: &str) -> VmSpec {
    let mut s = VmSpec::new(
        &format!("cstest-ops-bench-{}", &uuid.simple().to_string()[..8]),
        VmUuid(uuid),
    );
    s.domain_type = DomainType::Qemu;
    s.memory.size = KiB(64 * 1024);
    s.meta = Some(domain::CsagentMeta {
        instance_id: uuid.to_string(),
        ..Default::default()
    });
    s.devices.disks.push(domain::Disk::new(
        domain::DiskDevice::Disk,
        domain::DiskSource::File { path: disk.into() },
        domain::DiskFormat::Qcow2,
        "vda",
        domain::DiskBus::Virtio,
    ));
    s
}

fn start_vms(n: usize) -> Vms {
    let conn =
        Connect::open(Some(URI)).expect("qemu:///system (is libvirtd running, are we root?)");
    let mut vms = Vms {
        conn,
        uuids: Vec::new(),
        disks: Vec::new(),
    };
    for _ in 0..n {
        let uuid = uuid::Uuid::new_v4();
        let disk = PathBuf::from(format!(
            "/var/lib/libvirt/images/cstest-ops-bench-{}.qcow2",
            uuid.simple()
        ));
        let ok = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&disk)
            .arg("16M")
            .status()
            .expect("qemu-img")
            .success();
        assert!(ok, "qemu-img create failed");
        vms.disks.push(disk.clone());
        let xml = domain::render(&spec(uuid, &disk.to_string_lossy())).expect("render");
        let d = vms.conn.define_domain_xml(&xml).expect("define");
        vms.uuids.push(uuid);
        d.create().expect("start");
    }
    vms
}

fn main() {
    let n: usize = std::env::var("CSAGENT_BENCH_VMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let vms = start_vms(n);
    let bulk = stats::collect(&vms.conn, &Selection::AllRunning).expect("bulk stats");
    let ours = bulk
        .iter()
        .filter(|s| s.name.starts_with("cstest-ops-bench-"))
        .count();
    assert_eq!(ours, n, "every bench VM must be in the bulk answer");
    println!("{} running domains ({n} bench VMs)", bulk.len());

    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(30)
        .measurement_time(Duration::from_secs(5));
    let mut g = c.benchmark_group(format!("vm_stats_{n}_vms"));
    g.bench_function("bulk_one_call_nowait", |b| {
        b.iter(|| black_box(stats::collect(&vms.conn, &Selection::AllRunning).unwrap()))
    });
    g.bench_function("per_domain_calls", |b| {
        b.iter(|| black_box(stats::collect_per_domain(&vms.conn).unwrap()))
    });
    g.finish();
    c.final_summary();
    drop(vms);
}
