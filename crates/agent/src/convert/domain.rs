//! Converts between the wire `csagent.v1.VmSpec` and the typed model.
//!
//! proto -> model reads every string choice, UUID, MAC and PCI address and
//! reports each bad one with its field path; model -> proto is total (for
//! `csagent domain parse` and status reports). Semantic checks (duplicates,
//! ranges) live in validate.rs; this file must not render or parse XML.

use csagent_proto::v1 as pb;

use csagent_domain::error::{DomainError, Errors};
use csagent_domain::model::*;

/// Reads a proto spec into the model; every unreadable field is reported.
pub fn spec_from_proto(p: &pb::VmSpec) -> Result<VmSpec, DomainError> {
    let mut e = Errors::default();
    let uuid = match uuid::Uuid::parse_str(&p.uuid) {
        Ok(u) => VmUuid(u),
        Err(_) => {
            e.push(
                "uuid",
                format!("{:?} is not a UUID (8-4-4-4-12 hex digits)", p.uuid),
            );
            VmUuid::default()
        }
    };
    let mut spec = VmSpec::new(&p.name, uuid);
    spec.domain_type = choice(
        &mut e,
        "domain_type",
        &p.domain_type,
        "kvm",
        DomainType::from_str,
        DomainType::ALL,
    )
    .unwrap_or(DomainType::Kvm);
    spec.title = non_empty(&p.title);
    spec.description = non_empty(&p.description);
    let no_ids = pb::VmCloudIds::default();
    spec.meta = (p.ids.is_some() || p.ha).then(|| {
        let i = p.ids.as_ref().unwrap_or(&no_ids);
        CsagentMeta {
            instance_id: i.instance_id.clone(),
            account_id: i.account_id.clone(),
            zone_id: i.zone_id.clone(),
            service_offering_id: i.service_offering_id.clone(),
            ha: p.ha,
        }
    });
    spec.memory = memory_from(p.memory.as_ref());
    cpu_from(&mut e, p.cpu.as_ref(), &mut spec);
    spec.os = os_from(&mut e, p.boot.as_ref());
    spec.features = features_from(p.features.as_ref());
    spec.clock = clock_from(&mut e, p.clock.as_ref());
    let action = |e: &mut Errors, f: &str, v: &str, d: &str| {
        choice(e, f, v, d, LifecycleAction::from_str, LifecycleAction::ALL)
            .unwrap_or(LifecycleAction::Destroy)
    };
    spec.on_poweroff = action(&mut e, "on_poweroff", &p.on_poweroff, "destroy");
    spec.on_reboot = action(&mut e, "on_reboot", &p.on_reboot, "restart");
    spec.on_crash = action(&mut e, "on_crash", &p.on_crash, "destroy");
    spec.devices = devices_from(&mut e, p);
    e.finish()?;
    Ok(spec)
}

/// Reads one proto disk (AttachDevice) into the model; paths read `disk.x`.
pub fn disk_from_proto(d: &pb::VmDisk) -> Result<Disk, DomainError> {
    one_device(|e| disk_from(e, 0, d), "disks[0].", "disk.")
}

/// Reads one proto NIC (AttachDevice) into the model; paths read `interface.x`.
pub fn nic_from_proto(n: &pb::VmInterface) -> Result<Interface, DomainError> {
    one_device(|e| nic_from(e, 0, n), "interfaces[0].", "interface.")
}

fn one_device<T>(
    read: impl FnOnce(&mut Errors) -> Option<T>,
    from: &str,
    to: &str,
) -> Result<T, DomainError> {
    let mut e = Errors::default();
    let out = read(&mut e);
    for f in &mut e.0 {
        f.field = f.field.replacen(from, to, 1);
    }
    e.finish()?;
    out.ok_or_else(|| DomainError::Invalid(Vec::new()))
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn non_zero<T: Default + PartialEq>(v: T) -> Option<T> {
    (v != T::default()).then_some(v)
}

/// Reads a keyword field; empty means `default`; unknown values are reported.
fn choice<T>(
    e: &mut Errors,
    field: &str,
    value: &str,
    default: &str,
    parse: fn(&str) -> Option<T>,
    all: &[&str],
) -> Option<T> {
    let v = if value.is_empty() { default } else { value };
    let parsed = parse(v);
    if parsed.is_none() {
        e.push(
            field,
            format!("unknown value {v:?}; expected one of {}", all.join(", ")),
        );
    }
    parsed
}

fn opt_choice<T>(
    e: &mut Errors,
    field: &str,
    value: &str,
    parse: fn(&str) -> Option<T>,
    all: &[&str],
) -> Option<T> {
    if value.is_empty() {
        return None;
    }
    choice(e, field, value, "", parse, all)
}

fn memory_from(m: Option<&pb::VmMemory>) -> Memory {
    let Some(m) = m else { return Memory::default() };
    Memory {
        size: KiB(m.size_kib),
        current: m.current_kib.map(KiB),
        max: (m.max_kib > 0).then_some(MaxMemory {
            size: KiB(m.max_kib),
            slots: m.slots,
        }),
        hugepages: m
            .hugepages
            .then_some(non_zero(m.hugepage_size_kib).map(KiB)),
    }
}

fn cpu_from(e: &mut Errors, c: Option<&pb::VmCpu>, spec: &mut VmSpec) {
    let Some(c) = c else {
        spec.vcpu = Vcpus {
            max: 0,
            current: None,
        };
        return;
    };
    spec.vcpu = Vcpus {
        max: c.vcpus,
        current: c.current_vcpus,
    };
    if c.shares.is_some() || c.period_us.is_some() || c.quota_us.is_some() {
        spec.cputune = Some(CpuTune {
            shares: c.shares,
            period_us: c.period_us,
            quota_us: c.quota_us,
        });
    }
    let mode = opt_choice(e, "cpu.mode", &c.mode, CpuMode::from_str, CpuMode::ALL);
    let mut features = Vec::with_capacity(c.features.len());
    for (i, f) in c.features.iter().enumerate() {
        let field = format!("cpu.features[{i}].policy");
        if let Some(policy) = choice(
            e,
            &field,
            &f.policy,
            "require",
            FeaturePolicy::from_str,
            FeaturePolicy::ALL,
        ) {
            features.push(CpuFeature {
                name: f.name.clone(),
                policy,
            });
        }
    }
    let topology = c.topology.as_ref().map(|t| Topology {
        sockets: t.sockets,
        cores: t.cores,
        threads: t.threads,
    });
    let numa: Vec<NumaCell> = c
        .numa
        .iter()
        .map(|n| NumaCell {
            id: n.id,
            cpus: n.cpus.clone(),
            memory: KiB(n.memory_kib),
        })
        .collect();
    let model = non_empty(&c.model);
    if mode.is_some()
        || model.is_some()
        || !features.is_empty()
        || topology.is_some()
        || !numa.is_empty()
    {
        spec.cpu = Some(Cpu {
            mode,
            model,
            features,
            topology,
            numa,
        });
    }
}

fn os_from(e: &mut Errors, b: Option<&pb::VmBoot>) -> Os {
    let default = pb::VmBoot::default();
    let b = b.unwrap_or(&default);
    let firmware = match b.firmware.as_str() {
        "" | "bios" => Firmware::Bios,
        "uefi" => Firmware::Uefi(Uefi {
            loader: b.loader.clone(),
            secure_boot: b.secure_boot,
            nvram: non_empty(&b.nvram),
            nvram_template: non_empty(&b.nvram_template),
        }),
        other => {
            e.push(
                "boot.firmware",
                format!("unknown value {other:?}; expected bios or uefi"),
            );
            Firmware::Bios
        }
    };
    let uefi_fields = !b.loader.is_empty()
        || b.secure_boot
        || !b.nvram.is_empty()
        || !b.nvram_template.is_empty();
    if uefi_fields && !matches!(firmware, Firmware::Uefi(_)) {
        e.push(
            "boot.loader",
            "loader, nvram and secure_boot need firmware \"uefi\"",
        );
    }
    let kernel = if b.kernel.is_empty() {
        if !b.initrd.is_empty() || !b.cmdline.is_empty() {
            e.push("boot.kernel", "is empty but initrd or cmdline is set");
        }
        None
    } else {
        Some(DirectKernel {
            kernel: b.kernel.clone(),
            initrd: non_empty(&b.initrd),
            cmdline: non_empty(&b.cmdline),
        })
    };
    Os {
        arch: if b.arch.is_empty() {
            "x86_64".to_string()
        } else {
            b.arch.clone()
        },
        machine: non_empty(&b.machine),
        firmware,
        kernel,
    }
}

fn features_from(f: Option<&pb::VmFeatures>) -> Features {
    let Some(f) = f else {
        return Features::default();
    };
    Features {
        acpi: f.acpi,
        apic: f.apic,
        pae: f.pae,
        smm: f.smm,
        hyperv: f.hyperv.as_ref().map(|h| HyperV {
            relaxed: h.relaxed,
            vapic: h.vapic,
            spinlocks: non_zero(h.spinlocks),
            vpindex: h.vpindex,
            runtime: h.runtime,
            synic: h.synic,
            stimer: h.stimer,
            reset: h.reset,
            frequencies: h.frequencies,
            tlbflush: h.tlbflush,
            ipi: h.ipi,
        }),
    }
}

fn clock_from(e: &mut Errors, c: Option<&pb::VmClock>) -> Clock {
    let Some(c) = c else {
        return Clock {
            offset: ClockOffset::Utc,
            timers: Vec::new(),
        };
    };
    let offset = choice(
        e,
        "clock.offset",
        &c.offset,
        "utc",
        ClockOffset::from_str,
        ClockOffset::ALL,
    );
    let mut timers = Vec::with_capacity(c.timers.len());
    for (i, t) in c.timers.iter().enumerate() {
        let name = choice(
            e,
            &format!("clock.timers[{i}].name"),
            &t.name,
            "",
            TimerName::from_str,
            TimerName::ALL,
        );
        let f = format!("clock.timers[{i}].tickpolicy");
        let tickpolicy = opt_choice(e, &f, &t.tickpolicy, TickPolicy::from_str, TickPolicy::ALL);
        if let Some(name) = name {
            timers.push(Timer {
                name,
                present: t.present,
                tickpolicy,
            });
        }
    }
    Clock {
        offset: offset.unwrap_or(ClockOffset::Utc),
        timers,
    }
}

/// Converts every item of a repeated field with `f`, which is given the
/// item's index for its error paths; items with errors are left out (the
/// errors are in `e`).
fn each<T, U>(
    e: &mut Errors,
    items: &[T],
    f: impl Fn(&mut Errors, usize, &T) -> Option<U>,
) -> Vec<U> {
    items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| f(e, i, item))
        .collect()
}

fn devices_from(e: &mut Errors, p: &pb::VmSpec) -> Devices {
    let disks = each(e, &p.disks, disk_from);
    let interfaces = each(e, &p.interfaces, nic_from);
    let graphics = each(e, &p.graphics, graphics_from);
    let hostdevs = each(e, &p.hostdevs, hostdev_from);
    let video = p.video.as_ref().and_then(|v| {
        let model = choice(
            e,
            "video.model",
            &v.model,
            "",
            VideoModel::from_str,
            VideoModel::ALL,
        )?;
        Some(Video {
            model,
            vram: non_zero(v.vram_kib),
            heads: non_zero(v.heads),
        })
    });
    let watchdog = p.watchdog.as_ref().and_then(|w| {
        let model = choice(
            e,
            "watchdog.model",
            &w.model,
            "i6300esb",
            WatchdogModel::from_str,
            WatchdogModel::ALL,
        );
        let action = choice(
            e,
            "watchdog.action",
            &w.action,
            "reset",
            WatchdogAction::from_str,
            WatchdogAction::ALL,
        );
        Some(Watchdog {
            model: model?,
            action: action?,
        })
    });
    let tpm = p.tpm.as_ref().and_then(|t| {
        let model = choice(
            e,
            "tpm.model",
            &t.model,
            "tpm-crb",
            TpmModel::from_str,
            TpmModel::ALL,
        )?;
        Some(Tpm { model })
    });
    Devices {
        emulator: non_empty(&p.emulator),
        disks,
        scsi_controller: p.scsi_controller.as_ref().map(|c| ScsiController {
            queues: non_zero(c.queues),
        }),
        interfaces,
        graphics,
        video,
        serial_console: p.serial_console,
        serial_console_log: non_empty(&p.serial_console_log),
        guest_agent: p.guest_agent,
        rng: p.rng.as_ref().map(|r| Rng {
            backend: if r.backend.is_empty() {
                "/dev/urandom".into()
            } else {
                r.backend.clone()
            },
            rate: (r.rate_bytes > 0 || r.rate_period_ms > 0)
                .then_some((r.rate_bytes, r.rate_period_ms)),
        }),
        watchdog,
        tpm,
        hostdevs,
        usb_tablet: p.usb_tablet,
        balloon: p.balloon.as_ref().map(|b| Balloon {
            stats_period: non_zero(b.stats_period_s),
        }),
    }
}

fn disk_from(e: &mut Errors, i: usize, d: &pb::VmDisk) -> Option<Disk> {
    let f = |n: &str| format!("disks[{i}].{n}");
    let device = choice(
        e,
        &f("device"),
        &d.device,
        "disk",
        DiskDevice::from_str,
        DiskDevice::ALL,
    );
    let format = choice(
        e,
        &f("format"),
        &d.format,
        "raw",
        DiskFormat::from_str,
        DiskFormat::ALL,
    );
    let bus = choice(e, &f("bus"), &d.bus, "", DiskBus::from_str, DiskBus::ALL);
    let cache = opt_choice(
        e,
        &f("cache"),
        &d.cache,
        DiskCache::from_str,
        DiskCache::ALL,
    );
    let io = opt_choice(e, &f("io"), &d.io, DiskIo::from_str, DiskIo::ALL);
    let discard = opt_choice(
        e,
        &f("discard"),
        &d.discard,
        DiskDiscard::from_str,
        DiskDiscard::ALL,
    );
    let source = disk_source_from(e, i, d);
    let iotune = d.iotune.as_ref().map(iotune_from);
    Some(Disk {
        device: device?,
        source: source?,
        format: format?,
        target: d.target.clone(),
        bus: bus?,
        cache,
        io,
        discard,
        iotune,
        serial: non_empty(&d.serial),
        readonly: d.readonly,
        shareable: d.shareable,
        boot_order: non_zero(d.boot_order),
    })
}

fn disk_source_from(e: &mut Errors, i: usize, d: &pb::VmDisk) -> Option<DiskSource> {
    let hosts = || {
        d.hosts
            .iter()
            .map(|h| NetHost {
                name: h.name.clone(),
                port: u16::try_from(h.port).ok().and_then(non_zero),
            })
            .collect::<Vec<_>>()
    };
    let mut auth = || {
        let a = d.auth.as_ref()?;
        match uuid::Uuid::parse_str(&a.secret_uuid) {
            Ok(secret_uuid) => Some(DiskAuth {
                username: a.username.clone(),
                secret_uuid,
            }),
            Err(_) => {
                e.push(
                    format!("disks[{i}].auth.secret_uuid"),
                    format!("{:?} is not a UUID", a.secret_uuid),
                );
                None
            }
        }
    };
    let name = d.source.clone();
    let source = match d.source_type.as_str() {
        "" if d.source.is_empty() => DiskSource::Empty,
        "file" => DiskSource::File { path: name },
        "block" => DiskSource::Block { dev: name },
        "rbd" => DiskSource::Rbd {
            name,
            hosts: hosts(),
            auth: auth(),
        },
        "iscsi" => DiskSource::Iscsi {
            name,
            hosts: hosts(),
            auth: auth(),
        },
        "nfs" => DiskSource::Nfs {
            name,
            hosts: hosts(),
        },
        other => {
            let why =
                format!("unknown source type {other:?}; expected file, block, rbd, iscsi or nfs");
            e.push(format!("disks[{i}].source_type"), why);
            return None;
        }
    };
    Some(source)
}

/// Copies the iotune limits field by field: the proto and the model use
/// libvirt's names for all eighteen, so the list is written once.
macro_rules! iotune_copy {
    ($($ty:ident)::+, $t:ident) => {
        $($ty)::+ {
            total_bytes_sec: $t.total_bytes_sec,
            read_bytes_sec: $t.read_bytes_sec,
            write_bytes_sec: $t.write_bytes_sec,
            total_iops_sec: $t.total_iops_sec,
            read_iops_sec: $t.read_iops_sec,
            write_iops_sec: $t.write_iops_sec,
            total_bytes_sec_max: $t.total_bytes_sec_max,
            read_bytes_sec_max: $t.read_bytes_sec_max,
            write_bytes_sec_max: $t.write_bytes_sec_max,
            total_iops_sec_max: $t.total_iops_sec_max,
            read_iops_sec_max: $t.read_iops_sec_max,
            write_iops_sec_max: $t.write_iops_sec_max,
            total_bytes_sec_max_length: $t.total_bytes_sec_max_length,
            read_bytes_sec_max_length: $t.read_bytes_sec_max_length,
            write_bytes_sec_max_length: $t.write_bytes_sec_max_length,
            total_iops_sec_max_length: $t.total_iops_sec_max_length,
            read_iops_sec_max_length: $t.read_iops_sec_max_length,
            write_iops_sec_max_length: $t.write_iops_sec_max_length,
        }
    };
}

fn iotune_from(t: &pb::VmIoTune) -> IoTune {
    iotune_copy!(IoTune, t)
}

fn nic_from(e: &mut Errors, i: usize, n: &pb::VmInterface) -> Option<Interface> {
    let f = |x: &str| format!("interfaces[{i}].{x}");
    let mac = MacAddr::parse(&n.mac);
    if mac.is_none() {
        e.push(
            f("mac"),
            format!("{:?} is not a MAC address like 52:54:00:12:34:56", n.mac),
        );
    }
    let model = choice(
        e,
        &f("model"),
        &n.model,
        "virtio",
        NicModel::from_str,
        NicModel::ALL,
    );
    let ovs_id = if n.ovs_interface_id.is_empty() {
        None
    } else {
        let parsed = uuid::Uuid::parse_str(&n.ovs_interface_id);
        if parsed.is_err() {
            e.push(
                f("ovs_interface_id"),
                format!("{:?} is not a UUID", n.ovs_interface_id),
            );
        }
        parsed.ok()
    };
    if ovs_id.is_some() && !n.openvswitch {
        e.push(f("ovs_interface_id"), "needs openvswitch: true");
    }
    let vlan = match u16::try_from(n.vlan) {
        Ok(v) => non_zero(v),
        Err(_) => {
            e.push(f("vlan"), format!("{} is outside 1..4094", n.vlan));
            None
        }
    };
    let rate = |r: &pb::VmRate| Rate {
        average: r.average_kib_s,
        peak: non_zero(r.peak_kib_s),
        burst: non_zero(r.burst_kib),
    };
    Some(Interface {
        mac: mac?,
        bridge: n.bridge.clone(),
        openvswitch: n.openvswitch.then_some(ovs_id),
        vlan,
        model: model?,
        inbound: n.inbound.as_ref().map(rate),
        outbound: n.outbound.as_ref().map(rate),
        mtu: non_zero(n.mtu),
        target_dev: non_empty(&n.target_dev),
        boot_order: non_zero(n.boot_order),
    })
}

fn graphics_from(e: &mut Errors, i: usize, g: &pb::VmGraphics) -> Option<Graphics> {
    let kind = match g.r#type.as_str() {
        "vnc" => GraphicsKind::Vnc,
        "spice" => GraphicsKind::Spice,
        other => {
            e.push(
                format!("graphics[{i}].type"),
                format!("unknown value {other:?}; expected vnc or spice"),
            );
            return None;
        }
    };
    let port = match u16::try_from(g.port) {
        Ok(p) => non_zero(p),
        Err(_) => {
            e.push(
                format!("graphics[{i}].port"),
                format!("{} is not a TCP port", g.port),
            );
            None
        }
    };
    Some(Graphics {
        kind,
        port,
        autoport: g.autoport || g.port == 0,
        listen: non_empty(&g.listen),
        passwd: non_empty(&g.passwd),
        keymap: non_empty(&g.keymap),
    })
}

fn hostdev_from(e: &mut Errors, i: usize, h: &pb::VmHostdev) -> Option<PciHostdev> {
    let Some(address) = PciAddress::parse(&h.address) else {
        e.push(
            format!("hostdevs[{i}].address"),
            format!("{:?} is not a PCI address like 0000:01:00.0", h.address),
        );
        return None;
    };
    Some(PciHostdev {
        address,
        managed: h.managed,
        boot_order: non_zero(h.boot_order),
    })
}

/// `csagent domain render SPEC.json`: proto VmSpec JSON (proto field names)
/// -> model -> validation -> XML.
pub fn render_spec_json(json: &str) -> Result<String, DomainError> {
    let proto: pb::VmSpec = serde_json::from_str(json)?;
    let spec = spec_from_proto(&proto)?;
    csagent_domain::render(&spec)
}

/// `csagent domain parse XML`: domain XML -> pretty JSON
/// `{"spec": <proto VmSpec>, "not_understood": [..]}`; `spec` can be fed
/// back to `render_spec_json`.
pub fn parse_xml_to_json(xml: &str) -> Result<String, DomainError> {
    let parsed = csagent_domain::parse(xml)?;
    let out = serde_json::json!({
        "spec": spec_to_proto(&parsed.spec),
        "not_understood": parsed.not_understood,
    });
    Ok(serde_json::to_string_pretty(&out)?)
}

/// The proto form of a model spec (what `csagent domain parse` prints).
pub fn spec_to_proto(s: &VmSpec) -> pb::VmSpec {
    let d = &s.devices;
    pb::VmSpec {
        domain_type: s.domain_type.as_str().into(),
        name: s.name.clone(),
        uuid: s.uuid.to_string(),
        title: s.title.clone().unwrap_or_default(),
        description: s.description.clone().unwrap_or_default(),
        ids: s.meta.as_ref().map(|m| pb::VmCloudIds {
            instance_id: m.instance_id.clone(),
            account_id: m.account_id.clone(),
            zone_id: m.zone_id.clone(),
            service_offering_id: m.service_offering_id.clone(),
        }),
        ha: s.meta.as_ref().is_some_and(|m| m.ha),
        memory: Some(memory_to(&s.memory)),
        cpu: Some(cpu_to(s)),
        boot: Some(os_to(&s.os)),
        features: Some(features_to(&s.features)),
        clock: Some(pb::VmClock {
            offset: s.clock.offset.as_str().into(),
            timers: s
                .clock
                .timers
                .iter()
                .map(|t| pb::VmTimer {
                    name: t.name.as_str().into(),
                    present: t.present,
                    tickpolicy: t
                        .tickpolicy
                        .map(|p| p.as_str().to_string())
                        .unwrap_or_default(),
                })
                .collect(),
        }),
        on_poweroff: s.on_poweroff.as_str().into(),
        on_reboot: s.on_reboot.as_str().into(),
        on_crash: s.on_crash.as_str().into(),
        disks: d.disks.iter().map(disk_to).collect(),
        scsi_controller: d.scsi_controller.map(|c| pb::VmScsiController {
            queues: c.queues.unwrap_or(0),
        }),
        interfaces: d.interfaces.iter().map(nic_to).collect(),
        graphics: d.graphics.iter().map(graphics_to).collect(),
        video: d.video.map(|v| pb::VmVideo {
            model: v.model.as_str().into(),
            vram_kib: v.vram.unwrap_or(0),
            heads: v.heads.unwrap_or(0),
        }),
        serial_console: d.serial_console,
        serial_console_log: d.serial_console_log.clone().unwrap_or_default(),
        guest_agent: d.guest_agent,
        rng: d.rng.as_ref().map(|r| pb::VmRng {
            backend: r.backend.clone(),
            rate_bytes: r.rate.map_or(0, |r| r.0),
            rate_period_ms: r.rate.map_or(0, |r| r.1),
        }),
        watchdog: d.watchdog.map(|w| pb::VmWatchdog {
            model: w.model.as_str().into(),
            action: w.action.as_str().into(),
        }),
        tpm: d.tpm.map(|t| pb::VmTpm {
            model: t.model.as_str().into(),
        }),
        hostdevs: d
            .hostdevs
            .iter()
            .map(|h| pb::VmHostdev {
                address: h.address.to_string(),
                managed: h.managed,
                boot_order: h.boot_order.unwrap_or(0),
            })
            .collect(),
        usb_tablet: d.usb_tablet,
        balloon: d.balloon.map(|b| pb::VmBalloon {
            stats_period_s: b.stats_period.unwrap_or(0),
        }),
        emulator: d.emulator.clone().unwrap_or_default(),
    }
}

fn memory_to(m: &Memory) -> pb::VmMemory {
    pb::VmMemory {
        size_kib: m.size.0,
        current_kib: m.current.map(|c| c.0),
        max_kib: m.max.map_or(0, |x| x.size.0),
        slots: m.max.map_or(0, |x| x.slots),
        hugepages: m.hugepages.is_some(),
        hugepage_size_kib: m.hugepages.flatten().map_or(0, |k| k.0),
    }
}

fn cpu_to(s: &VmSpec) -> pb::VmCpu {
    let default = Cpu::default();
    let c = s.cpu.as_ref().unwrap_or(&default);
    let t = s.cputune.unwrap_or_default();
    pb::VmCpu {
        vcpus: s.vcpu.max,
        current_vcpus: s.vcpu.current,
        mode: c.mode.map(|m| m.as_str().to_string()).unwrap_or_default(),
        model: c.model.clone().unwrap_or_default(),
        features: c
            .features
            .iter()
            .map(|f| pb::VmCpuFeature {
                name: f.name.clone(),
                policy: f.policy.as_str().into(),
            })
            .collect(),
        topology: c.topology.map(|t| pb::VmCpuTopology {
            sockets: t.sockets,
            cores: t.cores,
            threads: t.threads,
        }),
        numa: c
            .numa
            .iter()
            .map(|n| pb::VmNumaCell {
                id: n.id,
                cpus: n.cpus.clone(),
                memory_kib: n.memory.0,
            })
            .collect(),
        shares: t.shares,
        period_us: t.period_us,
        quota_us: t.quota_us,
    }
}

fn os_to(os: &Os) -> pb::VmBoot {
    let mut b = pb::VmBoot {
        arch: os.arch.clone(),
        machine: os.machine.clone().unwrap_or_default(),
        firmware: "bios".into(),
        ..Default::default()
    };
    if let Firmware::Uefi(u) = &os.firmware {
        b.firmware = "uefi".into();
        b.loader = u.loader.clone();
        b.secure_boot = u.secure_boot;
        b.nvram = u.nvram.clone().unwrap_or_default();
        b.nvram_template = u.nvram_template.clone().unwrap_or_default();
    }
    if let Some(k) = &os.kernel {
        b.kernel = k.kernel.clone();
        b.initrd = k.initrd.clone().unwrap_or_default();
        b.cmdline = k.cmdline.clone().unwrap_or_default();
    }
    b
}

fn features_to(f: &Features) -> pb::VmFeatures {
    pb::VmFeatures {
        acpi: f.acpi,
        apic: f.apic,
        pae: f.pae,
        smm: f.smm,
        hyperv: f.hyperv.map(|h| pb::VmHyperV {
            relaxed: h.relaxed,
            vapic: h.vapic,
            spinlocks: h.spinlocks.unwrap_or(0),
            vpindex: h.vpindex,
            runtime: h.runtime,
            synic: h.synic,
            stimer: h.stimer,
            reset: h.reset,
            frequencies: h.frequencies,
            tlbflush: h.tlbflush,
            ipi: h.ipi,
        }),
    }
}

fn disk_to(d: &Disk) -> pb::VmDisk {
    let net = |name: &str, hosts: &[NetHost]| {
        let hosts = hosts
            .iter()
            .map(|h| pb::VmNetHost {
                name: h.name.clone(),
                port: h.port.map_or(0, u32::from),
            })
            .collect();
        (name.to_string(), hosts)
    };
    let auth = |a: &Option<DiskAuth>| {
        a.as_ref().map(|a| pb::VmDiskAuth {
            username: a.username.clone(),
            secret_uuid: a.secret_uuid.to_string(),
        })
    };
    let (kind, (source, hosts), auth) = match &d.source {
        DiskSource::Empty => ("", (String::new(), Vec::new()), None),
        DiskSource::File { path } => ("file", (path.clone(), Vec::new()), None),
        DiskSource::Block { dev } => ("block", (dev.clone(), Vec::new()), None),
        DiskSource::Rbd {
            name,
            hosts,
            auth: a,
        } => ("rbd", net(name, hosts), auth(a)),
        DiskSource::Iscsi {
            name,
            hosts,
            auth: a,
        } => ("iscsi", net(name, hosts), auth(a)),
        DiskSource::Nfs { name, hosts } => ("nfs", net(name, hosts), None),
    };
    pb::VmDisk {
        device: d.device.as_str().into(),
        source_type: kind.into(),
        source,
        hosts,
        auth,
        format: d.format.as_str().into(),
        target: d.target.clone(),
        bus: d.bus.as_str().into(),
        cache: d.cache.map(|c| c.as_str().to_string()).unwrap_or_default(),
        io: d.io.map(|c| c.as_str().to_string()).unwrap_or_default(),
        discard: d
            .discard
            .map(|c| c.as_str().to_string())
            .unwrap_or_default(),
        iotune: d.iotune.as_ref().map(iotune_to),
        serial: d.serial.clone().unwrap_or_default(),
        readonly: d.readonly,
        shareable: d.shareable,
        boot_order: d.boot_order.unwrap_or(0),
    }
}

fn iotune_to(t: &IoTune) -> pb::VmIoTune {
    iotune_copy!(pb::VmIoTune, t)
}

fn nic_to(n: &Interface) -> pb::VmInterface {
    let rate = |r: Rate| pb::VmRate {
        average_kib_s: r.average,
        peak_kib_s: r.peak.unwrap_or(0),
        burst_kib: r.burst.unwrap_or(0),
    };
    pb::VmInterface {
        mac: n.mac.to_string(),
        bridge: n.bridge.clone(),
        openvswitch: n.openvswitch.is_some(),
        ovs_interface_id: n
            .openvswitch
            .flatten()
            .map(|u| u.to_string())
            .unwrap_or_default(),
        vlan: n.vlan.map_or(0, u32::from),
        model: n.model.as_str().into(),
        inbound: n.inbound.map(rate),
        outbound: n.outbound.map(rate),
        mtu: n.mtu.unwrap_or(0),
        target_dev: n.target_dev.clone().unwrap_or_default(),
        boot_order: n.boot_order.unwrap_or(0),
    }
}

fn graphics_to(g: &Graphics) -> pb::VmGraphics {
    pb::VmGraphics {
        r#type: g.kind.as_str().into(),
        port: g.port.map_or(0, u32::from),
        autoport: g.autoport,
        listen: g.listen.clone().unwrap_or_default(),
        passwd: g.passwd.clone().unwrap_or_default(),
        keymap: g.keymap.clone().unwrap_or_default(),
    }
}
