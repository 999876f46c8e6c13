//! The domain model without libvirt: validation messages, the JSON helpers the
//! CLI uses, and the parser's tolerance of real `virsh dumpxml` output.

use csagent_domain::{self as domain, DomainError, VmSpec};

const TYPICAL_JSON: &str = include_str!("../golden/domain/typical.json");
const TYPICAL_RUNNING: &str = include_str!("../golden/domain/typical-running.xml");

fn typical() -> VmSpec {
    let proto: csagent_proto::v1::VmSpec =
        serde_json::from_str(TYPICAL_JSON).expect("typical.json");
    csagent::convert::domain::spec_from_proto(&proto).expect("typical spec is valid")
}

/// Every error message the spec JSON (edited by `edit`) produces.
fn json_errors(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<String> {
    let mut v: serde_json::Value = serde_json::from_str(TYPICAL_JSON).expect("json");
    edit(&mut v);
    match csagent::convert::domain::render_spec_json(&v.to_string()) {
        Ok(_) => Vec::new(),
        Err(e) => e.field_errors().iter().map(|f| f.to_string()).collect(),
    }
}

fn assert_rejects(errors: &[String], expected: &str) {
    assert!(
        errors.iter().any(|e| e.contains(expected)),
        "expected an error containing {expected:?}, got {errors:?}"
    );
}

/// An edit of the typical spec's JSON.
type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;

#[test]
fn spec_errors_name_the_field() {
    use serde_json::json;
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|v| v["memory"]["size_kib"] = json!(0)),
            "memory.size_kib: is zero",
        ),
        (
            Box::new(|v| v["cpu"]["current_vcpus"] = json!(3)),
            "cpu.current_vcpus: 3 must be between 1 and vcpus (2)",
        ),
        (
            Box::new(|v| {
                v["memory"]["max_kib"] = json!(8 << 20);
                v["memory"]["slots"] = json!(4)
            }),
            "cpu.numa: memory.max_kib (memory hotplug) needs at least one NUMA cell",
        ),
        (
            Box::new(|v| v["serial_console_log"] = json!("/etc/shadow")),
            "serial_console_log: \"/etc/shadow\" does not end in .log",
        ),
        (
            Box::new(|v| v["serial_console_log"] = json!("/var/log/../../etc/x.log")),
            "serial_console_log: \"/var/log/../../etc/x.log\" contains '..'",
        ),
        (
            Box::new(|v| {
                v["serial_console"] = json!(false);
                v["serial_console_log"] = json!("/var/log/c.log")
            }),
            "serial_console_log: needs serial_console",
        ),
        (
            Box::new(|v| v["cpu"]["vcpus"] = json!(0)),
            "cpu.vcpus: is zero",
        ),
        (
            Box::new(|v| v["disks"][1]["target"] = json!("vda")),
            "disks[1].target: duplicate target \"vda\"",
        ),
        (
            Box::new(|v| v["disks"][1]["bus"] = json!("usb2")),
            "disks[1].bus: unknown value \"usb2\"",
        ),
        (
            Box::new(|v| v["disks"][0]["format"] = json!("vmdk")),
            "disks[0].format: unknown value \"vmdk\"",
        ),
        (
            Box::new(|v| v["disks"][0]["target"] = json!("sda")),
            "disks[0].target: \"sda\" is not a virtio device name",
        ),
        (
            Box::new(|v| v["interfaces"][1]["mac"] = json!("52:54:00:6f:70:01")),
            "interfaces[1].mac: duplicate MAC",
        ),
        (
            Box::new(|v| v["interfaces"][0]["mac"] = json!("52:54:00:zz:70:01")),
            "interfaces[0].mac: \"52:54:00:zz:70:01\" is not a MAC",
        ),
        (
            Box::new(|v| v["interfaces"][0]["mac"] = json!("01:00:5e:00:00:01")),
            "interfaces[0].mac: 01:00:5e:00:00:01 is not a unicast",
        ),
        (
            Box::new(|v| v["interfaces"][0]["vlan"] = json!(100)),
            "interfaces[0].vlan: a VLAN tag needs an Open vSwitch bridge",
        ),
        (
            Box::new(|v| v["interfaces"][0]["target_dev"] = json!("vnet0")),
            "reserved by libvirt",
        ),
        (
            Box::new(|v| v["uuid"] = json!("not-a-uuid")),
            "uuid: \"not-a-uuid\" is not a UUID",
        ),
        (
            Box::new(|v| v["name"] = json!("a/b")),
            "name: \"a/b\" contains '/'",
        ),
        (Box::new(|v| v["name"] = json!("")), "name: is empty"),
        (
            Box::new(|v| v["name"] = json!("a\u{0}b")),
            "name: contains the control character",
        ),
        (
            Box::new(|v| v["description"] = json!("bell\u{7}")),
            "description: contains the control character",
        ),
        (
            Box::new(|v| v["graphics"][0]["passwd"] = json!("123456789")),
            "graphics[0].passwd: VNC passwords are at most 8 bytes",
        ),
        (
            Box::new(|v| v["graphics"][0]["listen"] = json!("any")),
            "graphics[0].listen: \"any\" is not an IP address",
        ),
        (
            Box::new(|v| v["cpu"]["topology"]["cores"] = json!(4)),
            "cpu.topology: sockets*cores*threads = 4 but vcpus = 2",
        ),
        (
            Box::new(|v| v["disks"][1]["iotune"]["read_bytes_sec"] = json!(5)),
            "disks[1].iotune.total_bytes_sec: cannot be combined",
        ),
        (
            Box::new(|v| v["disks"][1]["iotune"]["total_iops_sec_max"] = json!(5)),
            "disks[1].iotune.total_iops_sec_max: 5 is below",
        ),
        (
            Box::new(|v| v["disks"][0]["cache"] = json!("writeback")),
            "disks[0].io: \"native\" needs cache",
        ),
        (
            Box::new(|v| v["disks"][1]["bus"] = json!("scsi")),
            "disks[1].bus: scsi disks need scsi_controller",
        ),
        (
            Box::new(|v| v["disks"][1]["boot_order"] = json!(1)),
            "disks[1].boot_order: boot order 1 is used twice",
        ),
        (
            Box::new(|v| v["boot"]["secure_boot"] = json!(true)),
            "boot.loader: loader, nvram and secure_boot need firmware",
        ),
        (
            Box::new(|v| v["boot"]["firmware"] = json!("coreboot")),
            "boot.firmware: unknown value \"coreboot\"",
        ),
        (
            Box::new(|v| v["memory"]["current_kib"] = json!(4194304)),
            "memory.current_kib: 4194304 KiB must be between 1 and size_kib",
        ),
        (
            Box::new(|v| v["hostdevs"] = json!([{ "address": "0000:01:00" }])),
            "hostdevs[0].address: \"0000:01:00\" is not a PCI address",
        ),
        (
            Box::new(|v| v["domain_type"] = json!("xen")),
            "domain_type: unknown value \"xen\"",
        ),
        (
            Box::new(|v| {
                v["clock"]["timers"] = json!([{ "name": "kvmclock", "tickpolicy": "catchup" }])
            }),
            "clock.timers[0].tickpolicy: the kvmclock timer takes no tickpolicy",
        ),
    ];
    for (edit, expected) in cases {
        assert_rejects(&json_errors(edit), expected);
    }
}

#[test]
fn all_problems_are_reported_at_once() {
    let errors = json_errors(|v| {
        v["memory"]["size_kib"] = 0.into();
        v["disks"][1]["target"] = "vda".into();
        v["interfaces"][1]["mac"] = "52:54:00:6f:70:01".into();
    });
    assert_eq!(errors.len(), 3, "{errors:?}");
    let text = csagent::convert::domain::render_spec_json(r#"{"name":"x"}"#)
        .expect_err("empty spec")
        .to_string();
    assert!(text.starts_with("invalid VM spec: "), "{text}");
}

#[test]
fn ide_is_refused_on_q35_and_secure_boot_needs_smm() {
    let mut spec = typical();
    spec.devices.disks[1].bus = domain::DiskBus::Ide;
    spec.devices.disks[1].target = "hdb".into();
    spec.os.firmware = domain::Firmware::Uefi(domain::Uefi {
        loader: "/usr/share/OVMF/OVMF_CODE_4M.ms.fd".into(),
        secure_boot: true,
        nvram: None,
        nvram_template: None,
    });
    let err = domain::render(&spec).expect_err("invalid");
    let text = err.to_string();
    assert!(
        text.contains("disks[1].bus: q35 machines have no IDE bus"),
        "{text}"
    );
    assert!(
        text.contains("features.smm: must be true with boot.secure_boot"),
        "{text}"
    );
    let mut buf = b"keep".to_vec();
    assert!(domain::render_into(&spec, &mut buf).is_err());
    assert_eq!(buf, b"keep", "a failed render must not touch the buffer");
}

#[test]
fn bad_json_is_a_clear_error() {
    let e = csagent::convert::domain::render_spec_json("{ not json").expect_err("bad json");
    assert!(matches!(e, DomainError::Json(_)), "{e}");
    assert!(e.to_string().contains("csagent.v1.VmSpec"), "{e}");
    let e = csagent::convert::domain::render_spec_json(r#"{"memory": {"size_kib": "lots"}}"#)
        .expect_err("wrong type");
    assert!(matches!(e, DomainError::Json(_)), "{e}");
}

#[test]
fn parse_json_output_renders_back_to_the_same_xml() {
    let xml = csagent::convert::domain::render_spec_json(TYPICAL_JSON).expect("render");
    let out = csagent::convert::domain::parse_xml_to_json(&xml).expect("parse to json");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["not_understood"], serde_json::json!([]));
    assert_eq!(v["spec"]["disks"][1]["bus"], "virtio");
    let again = csagent::convert::domain::render_spec_json(&v["spec"].to_string())
        .expect("render parsed spec");
    assert_eq!(again, xml);
}

/// A running domain's dumpxml: addresses, aliases, controllers, seclabels,
/// a live VNC port and tap names, plus devices the model does not know.
#[test]
fn parses_running_dumpxml_and_lists_what_it_left_out() {
    let parsed = domain::parse(TYPICAL_RUNNING).expect("parse dumpxml");
    assert_eq!(
        parsed.not_understood,
        vec![
            "devices/filesystem".to_string(),
            "devices/panic".to_string()
        ]
    );
    let mut back = parsed.spec;
    let spec = typical();
    assert_eq!(
        back.devices.graphics[0].port,
        Some(5901),
        "live VNC port is reported"
    );
    assert_eq!(
        back.devices.interfaces[0].target_dev.as_deref(),
        Some("vnet12")
    );
    assert_eq!(back.os.machine.as_deref(), Some("pc-q35-7.2"));
    assert_eq!(
        back.devices.serial_console_log.as_deref(),
        Some("/var/log/libvirt/qemu/csat-dom-typical-serial0.log"),
        "the serial console's log file is read back"
    );
    back.devices.serial_console_log = None;
    // What libvirt added; everything else must be exactly the spec.
    back.devices.emulator = None;
    back.os.machine = spec.os.machine.clone();
    back.memory.current = None;
    back.devices.graphics[0].port = None;
    for nic in &mut back.devices.interfaces {
        nic.target_dev = None;
    }
    assert_eq!(back, spec);
    assert!(domain::is_managed(TYPICAL_RUNNING));
    let meta = domain::metadata(TYPICAL_RUNNING)
        .expect("metadata")
        .expect("ours");
    assert_eq!(meta.instance_id, "i-2-6006-VM");
}

#[test]
fn recognises_only_our_metadata_namespace() {
    let ours_other_prefix = r#"<domain type='kvm'><name>a</name><metadata>
        <cs:instance xmlns:cs="https://csagent.dev/xmlns/domain/1" instance="i-1"/></metadata></domain>"#;
    let default_ns = r#"<domain type='kvm'><metadata>
        <instance xmlns="https://csagent.dev/xmlns/domain/1" instance="i-2"/></metadata></domain>"#;
    let foreign = r#"<domain type='kvm'><metadata>
        <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1"/>
        <csagent:instance xmlns:csagent="https://example.com/not-ours" instance="i-3"/></metadata></domain>"#;
    assert!(domain::is_managed(ours_other_prefix));
    assert!(domain::is_managed(default_ns));
    assert!(!domain::is_managed(foreign));
    assert!(!domain::is_managed(
        "<domain type='kvm'><name>x</name><devices/></domain>"
    ));
    assert!(!domain::is_managed("not xml <<<"));
    let minimal =
        csagent::convert::domain::render_spec_json(include_str!("../golden/domain/minimal.json"))
            .expect("minimal");
    assert!(
        !domain::is_managed(&minimal),
        "a spec without ids is not marked ours"
    );
}

#[test]
fn reads_libvirt_memory_units_and_defaults() {
    let xml = r#"<domain type='qemu'>
      <name>u</name><uuid>5e0c1a1e-0000-4000-8000-0000000000aa</uuid>
      <memory unit='GiB'>2</memory><currentMemory unit='MiB'>1024</currentMemory>
      <maxMemory slots='4' unit='b'>8589934592</maxMemory>
      <vcpu>2</vcpu>
      <os><type>hvm</type><boot dev='cdrom'/><bootmenu enable='yes'/></os>
      <unknownTopLevel><deep><deeper/></deep></unknownTopLevel>
    </domain>"#;
    let p = domain::parse(xml).expect("parse");
    assert_eq!(p.spec.memory.size.0, 2 * 1024 * 1024);
    assert_eq!(p.spec.memory.current.map(|k| k.0), Some(1024 * 1024));
    assert_eq!(
        p.spec.memory.max.map(|m| (m.size.0, m.slots)),
        Some((8 * 1024 * 1024, 4))
    );
    assert_eq!(p.spec.domain_type, domain::DomainType::Qemu);
    assert_eq!(p.spec.on_reboot, domain::LifecycleAction::Restart);
}

#[test]
fn unrepresentable_devices_are_reported_not_guessed() {
    let xml = r#"<domain type='kvm'><name>n</name><uuid>5e0c1a1e-0000-4000-8000-0000000000ab</uuid>
      <memory>1024</memory><vcpu>1</vcpu>
      <devices>
        <disk type='volume' device='disk'><source pool='p' volume='v'/><target dev='vda' bus='virtio'/></disk>
        <disk type='file' device='floppy'><target dev='fda' bus='fdc'/></disk>
        <interface type='network'><mac address='52:54:00:00:00:01'/><source network='default'/><model type='virtio'/></interface>
        <interface type='bridge'><mac address='52:54:00:00:00:02'/><source bridge='br0'/><model type='ne2k_pci'/></interface>
        <hostdev mode='subsystem' type='usb'><source><vendor id='0x1'/></source></hostdev>
        <graphics type='sdl'/>
      </devices></domain>"#;
    let p = domain::parse(xml).expect("parse");
    assert!(p.spec.devices.disks.is_empty() && p.spec.devices.interfaces.is_empty());
    assert_eq!(p.not_understood.len(), 6, "{:?}", p.not_understood);
    assert!(
        p.not_understood[0].contains("devices/disk[target=\"vda\"]: source type \"volume\""),
        "{:?}",
        p.not_understood
    );
    assert!(p.not_understood[2]
        .contains("devices/interface[mac=\"52:54:00:00:00:01\"]: type \"network\""));
}

#[test]
fn broken_xml_is_an_error_not_a_panic() {
    let cases = [
        "",
        "<domain",
        "<domain type='kvm'><name>x</name>",
        "<domain type='kvm'><name>x</nome></domain>",
        "<notdomain/>",
        "<domain type='xen'><name>x</name></domain>",
        "<domain type='kvm'><name>x</name><uuid>nope</uuid><memory>1</memory></domain>",
        "<domain type='kvm'><uuid>5e0c1a1e-0000-4000-8000-0000000000ab</uuid><memory>1</memory></domain>",
        "<domain type='kvm'><name>x</name><uuid>5e0c1a1e-0000-4000-8000-0000000000ab</uuid><memory unit='parsec'>1</memory></domain>",
        "<domain type='kvm'><name>&bogus;</name></domain>",
        "<domain type='kvm'><name>x</name><uuid>5e0c1a1e-0000-4000-8000-0000000000ab</uuid><memory>1</memory><vcpu>-3</vcpu></domain>",
    ];
    for xml in cases {
        let e = domain::parse(xml).expect_err(xml);
        assert!(matches!(e, DomainError::Xml { .. }), "{xml}: {e}");
        assert!(csagent::convert::domain::parse_xml_to_json(xml).is_err());
    }
}

/// Found by the fuzzer: a non-ASCII disk target from parsed XML panicked in
/// validation (byte slicing inside a character).
#[test]
fn non_ascii_disk_target_is_an_error_not_a_panic() {
    let mut spec = typical();
    for target in ["v€a", "€", "vd", "vdA", "sda"] {
        spec.devices.disks[1].target = target.into();
        let e = domain::render(&spec).expect_err(target).to_string();
        assert!(e.contains("disks[1].target"), "{target}: {e}");
    }
}
