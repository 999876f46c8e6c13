//! Renders a validated `VmSpec` as libvirt domain XML with quick-xml's Writer.
//!
//! Every string from the spec goes through quick-xml's escaping (attribute
//! values and text alike), so no name or description can change the
//! document's structure. This file must not validate (validate.rs does, before
//! rendering) and must not talk to libvirt. It writes into a caller-owned
//! `Vec<u8>` and reuses one scratch buffer for tags, so a render allocates
//! almost nothing.

use std::fmt::Write as _;

use quick_xml::escape::escape;
use quick_xml::events::{BytesEnd, BytesStart, BytesText, Event};
use quick_xml::Writer;

use super::model::*;
use super::NAMESPACE;

type Res = std::io::Result<()>;

/// The XML writer plus a reused buffer holding the tag being built.
struct Out<'b> {
    w: Writer<&'b mut Vec<u8>>,
    tag: String,
    name_len: usize,
}

impl<'b> Out<'b> {
    fn new(buf: &'b mut Vec<u8>) -> Self {
        Out {
            w: Writer::new_with_indent(buf, b' ', 2),
            tag: String::with_capacity(256),
            name_len: 0,
        }
    }

    /// Starts building a tag; finish it with `empty`, `open` or `text`.
    fn tag(&mut self, name: &str) -> &mut Self {
        self.tag.clear();
        self.tag.push_str(name);
        self.name_len = name.len();
        self
    }

    /// Adds an attribute whose value is escaped by quick-xml.
    fn a(&mut self, key: &str, value: &str) -> &mut Self {
        self.tag.push(' ');
        self.tag.push_str(key);
        self.tag.push_str("=\"");
        self.tag.push_str(&escape(value));
        self.tag.push('"');
        self
    }

    fn a_opt(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        if let Some(v) = value {
            self.a(key, v);
        }
        self
    }

    /// Adds a numeric attribute (digits need no escaping).
    fn n(&mut self, key: &str, value: impl Num) -> &mut Self {
        self.tag.push(' ');
        self.tag.push_str(key);
        self.tag.push_str("=\"");
        value.push_to(&mut self.tag);
        self.tag.push('"');
        self
    }

    fn n_opt(&mut self, key: &str, value: Option<impl Num>) -> &mut Self {
        if let Some(v) = value {
            self.n(key, v);
        }
        self
    }

    fn yes_no(&mut self, key: &str, on: bool) -> &mut Self {
        self.a(key, if on { "yes" } else { "no" })
    }

    fn empty(&mut self) -> Res {
        let e = BytesStart::from_content(self.tag.as_str(), self.name_len);
        self.w.write_event(Event::Empty(e))
    }

    fn open(&mut self) -> Res {
        let e = BytesStart::from_content(self.tag.as_str(), self.name_len);
        self.w.write_event(Event::Start(e))
    }

    /// Writes `<tag ...>text</tag>` with the text escaped.
    fn text(&mut self, text: &str) -> Res {
        let name_end = self.name_len;
        let e = BytesStart::from_content(self.tag.as_str(), self.name_len);
        self.w.write_event(Event::Start(e))?;
        self.w.write_event(Event::Text(BytesText::new(text)))?;
        self.w
            .write_event(Event::End(BytesEnd::new(&self.tag[..name_end])))
    }

    fn num_text(&mut self, value: impl Num) -> Res {
        let at = self.tag.len();
        value.push_to(&mut self.tag);
        let name_end = self.name_len;
        let e = BytesStart::from_content(&self.tag[..at], name_end);
        self.w.write_event(Event::Start(e))?;
        self.w
            .write_event(Event::Text(BytesText::from_escaped(&self.tag[at..])))?;
        self.w
            .write_event(Event::End(BytesEnd::new(&self.tag[..name_end])))
    }

    fn close(&mut self, name: &str) -> Res {
        self.w.write_event(Event::End(BytesEnd::new(name)))
    }
}

/// Integers written straight into the tag buffer (core::fmt is measurably
/// slower on this hot path).
trait Num: Copy {
    fn push_to(self, s: &mut String);
}

fn push_u64(s: &mut String, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    // Only ASCII digits were written, so this never falls back.
    s.push_str(std::str::from_utf8(&buf[i..]).unwrap_or_default());
}

macro_rules! num_impl {
    ($($t:ty),*) => {$(
        impl Num for $t {
            fn push_to(self, s: &mut String) {
                if self < 0 {
                    s.push('-');
                }
                push_u64(s, u64::from(self.unsigned_abs()));
            }
        }
    )*};
}

macro_rules! unum_impl {
    ($($t:ty),*) => {$(
        impl Num for $t {
            fn push_to(self, s: &mut String) {
                push_u64(s, u64::from(self));
            }
        }
    )*};
}

unum_impl!(u8, u16, u32, u64);
num_impl!(i32, i64);

/// Appends the domain XML of `spec` to `buf`. The spec must be validated.
pub(crate) fn render_into(spec: &VmSpec, buf: &mut Vec<u8>) -> Res {
    let mut o = Out::new(buf);
    o.tag("domain")
        .a("type", spec.domain_type.as_str())
        .open()?;
    identity(&mut o, spec)?;
    memory(&mut o, &spec.memory)?;
    vcpu(&mut o, spec)?;
    os(&mut o, &spec.os)?;
    features(&mut o, &spec.features)?;
    if let Some(cpu) = &spec.cpu {
        cpu_el(&mut o, cpu)?;
    }
    clock(&mut o, &spec.clock)?;
    o.tag("on_poweroff").text(spec.on_poweroff.as_str())?;
    o.tag("on_reboot").text(spec.on_reboot.as_str())?;
    o.tag("on_crash").text(spec.on_crash.as_str())?;
    devices(&mut o, &spec.devices)?;
    o.close("domain")?;
    o.w.get_mut().push(b'\n');
    Ok(())
}

/// Appends one device element (`<disk>` or `<interface>`), written by the
/// same code as inside a full domain. The device must be validated.
pub(crate) fn render_device_into(dev: &Device, buf: &mut Vec<u8>) -> Res {
    let mut o = Out::new(buf);
    match dev {
        Device::Disk(d) => disk_el(&mut o, d)?,
        Device::Interface(n) => interface(&mut o, n)?,
        Device::Dimm(d) => dimm(&mut o, d)?,
    }
    o.w.get_mut().push(b'\n');
    Ok(())
}

fn dimm(o: &mut Out, d: &Dimm) -> Res {
    o.tag("memory").a("model", "dimm").open()?;
    o.tag("target").open()?;
    o.tag("size").a("unit", "KiB").num_text(d.size.0)?;
    o.tag("node").num_text(d.node)?;
    o.close("target")?;
    o.close("memory")
}

fn identity(o: &mut Out, spec: &VmSpec) -> Res {
    o.tag("name").text(&spec.name)?;
    let mut uuid = uuid::Uuid::encode_buffer();
    o.tag("uuid")
        .text(spec.uuid.0.hyphenated().encode_lower(&mut uuid))?;
    if let Some(t) = &spec.title {
        o.tag("title").text(t)?;
    }
    if let Some(d) = &spec.description {
        o.tag("description").text(d)?;
    }
    if let Some(m) = &spec.meta {
        o.tag("metadata").open()?;
        o.tag("csagent:instance").a("xmlns:csagent", NAMESPACE);
        o.a("instance", &m.instance_id).a("account", &m.account_id);
        o.a("zone", &m.zone_id)
            .a("service-offering", &m.service_offering_id);
        if m.ha {
            o.a("ha", "yes");
        }
        o.empty()?;
        o.close("metadata")?;
    }
    Ok(())
}

fn memory(o: &mut Out, m: &Memory) -> Res {
    if let Some(max) = m.max {
        o.tag("maxMemory")
            .n("slots", max.slots)
            .a("unit", "KiB")
            .num_text(max.size.0)?;
    }
    o.tag("memory").a("unit", "KiB").num_text(m.size.0)?;
    if let Some(cur) = m.current {
        o.tag("currentMemory").a("unit", "KiB").num_text(cur.0)?;
    }
    if let Some(page) = m.hugepages {
        o.tag("memoryBacking").open()?;
        match page {
            Some(size) => {
                o.tag("hugepages").open()?;
                o.tag("page").n("size", size.0).a("unit", "KiB").empty()?;
                o.close("hugepages")?;
            }
            None => o.tag("hugepages").empty()?,
        }
        o.close("memoryBacking")?;
    }
    Ok(())
}

fn vcpu(o: &mut Out, spec: &VmSpec) -> Res {
    o.tag("vcpu")
        .a("placement", "static")
        .n_opt("current", spec.vcpu.current);
    o.num_text(spec.vcpu.max)?;
    if let Some(t) = &spec.cputune {
        o.tag("cputune").open()?;
        if let Some(s) = t.shares {
            o.tag("shares").num_text(s)?;
        }
        if let Some(p) = t.period_us {
            o.tag("period").num_text(p)?;
        }
        if let Some(q) = t.quota_us {
            o.tag("quota").num_text(q)?;
        }
        o.close("cputune")?;
    }
    Ok(())
}

fn os(o: &mut Out, os: &Os) -> Res {
    o.tag("os").open()?;
    o.tag("type")
        .a("arch", &os.arch)
        .a_opt("machine", os.machine.as_deref())
        .text("hvm")?;
    if let Firmware::Uefi(u) = &os.firmware {
        o.tag("loader").a("readonly", "yes");
        if u.secure_boot {
            o.a("secure", "yes");
        }
        o.a("type", "pflash").text(&u.loader)?;
        if u.nvram.is_some() || u.nvram_template.is_some() {
            o.tag("nvram")
                .a_opt("template", u.nvram_template.as_deref());
            match &u.nvram {
                Some(path) => o.text(path)?,
                None => o.empty()?,
            }
        }
    }
    if let Some(k) = &os.kernel {
        o.tag("kernel").text(&k.kernel)?;
        if let Some(i) = &k.initrd {
            o.tag("initrd").text(i)?;
        }
        if let Some(c) = &k.cmdline {
            o.tag("cmdline").text(c)?;
        }
    }
    o.close("os")
}

fn features(o: &mut Out, f: &Features) -> Res {
    if !(f.acpi || f.apic || f.pae || f.smm || f.hyperv.is_some()) {
        return Ok(());
    }
    o.tag("features").open()?;
    for (on, name) in [(f.acpi, "acpi"), (f.apic, "apic"), (f.pae, "pae")] {
        if on {
            o.tag(name).empty()?;
        }
    }
    if let Some(h) = &f.hyperv {
        o.tag("hyperv").a("mode", "custom").open()?;
        // libvirt's order puts spinlocks after relaxed and vapic.
        for (i, (name, on)) in h.switches().into_iter().enumerate() {
            if i == 2 {
                if let Some(retries) = h.spinlocks {
                    o.tag("spinlocks")
                        .a("state", "on")
                        .n("retries", retries)
                        .empty()?;
                }
            }
            if on {
                o.tag(name).a("state", "on").empty()?;
            }
        }
        o.close("hyperv")?;
    }
    if f.smm {
        o.tag("smm").a("state", "on").empty()?;
    }
    o.close("features")
}

fn cpu_el(o: &mut Out, c: &Cpu) -> Res {
    o.tag("cpu").a_opt("mode", c.mode.map(CpuMode::as_str));
    if c.mode == Some(CpuMode::Custom) {
        o.a("match", "exact");
    }
    if c.model.is_none() && c.features.is_empty() && c.topology.is_none() && c.numa.is_empty() {
        return o.empty();
    }
    o.open()?;
    if let Some(m) = &c.model {
        o.tag("model").a("fallback", "forbid").text(m)?;
    }
    if let Some(t) = c.topology {
        o.tag("topology")
            .n("sockets", t.sockets)
            .n("cores", t.cores)
            .n("threads", t.threads);
        o.empty()?;
    }
    for f in &c.features {
        o.tag("feature")
            .a("policy", f.policy.as_str())
            .a("name", &f.name)
            .empty()?;
    }
    if !c.numa.is_empty() {
        o.tag("numa").open()?;
        for cell in &c.numa {
            o.tag("cell").n("id", cell.id).a("cpus", &cell.cpus);
            o.n("memory", cell.memory.0).a("unit", "KiB").empty()?;
        }
        o.close("numa")?;
    }
    o.close("cpu")
}

fn clock(o: &mut Out, c: &Clock) -> Res {
    o.tag("clock").a("offset", c.offset.as_str());
    if c.timers.is_empty() {
        return o.empty();
    }
    o.open()?;
    for t in &c.timers {
        o.tag("timer").a("name", t.name.as_str());
        o.a_opt("tickpolicy", t.tickpolicy.map(TickPolicy::as_str));
        if let Some(p) = t.present {
            o.yes_no("present", p);
        }
        o.empty()?;
    }
    o.close("clock")
}

fn devices(o: &mut Out, d: &Devices) -> Res {
    o.tag("devices").open()?;
    if let Some(e) = &d.emulator {
        o.tag("emulator").text(e)?;
    }
    for disk in &d.disks {
        disk_el(o, disk)?;
    }
    if let Some(c) = d.scsi_controller {
        o.tag("controller")
            .a("type", "scsi")
            .n("index", 0)
            .a("model", "virtio-scsi");
        match c.queues {
            Some(q) => {
                o.open()?;
                o.tag("driver").n("queues", q).empty()?;
                o.close("controller")?;
            }
            None => o.empty()?,
        }
    }
    for nic in &d.interfaces {
        interface(o, nic)?;
    }
    if d.serial_console {
        o.tag("serial").a("type", "pty").open()?;
        if let Some(log) = &d.serial_console_log {
            o.tag("log").a("file", log).a("append", "off").empty()?;
        }
        o.tag("target").n("port", 0).empty()?;
        o.close("serial")?;
        o.tag("console").a("type", "pty").open()?;
        o.tag("target").a("type", "serial").n("port", 0).empty()?;
        o.close("console")?;
    }
    if d.guest_agent {
        o.tag("channel").a("type", "unix").open()?;
        o.tag("target")
            .a("type", "virtio")
            .a("name", super::GUEST_AGENT_CHANNEL)
            .empty()?;
        o.close("channel")?;
    }
    if d.usb_tablet {
        o.tag("input").a("type", "tablet").a("bus", "usb").empty()?;
    }
    if let Some(t) = d.tpm {
        o.tag("tpm").a("model", t.model.as_str()).open()?;
        o.tag("backend")
            .a("type", "emulator")
            .a("version", "2.0")
            .empty()?;
        o.close("tpm")?;
    }
    for g in &d.graphics {
        graphics(o, g)?;
    }
    if let Some(v) = d.video {
        o.tag("video").open()?;
        o.tag("model")
            .a("type", v.model.as_str())
            .n_opt("vram", v.vram)
            .n_opt("heads", v.heads);
        o.empty()?;
        o.close("video")?;
    }
    for h in &d.hostdevs {
        hostdev(o, h)?;
    }
    if let Some(w) = d.watchdog {
        o.tag("watchdog")
            .a("model", w.model.as_str())
            .a("action", w.action.as_str())
            .empty()?;
    }
    balloon(o, d.balloon)?;
    if let Some(r) = &d.rng {
        o.tag("rng").a("model", "virtio").open()?;
        if let Some((bytes, period)) = r.rate {
            o.tag("rate")
                .n("bytes", bytes)
                .n("period", period)
                .empty()?;
        }
        o.tag("backend").a("model", "random").text(&r.backend)?;
        o.close("rng")?;
    }
    o.close("devices")
}

fn disk_el(o: &mut Out, d: &Disk) -> Res {
    let kind = match &d.source {
        DiskSource::Empty | DiskSource::File { .. } => "file",
        DiskSource::Block { .. } => "block",
        _ => "network",
    };
    o.tag("disk")
        .a("type", kind)
        .a("device", d.device.as_str())
        .open()?;
    o.tag("driver")
        .a("name", "qemu")
        .a("type", d.format.as_str());
    o.a_opt("cache", d.cache.map(DiskCache::as_str));
    o.a_opt("io", d.io.map(DiskIo::as_str));
    o.a_opt("discard", d.discard.map(DiskDiscard::as_str))
        .empty()?;
    disk_source(o, &d.source)?;
    o.tag("target")
        .a("dev", &d.target)
        .a("bus", d.bus.as_str())
        .empty()?;
    if let Some(t) = &d.iotune {
        o.tag("iotune").open()?;
        for (name, value) in t.fields() {
            if let Some(v) = value {
                o.tag(name).num_text(v)?;
            }
        }
        o.close("iotune")?;
    }
    if let Some(s) = &d.serial {
        o.tag("serial").text(s)?;
    }
    if d.readonly {
        o.tag("readonly").empty()?;
    }
    if d.shareable {
        o.tag("shareable").empty()?;
    }
    if let Some(b) = d.boot_order {
        o.tag("boot").n("order", b).empty()?;
    }
    o.close("disk")
}

fn disk_source(o: &mut Out, s: &DiskSource) -> Res {
    let (protocol, name, hosts, auth) = match s {
        DiskSource::Empty => return Ok(()),
        DiskSource::File { path } => return o.tag("source").a("file", path).empty(),
        DiskSource::Block { dev } => return o.tag("source").a("dev", dev).empty(),
        DiskSource::Rbd { name, hosts, auth } => ("rbd", name, hosts, auth.as_ref()),
        DiskSource::Iscsi { name, hosts, auth } => ("iscsi", name, hosts, auth.as_ref()),
        DiskSource::Nfs { name, hosts } => ("nfs", name, hosts, None),
    };
    o.tag("source")
        .a("protocol", protocol)
        .a("name", name)
        .open()?;
    for h in hosts {
        o.tag("host")
            .a("name", &h.name)
            .n_opt("port", h.port)
            .empty()?;
    }
    if protocol == "nfs" {
        // libvirt 9's schema requires <identity> on NFS sources (user/group optional).
        o.tag("identity").empty()?;
    }
    if let Some(a) = auth {
        // libvirt keeps auth where it was given; inside <source> is its current form.
        o.tag("auth").a("username", &a.username).open()?;
        let usage = if protocol == "rbd" { "ceph" } else { "iscsi" };
        let mut uuid = uuid::Uuid::encode_buffer();
        let uuid = a.secret_uuid.hyphenated().encode_lower(&mut uuid);
        o.tag("secret").a("type", usage).a("uuid", uuid).empty()?;
        o.close("auth")?;
    }
    o.close("source")
}

fn interface(o: &mut Out, n: &Interface) -> Res {
    o.tag("interface").a("type", "bridge").open()?;
    let mut mac = [0u8; 17];
    o.tag("mac")
        .a("address", mac_str(&n.mac, &mut mac))
        .empty()?;
    o.tag("source").a("bridge", &n.bridge).empty()?;
    if let Some(id) = n.openvswitch {
        o.tag("virtualport").a("type", "openvswitch");
        match id {
            Some(id) => {
                o.open()?;
                let mut buf = uuid::Uuid::encode_buffer();
                o.tag("parameters")
                    .a("interfaceid", id.hyphenated().encode_lower(&mut buf));
                o.empty()?;
                o.close("virtualport")?;
            }
            None => o.empty()?,
        }
    }
    if let Some(tag) = n.vlan {
        o.tag("vlan").open()?;
        o.tag("tag").n("id", tag).empty()?;
        o.close("vlan")?;
    }
    if n.inbound.is_some() || n.outbound.is_some() {
        o.tag("bandwidth").open()?;
        for (name, rate) in [("inbound", n.inbound), ("outbound", n.outbound)] {
            if let Some(r) = rate {
                o.tag(name)
                    .n("average", r.average)
                    .n_opt("peak", r.peak)
                    .n_opt("burst", r.burst);
                o.empty()?;
            }
        }
        o.close("bandwidth")?;
    }
    if let Some(dev) = &n.target_dev {
        o.tag("target").a("dev", dev).empty()?;
    }
    o.tag("model").a("type", n.model.as_str()).empty()?;
    if let Some(mtu) = n.mtu {
        o.tag("mtu").n("size", mtu).empty()?;
    }
    if let Some(b) = n.boot_order {
        o.tag("boot").n("order", b).empty()?;
    }
    o.close("interface")
}

/// Formats a MAC without allocating.
fn mac_str<'a>(mac: &MacAddr, buf: &'a mut [u8; 17]) -> &'a str {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in mac.0.iter().enumerate() {
        buf[i * 3] = HEX[(b >> 4) as usize];
        buf[i * 3 + 1] = HEX[(b & 15) as usize];
        if i < 5 {
            buf[i * 3 + 2] = b':';
        }
    }
    // Only ASCII hex digits and colons were written.
    std::str::from_utf8(buf).unwrap_or_default()
}

fn graphics(o: &mut Out, g: &Graphics) -> Res {
    o.tag("graphics").a("type", g.kind.as_str());
    match g.port {
        Some(p) => o.n("port", p),
        None => o.n("port", -1),
    };
    o.yes_no("autoport", g.autoport);
    o.a_opt("listen", g.listen.as_deref())
        .a_opt("passwd", g.passwd.as_deref());
    o.a_opt("keymap", g.keymap.as_deref());
    match &g.listen {
        Some(addr) => {
            o.open()?;
            o.tag("listen")
                .a("type", "address")
                .a("address", addr)
                .empty()?;
            o.close("graphics")
        }
        None => o.empty(),
    }
}

fn hostdev(o: &mut Out, h: &PciHostdev) -> Res {
    o.tag("hostdev")
        .a("mode", "subsystem")
        .a("type", "pci")
        .yes_no("managed", h.managed);
    o.open()?;
    o.tag("source").open()?;
    let a = h.address;
    o.tag("address");
    let _ = write!(
        o.tag,
        " domain=\"0x{:04x}\" bus=\"0x{:02x}\" slot=\"0x{:02x}\" function=\"0x{:x}\"",
        a.domain, a.bus, a.slot, a.function
    );
    o.empty()?;
    o.close("source")?;
    if let Some(b) = h.boot_order {
        o.tag("boot").n("order", b).empty()?;
    }
    o.close("hostdev")
}

fn balloon(o: &mut Out, b: Option<Balloon>) -> Res {
    match b {
        None => o.tag("memballoon").a("model", "none").empty(),
        Some(Balloon { stats_period: None }) => o.tag("memballoon").a("model", "virtio").empty(),
        Some(Balloon {
            stats_period: Some(p),
        }) => {
            o.tag("memballoon").a("model", "virtio").open()?;
            o.tag("stats").n("period", p).empty()?;
            o.close("memballoon")
        }
    }
}
