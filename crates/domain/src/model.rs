//! The typed VM model: everything csagent can say about a libvirt domain.
//!
//! This file owns the data types only. It must not know about XML, JSON or
//! the wire protocol: render.rs and parse.rs map it to libvirt XML, convert.rs
//! maps it to and from the proto `VmSpec`, validate.rs checks it.

use serde::Serialize;
use std::fmt;

pub use csagent_core::{KiB, MacAddr, VmUuid};

/// Declares a closed set of libvirt keywords with their XML spelling, so that
/// render, parse, convert and error messages share one table.
macro_rules! keyword_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every accepted spelling, for error messages.
            pub const ALL: &'static [&'static str] = &[$($text),+];

            /// The libvirt XML spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Parses the libvirt XML spelling; None for anything else.
            #[allow(clippy::should_implement_trait)]
            pub fn from_str(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$variant),)+ _ => None }
            }
        }
    };
}

keyword_enum!(
    /// The libvirt domain type: hardware virtualisation or pure emulation.
    DomainType { Kvm = "kvm", Qemu = "qemu" }
);
keyword_enum!(
    /// What libvirt does when the guest powers off, reboots or crashes.
    LifecycleAction {
        Destroy = "destroy",
        Restart = "restart",
        Preserve = "preserve",
        RenameRestart = "rename-restart",
        CoredumpDestroy = "coredump-destroy",
        CoredumpRestart = "coredump-restart",
    }
);
keyword_enum!(
    /// How the guest CPU relates to the host CPU.
    CpuMode { HostPassthrough = "host-passthrough", HostModel = "host-model", Custom = "custom" }
);
keyword_enum!(
    /// What a CPU feature line asks of the host.
    FeaturePolicy {
        Force = "force",
        Require = "require",
        Optional = "optional",
        Disable = "disable",
        Forbid = "forbid",
    }
);
keyword_enum!(
    /// The guest clock's reference.
    ClockOffset { Utc = "utc", Localtime = "localtime" }
);
keyword_enum!(
    /// Guest timers libvirt knows.
    TimerName {
        Rtc = "rtc",
        Pit = "pit",
        Hpet = "hpet",
        Kvmclock = "kvmclock",
        Hypervclock = "hypervclock",
        Tsc = "tsc",
    }
);
keyword_enum!(
    /// What a timer does with missed ticks.
    TickPolicy { Delay = "delay", Catchup = "catchup", Merge = "merge", Discard = "discard" }
);
keyword_enum!(
    /// What the guest sees: a hard disk or a CD-ROM drive.
    DiskDevice { Disk = "disk", Cdrom = "cdrom" }
);
keyword_enum!(
    /// Image format of a disk's source.
    DiskFormat { Raw = "raw", Qcow2 = "qcow2" }
);
keyword_enum!(
    /// The guest bus a disk hangs off.
    DiskBus { Virtio = "virtio", Scsi = "scsi", Sata = "sata", Ide = "ide" }
);
keyword_enum!(
    /// Host page cache mode of a disk.
    DiskCache {
        Default = "default",
        None = "none",
        Writethrough = "writethrough",
        Writeback = "writeback",
        Directsync = "directsync",
        Unsafe = "unsafe",
    }
);
keyword_enum!(
    /// Host I/O submission mode of a disk.
    DiskIo { Threads = "threads", Native = "native", IoUring = "io_uring" }
);
keyword_enum!(
    /// Whether guest discards reach the storage.
    DiskDiscard { Unmap = "unmap", Ignore = "ignore" }
);
keyword_enum!(
    /// The emulated NIC.
    NicModel { Virtio = "virtio", E1000 = "e1000", Rtl8139 = "rtl8139" }
);
keyword_enum!(
    /// Emulated video adapter.
    VideoModel {
        Vga = "vga",
        Cirrus = "cirrus",
        Qxl = "qxl",
        Virtio = "virtio",
        Bochs = "bochs",
        None = "none",
    }
);
keyword_enum!(
    /// Emulated watchdog device.
    WatchdogModel { I6300esb = "i6300esb", Ib700 = "ib700", Itco = "itco" }
);
keyword_enum!(
    /// What the watchdog does when the guest stops feeding it.
    WatchdogAction {
        Reset = "reset",
        Shutdown = "shutdown",
        Poweroff = "poweroff",
        Pause = "pause",
        None = "none",
        Dump = "dump",
        InjectNmi = "inject-nmi",
    }
);
keyword_enum!(
    /// TPM front end seen by the guest.
    TpmModel { TpmCrb = "tpm-crb", TpmTis = "tpm-tis" }
);

/// The csagent metadata element: the cloud's ids for this VM. Its presence is
/// how the agent tells its own domains from others on the host.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct CsagentMeta {
    pub instance_id: String,
    pub account_id: String,
    pub zone_id: String,
    pub service_offering_id: String,
    /// High availability: the plane restarts the VM elsewhere when its host
    /// dies (rendered only when set).
    pub ha: bool,
}

/// A complete domain, as csagent defines it or understands it from dumpxml.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VmSpec {
    pub domain_type: DomainType,
    pub name: String,
    pub uuid: VmUuid,
    pub title: Option<String>,
    pub description: Option<String>,
    pub meta: Option<CsagentMeta>,
    pub memory: Memory,
    pub vcpu: Vcpus,
    pub cpu: Option<Cpu>,
    pub cputune: Option<CpuTune>,
    pub os: Os,
    pub features: Features,
    pub clock: Clock,
    pub on_poweroff: LifecycleAction,
    pub on_reboot: LifecycleAction,
    pub on_crash: LifecycleAction,
    pub devices: Devices,
}

/// Guest memory: boot size, balloon target, hotplug ceiling, backing pages.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Memory {
    /// `<memory>`: what the guest boots with.
    pub size: KiB,
    /// `<currentMemory>`: the balloon target; None means equal to `size`.
    pub current: Option<KiB>,
    /// `<maxMemory slots=..>`: hotplug ceiling.
    pub max: Option<MaxMemory>,
    /// `<memoryBacking><hugepages>`; `Some(None)` means the default page size.
    pub hugepages: Option<Option<KiB>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct MaxMemory {
    pub size: KiB,
    pub slots: u32,
}

/// `<vcpu current=..>max</vcpu>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Vcpus {
    pub max: u32,
    /// Online at boot; None means all of `max`.
    pub current: Option<u32>,
}

/// `<cpu>`: model, features, topology and NUMA layout.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Cpu {
    pub mode: Option<CpuMode>,
    pub model: Option<String>,
    pub features: Vec<CpuFeature>,
    pub topology: Option<Topology>,
    pub numa: Vec<NumaCell>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CpuFeature {
    pub name: String,
    pub policy: FeaturePolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Topology {
    pub sockets: u32,
    pub cores: u32,
    pub threads: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NumaCell {
    pub id: u32,
    /// libvirt cpuset syntax, e.g. `0-3,8`.
    pub cpus: String,
    pub memory: KiB,
}

/// `<cputune>`: relative weight and the hard cap (quota per period, in µs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct CpuTune {
    pub shares: Option<u32>,
    pub period_us: Option<u64>,
    pub quota_us: Option<i64>,
}

/// `<os>`: machine, firmware and optional direct kernel boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Os {
    pub arch: String,
    pub machine: Option<String>,
    pub firmware: Firmware,
    pub kernel: Option<DirectKernel>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Firmware {
    Bios,
    Uefi(Uefi),
}

/// A pflash UEFI loader with its per-VM variable store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Uefi {
    pub loader: String,
    pub secure_boot: bool,
    pub nvram: Option<String>,
    pub nvram_template: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct DirectKernel {
    pub kernel: String,
    pub initrd: Option<String>,
    pub cmdline: Option<String>,
}

/// `<features>`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Features {
    pub acpi: bool,
    pub apic: bool,
    pub pae: bool,
    /// Needed by UEFI secure boot.
    pub smm: bool,
    pub hyperv: Option<HyperV>,
}

/// Hyper-V enlightenments for Windows guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct HyperV {
    pub relaxed: bool,
    pub vapic: bool,
    /// Spinlock retries before notifying the hypervisor (>= 4095).
    pub spinlocks: Option<u32>,
    pub vpindex: bool,
    pub runtime: bool,
    pub synic: bool,
    pub stimer: bool,
    pub reset: bool,
    pub frequencies: bool,
    pub tlbflush: bool,
    pub ipi: bool,
}

impl HyperV {
    /// The on/off switches in libvirt's order (spinlocks is separate).
    pub fn switches(&self) -> [(&'static str, bool); 10] {
        [
            ("relaxed", self.relaxed),
            ("vapic", self.vapic),
            ("vpindex", self.vpindex),
            ("runtime", self.runtime),
            ("synic", self.synic),
            ("stimer", self.stimer),
            ("reset", self.reset),
            ("frequencies", self.frequencies),
            ("tlbflush", self.tlbflush),
            ("ipi", self.ipi),
        ]
    }

    /// Sets a switch by its XML name; false when the name is not one of ours.
    pub fn set_switch(&mut self, name: &str, on: bool) -> bool {
        let slot = match name {
            "relaxed" => &mut self.relaxed,
            "vapic" => &mut self.vapic,
            "vpindex" => &mut self.vpindex,
            "runtime" => &mut self.runtime,
            "synic" => &mut self.synic,
            "stimer" => &mut self.stimer,
            "reset" => &mut self.reset,
            "frequencies" => &mut self.frequencies,
            "tlbflush" => &mut self.tlbflush,
            "ipi" => &mut self.ipi,
            _ => return false,
        };
        *slot = on;
        true
    }
}

/// `<clock>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Clock {
    pub offset: ClockOffset,
    pub timers: Vec<Timer>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Timer {
    pub name: TimerName,
    pub present: Option<bool>,
    pub tickpolicy: Option<TickPolicy>,
}

/// `<devices>`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Devices {
    /// `<emulator>`; None lets libvirt pick the host's default.
    pub emulator: Option<String>,
    pub disks: Vec<Disk>,
    /// The virtio-scsi controller scsi disks attach to.
    pub scsi_controller: Option<ScsiController>,
    pub interfaces: Vec<Interface>,
    pub graphics: Vec<Graphics>,
    pub video: Option<Video>,
    /// A pty serial port with the console on it.
    pub serial_console: bool,
    /// Host file that receives everything the guest writes to that console
    /// (libvirt's `<log>`, written by virtlogd, truncated at each start), so
    /// boot output survives without anyone attached to the pty.
    pub serial_console_log: Option<String>,
    /// The org.qemu.guest_agent.0 virtio channel.
    pub guest_agent: bool,
    pub rng: Option<Rng>,
    pub watchdog: Option<Watchdog>,
    pub tpm: Option<Tpm>,
    pub hostdevs: Vec<PciHostdev>,
    pub usb_tablet: bool,
    /// None renders `<memballoon model='none'/>` so libvirt adds nothing.
    pub balloon: Option<Balloon>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct ScsiController {
    pub queues: Option<u32>,
}

/// One disk or CD-ROM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Disk {
    pub device: DiskDevice,
    pub source: DiskSource,
    pub format: DiskFormat,
    /// Guest device name (vda, sda, hdc).
    pub target: String,
    pub bus: DiskBus,
    pub cache: Option<DiskCache>,
    pub io: Option<DiskIo>,
    pub discard: Option<DiskDiscard>,
    pub iotune: Option<IoTune>,
    pub serial: Option<String>,
    pub readonly: bool,
    pub shareable: bool,
    pub boot_order: Option<u32>,
}

impl Disk {
    /// A disk with libvirt's defaults for everything a spec may tune
    /// (cache, io, discard, iotune, serial, sharing, boot order).
    pub fn new(
        device: DiskDevice,
        source: DiskSource,
        format: DiskFormat,
        target: impl Into<String>,
        bus: DiskBus,
    ) -> Disk {
        Disk {
            device,
            source,
            format,
            target: target.into(),
            bus,
            cache: None,
            io: None,
            discard: None,
            iotune: None,
            serial: None,
            readonly: false,
            shareable: false,
            boot_order: None,
        }
    }
}

/// Where a disk's bytes live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum DiskSource {
    /// An empty CD-ROM drive.
    Empty,
    File {
        path: String,
    },
    Block {
        dev: String,
    },
    Rbd {
        name: String,
        hosts: Vec<NetHost>,
        auth: Option<DiskAuth>,
    },
    /// `name` is `IQN/LUN`.
    Iscsi {
        name: String,
        hosts: Vec<NetHost>,
        auth: Option<DiskAuth>,
    },
    /// `name` is the file's path on the export.
    Nfs {
        name: String,
        hosts: Vec<NetHost>,
    },
}

impl DiskSource {
    /// The host file or block device this source is; network and empty
    /// sources name nothing on the host.
    pub fn host_path(&self) -> Option<&str> {
        match self {
            DiskSource::File { path } => Some(path),
            DiskSource::Block { dev } => Some(dev),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetHost {
    pub name: String,
    pub port: Option<u16>,
}

/// A libvirt secret holding the storage key (ceph or iscsi usage).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiskAuth {
    pub username: String,
    pub secret_uuid: uuid::Uuid,
}

/// Disk I/O limits; bytes are per second, lengths in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct IoTune {
    pub total_bytes_sec: Option<u64>,
    pub read_bytes_sec: Option<u64>,
    pub write_bytes_sec: Option<u64>,
    pub total_iops_sec: Option<u64>,
    pub read_iops_sec: Option<u64>,
    pub write_iops_sec: Option<u64>,
    pub total_bytes_sec_max: Option<u64>,
    pub read_bytes_sec_max: Option<u64>,
    pub write_bytes_sec_max: Option<u64>,
    pub total_iops_sec_max: Option<u64>,
    pub read_iops_sec_max: Option<u64>,
    pub write_iops_sec_max: Option<u64>,
    pub total_bytes_sec_max_length: Option<u64>,
    pub read_bytes_sec_max_length: Option<u64>,
    pub write_bytes_sec_max_length: Option<u64>,
    pub total_iops_sec_max_length: Option<u64>,
    pub read_iops_sec_max_length: Option<u64>,
    pub write_iops_sec_max_length: Option<u64>,
}

impl IoTune {
    /// Every limit with its XML name, in libvirt's output order.
    pub fn fields(&self) -> [(&'static str, Option<u64>); 18] {
        [
            ("total_bytes_sec", self.total_bytes_sec),
            ("read_bytes_sec", self.read_bytes_sec),
            ("write_bytes_sec", self.write_bytes_sec),
            ("total_iops_sec", self.total_iops_sec),
            ("read_iops_sec", self.read_iops_sec),
            ("write_iops_sec", self.write_iops_sec),
            ("total_bytes_sec_max", self.total_bytes_sec_max),
            ("read_bytes_sec_max", self.read_bytes_sec_max),
            ("write_bytes_sec_max", self.write_bytes_sec_max),
            ("total_iops_sec_max", self.total_iops_sec_max),
            ("read_iops_sec_max", self.read_iops_sec_max),
            ("write_iops_sec_max", self.write_iops_sec_max),
            (
                "total_bytes_sec_max_length",
                self.total_bytes_sec_max_length,
            ),
            ("read_bytes_sec_max_length", self.read_bytes_sec_max_length),
            (
                "write_bytes_sec_max_length",
                self.write_bytes_sec_max_length,
            ),
            ("total_iops_sec_max_length", self.total_iops_sec_max_length),
            ("read_iops_sec_max_length", self.read_iops_sec_max_length),
            ("write_iops_sec_max_length", self.write_iops_sec_max_length),
        ]
    }

    /// Sets a limit by its XML name; false when the name is not one of ours.
    pub fn set(&mut self, name: &str, value: u64) -> bool {
        let slot = match name {
            "total_bytes_sec" => &mut self.total_bytes_sec,
            "read_bytes_sec" => &mut self.read_bytes_sec,
            "write_bytes_sec" => &mut self.write_bytes_sec,
            "total_iops_sec" => &mut self.total_iops_sec,
            "read_iops_sec" => &mut self.read_iops_sec,
            "write_iops_sec" => &mut self.write_iops_sec,
            "total_bytes_sec_max" => &mut self.total_bytes_sec_max,
            "read_bytes_sec_max" => &mut self.read_bytes_sec_max,
            "write_bytes_sec_max" => &mut self.write_bytes_sec_max,
            "total_iops_sec_max" => &mut self.total_iops_sec_max,
            "read_iops_sec_max" => &mut self.read_iops_sec_max,
            "write_iops_sec_max" => &mut self.write_iops_sec_max,
            "total_bytes_sec_max_length" => &mut self.total_bytes_sec_max_length,
            "read_bytes_sec_max_length" => &mut self.read_bytes_sec_max_length,
            "write_bytes_sec_max_length" => &mut self.write_bytes_sec_max_length,
            "total_iops_sec_max_length" => &mut self.total_iops_sec_max_length,
            "read_iops_sec_max_length" => &mut self.read_iops_sec_max_length,
            "write_iops_sec_max_length" => &mut self.write_iops_sec_max_length,
            _ => return false,
        };
        *slot = Some(value);
        true
    }
}

/// One guest NIC plugged into a host bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Interface {
    pub mac: MacAddr,
    pub bridge: String,
    /// Open vSwitch port; Some(None) lets libvirt pick the interface id.
    pub openvswitch: Option<Option<uuid::Uuid>>,
    /// VLAN tag (Open vSwitch bridges only).
    pub vlan: Option<u16>,
    pub model: NicModel,
    pub inbound: Option<Rate>,
    pub outbound: Option<Rate>,
    pub mtu: Option<u32>,
    /// Host tap device name.
    pub target_dev: Option<String>,
    pub boot_order: Option<u32>,
}

/// Traffic shaping: average and peak in KiB/s, burst in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Rate {
    pub average: u64,
    pub peak: Option<u64>,
    pub burst: Option<u64>,
}

/// A remote display.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Graphics {
    pub kind: GraphicsKind,
    /// A fixed port; None with autoport.
    pub port: Option<u16>,
    pub autoport: bool,
    pub listen: Option<String>,
    pub passwd: Option<String>,
    pub keymap: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum GraphicsKind {
    Vnc,
    Spice,
}

impl GraphicsKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GraphicsKind::Vnc => "vnc",
            GraphicsKind::Spice => "spice",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Video {
    pub model: VideoModel,
    /// Video RAM in KiB.
    pub vram: Option<u32>,
    pub heads: Option<u32>,
}

/// virtio-rng fed from a host device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rng {
    pub backend: String,
    /// At most `bytes` per `period_ms`.
    pub rate: Option<(u32, u32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Watchdog {
    pub model: WatchdogModel,
    pub action: WatchdogAction,
}

/// A TPM 2.0 emulated by swtpm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Tpm {
    pub model: TpmModel,
}

/// A host PCI device handed to the guest (e.g. a GPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PciHostdev {
    pub address: PciAddress,
    /// libvirt detaches it from the host driver and reattaches it after.
    pub managed: bool,
    pub boot_order: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct PciAddress {
    pub domain: u16,
    pub bus: u8,
    pub slot: u8,
    pub function: u8,
}

impl PciAddress {
    /// Parses `0000:01:00.0` (domain optional).
    pub fn parse(s: &str) -> Option<PciAddress> {
        let (rest, function) = s.rsplit_once('.')?;
        let mut parts = rest.rsplit(':');
        let slot = parts.next()?;
        let bus = parts.next()?;
        let domain = parts.next().unwrap_or("0");
        if parts.next().is_some() || slot.len() > 2 || bus.len() > 2 || function.len() != 1 {
            return None;
        }
        let address = PciAddress {
            domain: u16::from_str_radix(domain, 16).ok()?,
            bus: u8::from_str_radix(bus, 16).ok()?,
            slot: u8::from_str_radix(slot, 16).ok()?,
            function: u8::from_str_radix(function, 16).ok()?,
        };
        (address.slot < 32 && address.function < 8).then_some(address)
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.slot, self.function
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Balloon {
    /// Seconds between guest memory statistics updates.
    pub stats_period: Option<u32>,
}

/// One device on its own, for attach, detach and update of a defined domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Device {
    Disk(Box<Disk>),
    Interface(Interface),
    /// Memory hot-add: one DIMM into a domain defined with `<maxMemory>`.
    Dimm(Dimm),
}

/// `<memory model='dimm'>`: a memory module plugged into a NUMA node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Dimm {
    pub size: KiB,
    /// The guest NUMA cell id it joins.
    pub node: u32,
}

impl Dimm {
    /// QEMU on x86 plugs DIMMs in 2 MiB steps; libvirt rounds the live
    /// module up to it but keeps the persistent one as written, so csagent
    /// asks for aligned sizes and both agree.
    pub const ALIGN: KiB = KiB(2048);
}

/// What the parser made of a domain, and what it had to leave out.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Parsed {
    pub spec: VmSpec,
    /// Parts of the domain the model cannot represent (e.g. a disk of type
    /// 'volume'); the agent must not assume it knows these.
    pub not_understood: Vec<String>,
}

impl VmSpec {
    /// The smallest useful domain: used as a base by tests and the parser.
    pub fn new(name: &str, uuid: VmUuid) -> VmSpec {
        VmSpec {
            domain_type: DomainType::Kvm,
            name: name.to_string(),
            uuid,
            title: None,
            description: None,
            meta: None,
            memory: Memory::default(),
            vcpu: Vcpus {
                max: 1,
                current: None,
            },
            cpu: None,
            cputune: None,
            os: Os {
                arch: "x86_64".to_string(),
                machine: None,
                firmware: Firmware::Bios,
                kernel: None,
            },
            features: Features::default(),
            clock: Clock {
                offset: ClockOffset::Utc,
                timers: Vec::new(),
            },
            on_poweroff: LifecycleAction::Destroy,
            on_reboot: LifecycleAction::Restart,
            on_crash: LifecycleAction::Destroy,
            devices: Devices::default(),
        }
    }
}
