//! Reads `<disk>` and `<interface>` elements: the devices whose meaning the
//! agent relies on most (storage and network), so anything it cannot represent
//! is reported in `not_understood` rather than silently guessed.
//!
//! Shares parse.rs's reader; must not validate or touch libvirt.

use std::borrow::Cow;

use super::model::*;
use super::parse_reader::{num, Child, Res, P};

/// What a `<disk>` said, borrowed from the document, before we know whether
/// it is representable.
#[derive(Default)]
struct RawDisk<'a> {
    format: Option<Cow<'a, str>>,
    cache: Option<DiskCache>,
    io: Option<DiskIo>,
    discard: Option<DiskDiscard>,
    file: Option<Cow<'a, str>>,
    dev: Option<Cow<'a, str>>,
    protocol: Option<Cow<'a, str>>,
    name: Option<Cow<'a, str>>,
    hosts: Vec<NetHost>,
    auth: Option<DiskAuth>,
    target: Option<Cow<'a, str>>,
    bus: Option<Cow<'a, str>>,
    iotune: Option<IoTune>,
    serial: Option<String>,
    readonly: bool,
    shareable: bool,
    boot_order: Option<u32>,
}

/// Parses one `<disk>`; None (with a note) when the model cannot represent it.
pub(super) fn disk<'a>(p: &mut P<'a>, c: &Child<'a>) -> Res<Option<Disk>> {
    let [kind, device] = p.attrs(&c.0, ["type", "device"])?;
    let mut raw = RawDisk::default();
    if c.1 {
        while let Some(ch) = p.child()? {
            disk_child(p, &ch, &mut raw)?;
        }
    }
    let target = raw.target.clone().unwrap_or_default();
    let kind = kind.as_deref().unwrap_or("file");
    match build_disk(kind, device.as_deref().unwrap_or("disk"), raw) {
        Ok(d) => Ok(Some(d)),
        Err(why) => {
            p.note(format!("devices/disk[target={target:?}]: {why}"));
            Ok(None)
        }
    }
}

fn disk_child<'a>(p: &mut P<'a>, c: &Child<'a>, d: &mut RawDisk<'a>) -> Res<()> {
    match c.0.name().as_ref() {
        b"driver" => {
            let [format, cache, io, discard] = p.attrs(&c.0, ["type", "cache", "io", "discard"])?;
            d.format = format;
            d.cache = cache.as_deref().and_then(DiskCache::from_str);
            d.io = io.as_deref().and_then(DiskIo::from_str);
            d.discard = discard.as_deref().and_then(DiskDiscard::from_str);
        }
        b"source" => return disk_source(p, c, d),
        b"auth" => d.auth = auth(p, c)?,
        b"target" => {
            let [dev, bus] = p.attrs(&c.0, ["dev", "bus"])?;
            d.target = dev;
            d.bus = bus;
        }
        b"iotune" => return iotune(p, c, d),
        b"serial" => {
            d.serial = Some(p.text(c.1)?.into_owned());
            return Ok(());
        }
        b"readonly" => d.readonly = true,
        b"shareable" => d.shareable = true,
        b"boot" => d.boot_order = p.attr_num(&c.0, "order")?,
        _ => {}
    }
    p.skip(c)
}

fn disk_source<'a>(p: &mut P<'a>, c: &Child<'a>, d: &mut RawDisk<'a>) -> Res<()> {
    [d.file, d.dev, d.protocol, d.name] = p.attrs(&c.0, ["file", "dev", "protocol", "name"])?;
    if !c.1 {
        return Ok(());
    }
    while let Some(ch) = p.child()? {
        match ch.0.name().as_ref() {
            b"host" => {
                let [name, port] = p.attrs(&ch.0, ["name", "port"])?;
                d.hosts.push(NetHost {
                    name: name.map(Cow::into_owned).unwrap_or_default(),
                    port: p.opt_num(&ch.0, "port", port)?,
                });
                p.skip(&ch)?;
            }
            // libvirt accepts auth inside <source> too (and prints it back there).
            b"auth" => d.auth = auth(p, &ch)?,
            _ => p.skip(&ch)?,
        }
    }
    Ok(())
}

fn auth<'a>(p: &mut P<'a>, c: &Child<'a>) -> Res<Option<DiskAuth>> {
    let username = p.attr_string(&c.0, "username")?.unwrap_or_default();
    let mut secret = None;
    if c.1 {
        while let Some(ch) = p.child()? {
            if ch.0.name().as_ref() == b"secret" {
                secret = p
                    .attr(&ch.0, "uuid")?
                    .and_then(|u| uuid::Uuid::parse_str(&u).ok());
            }
            p.skip(&ch)?;
        }
    }
    Ok(secret.map(|secret_uuid| DiskAuth {
        username,
        secret_uuid,
    }))
}

fn iotune<'a>(p: &mut P<'a>, c: &Child<'a>, d: &mut RawDisk<'a>) -> Res<()> {
    let mut t = IoTune::default();
    if c.1 {
        while let Some(ch) = p.child()? {
            let name = String::from_utf8_lossy(ch.0.name().into_inner());
            let text = p.text(ch.1)?;
            if let Some(v) = num::<u64>(&text) {
                // Unknown limits (group_name, size_iops_sec) are not modelled.
                t.set(&name, v);
            }
        }
    }
    d.iotune = Some(t);
    Ok(())
}

/// Turns what the XML said into a model disk, or says why it cannot.
fn build_disk(kind: &str, device: &str, d: RawDisk) -> Result<Disk, String> {
    let own = |v: Option<Cow<str>>| v.map(Cow::into_owned);
    let device = DiskDevice::from_str(device).ok_or_else(|| format!("device {device:?}"))?;
    let format_text = d.format.as_deref().unwrap_or("raw");
    let format =
        DiskFormat::from_str(format_text).ok_or_else(|| format!("format {format_text:?}"))?;
    let bus_text = d.bus.as_deref().unwrap_or("");
    let bus = DiskBus::from_str(bus_text).ok_or_else(|| format!("bus {bus_text:?}"))?;
    let target = own(d.target).ok_or("no target")?;
    let source = match (kind, d.protocol.as_deref()) {
        ("file", _) => own(d.file).map_or(DiskSource::Empty, |path| DiskSource::File { path }),
        ("block", _) => match own(d.dev) {
            Some(dev) => DiskSource::Block { dev },
            None => DiskSource::Empty,
        },
        ("network", Some(proto @ ("rbd" | "iscsi" | "nfs"))) => {
            let name = own(d.name).ok_or("network source without a name")?;
            let hosts = d.hosts;
            match proto {
                "rbd" => DiskSource::Rbd {
                    name,
                    hosts,
                    auth: d.auth,
                },
                "iscsi" => DiskSource::Iscsi {
                    name,
                    hosts,
                    auth: d.auth,
                },
                _ => DiskSource::Nfs { name, hosts },
            }
        }
        (k, proto) => return Err(format!("source type {k:?} protocol {proto:?}")),
    };
    Ok(Disk {
        device,
        source,
        format,
        target,
        bus,
        cache: d.cache,
        io: d.io,
        discard: d.discard,
        iotune: d.iotune,
        serial: d.serial,
        readonly: d.readonly,
        shareable: d.shareable,
        boot_order: d.boot_order,
    })
}

/// Parses one `<interface>`; None (with a note) unless it is a bridge port we can represent.
pub(super) fn interface<'a>(p: &mut P<'a>, c: &Child<'a>) -> Res<Option<Interface>> {
    let kind = p.attr(&c.0, "type")?.unwrap_or_default();
    let mut n = Interface {
        mac: MacAddr::default(),
        bridge: String::new(),
        openvswitch: None,
        vlan: None,
        model: NicModel::Virtio,
        inbound: None,
        outbound: None,
        mtu: None,
        target_dev: None,
        boot_order: None,
    };
    let (mut mac, mut model) = (None, None);
    if c.1 {
        while let Some(ch) = p.child()? {
            match ch.0.name().as_ref() {
                b"mac" => mac = p.attr(&ch.0, "address")?,
                b"model" => model = p.attr(&ch.0, "type")?,
                _ => {}
            }
            nic_child(p, &ch, &mut n)?;
        }
    }
    let why = if kind != "bridge" {
        Some(format!("type {kind:?}"))
    } else if let Some(m) = mac.as_deref().and_then(MacAddr::parse) {
        n.mac = m;
        match model.as_deref().and_then(NicModel::from_str) {
            Some(m) => {
                n.model = m;
                None
            }
            None => Some(format!("model {model:?}")),
        }
    } else {
        Some(format!("MAC {mac:?}"))
    };
    match why {
        None => Ok(Some(n)),
        Some(why) => {
            p.note(format!(
                "devices/interface[mac={:?}]: {why}",
                mac.as_deref().unwrap_or("")
            ));
            Ok(None)
        }
    }
}

fn nic_child<'a>(p: &mut P<'a>, c: &Child<'a>, n: &mut Interface) -> Res<()> {
    match c.0.name().as_ref() {
        b"source" => n.bridge = p.attr_string(&c.0, "bridge")?.unwrap_or_default(),
        b"virtualport" => return virtualport(p, c, n),
        b"vlan" => return vlan(p, c, n),
        b"bandwidth" => return bandwidth(p, c, n),
        b"target" => n.target_dev = p.attr_string(&c.0, "dev")?,
        b"mtu" => n.mtu = p.attr_num(&c.0, "size")?,
        b"boot" => n.boot_order = p.attr_num(&c.0, "order")?,
        _ => {}
    }
    p.skip(c)
}

fn virtualport<'a>(p: &mut P<'a>, c: &Child<'a>, n: &mut Interface) -> Res<()> {
    let ovs = p.attr(&c.0, "type")?.as_deref() == Some("openvswitch");
    let mut id = None;
    if c.1 {
        while let Some(ch) = p.child()? {
            if ch.0.name().as_ref() == b"parameters" {
                id = p
                    .attr(&ch.0, "interfaceid")?
                    .and_then(|u| uuid::Uuid::parse_str(&u).ok());
            }
            p.skip(&ch)?;
        }
    }
    if ovs {
        n.openvswitch = Some(id);
    } else {
        p.note("devices/interface/virtualport that is not openvswitch".to_string());
    }
    Ok(())
}

fn vlan<'a>(p: &mut P<'a>, c: &Child<'a>, n: &mut Interface) -> Res<()> {
    if !c.1 {
        return Ok(());
    }
    while let Some(ch) = p.child()? {
        if ch.0.name().as_ref() == b"tag" && n.vlan.is_none() {
            n.vlan = p.attr_num(&ch.0, "id")?;
        }
        p.skip(&ch)?;
    }
    Ok(())
}

fn bandwidth<'a>(p: &mut P<'a>, c: &Child<'a>, n: &mut Interface) -> Res<()> {
    if !c.1 {
        return Ok(());
    }
    while let Some(ch) = p.child()? {
        let [average, peak, burst] = p.attrs(&ch.0, ["average", "peak", "burst"])?;
        let rate = Rate {
            average: p.opt_num(&ch.0, "average", average)?.unwrap_or(0),
            peak: p.opt_num(&ch.0, "peak", peak)?,
            burst: p.opt_num(&ch.0, "burst", burst)?,
        };
        match ch.0.name().as_ref() {
            b"inbound" => n.inbound = Some(rate),
            b"outbound" => n.outbound = Some(rate),
            _ => {}
        }
        p.skip(&ch)?;
    }
    Ok(())
}
