//! ScaleVm, AttachDevice, DetachDevice, GetVmStats and GetConsole through the
//! plane, on a real libvirtd with QEMU (TCG VMs with a tiny qcow2 disk and no
//! OS). Every object is named cstest-ops-* and removed by a Drop guard.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use csagent_proto::v1 as pb;
use csagent_testkit::*;

const URI: &str = "qemu:///system";
const IMAGES: &str = "/var/lib/libvirt/images";

fn short() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

fn virsh(args: &[&str]) -> (bool, String) {
    let out = Command::new("virsh")
        .arg("-c")
        .arg(URI)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Removes domains, files and bridges the test made, even when it fails.
#[derive(Default)]
struct Guard {
    vms: Vec<uuid::Uuid>,
    files: Vec<PathBuf>,
    bridges: Vec<String>,
}

impl Guard {
    fn image(&mut self, size: &str, ext: &str) -> String {
        let p = PathBuf::from(format!("{IMAGES}/cstest-ops-{}.{ext}", short()));
        let fmt = if ext == "qcow2" { "qcow2" } else { "raw" };
        let out = Command::new("qemu-img")
            .args(["create", "-q", "-f", fmt])
            .arg(&p)
            .arg(size)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        self.files.push(p.clone());
        p.to_string_lossy().into_owned()
    }

    fn bridge(&mut self) -> String {
        let name = format!("cstest-ops-{}", &short()[..4]);
        let ok = Command::new("ip")
            .args(["link", "add", &name, "type", "bridge"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot create bridge {name}");
        self.bridges.push(name.clone());
        Command::new("ip")
            .args(["link", "set", &name, "up"])
            .status()
            .unwrap();
        name
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        for u in &self.vms {
            let u = u.to_string();
            virsh(&["destroy", &u]);
            virsh(&["undefine", &u, "--nvram"]);
        }
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
        for b in &self.bridges {
            let _ = Command::new("ip").args(["link", "del", b]).status();
        }
    }
}

/// A TCG VM: 1 of 4 vCPUs online, 64 of 128 MiB, a balloon, a virtio disk,
/// an empty IDE CD-ROM and a VNC console with a password.
fn spec(g: &mut Guard) -> (uuid::Uuid, pb::VmSpec) {
    let uuid = uuid::Uuid::new_v4();
    g.vms.push(uuid);
    let disk = g.image("16M", "qcow2");
    let s = pb::VmSpec {
        domain_type: "qemu".into(),
        name: format!("cstest-ops-{}", short()),
        uuid: uuid.to_string(),
        memory: Some(pb::VmMemory {
            size_kib: 128 * 1024,
            current_kib: Some(64 * 1024),
            ..Default::default()
        }),
        cpu: Some(pb::VmCpu {
            vcpus: 4,
            current_vcpus: Some(1),
            ..Default::default()
        }),
        disks: vec![
            pb::VmDisk {
                source_type: "file".into(),
                source: disk,
                format: "qcow2".into(),
                target: "vda".into(),
                bus: "virtio".into(),
                ..Default::default()
            },
            pb::VmDisk {
                device: "cdrom".into(),
                target: "hdc".into(),
                bus: "ide".into(),
                readonly: true,
                ..Default::default()
            },
        ],
        scsi_controller: Some(pb::VmScsiController::default()),
        graphics: vec![pb::VmGraphics {
            r#type: "vnc".into(),
            autoport: true,
            listen: "127.0.0.1".into(),
            passwd: "s3cret".into(),
            ..Default::default()
        }],
        balloon: Some(pb::VmBalloon::default()),
        // PCI hotplug on i440fx goes through ACPI.
        features: Some(pb::VmFeatures {
            acpi: true,
            apic: true,
            ..Default::default()
        }),
        ..Default::default()
    };
    (uuid, s)
}

async fn run(f: &Fixture, body: pb::command::Body) -> pb::CommandResult {
    call(&f.plane, &f.host, cmd("", 0, body), Duration::from_secs(60)).await
}

async fn ok(f: &Fixture, body: pb::command::Body) -> pb::command_result::Result {
    let r = run(f, body).await;
    assert_eq!(r.status, pb::CommandStatus::Ok as i32, "{r:?}");
    r.result.unwrap()
}

async fn start(f: &Fixture, s: &pb::VmSpec) {
    ok(
        f,
        pb::command::Body::StartVm(pb::StartVm {
            spec: Some(s.clone()),
            ..Default::default()
        }),
    )
    .await;
}

async fn power_off(f: &Fixture, uuid: &uuid::Uuid) {
    ok(
        f,
        pb::command::Body::StopVm(pb::StopVm {
            vm_uuid: uuid.to_string(),
            force: true,
            timeout_ms: 1,
        }),
    )
    .await;
}

async fn agent() -> (Fixture, InProcessAgent) {
    let f = Fixture::new(fast_liveness()).await;
    let mut cfg = f.config();
    cfg.hypervisor.uri = URI.into();
    // QEMU starts slowly on a loaded CI machine with other tests' VMs.
    cfg.hypervisor.call_timeout_ms = 60_000;
    cfg.host.capacity.reserved_memory_mib = 0;
    cfg.host.capacity.cpu_overcommit = 16.0;
    let a = run_in_process(cfg);
    f.wait_up(String::new).await;
    (f, a)
}

fn scale(uuid: &uuid::Uuid, vcpus: Option<u32>, mem: Option<u64>) -> pb::command::Body {
    pb::command::Body::ScaleVm(pb::ScaleVm {
        vm_uuid: uuid.to_string(),
        vcpus,
        memory_kib: mem,
    })
}

fn xml(uuid: &uuid::Uuid, inactive: bool) -> String {
    let u = uuid.to_string();
    let mut args = vec!["dumpxml", u.as_str()];
    if inactive {
        args.push("--inactive");
    }
    virsh(&args).1
}

fn vcpus_live(uuid: &uuid::Uuid) -> String {
    virsh(&["vcpucount", &uuid.to_string(), "--live", "--active"])
        .1
        .trim()
        .to_string()
}

#[tokio::test]
async fn scale_within_the_defined_maximums_only() {
    let mut g = Guard::default();
    let (f, a) = agent().await;
    let (uuid, s) = spec(&mut g);
    start(&f, &s).await;

    // Grow vCPUs on the running VM: libvirt shows it live and persistently.
    let Some(pb::command_result::Result::ScaleVm(r)) =
        Some(ok(&f, scale(&uuid, Some(2), None)).await)
    else {
        panic!()
    };
    assert!(r.changed && r.max_vcpus == 4, "{r:?}");
    assert_eq!(vcpus_live(&uuid), "2");
    // The host-wide list (the heartbeat's source) is not left stale.
    let Some(pb::command_result::Result::VmList(l)) =
        Some(ok(&f, pb::command::Body::ListVms(pb::ListVms::default())).await)
    else {
        panic!()
    };
    let listed = l.vms.iter().find(|v| v.vm_uuid == uuid.to_string());
    assert_eq!(listed.map(|v| v.vcpus), Some(2), "{l:?}");
    assert!(
        xml(&uuid, true).contains("current='2'"),
        "{}",
        xml(&uuid, true)
    );
    // Beyond <vcpu>: refused, naming the limit, nothing changed.
    let r = run(&f, scale(&uuid, Some(5), Some(96 * 1024))).await;
    assert_eq!(r.error_code, pb::ErrorCode::InvalidArgument as i32, "{r:?}");
    assert!(r.message.contains("1..4"), "{}", r.message);
    assert_eq!(vcpus_live(&uuid), "2");
    assert!(xml(&uuid, true).contains("<currentMemory unit='KiB'>65536<"));
    // Shrinking a running VM is refused.
    let r = run(&f, scale(&uuid, Some(1), None)).await;
    assert_eq!(r.error_code, pb::ErrorCode::Conflict as i32, "{r:?}");

    // Memory: the balloon target grows within <memory>.
    // (The live figure follows the guest's balloon driver, which a VM
    // without an OS does not have; the definition shows the new target.)
    ok(&f, scale(&uuid, None, Some(96 * 1024))).await;
    assert!(xml(&uuid, true).contains("<currentMemory unit='KiB'>98304<"));
    let r = run(&f, scale(&uuid, None, Some(256 * 1024))).await;
    assert_eq!(r.error_code, pb::ErrorCode::InvalidArgument as i32, "{r:?}");
    assert!(r.message.contains("131072 KiB"), "{}", r.message);
    // The same values again: success, no change.
    let Some(pb::command_result::Result::ScaleVm(r)) =
        Some(ok(&f, scale(&uuid, Some(2), Some(96 * 1024))).await)
    else {
        panic!()
    };
    assert!(!r.changed, "{r:?}");

    // Stopped: only the definition changes, and shrinking is fine.
    power_off(&f, &uuid).await;
    ok(&f, scale(&uuid, Some(1), Some(32 * 1024))).await;
    let def = xml(&uuid, true);
    assert!(def.contains("current='1'"), "{def}");
    assert!(def.contains("<currentMemory unit='KiB'>32768<"), "{def}");
    a.stop().await;
}

/// Memory past `<memory>`: a VM defined for hotplug (maxMemory, slots, a
/// NUMA cell) gets a DIMM, live and in its definition, up to maxMemory.
#[tokio::test]
async fn memory_grows_by_dimm_up_to_max_memory() {
    let mut g = Guard::default();
    let (f, a) = agent().await;
    let (uuid, mut s) = spec(&mut g);
    s.memory = Some(pb::VmMemory {
        size_kib: 128 * 1024,
        max_kib: 512 * 1024,
        slots: 1,
        ..Default::default()
    });
    s.cpu.as_mut().unwrap().numa = vec![pb::VmNumaCell {
        id: 0,
        cpus: "0-3".into(),
        memory_kib: 128 * 1024,
    }];
    start(&f, &s).await;

    // 200,000 KiB needs 68,928 more: a 69,632 KiB module (2 MiB steps).
    let Some(pb::command_result::Result::ScaleVm(r)) =
        Some(ok(&f, scale(&uuid, None, Some(200_000))).await)
    else {
        panic!()
    };
    assert!(r.changed && r.max_memory_kib == 512 * 1024, "{r:?}");
    for inactive in [false, true] {
        let x = xml(&uuid, inactive);
        assert!(x.contains("model='dimm'"), "{x}");
        assert!(x.contains("<size unit='KiB'>69632</size>"), "{x}");
        assert!(x.contains("<memory unit='KiB'>200704</memory>"), "{x}");
    }
    // (Live, the balloon figure follows the guest's driver; no OS here.)
    let def = xml(&uuid, true);
    assert!(def.contains("<currentMemory unit='KiB'>200000<"), "{def}");
    // Past maxMemory, or with no slot left: refused, nothing changed.
    let r = run(&f, scale(&uuid, None, Some(600 * 1024))).await;
    assert_eq!(r.error_code, pb::ErrorCode::InvalidArgument as i32, "{r:?}");
    assert!(r.message.contains("maxMemory"), "{}", r.message);
    let r = run(&f, scale(&uuid, None, Some(300 * 1024))).await;
    assert_eq!(r.error_code, pb::ErrorCode::Conflict as i32, "{r:?}");
    assert!(r.message.contains("slot"), "{}", r.message);
    assert_eq!(xml(&uuid, false).matches("model='dimm'").count(), 1);
    a.stop().await;
}

fn attach(uuid: &uuid::Uuid, d: pb::attach_device::Device) -> pb::command::Body {
    pb::command::Body::AttachDevice(pb::AttachDevice {
        vm_uuid: uuid.to_string(),
        device: Some(d),
    })
}

fn detach(uuid: &uuid::Uuid, d: pb::detach_device::Device) -> pb::command::Body {
    pb::command::Body::DetachDevice(pb::DetachDevice {
        vm_uuid: uuid.to_string(),
        device: Some(d),
    })
}

fn device(r: pb::command_result::Result) -> pb::DeviceResult {
    match r {
        pb::command_result::Result::Device(d) => d,
        other => panic!("{other:?}"),
    }
}

fn disk(path: &str, target: &str, bus: &str) -> pb::attach_device::Device {
    pb::attach_device::Device::Disk(pb::VmDisk {
        source_type: "file".into(),
        source: path.into(),
        format: "qcow2".into(),
        target: target.into(),
        bus: bus.into(),
        ..Default::default()
    })
}

fn nic(mac: &str, bridge: &str) -> pb::attach_device::Device {
    pb::attach_device::Device::Interface(pb::VmInterface {
        mac: mac.into(),
        bridge: bridge.into(),
        ..Default::default()
    })
}

fn iso(path: &str) -> pb::attach_device::Device {
    pb::attach_device::Device::Iso(pb::InsertIso {
        path: path.into(),
        ..Default::default()
    })
}

#[tokio::test]
async fn disks_nics_and_isos_on_running_and_stopped_vms() {
    let mut g = Guard::default();
    let (f, a) = agent().await;
    let br = g.bridge();
    let (uuid, s) = spec(&mut g);
    start(&f, &s).await;
    let extra = g.image("8M", "qcow2");
    let image = g.image("1M", "iso");

    // Running: a SCSI disk plugs and unplugs without the guest's help.
    let d = device(ok(&f, attach(&uuid, disk(&extra, "sdb", "scsi"))).await);
    assert!(d.live && d.config && !d.unchanged, "{d:?}");
    assert!(xml(&uuid, false).contains(&extra) && xml(&uuid, true).contains(&extra));
    let d = device(ok(&f, attach(&uuid, disk(&extra, "sdb", "scsi"))).await);
    assert!(d.unchanged, "identical attach must be a no-op: {d:?}");
    let r = run(&f, attach(&uuid, disk(&extra, "vda", "virtio"))).await;
    assert_eq!(r.error_code, pb::ErrorCode::Conflict as i32, "{r:?}");
    let d = device(
        ok(
            &f,
            detach(&uuid, pb::detach_device::Device::DiskTarget("sdb".into())),
        )
        .await,
    );
    assert!(d.live && d.config, "{d:?}");
    assert!(!xml(&uuid, true).contains(&extra));
    let r = run(
        &f,
        detach(&uuid, pb::detach_device::Device::DiskTarget("sdb".into())),
    )
    .await;
    assert_eq!(r.error_code, pb::ErrorCode::NotFound as i32, "{r:?}");

    // Running: a NIC on the test's bridge.
    let mac = "52:54:00:c5:0e:01";
    let d = device(ok(&f, attach(&uuid, nic(mac, &br))).await);
    assert!(d.live && d.config, "{d:?}");
    assert!(xml(&uuid, false).contains(mac));
    let d = device(
        ok(
            &f,
            detach(&uuid, pb::detach_device::Device::InterfaceMac(mac.into())),
        )
        .await,
    );
    // PCI unplug waits for a guest that does not exist: the definition is
    // changed at once, the live device is reported as pending.
    assert!(
        d.config && (d.pending || !xml(&uuid, false).contains(mac)),
        "{d:?}"
    );
    assert!(!xml(&uuid, true).contains(mac));

    // Running: media change in the existing drive, then eject.
    let d = device(ok(&f, attach(&uuid, iso(&image))).await);
    assert_eq!(d.device, "cdrom hdc");
    assert!(xml(&uuid, false).contains(&image));
    assert!(device(ok(&f, attach(&uuid, iso(&image))).await).unchanged);
    ok(
        &f,
        detach(
            &uuid,
            pb::detach_device::Device::EjectIsoTarget(String::new()),
        ),
    )
    .await;
    assert!(!xml(&uuid, false).contains(&image));

    // Stopped: the definition only; a VM without a drive gets a new one.
    power_off(&f, &uuid).await;
    let d = device(ok(&f, attach(&uuid, disk(&extra, "vdb", "virtio"))).await);
    assert!(!d.live && d.config, "{d:?}");
    assert!(xml(&uuid, true).contains("dev='vdb'"));
    ok(&f, attach(&uuid, nic(mac, &br))).await;
    assert!(xml(&uuid, true).contains(mac));
    ok(
        &f,
        detach(&uuid, pb::detach_device::Device::InterfaceMac(mac.into())),
    )
    .await;
    ok(
        &f,
        detach(&uuid, pb::detach_device::Device::DiskTarget("hdc".into())),
    )
    .await;
    let d = device(ok(&f, attach(&uuid, iso(&image))).await);
    assert_eq!(d.device, "cdrom hdc");
    let def = xml(&uuid, true);
    assert!(def.contains(&image) && !def.contains(mac), "{def}");
    ok(
        &f,
        detach(&uuid, pb::detach_device::Device::DiskTarget("vdb".into())),
    )
    .await;
    assert!(!xml(&uuid, true).contains("dev='vdb'"));
    a.stop().await;
}

fn stats(collector: &str, vms: &[uuid::Uuid]) -> pb::command::Body {
    pb::command::Body::GetVmStats(pb::GetVmStats {
        collector: collector.into(),
        vm_uuids: vms.iter().map(|u| u.to_string()).collect(),
    })
}

async fn stats_of(f: &Fixture, collector: &str, vms: &[uuid::Uuid]) -> Vec<pb::VmStats> {
    match ok(f, stats(collector, vms)).await {
        pb::command_result::Result::VmStats(l) => l.vms,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn stats_per_collector_and_console() {
    let mut g = Guard::default();
    let (f, a) = agent().await;
    let (u1, s1) = spec(&mut g);
    let (u2, mut s2) = spec(&mut g);
    s2.cpu.as_mut().unwrap().current_vcpus = Some(2);
    start(&f, &s1).await;
    start(&f, &s2).await;
    let both = [u1, u2];

    // First sample of each (collector, VM): no figure, flagged.
    for c in ["a", "b"] {
        let v = stats_of(&f, c, &both).await;
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(
            v.iter().all(|s| s.first_sample && s.cpu_percent.is_none()),
            "{v:?}"
        );
    }
    // Interleaved: "a" twice as often as "b"; each against its own past.
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let collectors: &[&str] = if round % 2 == 1 { &["a", "b"] } else { &["a"] };
        for c in collectors {
            for s in stats_of(&f, c, &both).await {
                let pct = s.cpu_percent.expect("a second sample has a figure");
                assert!((0.0..=100.0).contains(&pct), "{c}: {s:?}");
                assert!(!s.first_sample && !s.unresponsive, "{s:?}");
                // Shared samples would give "b" a's 300 ms interval.
                let least = if *c == "b" { 550 } else { 250 };
                assert!(s.interval_ms >= least, "{c}: {s:?}");
                let vcpus = if s.vm_uuid == u2.to_string() { 2 } else { 1 };
                assert!(s.vcpus == vcpus && s.cpu_time_ns > 0, "{s:?}");
                assert!(s.disks.iter().any(|d| d.target == "vda"), "{s:?}");
                assert!(s.memory_kib > 0, "{s:?}");
            }
        }
    }
    // Without a filter every running VM comes back, ours among them.
    let all = stats_of(&f, "", &[]).await;
    for u in both {
        assert!(all.iter().any(|s| s.vm_uuid == u.to_string()), "{all:?}");
    }

    // The console: the port libvirt chose, and the password.
    let r = ok(
        &f,
        pb::command::Body::GetConsole(pb::GetConsole {
            vm_uuid: u1.to_string(),
        }),
    )
    .await;
    let pb::command_result::Result::Console(c) = r else {
        panic!("{r:?}")
    };
    let (_, display) = virsh(&["vncdisplay", &u1.to_string()]);
    let display: u32 = display
        .trim()
        .trim_start_matches("127.0.0.1:")
        .parse()
        .unwrap();
    assert_eq!(c.port, 5900 + display, "{c:?}");
    assert_eq!(c.password, "s3cret");
    assert_eq!(c.host, "127.0.0.1");
    a.stop().await;
}

#[tokio::test]
async fn domains_csagent_did_not_define_are_never_changed() {
    let mut g = Guard::default();
    let (f, a) = agent().await;
    let uuid = uuid::Uuid::new_v4();
    g.vms.push(uuid);
    let image = g.image("8M", "qcow2");
    let def = format!(
        "<domain type='qemu'><name>cstest-ops-foreign-{}</name><uuid>{uuid}</uuid><memory unit='KiB'>65536</memory><vcpu current='1'>2</vcpu><os><type arch='x86_64'>hvm</type></os><devices><graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'/></devices></domain>",
        short()
    );
    let file = g.image("0", "xml");
    std::fs::write(&file, def).unwrap();
    let (defined, _) = virsh(&["define", &file]);
    assert!(defined);
    let before = xml(&uuid, true);
    for body in [
        scale(&uuid, Some(2), None),
        attach(&uuid, disk(&image, "vdb", "virtio")),
        detach(&uuid, pb::detach_device::Device::DiskTarget("vdb".into())),
    ] {
        let r = run(&f, body).await;
        assert_eq!(
            r.error_code,
            pb::ErrorCode::PermissionDenied as i32,
            "{r:?}"
        );
        assert!(
            r.message.contains("not defined by csagent"),
            "{}",
            r.message
        );
    }
    assert_eq!(xml(&uuid, true), before, "a foreign domain was changed");
    // Reading is allowed: a stopped VM's console has no port yet.
    let r = run(
        &f,
        pb::command::Body::GetConsole(pb::GetConsole {
            vm_uuid: uuid.to_string(),
        }),
    )
    .await;
    assert_eq!(r.error_code, pb::ErrorCode::Conflict as i32, "{r:?}");
    a.stop().await;
}

/// Resumes a QEMU process the test stopped, even when the test fails.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGCONT,
        );
    }
}

#[tokio::test]
async fn a_hung_qemu_delays_nobody_and_is_left_out() {
    let mut g = Guard::default();
    let (f, a) = agent().await;
    let (hung, s1) = spec(&mut g);
    let (fine, s2) = spec(&mut g);
    start(&f, &s1).await;
    start(&f, &s2).await;
    let both = [hung, fine];
    stats_of(&f, "h", &both).await;

    // A stopped QEMU process never answers its monitor: the bulk call on
    // its domain hangs until the agent gives up on it.
    let pid: i32 = std::fs::read_to_string(format!("/run/libvirt/qemu/{}.pid", s1.name))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let resume = Resume(pid);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();

    let t = std::time::Instant::now();
    let v = stats_of(&f, "h", &both).await;
    let first = t.elapsed();
    let by = |u: &uuid::Uuid| v.iter().find(|s| s.vm_uuid == u.to_string()).cloned();
    assert!(by(&hung).unwrap().unresponsive, "{v:?}");
    let ok_vm = by(&fine).unwrap();
    assert!(
        !ok_vm.unresponsive && ok_vm.cpu_percent.is_some(),
        "{ok_vm:?}"
    );
    assert!(first < Duration::from_secs(20), "took {first:?}");

    // The next rounds leave it out and are quick; lifecycle calls on the
    // agent's own connection were never blocked.
    let t = std::time::Instant::now();
    let v = stats_of(&f, "h", &both).await;
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
    let hung_again = v.iter().find(|s| s.vm_uuid == hung.to_string()).unwrap();
    assert!(
        hung_again.unresponsive && hung_again.cpu_percent.is_none(),
        "{v:?}"
    );
    let r = run(
        &f,
        pb::command::Body::GetVmState(pb::GetVmState {
            vm_uuid: fine.to_string(),
        }),
    )
    .await;
    assert_eq!(r.status, pb::CommandStatus::Ok as i32, "{r:?}");
    drop(resume);
    a.stop().await;
}
