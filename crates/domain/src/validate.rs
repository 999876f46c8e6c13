//! Checks a `VmSpec` before any XML exists, naming each bad field by its path
//! in the proto spec (`disks[1].target`), and reporting every problem at once.
//!
//! Owns the rules that libvirt or QEMU would otherwise reject later (or worse,
//! silently change). It must not render, parse or fix anything up.

use super::error::{DomainError, Errors};
use super::model::*;

/// Validates the whole spec; Ok means render and libvirt's define can proceed.
pub fn validate(spec: &VmSpec) -> Result<(), DomainError> {
    let mut e = Errors::default();
    identity(spec, &mut e);
    memory(&spec.memory, &mut e);
    hotplug_numa(spec, &mut e);
    cpu(spec, &mut e);
    boot(spec, &mut e);
    clock(&spec.clock, &mut e);
    disks(spec, &mut e);
    interfaces(&spec.devices.interfaces, &mut e);
    other_devices(&spec.devices, &mut e);
    boot_orders(&spec.devices, &mut e);
    e.finish()
}

/// Characters XML 1.0 cannot carry (or that libvirt rewrites) in our strings.
fn bad_char(c: char, newlines_ok: bool) -> bool {
    let not_xml = matches!(c, '\u{FFFE}' | '\u{FFFF}');
    not_xml || (c.is_control() && !(newlines_ok && (c == '\n' || c == '\t')))
}

/// Field paths are formatted only when there is an error: validation runs on
/// every render.
fn check(e: &mut Errors, problem: Option<String>, field: impl FnOnce() -> String) {
    if let Some(p) = problem {
        e.push(field(), p);
    }
}

fn bad_text(s: &str, newlines_ok: bool) -> Option<String> {
    let c = s.chars().find(|&c| bad_char(c, newlines_ok))?;
    Some(format!("contains the control character {c:?}; remove it"))
}

fn text(e: &mut Errors, field: &str, s: &str, newlines_ok: bool) {
    check(e, bad_text(s, newlines_ok), || field.to_string());
}

fn non_empty(e: &mut Errors, field: &str, s: &str) {
    if s.is_empty() {
        e.push(field, "is empty; leave it out instead");
    }
}

fn bad_path(s: &str) -> Option<String> {
    if !s.starts_with('/') {
        return Some(format!("{s:?} is not an absolute path"));
    }
    bad_text(s, false)
}

fn abs_path(e: &mut Errors, field: &str, s: &str) {
    check(e, bad_path(s), || field.to_string());
}

fn identity(spec: &VmSpec, e: &mut Errors) {
    let n = &spec.name;
    if n.is_empty() {
        e.push("name", "is empty; a domain needs a name");
    } else if n.contains('/') {
        e.push(
            "name",
            format!("{n:?} contains '/', which libvirt forbids in domain names"),
        );
    } else if n.len() > 255 {
        e.push("name", "is longer than 255 bytes");
    }
    text(e, "name", n, false);
    if spec.uuid.0.is_nil() {
        e.push("uuid", "is the nil UUID; give the VM its own UUID");
    }
    // Empty means "unset" in the proto spec, so an empty value would not survive a round trip.
    if let Some(t) = &spec.title {
        non_empty(e, "title", t);
        text(e, "title", t, false);
    }
    if let Some(d) = &spec.description {
        non_empty(e, "description", d);
        text(e, "description", d, true);
    }
    if let Some(m) = &spec.meta {
        for (f, v) in [
            ("ids.instance_id", &m.instance_id),
            ("ids.account_id", &m.account_id),
            ("ids.zone_id", &m.zone_id),
            ("ids.service_offering_id", &m.service_offering_id),
        ] {
            text(e, f, v, false);
        }
        if m.instance_id.is_empty() {
            e.push(
                "ids.instance_id",
                "is empty; csagent identifies its VMs by it",
            );
        }
    }
}

/// libvirt refuses to define a domain with `<maxMemory>` but no guest NUMA
/// cell: hot-added DIMMs have to join a node.
fn hotplug_numa(spec: &VmSpec, e: &mut Errors) {
    let has_cells = spec.cpu.as_ref().is_some_and(|c| !c.numa.is_empty());
    if spec.memory.max.is_some() && !has_cells {
        e.push(
            "cpu.numa",
            "memory.max_kib (memory hotplug) needs at least one NUMA cell for the DIMMs to join",
        );
    }
}

fn memory(m: &Memory, e: &mut Errors) {
    if m.size.0 == 0 {
        e.push("memory.size_kib", "is zero; a VM needs memory");
    }
    if let Some(c) = m.current {
        if c.0 == 0 || c > m.size {
            e.push(
                "memory.current_kib",
                format!("{} KiB must be between 1 and size_kib ({})", c.0, m.size.0),
            );
        }
    }
    if let Some(max) = m.max {
        if max.size < m.size {
            e.push(
                "memory.max_kib",
                format!("{} KiB is below size_kib ({})", max.size.0, m.size.0),
            );
        }
        if max.slots == 0 || max.slots > 255 {
            e.push(
                "memory.slots",
                format!("{} must be 1..255 when max_kib is set", max.slots),
            );
        }
    }
    if let Some(Some(page)) = m.hugepages {
        if !page.0.is_power_of_two() || page.0 < 4 {
            e.push(
                "memory.hugepage_size_kib",
                format!("{} is not a page size", page.0),
            );
        }
    }
}

fn cpu(spec: &VmSpec, e: &mut Errors) {
    let v = spec.vcpu;
    if v.max == 0 {
        e.push("cpu.vcpus", "is zero; a VM needs at least one vCPU");
    }
    if let Some(c) = v.current {
        if c == 0 || c > v.max {
            e.push(
                "cpu.current_vcpus",
                format!("{c} must be between 1 and vcpus ({})", v.max),
            );
        }
    }
    if let Some(t) = spec.cputune {
        cputune(t, e);
    }
    let Some(cpu) = &spec.cpu else { return };
    if cpu.mode == Some(CpuMode::Custom) && cpu.model.is_none() {
        e.push("cpu.model", "is required with mode \"custom\"");
    }
    let host_cpu = matches!(
        cpu.mode,
        Some(CpuMode::HostPassthrough | CpuMode::HostModel)
    );
    if !cpu.features.is_empty() && cpu.model.is_none() && !host_cpu {
        e.push(
            "cpu.features",
            "need cpu.model unless mode is \"host-passthrough\" or \"host-model\"",
        );
    }
    if let Some(m) = &cpu.model {
        text(e, "cpu.model", m, false);
    }
    for (i, f) in cpu.features.iter().enumerate() {
        if f.name.is_empty()
            || !f
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            e.push(
                format!("cpu.features[{i}].name"),
                format!("{:?} is not a CPU feature name", f.name),
            );
        } else if cpu.features[..i].iter().any(|o| o.name == f.name) {
            e.push(
                format!("cpu.features[{i}].name"),
                format!("duplicate feature {:?}", f.name),
            );
        }
    }
    if let Some(t) = cpu.topology {
        let product = u64::from(t.sockets) * u64::from(t.cores) * u64::from(t.threads);
        if product != u64::from(v.max) {
            e.push(
                "cpu.topology",
                format!(
                    "sockets*cores*threads = {product} but vcpus = {}; they must match",
                    v.max
                ),
            );
        }
    }
    numa(spec, cpu, e);
}

fn cputune(t: CpuTune, e: &mut Errors) {
    if let Some(s) = t.shares {
        if !(2..=262_144).contains(&s) {
            e.push("cpu.shares", format!("{s} is outside 2..262144"));
        }
    }
    if let Some(p) = t.period_us {
        if !(1000..=1_000_000).contains(&p) {
            e.push("cpu.period_us", format!("{p} is outside 1000..1000000"));
        }
    }
    if let Some(q) = t.quota_us {
        if q != -1 && !(1000..=17_592_186_044_415).contains(&q) {
            e.push(
                "cpu.quota_us",
                format!("{q} must be -1 (no cap) or at least 1000"),
            );
        }
    }
}

fn numa(spec: &VmSpec, cpu: &Cpu, e: &mut Errors) {
    if cpu.numa.is_empty() {
        return;
    }
    let mut total = 0u64;
    for (i, cell) in cpu.numa.iter().enumerate() {
        if cpu.numa[..i].iter().any(|o| o.id == cell.id) {
            e.push(
                format!("cpu.numa[{i}].id"),
                format!("duplicate cell id {}", cell.id),
            );
        }
        let ok = !cell.cpus.is_empty()
            && cell
                .cpus
                .chars()
                .all(|c| c.is_ascii_digit() || ",-^".contains(c));
        if !ok {
            e.push(
                format!("cpu.numa[{i}].cpus"),
                format!("{:?} is not a cpuset like \"0-3,6\"", cell.cpus),
            );
        }
        total = total.saturating_add(cell.memory.0);
    }
    if total != spec.memory.size.0 {
        e.push(
            "cpu.numa",
            format!(
                "cells add up to {total} KiB but memory.size_kib is {}; they must match",
                spec.memory.size.0
            ),
        );
    }
}

fn is_q35(spec: &VmSpec) -> bool {
    spec.os
        .machine
        .as_deref()
        .is_some_and(|m| m.contains("q35"))
}

fn boot(spec: &VmSpec, e: &mut Errors) {
    let os = &spec.os;
    if !matches!(
        os.arch.as_str(),
        "x86_64" | "i686" | "aarch64" | "ppc64le" | "s390x"
    ) {
        e.push("boot.arch", format!("unknown architecture {:?}", os.arch));
    }
    if let Some(m) = &os.machine {
        if m.is_empty()
            || !m
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            e.push("boot.machine", format!("{m:?} is not a machine type"));
        }
    }
    if let Firmware::Uefi(u) = &os.firmware {
        abs_path(e, "boot.loader", &u.loader);
        if let Some(n) = &u.nvram {
            abs_path(e, "boot.nvram", n);
        }
        if let Some(t) = &u.nvram_template {
            abs_path(e, "boot.nvram_template", t);
        }
        if u.secure_boot && !spec.features.smm {
            e.push(
                "features.smm",
                "must be true with boot.secure_boot (OVMF secure boot needs SMM)",
            );
        }
        if u.secure_boot && os.machine.is_some() && !is_q35(spec) {
            e.push("boot.machine", "secure boot needs a q35 machine type");
        }
    }
    if let Some(k) = &os.kernel {
        abs_path(e, "boot.kernel", &k.kernel);
        if let Some(i) = &k.initrd {
            abs_path(e, "boot.initrd", i);
        }
        if let Some(c) = &k.cmdline {
            text(e, "boot.cmdline", c, false);
        }
    }
    if let Some(h) = spec.features.hyperv {
        if h.spinlocks.is_some_and(|r| r < 4095) {
            e.push("features.hyperv.spinlocks", "retries must be at least 4095");
        }
        if h.stimer && !h.synic {
            e.push("features.hyperv.stimer", "needs features.hyperv.synic");
        }
        if h.synic && !h.vpindex {
            e.push("features.hyperv.synic", "needs features.hyperv.vpindex");
        }
    }
    if let Some(emu) = &spec.devices.emulator {
        abs_path(e, "emulator", emu);
    }
}

fn clock(c: &Clock, e: &mut Errors) {
    // Lists are short: linear scans avoid allocating on every render.
    for (i, t) in c.timers.iter().enumerate() {
        let paravirt = matches!(t.name, TimerName::Kvmclock | TimerName::Hypervclock);
        if paravirt && t.tickpolicy.is_some() {
            e.push(
                format!("clock.timers[{i}].tickpolicy"),
                format!("the {} timer takes no tickpolicy", t.name.as_str()),
            );
        }
        if c.timers[..i].iter().any(|o| o.name == t.name) {
            e.push(
                format!("clock.timers[{i}].name"),
                format!("duplicate timer {:?}", t.name.as_str()),
            );
        }
    }
}

/// The device-name prefix libvirt expects on each bus.
fn target_prefix(bus: DiskBus) -> &'static str {
    match bus {
        DiskBus::Virtio => "vd",
        DiskBus::Scsi | DiskBus::Sata => "sd",
        DiskBus::Ide => "hd",
    }
}

fn disks(spec: &VmSpec, e: &mut Errors) {
    for (i, d) in spec.devices.disks.iter().enumerate() {
        let f = |name: &str| format!("disks[{i}].{name}");
        let prefix = target_prefix(d.bus);
        let suffix_ok = d
            .target
            .strip_prefix(prefix)
            .is_some_and(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase()));
        if !suffix_ok {
            e.push(
                f("target"),
                format!(
                    "{:?} is not a {} device name like \"{prefix}a\"",
                    d.target,
                    d.bus.as_str()
                ),
            );
        } else if spec.devices.disks[..i].iter().any(|o| o.target == d.target) {
            e.push(f("target"), format!("duplicate target {:?}", d.target));
        }
        disk_bus(spec, d, &f, e);
        disk_source(d, &f, e);
        if let Some(s) = &d.serial {
            let ok = !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.+- ".contains(c));
            if !ok {
                e.push(
                    f("serial"),
                    format!("{s:?} may only hold letters, digits and _ . + - space"),
                );
            }
        }
        if d.io == Some(DiskIo::Native)
            && !matches!(d.cache, Some(DiskCache::None | DiskCache::Directsync))
        {
            e.push(f("io"), "\"native\" needs cache \"none\" or \"directsync\"");
        }
        if let Some(t) = &d.iotune {
            iotune(t, &f, e);
        }
    }
}

fn disk_bus(spec: &VmSpec, d: &Disk, f: &dyn Fn(&str) -> String, e: &mut Errors) {
    if d.bus == DiskBus::Ide && is_q35(spec) {
        e.push(f("bus"), "q35 machines have no IDE bus; use \"sata\"");
    }
    if d.bus == DiskBus::Scsi && spec.devices.scsi_controller.is_none() {
        e.push(f("bus"), "scsi disks need scsi_controller (virtio-scsi)");
    }
    if d.device == DiskDevice::Cdrom && d.bus == DiskBus::Virtio {
        e.push(
            f("bus"),
            "a cdrom cannot be on virtio; use \"sata\", \"scsi\" or \"ide\"",
        );
    }
}

fn disk_source(d: &Disk, f: &dyn Fn(&str) -> String, e: &mut Errors) {
    match &d.source {
        DiskSource::Empty if d.device != DiskDevice::Cdrom => {
            e.push(f("source"), "is empty; only a cdrom may have no source");
        }
        DiskSource::Empty => {}
        DiskSource::File { path } => check(e, bad_path(path), || f("source")),
        DiskSource::Block { dev } => check(e, bad_path(dev), || f("source")),
        DiskSource::Rbd { name, hosts, auth } => {
            if name.split('/').filter(|p| !p.is_empty()).count() < 2 {
                e.push(f("source"), format!("{name:?} is not \"pool/image\""));
            }
            net_source(name, hosts, auth.as_ref(), f, e);
        }
        DiskSource::Iscsi { name, hosts, auth } => {
            if !name.contains('/') {
                e.push(f("source"), format!("{name:?} is not \"iqn.../LUN\""));
            }
            if hosts.len() != 1 {
                e.push(f("hosts"), "an iscsi disk needs exactly one portal");
            }
            net_source(name, hosts, auth.as_ref(), f, e);
        }
        DiskSource::Nfs { name, hosts } => {
            if hosts.len() != 1 {
                e.push(f("hosts"), "an nfs disk needs exactly one server");
            }
            net_source(name, hosts, None, f, e);
        }
    }
}

fn net_source(
    name: &str,
    hosts: &[NetHost],
    auth: Option<&DiskAuth>,
    f: &dyn Fn(&str) -> String,
    e: &mut Errors,
) {
    check(e, bad_text(name, false), || f("source"));
    for (j, h) in hosts.iter().enumerate() {
        if h.name.is_empty() || h.name.chars().any(|c| c.is_whitespace() || c == '/') {
            e.push(
                f(&format!("hosts[{j}].name")),
                format!("{:?} is not a host name or address", h.name),
            );
        }
        check(e, bad_text(&h.name, false), || {
            f(&format!("hosts[{j}].name"))
        });
    }
    if let Some(a) = auth {
        // libvirt's schema: [a-zA-Z0-9_+-]+ (a ceph id without "client.").
        let ok = !a.username.is_empty()
            && a.username
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_+-".contains(c));
        if !ok {
            let why = format!(
                "{:?} may only hold letters, digits, '_', '+' and '-'",
                a.username
            );
            e.push(f("auth.username"), why);
        }
    }
}

fn iotune(t: &IoTune, f: &dyn Fn(&str) -> String, e: &mut Errors) {
    let v = t.fields();
    if v.iter().all(|(_, x)| x.is_none()) {
        // libvirt silently drops an empty <iotune>.
        e.push(f("iotune"), "sets no limit; leave it out instead");
    }
    // Entries 0..6 are the base limits, 6..12 the bursts, 12..18 the burst lengths,
    // each group ordered total/read/write for bytes, then iops.
    for kind in [0, 3] {
        let (total, read, write) = (v[kind].1, v[kind + 1].1, v[kind + 2].1);
        if total.is_some() && (read.is_some() || write.is_some()) {
            e.push(
                f(&format!("iotune.{}", v[kind].0)),
                format!(
                    "cannot be combined with {} or {}",
                    v[kind + 1].0,
                    v[kind + 2].0
                ),
            );
        }
    }
    for i in 0..6 {
        let (base, max, len) = (v[i], v[i + 6], v[i + 12]);
        if max.1.is_some() && base.1.is_none() {
            e.push(
                f(&format!("iotune.{}", max.0)),
                format!("needs {} as well", base.0),
            );
        }
        if let (Some(m), Some(b)) = (max.1, base.1) {
            if m < b {
                e.push(
                    f(&format!("iotune.{}", max.0)),
                    format!("{m} is below {} ({b})", base.0),
                );
            }
        }
        if len.1.is_some() && max.1.is_none() {
            e.push(
                f(&format!("iotune.{}", len.0)),
                format!("needs {} as well", max.0),
            );
        }
    }
}

fn interfaces(nics: &[Interface], e: &mut Errors) {
    for (i, n) in nics.iter().enumerate() {
        let f = |name: &str| format!("interfaces[{i}].{name}");
        if n.mac.is_multicast() || n.mac.0 == [0; 6] {
            e.push(f("mac"), format!("{} is not a unicast address", n.mac));
        } else if nics[..i].iter().any(|o| o.mac == n.mac) {
            e.push(f("mac"), format!("duplicate MAC {}", n.mac));
        }
        check(e, bad_ifname(&n.bridge), || f("bridge"));
        if let Some(dev) = &n.target_dev {
            check(e, bad_ifname(dev), || f("target_dev"));
            if ["vnet", "macvtap", "macvlan"]
                .iter()
                .any(|p| dev.starts_with(p))
            {
                e.push(
                    f("target_dev"),
                    format!("{dev:?}: names starting vnet/macvtap/macvlan are reserved by libvirt"),
                );
            }
        }
        if let Some(tag) = n.vlan {
            if !(1..=4094).contains(&tag) {
                e.push(f("vlan"), format!("{tag} is outside 1..4094"));
            } else if n.openvswitch.is_none() {
                e.push(f("vlan"), "a VLAN tag needs an Open vSwitch bridge; on a Linux bridge use a VLAN bridge (e.g. br0.100)");
            }
        }
        if n.mtu.is_some_and(|m| !(68..=65535).contains(&m)) {
            e.push(f("mtu"), "must be 68..65535");
        }
        for (name, rate) in [("inbound", n.inbound), ("outbound", n.outbound)] {
            if let Some(r) = rate {
                if r.average == 0 {
                    e.push(
                        f(&format!("{name}.average_kib_s")),
                        "is zero; omit the rate instead",
                    );
                }
                if r.peak.is_some_and(|p| p < r.average) {
                    e.push(f(&format!("{name}.peak_kib_s")), "is below average_kib_s");
                }
            }
        }
    }
}

/// Linux interface names: 1..15 bytes, no '/', whitespace or ':'.
fn bad_ifname(s: &str) -> Option<String> {
    let ok = !s.is_empty()
        && s.len() <= 15
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/' || c == ':');
    (!ok).then(|| {
        format!("{s:?} is not a network interface name (1-15 chars, no '/', ':' or spaces)")
    })
}

/// virtlogd writes the log as root: the path must not be able to clobber a
/// system file by mistake or by a hostile spec.
fn console_log(serial_console: bool, log: &str, e: &mut Errors) {
    const F: &str = "serial_console_log";
    if !serial_console {
        e.push(F, "needs serial_console: the log records that console");
    }
    abs_path(e, F, log);
    if log.split('/').any(|c| c == "..") {
        e.push(
            F,
            format!("{log:?} contains '..'; give the path without it"),
        );
    }
    if !log.ends_with(".log") {
        e.push(
            F,
            format!("{log:?} does not end in .log (required so no other file can be overwritten)"),
        );
    }
}

fn other_devices(d: &Devices, e: &mut Errors) {
    if let Some(log) = &d.serial_console_log {
        console_log(d.serial_console, log, e);
    }
    for (i, g) in d.graphics.iter().enumerate() {
        graphics(i, g, e);
    }
    if let Some(v) = d.video {
        if v.model == VideoModel::None && (v.vram.is_some() || v.heads.is_some()) {
            e.push("video.model", "\"none\" takes no vram_kib or heads");
        }
        if v.heads.is_some_and(|h| h == 0 || h > 16) {
            e.push("video.heads", "must be 1..16");
        }
        if v.vram == Some(0) {
            e.push("video.vram_kib", "is zero; omit it for the default");
        }
    }
    if let Some(r) = &d.rng {
        abs_path(e, "rng.backend", &r.backend);
        if r.rate.is_some_and(|(b, p)| b == 0 || p == 0) {
            e.push(
                "rng.rate_bytes",
                "rate_bytes and rate_period_ms must both be > 0",
            );
        }
    }
    for (i, h) in d.hostdevs.iter().enumerate() {
        if d.hostdevs[..i].iter().any(|o| o.address == h.address) {
            e.push(
                format!("hostdevs[{i}].address"),
                format!("duplicate host device {}", h.address),
            );
        }
    }
    if d.scsi_controller.and_then(|c| c.queues) == Some(0) {
        e.push("scsi_controller.queues", "is zero; omit it for the default");
    }
    if d.balloon.and_then(|b| b.stats_period) == Some(0) {
        e.push(
            "balloon.stats_period_s",
            "is zero; omit it to disable statistics",
        );
    }
}

fn graphics(i: usize, g: &Graphics, e: &mut Errors) {
    let f = |name: &str| format!("graphics[{i}].{name}");
    if !g.autoport && g.port.is_none() {
        e.push(f("port"), "set a port or autoport");
    }
    if let Some(p) = g.port {
        if p < 5900 {
            e.push(
                f("port"),
                format!("{p} is below 5900, libvirt's display port range"),
            );
        }
    }
    if let Some(l) = &g.listen {
        if l.parse::<std::net::IpAddr>().is_err() {
            e.push(f("listen"), format!("{l:?} is not an IP address"));
        }
    }
    if let Some(pw) = &g.passwd {
        if pw.is_empty() {
            e.push(f("passwd"), "is empty; leave it out for no password");
        }
        check(e, bad_text(pw, false), || f("passwd"));
        if g.kind == GraphicsKind::Vnc && pw.len() > 8 {
            e.push(f("passwd"), "VNC passwords are at most 8 bytes");
        }
    }
    if let Some(k) = &g.keymap {
        if k.is_empty()
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            e.push(
                f("keymap"),
                format!("{k:?} is not a keymap name like \"en-us\""),
            );
        }
    }
}

/// libvirt rejects duplicate boot orders and order 0. Field names are only
/// formatted on error: this runs on every render.
fn boot_orders(d: &Devices, e: &mut Errors) {
    let disks = d
        .disks
        .iter()
        .enumerate()
        .map(|(i, x)| ("disks", i, x.boot_order));
    let nics = d
        .interfaces
        .iter()
        .enumerate()
        .map(|(i, x)| ("interfaces", i, x.boot_order));
    let hosts = d
        .hostdevs
        .iter()
        .enumerate()
        .map(|(i, x)| ("hostdevs", i, x.boot_order));
    let all = || disks.clone().chain(nics.clone()).chain(hosts.clone());
    for (n, (list, i, order)) in all().enumerate() {
        let Some(o) = order else { continue };
        if o == 0 {
            e.push(
                format!("{list}[{i}].boot_order"),
                "is 0; omit it for a device that does not boot",
            );
        } else if all().take(n).any(|(_, _, other)| other == Some(o)) {
            e.push(
                format!("{list}[{i}].boot_order"),
                format!("boot order {o} is used twice"),
            );
        }
    }
}

fn dimm(d: &Dimm) -> Result<(), DomainError> {
    let mut e = Errors::default();
    if d.size.0 == 0 || !d.size.0.is_multiple_of(Dimm::ALIGN.0) {
        e.push(
            "dimm.size_kib",
            format!(
                "{} KiB is not a positive multiple of {} KiB",
                d.size.0,
                Dimm::ALIGN.0
            ),
        );
    }
    e.finish()
}

/// Validates one device by the rules it would meet inside a full domain on
/// `machine` (the domain's machine type, for the q35/IDE rule). Field paths
/// read `disk.target`, `interface.mac`.
pub fn validate_device(dev: &Device, machine: Option<&str>) -> Result<(), DomainError> {
    // A one-device domain runs the very same checks as StartVm.
    let mut spec = VmSpec::new("device", VmUuid(uuid::Uuid::from_u128(1)));
    spec.memory.size = KiB(1);
    spec.os.machine = machine.map(str::to_string);
    let prefix = match dev {
        Device::Disk(d) => {
            if d.bus == DiskBus::Scsi {
                // libvirt adds the controller on attach when it is missing.
                spec.devices.scsi_controller = Some(ScsiController::default());
            }
            spec.devices.disks.push(Disk::clone(d));
            ("disks[0].", "disk.")
        }
        Device::Interface(n) => {
            spec.devices.interfaces.push(n.clone());
            ("interfaces[0].", "interface.")
        }
        Device::Dimm(d) => return dimm(d),
    };
    let mut e = Errors::default();
    disks(&spec, &mut e);
    interfaces(&spec.devices.interfaces, &mut e);
    for f in &mut e.0 {
        f.field = f.field.replacen(prefix.0, prefix.1, 1);
    }
    e.finish()
}
