//! Parses libvirt's `capabilities` and `domcapabilities` XML into the facts
//! the plane places VMs by: host CPU, usable CPU models, host-model CPU,
//! machine types, UEFI firmware, max vCPUs, KVM vs TCG.
//!
//! Parsing only: the caller fetches the XML through the hypervisor module
//! and passes libvirt's and QEMU's version numbers in. Unknown elements are
//! ignored so newer libvirt versions keep working.

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CapsError {
    #[error("libvirt {doc} XML is malformed: {reason}; check `virsh {doc}` on this host")]
    Malformed { doc: &'static str, reason: String },
    #[error("libvirt {doc} XML has no <{root}> root element")]
    WrongRoot {
        doc: &'static str,
        root: &'static str,
    },
}

/// libvirt's view of this host.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LibvirtFacts {
    /// libvirt's encoding: major * 1_000_000 + minor * 1_000 + release.
    pub libvirt_version: u64,
    pub qemu_version: u64,
    /// Host architecture ("x86_64").
    pub arch: String,
    /// Host CPU model as libvirt names it in `capabilities`.
    pub host_cpu_model: String,
    pub host_cpu_vendor: String,
    /// The model `<cpu mode='host-model'>` expands to, from domcapabilities.
    pub host_model: Option<String>,
    pub host_passthrough: bool,
    /// Named CPU models this host can run (`usable='yes'`).
    pub usable_cpu_models: Vec<String>,
    /// Domain types offered: "kvm" (hardware) and/or "qemu" (TCG).
    pub domain_types: Vec<String>,
    pub machine_types: Vec<MachineType>,
    /// UEFI loader images (OVMF_CODE*.fd); empty means no UEFI guests.
    pub uefi_firmware: Vec<String>,
    /// The loader enum allows secure='yes'.
    pub secure_boot: bool,
    /// Max vCPUs per VM for the default machine type.
    pub max_vcpus: u32,
    /// IOMMU support reported by the host (PCI passthrough).
    pub iommu: bool,
}

impl LibvirtFacts {
    /// Whether hardware virtualisation is offered (else only TCG).
    pub fn kvm(&self) -> bool {
        self.domain_types.iter().any(|t| t == "kvm")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachineType {
    pub name: String,
    /// Set for aliases ("pc" -> "pc-i440fx-7.2").
    pub canonical: Option<String>,
    pub max_cpus: u32,
    pub deprecated: bool,
}

/// "9.0.0" from 9000000.
pub fn format_version(v: u64) -> String {
    format!("{}.{}.{}", v / 1_000_000, (v / 1_000) % 1_000, v % 1_000)
}

/// Parses both documents. `capabilities` is `virConnectGetCapabilities`,
/// `domcapabilities` is `virConnectGetDomainCapabilities` for the host's
/// arch and preferred domain type.
pub fn parse(
    capabilities: &str,
    domcapabilities: &str,
    libvirt_version: u64,
    qemu_version: u64,
) -> Result<LibvirtFacts, CapsError> {
    let caps = Node::parse(capabilities, "capabilities")?;
    let dom = Node::parse(domcapabilities, "domainCapabilities")?;
    let mut f = LibvirtFacts {
        libvirt_version,
        qemu_version,
        ..Default::default()
    };
    apply_capabilities(&caps, &mut f);
    apply_domcapabilities(&dom, &mut f);
    Ok(f)
}

fn apply_capabilities(caps: &Node, f: &mut LibvirtFacts) {
    if let Some(cpu) = caps.path(&["host", "cpu"]) {
        f.arch = cpu.child_text("arch");
        f.host_cpu_model = cpu.child_text("model");
        f.host_cpu_vendor = cpu.child_text("vendor");
    }
    f.iommu = caps
        .path(&["host", "iommu"])
        .is_some_and(|n| n.attr("support") == Some("yes"));
    // The guest section for the host's own arch lists machines and domain types.
    let arch_node = caps
        .children_named("guest")
        .filter_map(|g| g.child("arch"))
        .find(|a| a.attr("name") == Some(f.arch.as_str()));
    if let Some(arch) = arch_node {
        f.machine_types = arch
            .children_named("machine")
            .map(|m| MachineType {
                name: m.text.clone(),
                canonical: m.attr("canonical").map(String::from),
                max_cpus: m.attr("maxCpus").and_then(|v| v.parse().ok()).unwrap_or(0),
                deprecated: m.attr("deprecated") == Some("yes"),
            })
            .collect();
        f.domain_types = arch
            .children_named("domain")
            .filter_map(|d| d.attr("type").map(String::from))
            .collect();
    }
}

fn apply_domcapabilities(dom: &Node, f: &mut LibvirtFacts) {
    f.max_vcpus = dom
        .child("vcpu")
        .and_then(|v| v.attr("max")?.parse().ok())
        .unwrap_or(0);
    if let Some(loader) = dom
        .path(&["os", "loader"])
        .filter(|l| l.attr("supported") == Some("yes"))
    {
        f.uefi_firmware = loader
            .children_named("value")
            .map(|v| v.text.clone())
            .collect();
        f.secure_boot = loader
            .children_named("enum")
            .find(|e| e.attr("name") == Some("secure"))
            .is_some_and(|e| e.children_named("value").any(|v| v.text == "yes"));
    }
    let Some(cpu) = dom.child("cpu") else { return };
    for mode in cpu.children_named("mode") {
        if mode.attr("supported") != Some("yes") {
            continue;
        }
        match mode.attr("name") {
            Some("host-passthrough") => f.host_passthrough = true,
            Some("host-model") => f.host_model = mode.child("model").map(|m| m.text.clone()),
            Some("custom") => {
                f.usable_cpu_models = mode
                    .children_named("model")
                    .filter(|m| m.attr("usable") == Some("yes"))
                    .map(|m| m.text.clone())
                    .collect();
            }
            _ => {}
        }
    }
}

/// A minimal element tree: these documents are small (tens of KiB) and read
/// once per connection, so clarity beats streaming.
#[derive(Debug, Default)]
struct Node {
    name: String,
    attrs: Vec<(String, String)>,
    text: String,
    children: Vec<Node>,
}

impl Node {
    fn parse(xml: &str, root: &'static str) -> Result<Node, CapsError> {
        let doc = if root == "capabilities" {
            "capabilities"
        } else {
            "domcapabilities"
        };
        let bad = |reason: String| CapsError::Malformed { doc, reason };
        // Text is trimmed per element on close, not per event: "a &amp; b"
        // arrives as three events and must keep its inner spaces.
        let mut reader = Reader::from_str(xml);
        // stack[0] is a synthetic document node.
        let mut stack = vec![Node::default()];
        loop {
            match reader.read_event().map_err(|e| bad(e.to_string()))? {
                Event::Start(e) => stack.push(Node::from_start(&e).map_err(bad)?),
                Event::Empty(e) => {
                    let node = Node::from_start(&e).map_err(bad)?;
                    push_child(&mut stack, node);
                }
                Event::End(_) => {
                    let node = stack.pop().filter(|_| !stack.is_empty());
                    let mut node = node.ok_or_else(|| bad("unbalanced end tag".into()))?;
                    node.text = node.text.trim().to_string();
                    push_child(&mut stack, node);
                }
                Event::Text(t) => {
                    let s = t.decode().map_err(|e| bad(e.to_string()))?;
                    append_text(&mut stack, &s);
                }
                Event::GeneralRef(r) => {
                    let name = r.decode().map_err(|e| bad(e.to_string()))?;
                    let entity = format!("&{name};");
                    let s = quick_xml::escape::unescape(&entity).map_err(|e| bad(e.to_string()))?;
                    append_text(&mut stack, &s);
                }
                Event::Eof => break,
                _ => {}
            }
        }
        let document = stack.pop().filter(|_| stack.is_empty());
        let document = document.ok_or_else(|| bad("unclosed element".into()))?;
        document
            .children
            .into_iter()
            .find(|n| n.name == root)
            .ok_or(CapsError::WrongRoot { doc, root })
    }

    fn from_start(e: &BytesStart<'_>) -> Result<Node, String> {
        let mut node = Node {
            name: String::from_utf8_lossy(e.local_name().as_ref()).into_owned(),
            ..Default::default()
        };
        for a in e.attributes() {
            let a = a.map_err(|e| e.to_string())?;
            let value = a.unescape_value().map_err(|e| e.to_string())?;
            let key = String::from_utf8_lossy(a.key.local_name().as_ref()).into_owned();
            node.attrs.push((key, value.into_owned()));
        }
        Ok(node)
    }

    fn attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn child(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.name == name)
    }

    fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    fn child_text(&self, name: &str) -> String {
        self.child(name).map(|c| c.text.clone()).unwrap_or_default()
    }

    fn path(&self, names: &[&str]) -> Option<&Node> {
        names.iter().try_fold(self, |n, name| n.child(name))
    }
}

fn push_child(stack: &mut [Node], node: Node) {
    if let Some(parent) = stack.last_mut() {
        parent.children.push(node);
    }
}

fn append_text(stack: &mut [Node], s: &str) {
    if let Some(n) = stack.last_mut() {
        n.text.push_str(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_documents_and_errors() {
        let caps = "<capabilities><host><cpu><arch>aarch64</arch><model>host &amp; co</model></cpu></host>\
                    <guest><arch name='aarch64'><machine maxCpus='512'>virt-7.2</machine>\
                    <domain type='qemu'/></arch></guest></capabilities>";
        let dom = "<domainCapabilities><vcpu max='512'/></domainCapabilities>";
        let f = parse(caps, dom, 9_000_000, 7_002_000).unwrap();
        assert_eq!(f.host_cpu_model, "host & co");
        assert_eq!(f.machine_types[0].max_cpus, 512);
        assert!(!f.kvm());
        assert_eq!(format_version(f.qemu_version), "7.2.0");
        assert!(matches!(
            parse("<x/>", dom, 0, 0),
            Err(CapsError::WrongRoot { .. })
        ));
        assert!(matches!(
            parse("<capabilities><a></b>", dom, 0, 0),
            Err(CapsError::Malformed { .. })
        ));
        assert!(parse(caps, "<domainCapabilities>", 0, 0).is_err());
    }
}
