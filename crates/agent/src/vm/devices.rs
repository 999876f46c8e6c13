//! AttachDevice / DetachDevice: disks, NICs and ISO media of a csagent VM.
//!
//! Owns what a device change means: which definitions it touches (live and
//! persistent for a running VM, persistent for a stopped one, each only where
//! the device is or is not yet), idempotency (an identical device already
//! there is success, a different one on the same target or MAC is CONFLICT,
//! removing what is absent is NOT_FOUND), and ISO handling (media change in an
//! existing drive, a new drive only while stopped). Device XML is rendered by
//! domain/ from the typed model; libvirt calls live in hypervisor/devices.rs.

use csagent_core::error::{CommandError, ErrorKind};
use csagent_domain::{
    self as domain, Device, Disk, DiskBus, DiskDevice, DiskFormat, DiskSource, Interface,
};
use csagent_domain::{MacAddr, VmSpec};
use csagent_libvirt::devices::{self, Scope};
use csagent_libvirt::{lifecycle, Hypervisor};

#[derive(Clone, Debug, PartialEq)]
pub enum Attach {
    Disk(Box<Disk>),
    Interface(Interface),
    Iso(Iso),
}

/// Refuses an attachment naming a host path outside `roots` (vm/paths.rs).
/// Blocking; see `paths::check_spec`.
pub fn check_paths(a: &Attach, roots: &[std::path::PathBuf]) -> Result<(), CommandError> {
    use crate::vm::paths;
    match a {
        Attach::Disk(d) => paths::check_disk(d, roots),
        Attach::Iso(iso) => paths::check_file("ISO", &iso.path, roots),
        Attach::Interface(_) => Ok(()),
    }
}

/// Media for a CD-ROM drive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iso {
    pub path: String,
    pub target: Option<String>,
    pub bus: Option<DiskBus>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Detach {
    Disk(String),
    Interface(MacAddr),
    /// Ejects the media of this drive (None: the first CD-ROM).
    EjectIso(Option<String>),
}

/// What a device command did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceChange {
    pub device: String,
    pub live: bool,
    pub config: bool,
    pub pending: bool,
    pub unchanged: bool,
}

/// The VM as both definitions see it.
struct Views {
    running: bool,
    live: VmSpec,
    config: VmSpec,
}

impl Views {
    fn machine(&self) -> Option<&str> {
        self.config.os.machine.as_deref()
    }
}

async fn views(h: &Hypervisor, uuid: uuid::Uuid) -> Result<Views, CommandError> {
    let live_xml = super::managed(h, uuid).await?;
    let info = h.vm(uuid).await.map_err(CommandError::from)?;
    let running = info.id.is_some();
    let config_xml = if running {
        h.call("get_xml_desc", move |c| lifecycle::xml(c, &uuid, true))
            .await
            .map_err(CommandError::from)?
            .unwrap_or_else(|| live_xml.clone())
    } else {
        live_xml.clone()
    };
    Ok(Views {
        running,
        live: super::spec_of(uuid, &live_xml)?,
        config: super::spec_of(uuid, &config_xml)?,
    })
}

fn render(dev: &Device, machine: Option<&str>) -> Result<String, CommandError> {
    domain::render_device(dev, machine).map_err(|e| CommandError::invalid(e.to_string()))
}

pub async fn attach(
    h: &Hypervisor,
    uuid: uuid::Uuid,
    a: Attach,
) -> Result<DeviceChange, CommandError> {
    let v = views(h, uuid).await?;
    match a {
        Attach::Disk(d) => attach_disk(h, uuid, &v, *d).await,
        Attach::Interface(n) => attach_nic(h, uuid, &v, n).await,
        Attach::Iso(iso) => insert_iso(h, uuid, &v, iso).await,
    }
}

pub async fn detach(
    h: &Hypervisor,
    uuid: uuid::Uuid,
    d: Detach,
) -> Result<DeviceChange, CommandError> {
    let v = views(h, uuid).await?;
    match d {
        Detach::Disk(target) => detach_disk(h, uuid, &v, &target).await,
        Detach::Interface(mac) => detach_nic(h, uuid, &v, mac).await,
        Detach::EjectIso(target) => eject_iso(h, uuid, &v, target.as_deref()).await,
    }
}

/// Where a device must still be added (or removed): the running VM and/or
/// the definition, given where it is now.
fn scope_where(running: bool, in_live: bool, in_config: bool, adding: bool) -> Scope {
    Scope {
        live: running && (in_live != adding),
        config: in_config != adding,
    }
}

fn same_disk(a: &Disk, b: &Disk) -> bool {
    a.device == b.device && a.source == b.source && a.bus == b.bus && a.target == b.target
}

async fn attach_disk(
    h: &Hypervisor,
    uuid: uuid::Uuid,
    v: &Views,
    d: Disk,
) -> Result<DeviceChange, CommandError> {
    let dev = Device::Disk(Box::new(d.clone()));
    let xml = render(&dev, v.machine())?;
    let name = format!("disk {}", d.target);
    let find = |s: &VmSpec| {
        s.devices
            .disks
            .iter()
            .find(|x| x.target == d.target)
            .cloned()
    };
    let (live, config) = (find(&v.live).filter(|_| v.running), find(&v.config));
    for other in [&live, &config].into_iter().flatten() {
        if !same_disk(other, &d) {
            return Err(CommandError::new(
                ErrorKind::Conflict,
                format!("VM {uuid}: target {} already holds another {} ({:?}); detach it first or pick a free target", d.target, other.device.as_str(), other.source),
            ));
        }
    }
    let scope = scope_where(v.running, live.is_some(), config.is_some(), true);
    apply(h, uuid, name, xml, scope, Op::Attach).await
}

async fn attach_nic(
    h: &Hypervisor,
    uuid: uuid::Uuid,
    v: &Views,
    n: Interface,
) -> Result<DeviceChange, CommandError> {
    let xml = render(&Device::Interface(n.clone()), v.machine())?;
    let name = format!("interface {}", n.mac);
    let find = |s: &VmSpec| {
        s.devices
            .interfaces
            .iter()
            .find(|x| x.mac == n.mac)
            .cloned()
    };
    let (live, config) = (find(&v.live).filter(|_| v.running), find(&v.config));
    for other in [&live, &config].into_iter().flatten() {
        if other.bridge != n.bridge || other.model != n.model {
            return Err(CommandError::new(
                ErrorKind::Conflict,
                format!("VM {uuid}: a NIC with MAC {} already exists on bridge {} ({}); detach it first or use another MAC", n.mac, other.bridge, other.model.as_str()),
            ));
        }
    }
    let scope = scope_where(v.running, live.is_some(), config.is_some(), true);
    apply(h, uuid, name, xml, scope, Op::Attach).await
}

async fn detach_disk(
    h: &Hypervisor,
    uuid: uuid::Uuid,
    v: &Views,
    target: &str,
) -> Result<DeviceChange, CommandError> {
    let find = |s: &VmSpec| s.devices.disks.iter().find(|x| x.target == target).cloned();
    let (live, config) = (find(&v.live).filter(|_| v.running), find(&v.config));
    let Some(disk) = live.clone().or(config.clone()) else {
        return Err(CommandError::new(
            ErrorKind::NotFound,
            format!("VM {uuid} has no disk with target {target:?}; nothing was changed"),
        ));
    };
    let xml = render(&Device::Disk(Box::new(disk)), v.machine())?;
    let scope = scope_where(v.running, live.is_some(), config.is_some(), false);
    let mut out = apply(h, uuid, format!("disk {target}"), xml, scope, Op::Detach).await?;
    if scope.live {
        out.pending = still_live(h, uuid, |s| {
            s.devices.disks.iter().any(|x| x.target == target)
        })
        .await;
    }
    Ok(out)
}

async fn detach_nic(
    h: &Hypervisor,
    uuid: uuid::Uuid,
    v: &Views,
    mac: MacAddr,
) -> Result<DeviceChange, CommandError> {
    let find = |s: &VmSpec| s.devices.interfaces.iter().find(|x| x.mac == mac).cloned();
    let (live, config) = (find(&v.live).filter(|_| v.running), find(&v.config));
    let Some(mut nic) = live.clone().or(config.clone()) else {
        return Err(CommandError::new(
            ErrorKind::NotFound,
            format!("VM {uuid} has no NIC with MAC {mac}; nothing was changed"),
        ));
    };
    // libvirt names the tap (vnetN) itself; the MAC identifies the NIC.
    nic.target_dev = None;
    let xml = render(&Device::Interface(nic), v.machine())?;
    let scope = scope_where(v.running, live.is_some(), config.is_some(), false);
    let mut out = apply(h, uuid, format!("interface {mac}"), xml, scope, Op::Detach).await?;
    if scope.live {
        out.pending = still_live(h, uuid, |s| {
            s.devices.interfaces.iter().any(|x| x.mac == mac)
        })
        .await;
    }
    Ok(out)
}

fn first_cdrom<'a>(s: &'a VmSpec, target: Option<&str>) -> Option<&'a Disk> {
    s.devices
        .disks
        .iter()
        .filter(|d| d.device == DiskDevice::Cdrom)
        .find(|d| target.is_none_or(|t| d.target == t))
}

async fn insert_iso(
    h: &Hypervisor,
    uuid: uuid::Uuid,
    v: &Views,
    iso: Iso,
) -> Result<DeviceChange, CommandError> {
    let source = DiskSource::File {
        path: iso.path.clone(),
    };
    // The definition is where a drive is guaranteed to be described.
    if let Some(drive) = first_cdrom(&v.config, iso.target.as_deref()) {
        let mut media = drive.clone();
        media.source = source;
        media.format = DiskFormat::Raw;
        let name = format!("cdrom {}", drive.target);
        let live_same = !v.running
            || first_cdrom(&v.live, Some(&drive.target)).is_some_and(|l| l.source == media.source);
        if drive.source == media.source && live_same {
            return Ok(unchanged(name));
        }
        let xml = render(&Device::Disk(Box::new(media)), v.machine())?;
        return apply(
            h,
            uuid,
            name,
            xml,
            Scope::for_running(v.running),
            Op::Update,
        )
        .await;
    }
    if v.running {
        return Err(CommandError::new(
            ErrorKind::Conflict,
            format!("VM {uuid} has no CD-ROM drive{} and drives cannot be hot-plugged; stop the VM to add one", iso.target.map(|t| format!(" {t}")).unwrap_or_default()),
        ));
    }
    let bus = iso.bus.unwrap_or_else(|| default_cdrom_bus(v.machine()));
    let target = match iso.target {
        Some(t) => t,
        None => free_target(&v.config, bus).ok_or_else(|| {
            CommandError::invalid(format!(
                "VM {uuid}: no free device name on bus {}",
                bus.as_str()
            ))
        })?,
    };
    let drive = Disk {
        readonly: true,
        ..Disk::new(
            DiskDevice::Cdrom,
            source,
            DiskFormat::Raw,
            target.clone(),
            bus,
        )
    };
    let xml = render(&Device::Disk(Box::new(drive)), v.machine())?;
    apply(
        h,
        uuid,
        format!("cdrom {target}"),
        xml,
        Scope::for_running(false),
        Op::Attach,
    )
    .await
}

async fn eject_iso(
    h: &Hypervisor,
    uuid: uuid::Uuid,
    v: &Views,
    target: Option<&str>,
) -> Result<DeviceChange, CommandError> {
    let Some(drive) = first_cdrom(&v.config, target) else {
        return Err(CommandError::new(
            ErrorKind::NotFound,
            format!(
                "VM {uuid} has no CD-ROM drive{}; nothing was changed",
                target.map(|t| format!(" {t}")).unwrap_or_default()
            ),
        ));
    };
    let name = format!("cdrom {}", drive.target);
    let live_empty = !v.running
        || first_cdrom(&v.live, Some(&drive.target)).is_some_and(|l| l.source == DiskSource::Empty);
    if drive.source == DiskSource::Empty && live_empty {
        return Ok(unchanged(name));
    }
    let mut empty = drive.clone();
    empty.source = DiskSource::Empty;
    let xml = render(&Device::Disk(Box::new(empty)), v.machine())?;
    apply(
        h,
        uuid,
        name,
        xml,
        Scope::for_running(v.running),
        Op::Update,
    )
    .await
}

fn default_cdrom_bus(machine: Option<&str>) -> DiskBus {
    if machine.is_some_and(|m| m.contains("q35")) {
        DiskBus::Sata
    } else {
        DiskBus::Ide
    }
}

/// The first unused name on `bus` ("hdc" before "hdd": hdc is where IDE
/// CD-ROMs conventionally sit; sd* and vd* from "a").
fn free_target(spec: &VmSpec, bus: DiskBus) -> Option<String> {
    let (prefix, first) = match bus {
        DiskBus::Ide => ("hd", b'c'),
        DiskBus::Sata | DiskBus::Scsi => ("sd", b'a'),
        DiskBus::Virtio => ("vd", b'a'),
    };
    (first..=b'z')
        .map(|c| format!("{prefix}{}", c as char))
        .find(|t| spec.devices.disks.iter().all(|d| &d.target != t))
}

fn unchanged(device: String) -> DeviceChange {
    DeviceChange {
        device,
        unchanged: true,
        ..Default::default()
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Attach,
    Detach,
    Update,
}

async fn apply(
    h: &Hypervisor,
    uuid: uuid::Uuid,
    device: String,
    xml: String,
    scope: Scope,
    op: Op,
) -> Result<DeviceChange, CommandError> {
    if !scope.live && !scope.config {
        return Ok(unchanged(device));
    }
    let r = match op {
        Op::Attach => {
            h.call("attach_device", move |c| {
                devices::attach(c, &uuid, &xml, scope)
            })
            .await
        }
        Op::Detach => {
            h.call("detach_device", move |c| {
                devices::detach(c, &uuid, &xml, scope)
            })
            .await
        }
        Op::Update => {
            h.call("update_device", move |c| {
                devices::update(c, &uuid, &xml, scope)
            })
            .await
        }
    };
    r.map_err(|e| CommandError::new(e.kind(), format!("VM {uuid}: {device}: {e}")))?;
    Ok(DeviceChange {
        device,
        live: scope.live,
        config: scope.config,
        ..Default::default()
    })
}

/// True while the running VM still shows the device (its guest has not
/// released it yet).
async fn still_live(h: &Hypervisor, uuid: uuid::Uuid, present: impl Fn(&VmSpec) -> bool) -> bool {
    let xml = h
        .call("get_xml_desc", move |c| lifecycle::xml(c, &uuid, false))
        .await;
    match xml {
        Ok(Some(x)) => domain::parse(&x).is_ok_and(|p| present(&p.spec)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_touches_only_where_needed() {
        // Running, nowhere yet: both.
        assert_eq!(
            scope_where(true, false, false, true),
            Scope {
                live: true,
                config: true
            }
        );
        // Running, already in config only (e.g. re-attach after a partial step).
        assert_eq!(
            scope_where(true, false, true, true),
            Scope {
                live: true,
                config: false
            }
        );
        // Stopped: never live.
        assert_eq!(
            scope_where(false, false, true, false),
            Scope {
                live: false,
                config: true
            }
        );
        // Already everywhere: nothing to do.
        assert_eq!(
            scope_where(true, true, true, true),
            Scope {
                live: false,
                config: false
            }
        );
    }

    #[test]
    fn free_targets() {
        let mut s = VmSpec::new("x", domain::VmUuid(uuid::Uuid::from_u128(1)));
        assert_eq!(free_target(&s, DiskBus::Ide).as_deref(), Some("hdc"));
        s.devices.disks.push(Disk::new(
            DiskDevice::Disk,
            DiskSource::File { path: "/a".into() },
            DiskFormat::Raw,
            "sda",
            DiskBus::Sata,
        ));
        assert_eq!(free_target(&s, DiskBus::Sata).as_deref(), Some("sdb"));
        assert_eq!(default_cdrom_bus(Some("pc-q35-8.2")), DiskBus::Sata);
        assert_eq!(default_cdrom_bus(None), DiskBus::Ide);
    }
}
