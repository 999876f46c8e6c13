//! The host module on this real machine (/proc, /sys, /dev, /etc), plus the
//! parts that need no sysfs: the persisted host UUID, libvirt capabilities
//! parsing (XML captured from real `virsh capabilities` / `domcapabilities`),
//! conversion to the wire types, and placement over proto reports.

use csagent::convert::host as convert;
use csagent_host::clock;
use csagent_host::libvirt_caps;
use csagent_host::placement;
use csagent_host::{
    host_uuid, Allocated, HealthState, HostCollector, HostConfig, HostIdError, MiB, Request,
    SysRoots,
};
use csagent_proto::v1 as pb;
use std::fs;
use std::os::unix::fs::PermissionsExt;

const CAPS: &str = include_str!("../fixtures/libvirt/capabilities-epyc-kvm.xml");
const DOMCAPS: &str = include_str!("../fixtures/libvirt/domcapabilities-epyc-kvm.xml");
const DOMCAPS_OVMF: &str = include_str!("../fixtures/libvirt/domcapabilities-q35-ovmf.xml");

#[test]
fn real_host_facts_are_sane() {
    let c = HostCollector::new(HostConfig::default(), SysRoots::host());
    let f = c.facts();
    let nproc = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    assert!(!f.hostname.is_empty());
    assert!(!f.kernel.is_empty() && !f.os.is_empty(), "{f:?}");
    assert!(f.cpu.threads >= nproc, "{:?}", f.cpu);
    assert!(f.cpu.cores >= 1 && f.cpu.sockets >= 1 && f.cpu.cores <= f.cpu.threads);
    assert!(!f.cpu.vendor.is_empty());
    assert!(f.memory_total.0 > 256 * 1024 * 1024);
    if std::path::Path::new("/sys/devices/system/node/node0").exists() {
        assert!(!f.numa.is_empty());
        let cpus: usize = f.numa.iter().map(|n| n.cpus.len()).sum();
        assert_eq!(cpus as u32, f.cpu.threads);
        assert!(f.numa[0].memory_total.0 > 0);
        assert_eq!(f.numa[0].distances.first(), Some(&10));
    }
    assert!(
        f.interfaces.iter().all(|i| i.name != "lo"),
        "lo is skipped by default"
    );
    let all = csagent_host::facts::collect(&SysRoots::host(), None, &[]);
    let lo = all.interfaces.iter().find(|i| i.name == "lo").unwrap();
    assert!(lo.addresses.iter().any(|a| a == "127.0.0.1/8"), "{lo:?}");
    assert!(!f.kvm.detail.is_empty());
    println!("kvm: usable={} ({})", f.kvm.usable, f.kvm.detail);
    println!(
        "hugepages: {:?}; pci passthrough candidates: {}",
        f.hugepages,
        f.pci_devices.len()
    );
}

#[test]
fn kvm_check_uses_the_qemu_users_groups() {
    let dev = tempfile::tempdir().unwrap();
    let missing = csagent_host::facts::kvm_status(dev.path(), Some("root"));
    assert!(
        !missing.usable && missing.detail.contains("TCG"),
        "{missing:?}"
    );
    // A regular file is not a device, whoever owns it.
    fs::write(dev.path().join("kvm"), "").unwrap();
    let not_dev = csagent_host::facts::kvm_status(dev.path(), Some("root"));
    assert!(!not_dev.usable && not_dev.detail.contains("character device"));
}

/// The same checks against this machine's own /dev/kvm.
#[test]
fn kvm_check_of_the_real_dev_kvm() {
    if !std::path::Path::new("/dev/kvm").exists() {
        csagent_testkit::skip!("/dev/kvm absent on this machine");
        return;
    }
    let unknown =
        csagent_host::facts::kvm_status(std::path::Path::new("/dev"), Some("no-such-user-csagent"));
    assert!(
        !unknown.usable && unknown.detail.contains("not found"),
        "{unknown:?}"
    );
    // nobody is in no kvm group: it must not be reported usable when the
    // device is not world-writable, even though root (us) can open it.
    let meta = fs::metadata("/dev/kvm").unwrap();
    let nobody = csagent_host::facts::kvm_status(std::path::Path::new("/dev"), Some("nobody"));
    assert_eq!(
        nobody.usable,
        meta.permissions().mode() & 0o006 == 0o006,
        "{nobody:?}"
    );
}

#[test]
fn real_host_report_is_sane() {
    let mut c = HostCollector::new(HostConfig::default(), SysRoots::host());
    std::thread::sleep(std::time::Duration::from_millis(50));
    let alloc = Allocated {
        vcpus: 1,
        memory: MiB(512),
        vms: 1,
    };
    let r = c.report(&alloc, &[]);
    let s = &r.stats;
    assert!(s.memory_total.0 > 0 && s.memory_available.0 <= s.memory_total.0);
    assert!((0.0..=1.0).contains(&s.cpu_utilisation));
    assert!(s.load_1m >= 0.0);
    assert!(s.swap_free.0 <= s.swap_total.0);
    assert!(r.collected_at_unix_ms > 1_600_000_000_000);
    assert_eq!(r.capacity.vcpu_allocated, 1);
    assert!(r.capacity.memory_total.0 > 0);
    let me = r.agent.expect("own /proc/self");
    assert!(me.rss.0 > 0 && me.open_fds >= 3 && me.threads >= 1);
    assert!(r.clock.ntp.is_some(), "adjtimex works on Linux");
    // Every finding on a real host has a reason a person can read.
    assert!(r.health.findings.iter().all(|f| !f.message.is_empty()));
    let wire = convert::report_to_proto(&r, 1);
    assert_eq!(wire.capacity.as_ref().unwrap().vms, 1);
    assert!(serde_json::to_string(&wire)
        .unwrap()
        .contains("memory_available_bytes"));
    // A second report measures rates over the interval.
    let r2 = c.report(&alloc, &[]);
    assert!(r2.stats.interfaces.iter().all(|i| i.rx_bytes_per_s >= 0.0));
}

#[test]
fn collector_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<HostCollector>();
}

#[test]
fn clock_status_and_skew() {
    let ntp = clock::ntp_status().unwrap();
    assert!(ntp.max_error_us >= 0);
    println!("ntp: {ntp:?}");
    let mut c = HostCollector::new(HostConfig::default(), SysRoots::host());
    // The plane's clock is 5 s ahead: a certificate it just issued would be
    // "not yet valid" here.
    c.record_skew(clock::skew(10_000, 15_050, 10_100).unwrap());
    let h = c.health();
    let f = h
        .findings
        .iter()
        .find(|f| f.source == "clock" && f.message.contains("behind"))
        .unwrap();
    assert_eq!(f.state, HealthState::Warning);
    assert!(f.message.contains("5000 ms behind"), "{}", f.message);
}

#[test]
fn host_uuid_configured_persisted_generated() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let configured = "6f1c3a52-0d8a-4d7e-9a51-3a0c1b7b2e10";
    assert_eq!(
        host_uuid(&state, Some(configured)).unwrap().to_string(),
        configured
    );
    assert!(
        !state.join("host-uuid").exists(),
        "configured guid is not written"
    );

    let id = host_uuid(&state, None).unwrap();
    let path = state.join("host-uuid");
    assert_eq!(fs::read_to_string(&path).unwrap().trim(), id.to_string());
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o644
    );
    assert_eq!(
        host_uuid(&state, None).unwrap(),
        id,
        "stable across restarts"
    );
    assert_eq!(
        fs::read_dir(&state).unwrap().count(),
        1,
        "no temp file left"
    );

    assert!(matches!(
        host_uuid(&state, Some("not-a-uuid")),
        Err(HostIdError::BadConfigured { .. })
    ));
    fs::write(&path, "garbage\n").unwrap();
    let err = host_uuid(&state, None).unwrap_err();
    assert!(matches!(err, HostIdError::BadStateFile { .. }), "{err}");
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        "garbage\n",
        "never overwritten"
    );
}

#[test]
fn libvirt_capabilities_from_a_real_host() {
    let f = libvirt_caps::parse(CAPS, DOMCAPS, 9_000_000, 7_002_022).unwrap();
    assert_eq!(f.arch, "x86_64");
    assert_eq!(
        (f.host_cpu_model.as_str(), f.host_cpu_vendor.as_str()),
        ("kvm64", "AMD")
    );
    assert_eq!(f.host_model.as_deref(), Some("EPYC-Milan"));
    assert!(f.host_passthrough);
    assert!(f.kvm());
    assert_eq!(f.domain_types, ["qemu", "kvm"]);
    assert_eq!(f.max_vcpus, 255);
    assert!(f.usable_cpu_models.contains(&"pentium3".to_string()));
    assert!(
        !f.usable_cpu_models.contains(&"EPYC-Rome".to_string()),
        "usable='no' is left out"
    );
    let pc = f.machine_types.iter().find(|m| m.name == "pc").unwrap();
    assert_eq!(pc.canonical.as_deref(), Some("pc-i440fx-7.2"));
    assert!(f
        .machine_types
        .iter()
        .any(|m| m.name.starts_with("pc-q35") && m.max_cpus == 288));
    assert!(f.machine_types.iter().any(|m| m.deprecated));
    assert!(f.uefi_firmware.is_empty(), "no OVMF installed on that host");
    assert!(!f.iommu);
    assert_eq!(libvirt_caps::format_version(f.qemu_version), "7.2.22");

    let q35 = libvirt_caps::parse(CAPS, DOMCAPS_OVMF, 10_000_000, 8_002_000).unwrap();
    assert_eq!(q35.uefi_firmware.len(), 3);
    assert!(q35.uefi_firmware[0].ends_with("OVMF_CODE_4M.ms.fd"));
    assert!(q35.secure_boot);
    assert_eq!(q35.max_vcpus, 4096);
    assert_eq!(q35.host_model.as_deref(), Some("Icelake-Server"));
    assert_eq!(
        q35.usable_cpu_models,
        ["Skylake-Server-IBRS", "Cascadelake-Server", "qemu64"]
    );

    let mut facts = HostCollector::new(HostConfig::default(), SysRoots::host()).facts();
    facts.libvirt = Some(q35);
    let wire = convert::facts_to_proto(&facts, "0.1.0");
    let l = wire.libvirt.unwrap();
    assert_eq!(l.uefi_firmware.len(), 3);
    assert_eq!(wire.cpu.unwrap().threads, wire.cpu_threads);
}

fn proto_report(state: pb::HealthState, vcpu_free: u32, memory_free_mib: u64) -> pb::HostReport {
    let critical = state == pb::HealthState::Critical;
    pb::HostReport {
        health: Some(pb::HostHealth {
            state: state as i32,
            reasons: vec![],
            findings: critical
                .then(|| pb::HealthFinding {
                    source: "pmbus@7-0058/in1".into(),
                    state: pb::HealthState::Critical as i32,
                    message: "pmbus vin (pmbus@7-0058/in1): 0.0 V <= low critical 90.0 V".into(),
                })
                .into_iter()
                .collect(),
        }),
        capacity: Some(pb::HostCapacity {
            vcpu_free,
            memory_free_mib,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn placement_over_proto_reports() {
    let reports = [
        ("h1", proto_report(pb::HealthState::Critical, 64, 100_000)),
        ("h2", proto_report(pb::HealthState::Ok, 2, 1_024)),
        ("h3", proto_report(pb::HealthState::Ok, 16, 32_768)),
    ];
    let summaries: Vec<_> = reports
        .iter()
        .map(|(h, r)| csagent_mgmt::convert::summary_from_proto(h, r))
        .collect();
    let req = Request {
        vcpus: 4,
        memory: MiB(8192),
    };
    assert_eq!(placement::first_fit(&summaries, &req), Ok(2));
    let err = placement::first_fit(&summaries[..2], &req)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("Insufficient capacity"), "{err}");
    assert!(
        err.contains("h1: host is critical") && err.contains("pmbus@7-0058/in1"),
        "{err}"
    );
    assert!(
        err.contains("h2: Insufficient capacity on this host: vCPUs short by 2"),
        "{err}"
    );
    // An old agent's report without capacity offers nothing.
    let bare = csagent_mgmt::convert::summary_from_proto("old", &pb::HostReport::default());
    assert!(placement::first_fit(&[bare], &req).is_err());
}

/// A 2-node server with a GPU bound to vfio-pci, a GPU on the host driver
/// without an IOMMU group, and a NIC (not a passthrough candidate here).
#[test]
fn facts_from_a_fixture_server() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let write = |rel: &str, content: &str| {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, format!("{content}\n")).unwrap();
    };
    let link = |target: &str, rel: &str| {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, p).unwrap();
    };
    write(
        "etc/os-release",
        "NAME=\"Rocky Linux\"\nPRETTY_NAME=\"Rocky Linux 9.4 (Blue Onyx)\"\nID=rocky",
    );
    write("proc/sys/kernel/osrelease", "5.14.0-427.13.1.el9_4.x86_64");
    write(
        "proc/meminfo",
        "MemTotal:       263921812 kB\nMemAvailable:   250000000 kB",
    );
    let mut cpuinfo = String::new();
    for p in 0..8 {
        let (socket, core) = (p / 4, (p % 4) / 2);
        cpuinfo += &format!(
            "processor\t: {p}\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz\n\
             cpu MHz\t\t: 2000.000\nphysical id\t: {socket}\ncore id\t\t: {core}\nflags\t\t: fpu vmx avx512f\n\n"
        );
    }
    write("proc/cpuinfo", &cpuinfo);
    for (node, cpus) in [(0, "0-3"), (1, "4-7")] {
        let n = format!("sys/devices/system/node/node{node}");
        write(&format!("{n}/cpulist"), cpus);
        write(
            &format!("{n}/distance"),
            if node == 0 { "10 21" } else { "21 10" },
        );
        write(
            &format!("{n}/meminfo"),
            &format!("Node {node} MemTotal:       131960906 kB\nNode {node} MemFree:        120000000 kB"),
        );
        write(
            &format!("{n}/hugepages/hugepages-2048kB/nr_hugepages"),
            "1024",
        );
        write(
            &format!("{n}/hugepages/hugepages-2048kB/free_hugepages"),
            "512",
        );
        write(
            &format!("{n}/hugepages/hugepages-1048576kB/nr_hugepages"),
            "4",
        );
        write(
            &format!("{n}/hugepages/hugepages-1048576kB/free_hugepages"),
            "4",
        );
    }
    write("sys/devices/system/node/online", "0-1");
    write(
        "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages",
        "2048",
    );
    write(
        "sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages",
        "1024",
    );
    let pci = [
        (
            "0000:17:00.0",
            "0x030200",
            "0x10de",
            "0x20b5",
            Some("vfio-pci"),
            Some("42"),
            "0",
        ),
        (
            "0000:ca:00.0",
            "0x030000",
            "0x1a03",
            "0x2000",
            Some("ast"),
            None,
            "1",
        ),
        (
            "0000:31:00.0",
            "0x020000",
            "0x8086",
            "0x159b",
            Some("ice"),
            Some("7"),
            "0",
        ),
    ];
    for (addr, class, vendor, device, driver, group, numa) in pci {
        let d = format!("sys/devices/pci0000:00/{addr}");
        write(&format!("{d}/class"), class);
        write(&format!("{d}/vendor"), vendor);
        write(&format!("{d}/device"), device);
        write(&format!("{d}/numa_node"), numa);
        if let Some(drv) = driver {
            link(
                &format!("../../../bus/pci/drivers/{drv}"),
                &format!("{d}/driver"),
            );
        }
        if let Some(g) = group {
            link(
                &format!("../../../kernel/iommu_groups/{g}"),
                &format!("{d}/iommu_group"),
            );
        }
        link(
            &format!("../../../devices/pci0000:00/{addr}"),
            &format!("sys/bus/pci/devices/{addr}"),
        );
    }

    let f = csagent_host::facts::collect(&SysRoots::under(root), Some("root"), &[]);
    assert_eq!(f.os, "Rocky Linux 9.4 (Blue Onyx)");
    assert_eq!(f.kernel, "5.14.0-427.13.1.el9_4.x86_64");
    assert_eq!((f.cpu.sockets, f.cpu.cores, f.cpu.threads), (2, 4, 8));
    assert!(f.cpu.model.contains("Gold 6338") && f.cpu.flags.contains(&"vmx".to_string()));
    assert_eq!(f.memory_total.0, 263_921_812 * 1024);
    assert_eq!(f.numa.len(), 2);
    assert_eq!(f.numa[1].cpus, [4, 5, 6, 7]);
    assert_eq!(f.numa[1].distances, [21, 10]);
    assert_eq!(f.numa[0].memory_total.0, 131_960_906 * 1024);
    assert_eq!(f.numa[0].hugepages[0].page_size_kib, 2048);
    assert_eq!(
        (f.numa[0].hugepages[1].total, f.numa[0].hugepages[1].free),
        (4, 4)
    );
    assert_eq!(f.hugepages.len(), 1);
    assert_eq!(f.hugepages[0].free, 1024);
    assert!(!f.kvm.usable, "no dev/kvm in the fixture");
    assert_eq!(f.pci_devices.len(), 2, "{:?}", f.pci_devices);
    let gpu = &f.pci_devices[0];
    assert_eq!(gpu.address, "0000:17:00.0");
    assert_eq!(
        (gpu.class_name.as_str(), gpu.vendor_id, gpu.device_id),
        ("3D controller", 0x10de, 0x20b5)
    );
    assert_eq!(
        (gpu.driver.as_deref(), gpu.iommu_group, gpu.numa_node),
        (Some("vfio-pci"), Some(42), Some(0))
    );
    let bmc = &f.pci_devices[1];
    assert_eq!(
        (bmc.class_name.as_str(), bmc.iommu_group),
        ("VGA compatible controller", None)
    );
    let wire = convert::facts_to_proto(&f, "0.1.0");
    assert_eq!(wire.pci_devices[1].iommu_group, -1);
    assert_eq!(wire.numa_nodes[1].hugepages.len(), 2);
}

/// /dev/kvm as a real character device node in a tempdir, with the modes
/// distributions use, checked for QEMU's user and for one without kvm group.
#[test]
fn kvm_device_modes_against_user_groups() {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    let Some(qemu) = nix::unistd::User::from_name("libvirt-qemu").ok().flatten() else {
        csagent_testkit::skip!("no libvirt-qemu user on this machine");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let kvm = dir.path().join("kvm");
    if let Err(e) = mknod(
        &kvm,
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o660),
        makedev(10, 232),
    ) {
        csagent_testkit::skip!("cannot create a device node here ({e})");
        return;
    }
    // Owned by root, group = QEMU user's primary group (kvm on Debian).
    nix::unistd::chown(&kvm, Some(nix::unistd::Uid::from_raw(0)), Some(qemu.gid)).unwrap();
    let set_mode = |m: u32| fs::set_permissions(&kvm, fs::Permissions::from_mode(m)).unwrap();
    let status = |user: &str| csagent_host::facts::kvm_status(dir.path(), Some(user));
    set_mode(0o660);
    assert!(
        status("libvirt-qemu").usable,
        "{:?}",
        status("libvirt-qemu")
    );
    assert!(!status("nobody").usable, "root can open it, nobody cannot");
    set_mode(0o600);
    let denied = status("libvirt-qemu");
    assert!(
        !denied.usable && denied.detail.contains("mode 600"),
        "{denied:?}"
    );
    set_mode(0o666);
    assert!(status("nobody").usable);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Garbage from libvirt is an error, never a panic.
        #[test]
        fn caps_parser_never_panics(a in ".{0,200}", b in "<[a-zA-Z/ '=]{0,80}>?") {
            let _ = libvirt_caps::parse(&a, &b, 0, 0);
            let _ = libvirt_caps::parse(CAPS, &format!("<domainCapabilities>{b}</domainCapabilities>"), 0, 0);
        }

        /// Any three timestamps give a skew or a clear error, and the offset
        /// formula is exact when the round trip is even.
        #[test]
        fn skew_is_total(sent in any::<i64>(), plane in any::<i64>(), recv in any::<i64>()) {
            if let Ok(s) = clock::skew(sent, plane, recv) {
                prop_assert!(s.round_trip_ms >= 0);
            }
        }

        #[test]
        fn skew_formula(sent in -1_000_000_000i64..1_000_000_000, rtt in 0i64..10_000, offset in -100_000i64..100_000) {
            let rtt = rtt * 2;
            let plane = sent + rtt / 2 + offset;
            let s = clock::skew(sent, plane, sent + rtt).unwrap();
            prop_assert_eq!(s.offset_ms, offset);
        }

        /// Whatever a sensor file holds, reading never panics and never
        /// reports an implausible value.
        #[test]
        fn sensor_files_with_any_content(content in proptest::collection::vec(any::<u8>(), 0..40)) {
            let dir = tempfile::tempdir().unwrap();
            let hw = dir.path().join("class/hwmon/hwmon0");
            fs::create_dir_all(&hw).unwrap();
            fs::write(hw.join("name"), "fuzz\n").unwrap();
            fs::write(hw.join("temp1_input"), &content).unwrap();
            fs::write(hw.join("temp1_max"), &content).unwrap();
            fs::write(hw.join("fan1_input"), &content).unwrap();
            let mut set = csagent_host::sensors::SensorSet::new(dir.path());
            for r in set.read() {
                prop_assert!(r.kind.plausible(r.value), "{:?}", r);
            }
        }
    }
}
