//! Golden domain XML, checked by libvirt itself.
//!
//! For every tests/golden/domain/NAME.json (a proto VmSpec in JSON): render it,
//! compare with NAME.xml (UPDATE_GOLDEN=1 rewrites the files), validate with
//! `virt-xml-validate FILE domain`, define it on test:///default and, for the
//! VMs this host can hold, on qemu:///system, then read the XML back
//! (`dumpxml --security-info`) and check it parses into the same model, modulo
//! what libvirt adds. Domains are named `csat-dom-*` and always undefined.

use std::path::{Path, PathBuf};
use std::process::Command;

use csagent_domain::{self as domain, Firmware, VmSpec};
use virt::connect::Connect;
use virt::domain::Domain;

const GOLDEN: &[&str] = &[
    "minimal",
    "linux",
    "windows",
    "rbd-iotune",
    "gpu",
    "kernel-boot",
    "typical",
];

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/domain")
}

fn spec_of(name: &str) -> (VmSpec, String) {
    let json = std::fs::read_to_string(golden_dir().join(format!("{name}.json")))
        .expect("read golden json");
    let proto: csagent_proto::v1::VmSpec =
        serde_json::from_str(&json).expect("golden json is a VmSpec");
    let spec =
        csagent::convert::domain::spec_from_proto(&proto).unwrap_or_else(|e| panic!("{name}: {e}"));
    let xml =
        csagent::convert::domain::render_spec_json(&json).unwrap_or_else(|e| panic!("{name}: {e}"));
    (spec, xml)
}

/// A line diff (LCS) that shows only changed lines with a little context.
fn diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push_str(&format!("+{:4} {}\n", j + 1, b[j]));
            j += 1;
        } else {
            out.push_str(&format!("-{:4} {}\n", i + 1, a[i]));
            i += 1;
        }
    }
    out
}

fn check_golden(name: &str, xml: &str) {
    let path = golden_dir().join(format!("{name}.xml"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, xml).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "{} missing; run with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    if expected != xml {
        panic!(
            "{name}: rendered XML differs from {} (- golden, + rendered; UPDATE_GOLDEN=1 to accept):\n{}",
            path.display(),
            diff(&expected, xml)
        );
    }
}

/// Runs libvirt's own RelaxNG validation on the document.
fn xml_validate(name: &str, xml: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join(format!("{name}.xml"));
    std::fs::write(&file, xml).expect("write temp xml");
    let out = Command::new("virt-xml-validate")
        .arg(&file)
        .arg("domain")
        .output()
        .expect("run virt-xml-validate (libvirt-clients, libxml2-utils)");
    assert!(
        out.status.success(),
        "{name}: virt-xml-validate rejected the document:\n{}{}\n{xml}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Undefines the domain when dropped, even if the test panics.
struct Defined {
    dom: Domain,
    /// Remove the NVRAM file and TPM state too (the test driver has neither
    /// and rejects the flags).
    with_state: bool,
}

impl Drop for Defined {
    fn drop(&mut self) {
        let flags = virt::sys::VIR_DOMAIN_UNDEFINE_NVRAM | virt::sys::VIR_DOMAIN_UNDEFINE_TPM;
        if !self.with_state || self.dom.undefine_flags(flags).is_err() {
            let _ = self.dom.undefine();
        }
    }
}

/// Clears what libvirt fills in on define when the spec left it to libvirt.
fn strip_added(orig: &VmSpec, back: &mut VmSpec) {
    if orig.devices.emulator.is_none() {
        back.devices.emulator = None;
    }
    match (&orig.os.machine, &back.os.machine) {
        // qemu expands q35/pc into versioned machine types.
        (Some(o), Some(b))
            if b.contains(o.as_str()) || (o == "pc" && b.starts_with("pc-i440fx")) =>
        {
            back.os.machine = orig.os.machine.clone();
        }
        (None, _) => back.os.machine = None,
        _ => {}
    }
    if orig.cpu.is_none() {
        back.cpu = None;
    }
    if orig.memory.current.is_none() && back.memory.current == Some(back.memory.size) {
        back.memory.current = None;
    }
    match (orig.devices.video, back.devices.video.as_mut()) {
        (None, _) => back.devices.video = None,
        (Some(o), Some(b)) => {
            b.vram = o.vram.and(b.vram);
            b.heads = o.heads.and(b.heads);
        }
        _ => {}
    }
    for (o, b) in orig
        .devices
        .graphics
        .iter()
        .zip(back.devices.graphics.iter_mut())
    {
        if o.listen.is_none() {
            b.listen = None;
        }
    }
    // The test driver names taps itself (testnet0); qemu does so on start.
    for (o, b) in orig
        .devices
        .interfaces
        .iter()
        .zip(back.devices.interfaces.iter_mut())
    {
        if o.target_dev.is_none() {
            b.target_dev = None;
        }
    }
    if let (Firmware::Uefi(o), Firmware::Uefi(b)) = (&orig.os.firmware, &mut back.os.firmware) {
        if o.nvram.is_none() {
            b.nvram = None;
        }
    }
}

/// Defines `xml` on `uri`, reads it back with secrets, and compares models.
fn define_and_compare(
    uri: &str,
    name: &str,
    spec: &VmSpec,
    xml: &str,
) -> Result<(), virt::error::Error> {
    let conn = Connect::open(Some(uri))?;
    let dom = conn.define_domain_xml(xml)?;
    let guard = Defined {
        dom,
        with_state: uri.starts_with("qemu"),
    };
    let back_xml = guard.dom.xml_desc(virt::sys::VIR_DOMAIN_XML_SECURE)?;
    let parsed = domain::parse(&back_xml)
        .unwrap_or_else(|e| panic!("{name} on {uri}: dumpxml does not parse: {e}\n{back_xml}"));
    assert!(
        parsed.not_understood.is_empty(),
        "{name} on {uri}: parser left out {:?}\n{back_xml}",
        parsed.not_understood
    );
    let mut back = parsed.spec;
    strip_added(spec, &mut back);
    assert_eq!(
        &back, spec,
        "{name} on {uri}: dumpxml parsed into a different model\n{back_xml}"
    );
    assert_eq!(
        domain::is_managed(&back_xml),
        spec.meta.is_some(),
        "{name}: is_managed after define"
    );
    drop(guard);
    Ok(())
}

#[test]
fn golden_files_match_validate_and_round_trip() {
    for name in GOLDEN {
        let (spec, xml) = spec_of(name);
        check_golden(name, &xml);
        xml_validate(name, &xml);
        let parsed = domain::parse(&xml).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            parsed.not_understood.is_empty(),
            "{name}: {:?}",
            parsed.not_understood
        );
        assert_eq!(parsed.spec, spec, "{name}: parse(render(spec)) != spec");
        assert_eq!(
            domain::render(&parsed.spec).expect("re-render"),
            xml,
            "{name}: render is not stable"
        );
    }
}

#[test]
fn golden_domains_define_on_test_driver() {
    for name in GOLDEN {
        let (spec, xml) = spec_of(name);
        define_and_compare("test:///default", name, &spec, &xml)
            .unwrap_or_else(|e| panic!("{name}: test:///default: {e}"));
    }
}

/// Every golden domain but the GPU one must define on the real QEMU driver
/// (scripts/install-deps.sh installs OVMF and swtpm for the Windows one).
#[test]
fn golden_domains_define_on_qemu_system() {
    for name in GOLDEN.iter().filter(|n| **n != "gpu") {
        let (spec, xml) = spec_of(name);
        match define_and_compare("qemu:///system", name, &spec, &xml) {
            Ok(()) => eprintln!("{name}: defined on qemu:///system and read back"),
            Err(e) => panic!("{name}: qemu:///system refused it: {e}"),
        }
    }
}

/// Passing through a PCI device needs that device on the host: where it is
/// absent, libvirt's refusal (which names the missing piece) is a skip.
#[test]
fn golden_gpu_domain_defines_where_the_host_has_the_device() {
    let (spec, xml) = spec_of("gpu");
    if let Err(e) = define_and_compare("qemu:///system", "gpu", &spec, &xml) {
        csagent_testkit::skip!("qemu:///system cannot hold the gpu domain here: {e}");
        return;
    }
    eprintln!("gpu: defined on qemu:///system and read back");
}

/// Hostile strings in every user-controlled text slot cannot change the
/// document: it stays valid, and parses back to exactly the same strings.
#[test]
fn injection_cannot_change_structure() {
    let (mut spec, _) = spec_of("linux");
    let evil = r#"x"'<y>&amp;</domain><devices><disk/>]]><![CDATA[ z ]]>"#;
    spec.name = format!("csat-dom-inj{}", evil.replace('/', "|"));
    spec.title = Some(format!("title {evil}"));
    spec.description = Some(format!("desc\n{evil}\n<!-- c --> &lt;"));
    let meta = spec.meta.as_mut().expect("linux has ids");
    meta.instance_id = format!("i-{evil}");
    meta.account_id = "'\"&<>".into();
    spec.devices.graphics[0].passwd = Some("<&'\">]]>".into());
    spec.devices.disks[0].source = domain::DiskSource::File {
        path: format!("/var/lib/x/{evil}"),
    };
    let xml = domain::render(&spec).expect("render");
    assert!(
        !xml.contains("<disk/>") && !xml.contains("<![CDATA["),
        "raw markup leaked:\n{xml}"
    );
    xml_validate("injection", &xml);
    let parsed = domain::parse(&xml).expect("parse");
    assert_eq!(parsed.spec, spec);
    assert_eq!(parsed.spec.devices.disks.len(), spec.devices.disks.len());
    define_and_compare("test:///default", "injection", &spec, &xml).expect("define on test driver");
}
