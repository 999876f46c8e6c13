//! Property tests: for generated valid specs, render -> parse gives the same
//! model, render -> parse -> render gives identical XML, and the proto
//! conversion is lossless; damaged XML never makes the parser panic.

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng};

use csagent_domain::{self as domain, *};

/// User text with XML metacharacters, quotes, `]]>` and non-ASCII.
fn user_text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 <>&'\"\\]\\[!?._=;#-]{0,12}(]]>)?[é漢字🙂]{0,2}"
}

fn pick<T: Copy>(rng: &mut StdRng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

fn maybe<T>(rng: &mut StdRng, f: impl FnOnce(&mut StdRng) -> T) -> Option<T> {
    if rng.random_bool(0.5) {
        Some(f(rng))
    } else {
        None
    }
}

fn gen_memory(rng: &mut StdRng) -> Memory {
    let size = KiB(rng.random_range(1..=1u64 << 26));
    Memory {
        size,
        current: maybe(rng, |r| KiB(r.random_range(1..=size.0))),
        max: maybe(rng, |r| MaxMemory {
            size: KiB(size.0 + r.random_range(0..1 << 20)),
            slots: r.random_range(1..=255),
        }),
        hugepages: maybe(rng, |r| maybe(r, |r| KiB(1 << r.random_range(2..=20)))),
    }
}

fn gen_cpu(rng: &mut StdRng, spec: &mut VmSpec) {
    let max = rng.random_range(1..=64u32);
    spec.vcpu = Vcpus {
        max,
        current: maybe(rng, |r| r.random_range(1..=max)),
    };
    spec.cputune = maybe(rng, |r| CpuTune {
        shares: Some(r.random_range(2..=262_144)),
        period_us: maybe(r, |r| r.random_range(1000..=1_000_000)),
        quota_us: maybe(r, |r| pick(r, &[-1, 1000, 50_000])),
    });
    let size = spec.memory.size;
    spec.cpu = maybe(rng, |r| {
        let mode = pick(
            r,
            &[
                None,
                Some(CpuMode::HostPassthrough),
                Some(CpuMode::HostModel),
                Some(CpuMode::Custom),
            ],
        );
        let names = ["x2apic", "vmx", "hypervisor", "pdpe1gb"];
        let mut features = Vec::new();
        for n in names {
            if r.random_bool(0.3) {
                let policy = pick(r, &[FeaturePolicy::Require, FeaturePolicy::Disable]);
                features.push(CpuFeature {
                    name: n.to_string(),
                    policy,
                });
            }
        }
        Cpu {
            mode,
            model: if mode == Some(CpuMode::Custom) || (mode.is_none() && !features.is_empty()) {
                Some("Nehalem".into())
            } else {
                None
            },
            features,
            // Always something inside, so `<cpu>` is never an empty element with no mode.
            topology: Some(Topology {
                sockets: 1,
                cores: max,
                threads: 1,
            }),
            numa: if r.random_bool(0.5) {
                vec![NumaCell {
                    id: 0,
                    // libvirt's canonical form: a single CPU is "0", not "0-0".
                    cpus: if max == 1 {
                        "0".to_string()
                    } else {
                        format!("0-{}", max - 1)
                    },
                    memory: size,
                }]
            } else {
                Vec::new()
            },
        }
    });
}

fn gen_os(rng: &mut StdRng, spec: &mut VmSpec, text: &str) {
    spec.os.machine =
        pick(rng, &[None, Some("q35"), Some("pc"), Some("pc-q35-7.2")]).map(String::from);
    let q35 = spec
        .os
        .machine
        .as_deref()
        .is_some_and(|m| m.contains("q35"));
    let secure = q35 && rng.random_bool(0.5);
    spec.features = Features {
        acpi: rng.random_bool(0.5),
        apic: rng.random_bool(0.5),
        pae: rng.random_bool(0.5),
        smm: secure || rng.random_bool(0.2),
        hyperv: maybe(rng, |r| {
            let mut h = HyperV {
                relaxed: r.random_bool(0.5),
                vapic: r.random_bool(0.5),
                ..Default::default()
            };
            h.spinlocks = maybe(r, |r| r.random_range(4095..=8191));
            h.vpindex = r.random_bool(0.7);
            h.synic = h.vpindex && r.random_bool(0.7);
            h.stimer = h.synic && r.random_bool(0.7);
            (h.runtime, h.reset, h.frequencies) =
                (r.random_bool(0.5), r.random_bool(0.5), r.random_bool(0.5));
            (h.tlbflush, h.ipi) = (r.random_bool(0.5), r.random_bool(0.5));
            h
        }),
    };
    if secure || rng.random_bool(0.3) {
        spec.os.firmware = Firmware::Uefi(Uefi {
            loader: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            secure_boot: secure,
            nvram: maybe(rng, |_| {
                format!("/var/lib/libvirt/qemu/nvram/{text}_VARS.fd")
            }),
            nvram_template: maybe(rng, |_| "/usr/share/OVMF/OVMF_VARS_4M.fd".into()),
        });
    }
    spec.os.kernel = maybe(rng, |r| DirectKernel {
        kernel: "/boot/vmlinuz".into(),
        initrd: maybe(r, |_| "/boot/initrd.img".into()),
        cmdline: maybe(r, |_| format!("console=ttyS0 x={text}")),
    });
    let timers = [
        TimerName::Rtc,
        TimerName::Pit,
        TimerName::Hpet,
        TimerName::Kvmclock,
        TimerName::Hypervclock,
    ];
    let mut chosen = Vec::new();
    for name in timers {
        if rng.random_bool(0.4) {
            let present = pick(rng, &[None, Some(true), Some(false)]);
            let tickpolicy = match name {
                TimerName::Kvmclock | TimerName::Hypervclock => None,
                _ => pick(
                    rng,
                    &[None, Some(TickPolicy::Catchup), Some(TickPolicy::Delay)],
                ),
            };
            chosen.push(Timer {
                name,
                present,
                tickpolicy,
            });
        }
    }
    spec.clock = Clock {
        offset: pick(rng, &[ClockOffset::Utc, ClockOffset::Localtime]),
        timers: chosen,
    };
    let actions = [
        LifecycleAction::Destroy,
        LifecycleAction::Restart,
        LifecycleAction::Preserve,
    ];
    (spec.on_poweroff, spec.on_reboot, spec.on_crash) = (
        pick(rng, &actions),
        pick(rng, &actions),
        pick(rng, &actions),
    );
}

fn gen_disk(rng: &mut StdRng, i: usize, q35: bool, text: &str) -> Disk {
    let cdrom = rng.random_bool(0.25);
    let buses: &[DiskBus] = match (cdrom, q35) {
        (true, true) => &[DiskBus::Sata, DiskBus::Scsi],
        (true, false) => &[DiskBus::Sata, DiskBus::Scsi, DiskBus::Ide],
        (false, true) => &[DiskBus::Virtio, DiskBus::Sata, DiskBus::Scsi],
        (false, false) => &[DiskBus::Virtio, DiskBus::Sata, DiskBus::Scsi, DiskBus::Ide],
    };
    let bus = pick(rng, buses);
    let prefix = match bus {
        DiskBus::Virtio => "vd",
        DiskBus::Ide => "hd",
        _ => "sd",
    };
    let hosts = |r: &mut StdRng| {
        (0..r.random_range(1..=3))
            .map(|h| NetHost {
                name: format!("10.0.0.{h}"),
                port: maybe(r, |_| 6789),
            })
            .collect()
    };
    let auth = |r: &mut StdRng| {
        maybe(r, |r| DiskAuth {
            username: format!("u{}", text.len()),
            secret_uuid: uuid::Uuid::from_u128(r.random()),
        })
    };
    let source = match (cdrom, rng.random_range(0..6)) {
        (true, 0) => DiskSource::Empty,
        (true, _) | (false, 0) => DiskSource::File {
            path: format!("/var/lib/img/{text}.{i}"),
        },
        (false, 1) => DiskSource::Block {
            dev: format!("/dev/vg/{text}{i}"),
        },
        (false, 2) => DiskSource::Rbd {
            name: format!("pool/{text}{i}"),
            hosts: hosts(rng),
            auth: auth(rng),
        },
        (false, 3) => DiskSource::Iscsi {
            name: format!("iqn.2024-01.x:{text}/1"),
            hosts: vec![NetHost {
                name: "10.1.1.1".into(),
                port: Some(3260),
            }],
            auth: auth(rng),
        },
        _ => DiskSource::Nfs {
            name: format!("/export/{text}{i}"),
            hosts: vec![NetHost {
                name: "nfs.example".into(),
                port: None,
            }],
        },
    };
    let cache = pick(
        rng,
        &[
            None,
            Some(DiskCache::None),
            Some(DiskCache::Writeback),
            Some(DiskCache::Directsync),
        ],
    );
    let io_choices: &[Option<DiskIo>] =
        if matches!(cache, Some(DiskCache::None | DiskCache::Directsync)) {
            &[None, Some(DiskIo::Native), Some(DiskIo::Threads)]
        } else {
            &[None, Some(DiskIo::Threads), Some(DiskIo::IoUring)]
        };
    Disk {
        device: if cdrom {
            DiskDevice::Cdrom
        } else {
            DiskDevice::Disk
        },
        source,
        format: pick(rng, &[DiskFormat::Raw, DiskFormat::Qcow2]),
        target: format!("{prefix}{}", (b'a' + i as u8) as char),
        bus,
        cache,
        io: pick(rng, io_choices),
        discard: pick(
            rng,
            &[None, Some(DiskDiscard::Unmap), Some(DiskDiscard::Ignore)],
        ),
        iotune: maybe(rng, |r| {
            let mut t = IoTune::default();
            if r.random_bool(0.5) {
                t.total_bytes_sec = Some(1 << 20);
                t.total_bytes_sec_max = maybe(r, |_| 1 << 21);
                t.total_bytes_sec_max_length = t.total_bytes_sec_max.and(Some(30));
            } else {
                t.read_iops_sec = Some(r.random_range(1..10_000));
                t.write_iops_sec = maybe(r, |r| r.random_range(1..10_000));
            }
            t
        }),
        serial: maybe(rng, |r| format!("SN-{}", r.random_range(0..100_000))),
        readonly: cdrom || rng.random_bool(0.1),
        shareable: rng.random_bool(0.1),
        boot_order: maybe(rng, |_| i as u32 + 1),
    }
}

fn gen_nic(rng: &mut StdRng, i: usize) -> Interface {
    let ovs = rng.random_bool(0.4);
    let rate = |r: &mut StdRng| {
        maybe(r, |r| {
            let average = r.random_range(1..100_000);
            Rate {
                average,
                peak: maybe(r, |_| average * 2),
                burst: maybe(r, |r| r.random_range(1..10_000)),
            }
        })
    };
    Interface {
        mac: MacAddr([0x52, 0x54, 0x00, rng.random(), rng.random(), i as u8]),
        bridge: if ovs {
            "ovsbr0".into()
        } else {
            format!("cloudbr{i}")
        },
        openvswitch: if ovs {
            Some(maybe(rng, |r| uuid::Uuid::from_u128(r.random())))
        } else {
            None
        },
        vlan: if ovs {
            maybe(rng, |r| r.random_range(1..=4094))
        } else {
            None
        },
        model: pick(rng, &[NicModel::Virtio, NicModel::E1000, NicModel::Rtl8139]),
        inbound: rate(rng),
        outbound: rate(rng),
        mtu: maybe(rng, |r| r.random_range(68..=9000)),
        target_dev: maybe(rng, |_| format!("csat{i}")),
        boot_order: maybe(rng, |_| 10 + i as u32),
    }
}

fn gen_devices(rng: &mut StdRng, spec: &mut VmSpec, text: &str) {
    let q35 = spec
        .os
        .machine
        .as_deref()
        .is_some_and(|m| m.contains("q35"));
    let d = &mut spec.devices;
    d.emulator = maybe(rng, |_| "/usr/bin/qemu-system-x86_64".into());
    d.disks = (0..rng.random_range(0..5))
        .map(|i| gen_disk(rng, i, q35, text))
        .collect();
    if d.disks.iter().any(|x| x.bus == DiskBus::Scsi) || rng.random_bool(0.2) {
        d.scsi_controller = Some(ScsiController {
            queues: maybe(rng, |r| r.random_range(1..=16)),
        });
    }
    d.interfaces = (0..rng.random_range(0..4))
        .map(|i| gen_nic(rng, i))
        .collect();
    d.graphics = Vec::new();
    for kind in [GraphicsKind::Vnc, GraphicsKind::Spice] {
        if rng.random_bool(0.5) {
            let autoport = rng.random_bool(0.7);
            d.graphics.push(Graphics {
                kind,
                autoport,
                port: if autoport {
                    None
                } else {
                    Some(rng.random_range(5900..6000))
                },
                listen: pick(rng, &[None, Some("0.0.0.0"), Some("::1")]).map(String::from),
                passwd: maybe(rng, |_| {
                    format!("p{}", text)
                        .chars()
                        .filter(|c| c.is_ascii())
                        .take(8)
                        .collect()
                }),
                keymap: maybe(rng, |_| "en-us".into()),
            });
        }
    }
    d.video = maybe(rng, |r| {
        let models = [
            VideoModel::Vga,
            VideoModel::Virtio,
            VideoModel::Qxl,
            VideoModel::None,
        ];
        let model = pick(r, &models);
        let sized = model != VideoModel::None;
        Video {
            model,
            vram: maybe(r, |_| 16384).filter(|_| sized),
            heads: maybe(r, |_| 1).filter(|_| sized),
        }
    });
    d.serial_console = rng.random_bool(0.5);
    d.serial_console_log = maybe(rng, |r| {
        format!("/var/log/csagent/console-{}.log", r.random_range(0..1000))
    })
    .filter(|_| d.serial_console);
    d.guest_agent = rng.random_bool(0.5);
    d.rng = maybe(rng, |r| domain::Rng {
        backend: "/dev/urandom".into(),
        rate: maybe(r, |_| (1024, 1000)),
    });
    d.watchdog = maybe(rng, |r| Watchdog {
        model: pick(r, &[WatchdogModel::I6300esb, WatchdogModel::Ib700]),
        action: pick(
            r,
            &[
                WatchdogAction::Reset,
                WatchdogAction::Poweroff,
                WatchdogAction::InjectNmi,
            ],
        ),
    });
    d.tpm = maybe(rng, |r| Tpm {
        model: pick(r, &[TpmModel::TpmCrb, TpmModel::TpmTis]),
    });
    d.hostdevs = (0..rng.random_range(0..3u8))
        .map(|f| PciHostdev {
            address: PciAddress {
                domain: 0,
                bus: 1,
                slot: 0,
                function: f,
            },
            managed: rng.random_bool(0.5),
            boot_order: maybe(rng, |_| 20 + u32::from(f)),
        })
        .collect();
    d.usb_tablet = rng.random_bool(0.5);
    d.balloon = maybe(rng, |r| Balloon {
        stats_period: maybe(r, |r| r.random_range(1..60)),
    });
}

fn gen_spec(seed: u64, texts: &[String]) -> VmSpec {
    let mut rng = StdRng::seed_from_u64(seed);
    let uuid = VmUuid(uuid::Uuid::from_u128(rng.random::<u128>() | 1));
    let mut spec = VmSpec::new(&format!("csat-dom-{}", texts[0].replace('/', "_")), uuid);
    spec.domain_type = pick(&mut rng, &[DomainType::Kvm, DomainType::Qemu]);
    spec.title = maybe(&mut rng, |_| format!("t{}", texts[1]));
    spec.description = maybe(&mut rng, |_| format!("{}\n\t{}", texts[2], texts[1]));
    spec.meta = maybe(&mut rng, |rng| CsagentMeta {
        instance_id: format!("i-{}", texts[3]),
        account_id: texts[1].clone(),
        zone_id: "zone-1".into(),
        service_offering_id: texts[2].clone(),
        ha: rng.random::<bool>(),
    });
    spec.memory = gen_memory(&mut rng);
    gen_cpu(&mut rng, &mut spec);
    if spec.cpu.as_ref().is_none_or(|c| c.numa.is_empty()) {
        // Memory hotplug needs a NUMA cell (libvirt's rule, and ours).
        spec.memory.max = None;
    }
    gen_os(&mut rng, &mut spec, &texts[3]);
    gen_devices(&mut rng, &mut spec, &texts[3]);
    spec
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn render_parse_render_is_identical(seed in any::<u64>(), texts in proptest::collection::vec(user_text(), 4)) {
        let spec = gen_spec(seed, &texts);
        if let Err(e) = domain::validate(&spec) {
            panic!("generator made an invalid spec: {e}\n{spec:#?}");
        }
        let xml = domain::render(&spec).expect("render");
        let parsed = domain::parse(&xml).unwrap_or_else(|e| panic!("{e}\n{xml}"));
        prop_assert!(parsed.not_understood.is_empty(), "{:?}\n{}", parsed.not_understood, xml);
        prop_assert_eq!(&parsed.spec, &spec, "{}", xml);
        let again = domain::render(&parsed.spec).expect("render parsed");
        prop_assert_eq!(again, xml);
    }

    #[test]
    fn proto_conversion_is_lossless(seed in any::<u64>(), texts in proptest::collection::vec(user_text(), 4)) {
        let spec = gen_spec(seed, &texts);
        let proto = csagent::convert::domain::spec_to_proto(&spec);
        let back = csagent::convert::domain::spec_from_proto(&proto).unwrap_or_else(|e| panic!("{e}\n{proto:#?}"));
        prop_assert_eq!(back, spec);
    }

    /// Truncated or corrupted documents give errors or partial models, never panics.
    #[test]
    fn damaged_xml_never_panics(seed in any::<u64>(), cut in any::<prop::sample::Index>(), flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8)) {
        let texts: Vec<String> = (0..4).map(|i| format!("t{i}<&>")).collect();
        let xml = domain::render(&gen_spec(seed, &texts)).expect("render");
        let mut bytes = xml.into_bytes();
        for (at, b) in flips {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        let text = String::from_utf8_lossy(&bytes);
        let _ = domain::parse(&text);
        let _ = domain::is_managed(&text);
    }
}

/// libvirt's RelaxNG schema and its test driver accept every generated
/// document (a slower property: one xmllint run per case).
#[test]
fn generated_documents_pass_virt_xml_validate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conn = virt::connect::Connect::open(Some("test:///default")).expect("test:///default");
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 40,
        ..ProptestConfig::default()
    });
    let strategy = (any::<u64>(), proptest::collection::vec(user_text(), 4));
    let result = runner.run(&strategy, |(seed, texts)| {
        let xml = domain::render(&gen_spec(seed, &texts)).expect("render");
        let file = dir.path().join("generated.xml");
        std::fs::write(&file, &xml).expect("write");
        let out = std::process::Command::new("virt-xml-validate")
            .arg(&file)
            .arg("domain")
            .output()
            .expect("run virt-xml-validate");
        prop_assert!(
            out.status.success(),
            "{}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            xml
        );
        // libvirt's own parser (test driver) accepts it and reads back what we wrote.
        let dom = conn
            .define_domain_xml(&xml)
            .map_err(|e| TestCaseError::fail(format!("define: {e}\n{xml}")))?;
        let back = dom.xml_desc(virt::sys::VIR_DOMAIN_XML_SECURE);
        let _ = dom.undefine();
        let back = back.map_err(|e| TestCaseError::fail(format!("dumpxml: {e}")))?;
        let parsed =
            domain::parse(&back).map_err(|e| TestCaseError::fail(format!("{e}\n{back}")))?;
        let spec = gen_spec(seed, &texts);
        prop_assert!(
            parsed.not_understood.is_empty(),
            "{:?}",
            parsed.not_understood
        );
        // libvirt groups disks by bus in its own order; compare by target.
        let by_target = |d: &[Disk]| {
            let mut v = d.to_vec();
            v.sort_by(|a, b| a.target.cmp(&b.target));
            v
        };
        // Everything else is exactly what we rendered, modulo what the test
        // driver fills in (balloon target, tap names) and its disk order.
        let (mut got, mut want) = (parsed.spec, spec);
        got.devices.disks = by_target(&got.devices.disks);
        want.devices.disks = by_target(&want.devices.disks);
        if want.memory.current.is_none() {
            got.memory.current = None;
        }
        // libvirt omits current vCPUs equal to the maximum, adds a video
        // device for graphics, and spells a model without mode as custom.
        if want.vcpu.current == Some(want.vcpu.max) {
            want.vcpu.current = None;
        }
        match (want.devices.video, got.devices.video.as_mut()) {
            (None, _) => got.devices.video = None,
            // Default vram/heads are filled in.
            (Some(w), Some(g)) => {
                g.vram = w.vram.and(g.vram);
                g.heads = w.heads.and(g.heads);
            }
            _ => {}
        }
        if let (Some(w), Some(g)) = (&want.cpu, got.cpu.as_mut()) {
            if w.mode.is_none() && w.model.is_some() {
                g.mode = None;
            }
        }
        for (g, w) in got
            .devices
            .interfaces
            .iter_mut()
            .zip(&want.devices.interfaces)
        {
            if w.target_dev.is_none() {
                g.target_dev = None;
            }
            // libvirt generates an Open vSwitch interface id when none is given.
            if w.openvswitch == Some(None) && g.openvswitch.is_some() {
                g.openvswitch = Some(None);
            }
        }
        prop_assert!(
            got == want,
            "test driver changed: {}\n{}",
            changed(&want, &got),
            back
        );
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The lines of the pretty Debug forms that differ (want -> got).
fn changed(want: &VmSpec, got: &VmSpec) -> String {
    let (w, g) = (format!("{want:#?}"), format!("{got:#?}"));
    w.lines()
        .zip(g.lines())
        .filter(|(a, b)| a != b)
        .map(|(a, b)| format!("- {}\n+ {}\n", a.trim(), b.trim()))
        .collect()
}
