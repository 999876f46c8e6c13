//! Reads libvirt domain XML (ours, or any `virsh dumpxml`) into the typed model.
//!
//! Tolerant by design: elements the model does not know (addresses, aliases,
//! seclabels, controllers libvirt adds, ...) are skipped; devices that matter
//! but cannot be represented (a disk of type 'volume', an interface of type
//! 'network') are left out and listed in `Parsed::not_understood`. Only XML
//! that is not well-formed, or a domain without name/uuid/memory, is an error.
//! This file must not validate specs or talk to libvirt.

use std::borrow::Cow;

use quick_xml::events::{BytesStart, Event};

use super::model::*;
use super::parse_attr::AttrIter;
use super::parse_reader::{num, yes, Child, Res, P};
use super::{GUEST_AGENT_CHANNEL, NAMESPACE};

pub(super) fn parse_hex<T: TryFrom<u32>>(s: &str) -> Option<T> {
    let s = s.trim();
    let v = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16).ok()?,
        None => s.parse().ok()?,
    };
    T::try_from(v).ok()
}

/// Converts libvirt's memory units to KiB (bytes round down).
pub(super) fn to_kib(value: u64, unit: Option<&str>) -> Option<KiB> {
    let (num, den): (u64, u64) = match unit.unwrap_or("KiB") {
        "b" | "bytes" => (1, 1024),
        "KB" => (1000, 1024),
        "k" | "KiB" => (1, 1),
        "MB" => (1_000_000, 1024),
        "M" | "MiB" => (1024, 1),
        "GB" => (1_000_000_000, 1024),
        "G" | "GiB" => (1 << 20, 1),
        "TB" => (1_000_000_000_000, 1024),
        "T" | "TiB" => (1 << 30, 1),
        _ => return None,
    };
    Some(KiB(value.checked_mul(num)? / den))
}

/// Parses a domain document into the model, listing what it had to leave out.
pub(crate) fn parse(xml: &str) -> Res<Parsed> {
    let mut p = P::new(xml);
    let root = loop {
        match p.event()? {
            Event::Start(e) if e.name().as_ref() == b"domain" => break (e, true),
            Event::Empty(e) if e.name().as_ref() == b"domain" => break (e, false),
            Event::Start(_) | Event::Empty(_) => {
                return Err(p.err("the root element is not <domain>"))
            }
            Event::Eof => return Err(p.err("no <domain> element")),
            _ => {}
        }
    };
    let spec = domain(&mut p, &root)?;
    Ok(Parsed {
        spec,
        not_understood: p.notes,
    })
}

/// What the top level of `<domain>` must provide.
#[derive(Default)]
struct Seen {
    name: bool,
    uuid: bool,
    memory: bool,
}

fn domain<'a>(p: &mut P<'a>, root: &Child<'a>) -> Res<VmSpec> {
    let kind = p.attr(&root.0, "type")?.unwrap_or_default();
    let domain_type = DomainType::from_str(&kind).ok_or_else(|| {
        p.err(format!(
            "domain type {kind:?} is not kvm or qemu; csagent only manages KVM/QEMU domains"
        ))
    })?;
    let mut spec = VmSpec::new("", VmUuid::default());
    spec.domain_type = domain_type;
    let mut seen = Seen::default();
    if root.1 {
        while let Some(c) = p.child()? {
            top_level(p, &c, &mut spec, &mut seen)?;
        }
    }
    let missing = [
        (seen.name, "<name>"),
        (seen.uuid, "<uuid>"),
        (seen.memory, "<memory>"),
    ];
    if let Some((_, what)) = missing.iter().find(|(ok, _)| !ok) {
        return Err(p.err(format!("the domain has no {what}")));
    }
    Ok(spec)
}

fn top_level<'a>(p: &mut P<'a>, c: &Child<'a>, spec: &mut VmSpec, seen: &mut Seen) -> Res<()> {
    match c.0.name().as_ref() {
        b"name" => {
            spec.name = p.text(c.1)?.into_owned();
            seen.name = true;
        }
        b"uuid" => {
            let t = p.text(c.1)?;
            let u = uuid::Uuid::parse_str(t.trim())
                .map_err(|_| p.err(format!("<uuid> {t:?} is not a UUID")))?;
            spec.uuid = VmUuid(u);
            seen.uuid = true;
        }
        b"title" => spec.title = Some(p.text(c.1)?.into_owned()),
        b"description" => spec.description = Some(p.text(c.1)?.into_owned()),
        b"metadata" => spec.meta = metadata(p, c)?,
        b"maxMemory" => {
            let [slots, unit] = p.attrs(&c.0, ["slots", "unit"])?;
            let slots = p.opt_num(&c.0, "slots", slots)?.unwrap_or(0);
            let size = memory(p, c, unit)?;
            spec.memory.max = Some(MaxMemory { size, slots });
        }
        b"memory" => {
            let unit = p.attr(&c.0, "unit")?;
            spec.memory.size = memory(p, c, unit)?;
            seen.memory = true;
        }
        b"currentMemory" => {
            let unit = p.attr(&c.0, "unit")?;
            spec.memory.current = Some(memory(p, c, unit)?);
        }
        b"memoryBacking" => memory_backing(p, c, &mut spec.memory)?,
        b"vcpu" => {
            spec.vcpu.current = p.attr_num(&c.0, "current")?;
            spec.vcpu.max = p.text_num(c)?;
        }
        b"cputune" => spec.cputune = Some(cputune(p, c)?),
        b"os" => os(p, c, &mut spec.os)?,
        b"features" => features(p, c, &mut spec.features)?,
        b"cpu" => spec.cpu = Some(cpu(p, c)?),
        b"clock" => spec.clock = clock(p, c)?,
        b"on_poweroff" => spec.on_poweroff = lifecycle(p, c, spec.on_poweroff)?,
        b"on_reboot" => spec.on_reboot = lifecycle(p, c, spec.on_reboot)?,
        b"on_crash" => spec.on_crash = lifecycle(p, c, spec.on_crash)?,
        b"devices" => devices(p, c, &mut spec.devices)?,
        _ => p.skip(c)?,
    }
    Ok(())
}

fn lifecycle<'a>(p: &mut P<'a>, c: &Child<'a>, default: LifecycleAction) -> Res<LifecycleAction> {
    let t = p.text(c.1)?;
    Ok(LifecycleAction::from_str(t.trim()).unwrap_or_else(|| {
        p.note(format!(
            "{}: action {t:?}",
            String::from_utf8_lossy(c.0.name().as_ref())
        ));
        default
    }))
}

/// A memory amount in KiB from a text value and its `unit` attribute.
fn memory<'a>(p: &mut P<'a>, c: &Child<'a>, unit: Option<Cow<'a, str>>) -> Res<KiB> {
    let value: u64 = p.text_num(c)?;
    to_kib(value, unit.as_deref()).ok_or_else(|| p.bad(&c.0, "unit", unit.as_deref().unwrap_or("")))
}

/// Finds our `<csagent:instance>` among the metadata children, whatever prefix it uses.
fn metadata<'a>(p: &mut P<'a>, c: &Child<'a>) -> Res<Option<CsagentMeta>> {
    let mut found = None;
    if !c.1 {
        return Ok(None);
    }
    while let Some(ch) = p.child()? {
        if found.is_none() && is_ours(p, &ch.0)? {
            let keys = ["instance", "account", "zone", "service-offering", "ha"];
            let [instance, account, zone, offering, ha] = p.attrs(&ch.0, keys)?;
            let own = |v: Option<Cow<str>>| v.map(Cow::into_owned).unwrap_or_default();
            found = Some(CsagentMeta {
                instance_id: own(instance),
                account_id: own(account),
                zone_id: own(zone),
                service_offering_id: own(offering),
                ha: ha.is_some_and(|v| v == "yes"),
            });
        }
        p.skip(&ch)?;
    }
    Ok(found)
}

/// True when the element is `instance` in the csagent namespace, declared on itself
/// (libvirt always re-declares a metadata element's namespace on the element).
fn is_ours(p: &P, e: &BytesStart) -> Res<bool> {
    let name = e.name();
    let (prefix, local) = match name.as_ref().iter().position(|&b| b == b':') {
        Some(i) => (&name.as_ref()[..i], &name.as_ref()[i + 1..]),
        None => (&b""[..], name.as_ref()),
    };
    if local != b"instance" {
        return Ok(false);
    }
    for a in AttrIter::new(e.attributes_raw()) {
        let (key, value) = a.map_err(|why| p.malformed(e, why))?;
        let declares = match key.strip_prefix(b"xmlns") {
            Some(b"") => prefix.is_empty(),
            Some(rest) => rest.first() == Some(&b':') && &rest[1..] == prefix,
            None => false,
        };
        if declares && value == NAMESPACE.as_bytes() {
            return Ok(true);
        }
    }
    Ok(false)
}

fn memory_backing<'a>(p: &mut P<'a>, c: &Child<'a>, m: &mut Memory) -> Res<()> {
    if !c.1 {
        return Ok(());
    }
    while let Some(ch) = p.child()? {
        if ch.0.name().as_ref() != b"hugepages" {
            p.skip(&ch)?;
            continue;
        }
        let mut size = None;
        if ch.1 {
            while let Some(page) = p.child()? {
                if page.0.name().as_ref() == b"page" && size.is_none() {
                    let [v, unit] = p.attrs(&page.0, ["size", "unit"])?;
                    let v: u64 = p.opt_num(&page.0, "size", v)?.unwrap_or(0);
                    size = to_kib(v, unit.as_deref());
                }
                p.skip(&page)?;
            }
        }
        m.hugepages = Some(size);
    }
    Ok(())
}

fn cputune<'a>(p: &mut P<'a>, c: &Child<'a>) -> Res<CpuTune> {
    let mut t = CpuTune::default();
    if !c.1 {
        return Ok(t);
    }
    while let Some(ch) = p.child()? {
        match ch.0.name().as_ref() {
            b"shares" => t.shares = Some(p.text_num(&ch)?),
            b"period" => t.period_us = Some(p.text_num(&ch)?),
            b"quota" => t.quota_us = Some(p.text_num(&ch)?),
            _ => p.skip(&ch)?,
        }
    }
    Ok(t)
}

fn os<'a>(p: &mut P<'a>, c: &Child<'a>, os: &mut Os) -> Res<()> {
    if let Some(fw) = p.attr(&c.0, "firmware")? {
        p.notes.push(format!(
            "os: firmware auto-selection {fw:?} (only an explicit <loader> is modelled)"
        ));
    }
    if !c.1 {
        return Ok(());
    }
    let mut kernel: Option<DirectKernel> = None;
    while let Some(ch) = p.child()? {
        match ch.0.name().as_ref() {
            b"type" => {
                let [arch, machine] = p.attrs(&ch.0, ["arch", "machine"])?;
                if let Some(a) = arch {
                    os.arch = a.into_owned();
                }
                os.machine = machine.map(Cow::into_owned);
                p.skip(&ch)?;
            }
            b"loader" => loader(p, &ch, os)?,
            b"nvram" => {
                let template = p.attr_string(&ch.0, "template")?;
                let path = p.text(ch.1)?.into_owned();
                if let Firmware::Uefi(u) = &mut os.firmware {
                    u.nvram_template = template;
                    u.nvram = (!path.is_empty()).then_some(path);
                }
            }
            b"kernel" => kernel.get_or_insert_with(Default::default).kernel = p.text(ch.1)?.into(),
            b"initrd" => {
                kernel.get_or_insert_with(Default::default).initrd = Some(p.text(ch.1)?.into())
            }
            b"cmdline" => {
                kernel.get_or_insert_with(Default::default).cmdline = Some(p.text(ch.1)?.into())
            }
            _ => p.skip(&ch)?,
        }
    }
    os.kernel = kernel;
    Ok(())
}

fn loader<'a>(p: &mut P<'a>, c: &Child<'a>, os: &mut Os) -> Res<()> {
    let [kind, secure] = p.attrs(&c.0, ["type", "secure"])?;
    let secure_boot = yes(secure.as_deref());
    let path = p.text(c.1)?.into_owned();
    if kind.as_deref() == Some("rom") {
        p.note(format!("os/loader: ROM firmware {path:?}"));
        return Ok(());
    }
    // nvram may come before or after the loader; keep what we already have.
    let (nvram, nvram_template) = match std::mem::replace(&mut os.firmware, Firmware::Bios) {
        Firmware::Uefi(u) => (u.nvram, u.nvram_template),
        Firmware::Bios => (None, None),
    };
    os.firmware = Firmware::Uefi(Uefi {
        loader: path,
        secure_boot,
        nvram,
        nvram_template,
    });
    Ok(())
}

fn features<'a>(p: &mut P<'a>, c: &Child<'a>, f: &mut Features) -> Res<()> {
    if !c.1 {
        return Ok(());
    }
    while let Some(ch) = p.child()? {
        match ch.0.name().as_ref() {
            b"acpi" => f.acpi = true,
            b"apic" => f.apic = true,
            b"pae" => f.pae = true,
            b"smm" => f.smm = p.attr(&ch.0, "state")?.as_deref() != Some("off"),
            b"hyperv" => {
                f.hyperv = Some(hyperv(p, &ch)?);
                continue;
            }
            other => {
                let name = String::from_utf8_lossy(other);
                p.note(format!("features/{name}"));
            }
        }
        p.skip(&ch)?;
    }
    Ok(())
}

fn hyperv<'a>(p: &mut P<'a>, c: &Child<'a>) -> Res<HyperV> {
    let mut h = HyperV::default();
    if !c.1 {
        return Ok(h);
    }
    while let Some(ch) = p.child()? {
        let [state, retries] = p.attrs(&ch.0, ["state", "retries"])?;
        let on = state.as_deref() == Some("on");
        let name = String::from_utf8_lossy(ch.0.name().into_inner());
        if name == "spinlocks" {
            h.spinlocks = if on {
                p.opt_num(&ch.0, "retries", retries)?
            } else {
                None
            };
        } else if !h.set_switch(&name, on) && on {
            p.note(format!("features/hyperv/{name}"));
        }
        p.skip(&ch)?;
    }
    Ok(h)
}

fn cpu<'a>(p: &mut P<'a>, c: &Child<'a>) -> Res<Cpu> {
    let mut cpu = Cpu::default();
    if let Some(m) = p.attr(&c.0, "mode")? {
        cpu.mode = CpuMode::from_str(&m);
        if cpu.mode.is_none() {
            p.note(format!("cpu: mode {m:?}"));
        }
    }
    if !c.1 {
        return Ok(cpu);
    }
    while let Some(ch) = p.child()? {
        match ch.0.name().as_ref() {
            b"model" => cpu.model = Some(p.text(ch.1)?.into_owned()),
            b"topology" => {
                let [sockets, cores, threads] = p.attrs(&ch.0, ["sockets", "cores", "threads"])?;
                let count = |v: Option<Cow<str>>, what: &str| match v {
                    None => Ok(1),
                    Some(v) => num(&v).ok_or_else(|| p.bad(&ch.0, what, &v)),
                };
                cpu.topology = Some(Topology {
                    sockets: count(sockets, "sockets")?,
                    cores: count(cores, "cores")?,
                    threads: count(threads, "threads")?,
                });
                p.skip(&ch)?;
            }
            b"feature" => {
                cpu_feature(p, &ch, &mut cpu.features)?;
                p.skip(&ch)?;
            }
            b"numa" => numa(p, &ch, &mut cpu.numa)?,
            _ => p.skip(&ch)?,
        }
    }
    Ok(cpu)
}

fn cpu_feature<'a>(p: &mut P<'a>, c: &Child<'a>, out: &mut Vec<CpuFeature>) -> Res<()> {
    let [name, policy_text] = p.attrs(&c.0, ["name", "policy"])?;
    let name = name.map(Cow::into_owned).unwrap_or_default();
    // libvirt's default policy is require.
    match FeaturePolicy::from_str(policy_text.as_deref().unwrap_or("require")) {
        Some(policy) => out.push(CpuFeature { name, policy }),
        None => p
            .notes
            .push(format!("cpu/feature {name:?}: policy {policy_text:?}")),
    }
    Ok(())
}

fn numa<'a>(p: &mut P<'a>, c: &Child<'a>, out: &mut Vec<NumaCell>) -> Res<()> {
    if !c.1 {
        return Ok(());
    }
    while let Some(ch) = p.child()? {
        if ch.0.name().as_ref() == b"cell" {
            let cell = numa_cell(p, &ch.0, out.len() as u32)?;
            out.push(cell);
        }
        p.skip(&ch)?;
    }
    Ok(())
}

fn numa_cell<'a>(p: &P<'a>, e: &BytesStart<'a>, index: u32) -> Res<NumaCell> {
    let [memory, unit, id, cpus] = p.attrs(e, ["memory", "unit", "id", "cpus"])?;
    let v: u64 = p.opt_num(e, "memory", memory)?.unwrap_or(0);
    let memory = to_kib(v, unit.as_deref())
        .ok_or_else(|| p.bad(e, "unit", unit.as_deref().unwrap_or("")))?;
    Ok(NumaCell {
        id: p.opt_num(e, "id", id)?.unwrap_or(index),
        cpus: cpus.map(Cow::into_owned).unwrap_or_default(),
        memory,
    })
}

fn clock<'a>(p: &mut P<'a>, c: &Child<'a>) -> Res<Clock> {
    let mut clock = Clock {
        offset: ClockOffset::Utc,
        timers: Vec::new(),
    };
    if let Some(o) = p.attr(&c.0, "offset")? {
        match ClockOffset::from_str(&o) {
            Some(offset) => clock.offset = offset,
            None => p.notes.push(format!("clock: offset {o:?}")),
        }
    }
    if !c.1 {
        return Ok(clock);
    }
    while let Some(ch) = p.child()? {
        if ch.0.name().as_ref() == b"timer" {
            timer(p, &ch, &mut clock.timers)?;
        }
        p.skip(&ch)?;
    }
    Ok(clock)
}

fn timer<'a>(p: &mut P<'a>, c: &Child<'a>, out: &mut Vec<Timer>) -> Res<()> {
    let [name, tickpolicy, present] = p.attrs(&c.0, ["name", "tickpolicy", "present"])?;
    let Some(timer) = name.as_deref().and_then(TimerName::from_str) else {
        p.note(format!("clock/timer {:?}", name.as_deref().unwrap_or("")));
        return Ok(());
    };
    let tickpolicy = tickpolicy.and_then(|t| TickPolicy::from_str(&t));
    let present = present.map(|v| v == "yes");
    out.push(Timer {
        name: timer,
        present,
        tickpolicy,
    });
    Ok(())
}

fn devices<'a>(p: &mut P<'a>, c: &Child<'a>, d: &mut Devices) -> Res<()> {
    if !c.1 {
        return Ok(());
    }
    while let Some(ch) = p.child()? {
        device(p, &ch, d)?;
    }
    Ok(())
}

fn device<'a>(p: &mut P<'a>, c: &Child<'a>, d: &mut Devices) -> Res<()> {
    match c.0.name().as_ref() {
        b"emulator" => d.emulator = Some(p.text(c.1)?.into_owned()),
        b"disk" => {
            if let Some(disk) = super::parse_io::disk(p, c)? {
                d.disks.push(disk);
            }
        }
        b"controller" => controller(p, c, d)?,
        b"interface" => {
            if let Some(nic) = super::parse_io::interface(p, c)? {
                d.interfaces.push(nic);
            }
        }
        b"serial" => serial(p, c, d)?,
        b"channel" => channel(p, c, d)?,
        b"input" => {
            let [kind, bus] = p.attrs(&c.0, ["type", "bus"])?;
            d.usb_tablet |= kind.as_deref() == Some("tablet") && bus.as_deref() == Some("usb");
            p.skip(c)?;
        }
        b"tpm" => d.tpm = tpm(p, c)?,
        b"graphics" => {
            if let Some(g) = graphics(p, c)? {
                d.graphics.push(g);
            }
        }
        b"video" => video(p, c, d)?,
        b"hostdev" => {
            if let Some(h) = hostdev(p, c)? {
                d.hostdevs.push(h);
            }
        }
        b"watchdog" => watchdog(p, c, d)?,
        b"memballoon" => d.balloon = balloon(p, c)?,
        b"rng" => d.rng = rng(p, c)?,
        // Added by libvirt on every domain, or consoles we model via <serial>.
        b"console" | b"audio" => p.skip(c)?,
        other => {
            let name = String::from_utf8_lossy(other);
            p.note(format!("devices/{name}"));
            p.skip(c)?;
        }
    }
    Ok(())
}

fn controller<'a>(p: &mut P<'a>, c: &Child<'a>, d: &mut Devices) -> Res<()> {
    let [kind, model] = p.attrs(&c.0, ["type", "model"])?;
    if kind.as_deref() != Some("scsi") {
        return p.skip(c);
    }
    if model.as_deref() != Some("virtio-scsi") {
        p.note(format!("devices/controller scsi model {model:?}"));
        return p.skip(c);
    }
    let mut ctl = ScsiController::default();
    if c.1 {
        while let Some(ch) = p.child()? {
            if ch.0.name().as_ref() == b"driver" {
                ctl.queues = p.attr_num(&ch.0, "queues")?;
            }
            p.skip(&ch)?;
        }
    }
    d.scsi_controller = Some(ctl);
    Ok(())
}

fn channel<'a>(p: &mut P<'a>, c: &Child<'a>, d: &mut Devices) -> Res<()> {
    if !c.1 {
        return Ok(());
    }
    while let Some(ch) = p.child()? {
        if ch.0.name().as_ref() == b"target" {
            let [kind, name] = p.attrs(&ch.0, ["type", "name"])?;
            d.guest_agent |=
                kind.as_deref() == Some("virtio") && name.as_deref() == Some(GUEST_AGENT_CHANNEL);
        }
        p.skip(&ch)?;
    }
    Ok(())
}

fn tpm<'a>(p: &mut P<'a>, c: &Child<'a>) -> Res<Option<Tpm>> {
    let model_text = p.attr(&c.0, "model")?.unwrap_or(Cow::Borrowed("tpm-tis"));
    let mut emulator = false;
    if c.1 {
        while let Some(ch) = p.child()? {
            if ch.0.name().as_ref() == b"backend" {
                emulator = p.attr(&ch.0, "type")?.as_deref() == Some("emulator");
            }
            p.skip(&ch)?;
        }
    }
    match TpmModel::from_str(&model_text) {
        Some(model) if emulator => Ok(Some(Tpm { model })),
        _ => {
            p.note(format!(
                "devices/tpm model {model_text:?} (only an emulated TPM is modelled)"
            ));
            Ok(None)
        }
    }
}

fn graphics<'a>(p: &mut P<'a>, c: &Child<'a>) -> Res<Option<Graphics>> {
    let keys = ["type", "port", "autoport", "listen", "passwd", "keymap"];
    let [kind, port, autoport, listen, passwd, keymap] = p.attrs(&c.0, keys)?;
    let kind = match kind.as_deref() {
        Some("vnc") => GraphicsKind::Vnc,
        Some("spice") => GraphicsKind::Spice,
        other => {
            p.note(format!("devices/graphics type {other:?}"));
            p.skip(c)?;
            return Ok(None);
        }
    };
    let port: Option<i32> = match port {
        None => None,
        Some(v) => Some(num(&v).ok_or_else(|| p.bad(&c.0, "port", &v))?),
    };
    let mut g = Graphics {
        kind,
        port: port.and_then(|v| u16::try_from(v).ok()),
        autoport: yes(autoport.as_deref()),
        listen: listen.map(Cow::into_owned),
        passwd: passwd.map(Cow::into_owned),
        keymap: keymap.map(Cow::into_owned),
    };
    if c.1 {
        while let Some(ch) = p.child()? {
            if ch.0.name().as_ref() == b"listen" && g.listen.is_none() {
                g.listen = p.attr_string(&ch.0, "address")?;
            }
            p.skip(&ch)?;
        }
    }
    Ok(Some(g))
}

fn video<'a>(p: &mut P<'a>, c: &Child<'a>, d: &mut Devices) -> Res<()> {
    if !c.1 {
        return Ok(());
    }
    while let Some(ch) = p.child()? {
        if ch.0.name().as_ref() == b"model" && d.video.is_none() {
            let [t, vram, heads] = p.attrs(&ch.0, ["type", "vram", "heads"])?;
            let t = t.unwrap_or_default();
            match VideoModel::from_str(&t) {
                Some(model) => {
                    let vram = p.opt_num(&ch.0, "vram", vram)?;
                    let heads = p.opt_num(&ch.0, "heads", heads)?;
                    d.video = Some(Video { model, vram, heads });
                }
                None => p.note(format!("devices/video model {t:?}")),
            }
        }
        p.skip(&ch)?;
    }
    Ok(())
}

fn hostdev<'a>(p: &mut P<'a>, c: &Child<'a>) -> Res<Option<PciHostdev>> {
    let [mode, kind, managed] = p.attrs(&c.0, ["mode", "type", "managed"])?;
    if mode.as_deref() != Some("subsystem") || kind.as_deref() != Some("pci") {
        p.note("devices/hostdev that is not a PCI subsystem device".to_string());
        p.skip(c)?;
        return Ok(None);
    }
    let managed = yes(managed.as_deref());
    let (mut address, mut boot_order) = (None, None);
    if c.1 {
        while let Some(ch) = p.child()? {
            match ch.0.name().as_ref() {
                b"source" => address = hostdev_source(p, &ch)?,
                b"boot" => {
                    boot_order = p.attr_num(&ch.0, "order")?;
                    p.skip(&ch)?;
                }
                _ => p.skip(&ch)?,
            }
        }
    }
    match address {
        Some(address) => Ok(Some(PciHostdev {
            address,
            managed,
            boot_order,
        })),
        None => {
            p.note("devices/hostdev without a readable PCI source address".to_string());
            Ok(None)
        }
    }
}

fn hostdev_source<'a>(p: &mut P<'a>, c: &Child<'a>) -> Res<Option<PciAddress>> {
    let mut out = None;
    if !c.1 {
        return Ok(None);
    }
    while let Some(ch) = p.child()? {
        if ch.0.name().as_ref() == b"address" {
            let keys = ["domain", "bus", "slot", "function"];
            out = match p.attrs(&ch.0, keys)? {
                [d, Some(b), Some(s), Some(f)] => (|| {
                    let domain = d.as_deref().map_or(Some(0), parse_hex)?;
                    let a = PciAddress {
                        domain,
                        bus: parse_hex(&b)?,
                        slot: parse_hex(&s)?,
                        function: parse_hex(&f)?,
                    };
                    Some(a)
                })(),
                _ => None,
            };
        }
        p.skip(&ch)?;
    }
    Ok(out)
}

/// `<serial type='pty'>`, with the file its output is logged to.
fn serial<'a>(p: &mut P<'a>, c: &Child<'a>, d: &mut Devices) -> Res<()> {
    let pty = p.attr(&c.0, "type")?.as_deref() == Some("pty");
    d.serial_console |= pty;
    if !c.1 {
        return Ok(());
    }
    while let Some(ch) = p.child()? {
        if pty && ch.0.name().as_ref() == b"log" && d.serial_console_log.is_none() {
            d.serial_console_log = p.attr_string(&ch.0, "file")?;
        }
        p.skip(&ch)?;
    }
    Ok(())
}

fn watchdog<'a>(p: &mut P<'a>, c: &Child<'a>, d: &mut Devices) -> Res<()> {
    let [model, action] = p.attrs(&c.0, ["model", "action"])?;
    let model = model.unwrap_or_default();
    let action = action.unwrap_or(Cow::Borrowed("reset"));
    p.skip(c)?;
    match (
        WatchdogModel::from_str(&model),
        WatchdogAction::from_str(&action),
    ) {
        (Some(model), Some(action)) if d.watchdog.is_none() => {
            d.watchdog = Some(Watchdog { model, action })
        }
        (Some(_), Some(_)) => p.note(format!("devices/watchdog: second watchdog {model:?}")),
        _ => p.note(format!(
            "devices/watchdog model {model:?} action {action:?}"
        )),
    }
    Ok(())
}

fn balloon<'a>(p: &mut P<'a>, c: &Child<'a>) -> Res<Option<Balloon>> {
    if p.attr(&c.0, "model")?.as_deref() == Some("none") {
        p.skip(c)?;
        return Ok(None);
    }
    let mut b = Balloon::default();
    if c.1 {
        while let Some(ch) = p.child()? {
            if ch.0.name().as_ref() == b"stats" {
                b.stats_period = p.attr_num(&ch.0, "period")?;
            }
            p.skip(&ch)?;
        }
    }
    Ok(Some(b))
}

fn rng<'a>(p: &mut P<'a>, c: &Child<'a>) -> Res<Option<Rng>> {
    let (mut backend, mut rate, mut random) = (None, None, false);
    if c.1 {
        while let Some(ch) = p.child()? {
            match ch.0.name().as_ref() {
                b"rate" => {
                    let [bytes, period] = p.attrs(&ch.0, ["bytes", "period"])?;
                    let bytes = p.opt_num(&ch.0, "bytes", bytes)?.unwrap_or(0);
                    rate = Some((bytes, p.opt_num(&ch.0, "period", period)?.unwrap_or(1000)));
                    p.skip(&ch)?;
                }
                b"backend" => {
                    random = p.attr(&ch.0, "model")?.as_deref() == Some("random");
                    backend = Some(p.text(ch.1)?.into_owned());
                }
                _ => p.skip(&ch)?,
            }
        }
    }
    match backend {
        Some(backend) if random => Ok(Some(Rng { backend, rate })),
        _ => {
            p.note("devices/rng without a random backend".to_string());
            Ok(None)
        }
    }
}

/// Reads only the csagent metadata, stopping at `<metadata>` or `<devices>`.
pub(crate) fn metadata_only(xml: &str) -> Res<Option<CsagentMeta>> {
    let mut p = P::new(xml);
    loop {
        match p.event()? {
            Event::Start(e) if e.name().as_ref() == b"domain" => break,
            Event::Start(_) | Event::Empty(_) | Event::Eof => return Ok(None),
            _ => {}
        }
    }
    while let Some(c) = p.child()? {
        match c.0.name().as_ref() {
            b"metadata" => return metadata(&mut p, &c),
            b"devices" => return Ok(None),
            _ => p.skip(&c)?,
        }
    }
    Ok(None)
}
