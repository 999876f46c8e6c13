//! The lab of hosts on one machine (scripts/lab.sh): two libvirtds in their
//! own namespaces are separate hosts, and a real TCG guest moves live from
//! one to the other and keeps running there.

use std::time::{Duration, Instant};

use csagent_testkit::guest::guest_image;
use csagent_testkit::lab::{domain_name, wait_for, Lab, LabDomain, SHARED};

#[test]
fn lab_hosts_are_separate_libvirt_hosts() {
    let _turn = csagent_testkit::lab::turn_blocking();
    let lab = match Lab::get(2) {
        Ok(l) => l,
        Err(why) => {
            csagent_testkit::skip!("{why}");
            return;
        }
    };
    let out = lab.run(1, &["hostname"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "cslab-h1");
    // Host 1 reaches host 2's libvirtd over the lab network, and it answers
    // as host 2.
    let uri = format!("qemu+tcp://{}/system", lab.hosts[1].addr);
    let out = lab.run(1, &["virsh", "-c", &uri, "hostname"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "cslab-h2");
    // A lab host lists its own domains, never the machine's.
    let out = lab.virsh(1, &["list", "--all", "--name"]);
    assert!(out.status.success(), "{out:?}");
    let names = String::from_utf8_lossy(&out.stdout);
    assert!(
        names
            .lines()
            .all(|n| n.trim().is_empty() || n.starts_with("cslab-")),
        "lab host 1 sees foreign domains: {names}"
    );
}

#[test]
fn a_tcg_guest_migrates_live_between_lab_hosts_and_keeps_running() {
    let _turn = csagent_testkit::lab::turn_blocking();
    let lab = match Lab::get(2) {
        Ok(l) => l,
        Err(why) => {
            csagent_testkit::skip!("{why}");
            return;
        }
    };
    let img = lab.shared_guest(&guest_image());
    let name = domain_name("test-mig");
    let console = format!("{SHARED}/{name}.console.log");
    let xml_path = format!("{SHARED}/{name}.xml");
    std::fs::write(&xml_path, guest_xml(&name, &img, &console)).unwrap();
    let _domain = LabDomain {
        lab: &lab,
        name: name.clone(),
    };

    let out = lab.virsh(1, &["create", &xml_path]);
    assert!(out.status.success(), "{out:?}");
    let booted = || console_says(&console, "CSAGENT-GUEST-UP");
    assert!(
        wait_for(Duration::from_secs(60), booted),
        "guest did not boot on cslab-h1 ({console})"
    );

    let dst = &lab.hosts[1].addr;
    let t = Instant::now();
    let out = lab.virsh(
        1,
        &[
            "migrate",
            "--live",
            &name,
            &format!("qemu+tcp://{dst}/system"),
            &format!("tcp://{dst}"),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    println!(
        "virsh migrate --live between lab hosts took {:?}",
        t.elapsed()
    );
    assert_eq!(lab.domstate(2, &name).as_deref(), Some("running"));
    assert_eq!(
        lab.domstate(1, &name),
        None,
        "the source still has the domain"
    );

    // The guest lives on: the destination's QEMU delivers the power button
    // and the guest's init answers on the same console.
    let out = lab.virsh(2, &["shutdown", &name]);
    assert!(out.status.success(), "{out:?}");
    let off = || console_says(&console, "CSAGENT-GUEST-POWEROFF");
    assert!(
        wait_for(Duration::from_secs(30), off),
        "guest did not answer ACPI on cslab-h2"
    );
    let _ = std::fs::remove_file(&console);
    let _ = std::fs::remove_file(&xml_path);
}

/// Whether the guest wrote `marker` to its console file yet.
fn console_says(console: &str, marker: &str) -> bool {
    std::fs::read_to_string(console)
        .unwrap_or_default()
        .contains(marker)
}

/// A diskless 128 MiB TCG guest with a migratable CPU model and ACPI (for a
/// graceful shutdown), its serial console appended to `console`.
fn guest_xml(name: &str, img: &csagent_testkit::guest::GuestImage, console: &str) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{}</kernel><initrd>{}</initrd>\
         <cmdline>console=ttyS0</cmdline></os><features><acpi/><apic/></features>\
         <cpu mode='custom' match='exact' check='none'><model fallback='forbid'>qemu64</model></cpu>\
         <on_poweroff>destroy</on_poweroff><devices><controller type='usb' model='none'/>\
         <serial type='file'><source path='{console}' append='on'/><target port='0'/></serial>\
         <memballoon model='none'/></devices></domain>",
        img.kernel.display(),
        img.initrd.display()
    )
}
