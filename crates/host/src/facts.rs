//! Host facts sent at Register: hostname, addresses, kernel and OS, CPU,
//! NUMA, memory and huge pages, KVM usability, PCI devices for passthrough.
//!
//! Facts change rarely, so they are gathered once per (re)connection. Every
//! source is optional: a missing file leaves its field empty rather than
//! failing registration. libvirt's view is parsed by libvirt_caps.rs and
//! attached by the caller; this file never talks to libvirt.

use super::libvirt_caps::LibvirtFacts;
use super::sysfs::{self, SysRoots};
use super::units::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// What the plane needs to know about this host to place VMs on it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostFacts {
    pub hostname: String,
    /// `uname -r` (from /proc/sys/kernel/osrelease).
    pub kernel: String,
    /// os-release PRETTY_NAME, e.g. "Debian GNU/Linux 12 (bookworm)".
    pub os: String,
    pub cpu: CpuInfo,
    pub numa: Vec<NumaNode>,
    pub memory_total: Bytes,
    /// Host-wide huge page pools, per page size.
    pub hugepages: Vec<HugePages>,
    pub interfaces: Vec<InterfaceAddrs>,
    pub kvm: KvmStatus,
    /// Devices a VM could be given (display, 3D, accelerators).
    pub pci_devices: Vec<PciDevice>,
    /// Set by the caller from libvirt's capabilities; None when libvirt is down.
    pub libvirt: Option<LibvirtFacts>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuInfo {
    pub vendor: String,
    pub model: String,
    pub sockets: u32,
    /// Physical cores, all sockets.
    pub cores: u32,
    /// Logical CPUs (hardware threads) online.
    pub threads: u32,
    /// Current frequency of the first CPU (varies with scaling).
    pub mhz: f64,
    pub flags: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct NumaNode {
    pub id: u32,
    pub cpus: Vec<u32>,
    pub memory_total: Bytes,
    pub memory_free: Bytes,
    pub hugepages: Vec<HugePages>,
    /// Distance to node i at index i (10 = local).
    pub distances: Vec<u32>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HugePages {
    pub page_size_kib: u64,
    pub total: u64,
    pub free: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceAddrs {
    pub name: String,
    pub mac: String,
    /// "192.0.2.10/24", "2001:db8::1/64".
    pub addresses: Vec<String>,
}

/// Whether QEMU, running as its unprivileged user, can use KVM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvmStatus {
    pub usable: bool,
    /// Why not (or which user was checked), for a person.
    pub detail: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PciDevice {
    /// "0000:65:00.0".
    pub address: String,
    /// 24-bit class code, e.g. 0x030000 (VGA).
    pub class: u32,
    pub class_name: String,
    pub vendor_id: u16,
    pub device_id: u16,
    /// Bound driver ("nvidia", "vfio-pci"); vfio-pci means ready to pass through.
    pub driver: Option<String>,
    /// Passthrough needs an IOMMU group.
    pub iommu_group: Option<u32>,
    pub numa_node: Option<i32>,
}

/// Gathers every fact except libvirt's. `qemu_user` names the user QEMU runs
/// as (None: try "libvirt-qemu", then "qemu"); interfaces whose names start
/// with one of `skip_interfaces` (VM taps, loopback) are left out.
pub fn collect(roots: &SysRoots, qemu_user: Option<&str>, skip_interfaces: &[String]) -> HostFacts {
    HostFacts {
        hostname: hostname(),
        kernel: sysfs::read_opt(&roots.proc.join("sys/kernel/osrelease")).unwrap_or_default(),
        os: os_release(&roots.etc),
        cpu: cpu_info(&roots.proc),
        numa: numa_nodes(&roots.sys),
        memory_total: super::capacity::memory_total(&roots.proc),
        hugepages: hugepages_in(&roots.sys.join("kernel/mm/hugepages")),
        interfaces: interfaces(skip_interfaces),
        kvm: kvm_status(&roots.dev, qemu_user),
        pci_devices: pci_devices(&roots.sys),
        libvirt: None,
    }
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// PRETTY_NAME from os-release (etc first, then the vendor copy).
pub fn os_release(etc: &Path) -> String {
    let text = fs::read_to_string(etc.join("os-release"))
        .or_else(|_| fs::read_to_string(etc.join("../usr/lib/os-release")))
        .unwrap_or_default();
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim().trim_matches('"').trim_matches('\'').to_string())
    };
    field("PRETTY_NAME")
        .or_else(|| field("NAME"))
        .unwrap_or_default()
}

/// Parses /proc/cpuinfo. sockets/cores come from the "physical id" and
/// "core id" pairs, which x86 provides; elsewhere cores = threads.
pub fn cpu_info(proc_root: &Path) -> CpuInfo {
    let text = fs::read_to_string(proc_root.join("cpuinfo")).unwrap_or_default();
    parse_cpuinfo(&text)
}

fn parse_cpuinfo(text: &str) -> CpuInfo {
    let mut info = CpuInfo::default();
    let mut sockets = BTreeSet::new();
    let mut cores = BTreeSet::new();
    let mut physical = String::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "processor" => info.threads += 1,
            "vendor_id" | "CPU implementer" if info.vendor.is_empty() => info.vendor = value.into(),
            "model name" if info.model.is_empty() => info.model = value.into(),
            "cpu MHz" if info.mhz == 0.0 => info.mhz = value.parse().unwrap_or(0.0),
            "flags" | "Features" if info.flags.is_empty() => {
                info.flags = value.split_whitespace().map(String::from).collect();
            }
            "physical id" => {
                physical = value.to_string();
                sockets.insert(physical.clone());
            }
            "core id" => {
                cores.insert((physical.clone(), value.to_string()));
            }
            _ => {}
        }
    }
    info.sockets = (sockets.len() as u32).max(u32::from(info.threads > 0));
    info.cores = if cores.is_empty() {
        info.threads
    } else {
        cores.len() as u32
    };
    info
}

fn numa_nodes(sys: &Path) -> Vec<NumaNode> {
    let mut out = Vec::new();
    for dir in sysfs::entries_with_prefix(&sys.join("devices/system/node"), "node") {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
        let Some(id) = name.and_then(|n| n["node".len()..].parse::<u32>().ok()) else {
            continue;
        };
        let meminfo = fs::read_to_string(dir.join("meminfo")).unwrap_or_default();
        let kib = |key: &str| {
            meminfo
                .lines()
                .find_map(|l| {
                    l.split_once(&format!(" {key}:"))
                        .map(|(_, v)| v.to_string())
                })
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        out.push(NumaNode {
            id,
            cpus: sysfs::read_opt(&dir.join("cpulist"))
                .map(|l| sysfs::parse_cpu_list(&l))
                .unwrap_or_default(),
            memory_total: Bytes::from_kib(kib("MemTotal")),
            memory_free: Bytes::from_kib(kib("MemFree")),
            hugepages: hugepages_in(&dir.join("hugepages")),
            distances: sysfs::read_opt(&dir.join("distance"))
                .map(|d| {
                    d.split_whitespace()
                        .filter_map(|x| x.parse().ok())
                        .collect()
                })
                .unwrap_or_default(),
        });
    }
    out
}

/// `hugepages-2048kB/{nr_hugepages,free_hugepages}` under `dir`.
fn hugepages_in(dir: &Path) -> Vec<HugePages> {
    let mut out: Vec<HugePages> = sysfs::entries_with_prefix(dir, "hugepages-")
        .into_iter()
        .filter_map(|d| {
            let name = d.file_name()?.to_string_lossy().into_owned();
            let size = name
                .strip_prefix("hugepages-")?
                .strip_suffix("kB")?
                .parse()
                .ok()?;
            let count = |f: &str| sysfs::read_i64_opt(&d.join(f)).map_or(0, |v| v.max(0) as u64);
            Some(HugePages {
                page_size_kib: size,
                total: count("nr_hugepages"),
                free: count("free_hugepages"),
            })
        })
        .collect();
    out.sort_by_key(|h| h.page_size_kib);
    out
}

fn interfaces(skip: &[String]) -> Vec<InterfaceAddrs> {
    let mut by_name: BTreeMap<String, InterfaceAddrs> = BTreeMap::new();
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let skipped = |name: &str| skip.iter().any(|p| name.starts_with(p.as_str()));
    for a in addrs.filter(|a| !skipped(&a.interface_name)) {
        let entry = by_name
            .entry(a.interface_name.clone())
            .or_insert_with(|| InterfaceAddrs {
                name: a.interface_name.clone(),
                ..Default::default()
            });
        let Some(addr) = a.address else { continue };
        if let Some(link) = addr.as_link_addr() {
            if let Some(mac) = link.addr() {
                entry.mac = mac
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":");
            }
        } else if let Some(v4) = addr.as_sockaddr_in() {
            let prefix = a
                .netmask
                .and_then(|m| m.as_sockaddr_in().map(|m| m.ip().to_bits().count_ones()));
            entry
                .addresses
                .push(format!("{}/{}", v4.ip(), prefix.unwrap_or(32)));
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            let prefix = a
                .netmask
                .and_then(|m| m.as_sockaddr_in6().map(|m| m.ip().to_bits().count_ones()));
            entry
                .addresses
                .push(format!("{}/{}", v6.ip(), prefix.unwrap_or(128)));
        }
    }
    by_name.into_values().collect()
}

/// Can QEMU's user open /dev/kvm read-write? Checked against the device's
/// owner, group and mode and that user's groups: root can always open it,
/// which says nothing about QEMU.
pub fn kvm_status(dev: &Path, qemu_user: Option<&str>) -> KvmStatus {
    let path = dev.join("kvm");
    let meta = match fs::metadata(&path) {
        Ok(m) => m,
        Err(e) => {
            return KvmStatus {
                usable: false,
                detail: format!(
                    "{} not available ({e}): enable virtualisation in the firmware and load \
                     kvm_intel or kvm_amd; VMs run under TCG emulation (slow)",
                    path.display()
                ),
            }
        }
    };
    if !meta.file_type().is_char_device() {
        return not_usable(format!("{} is not a character device", path.display()));
    }
    let Some((name, uid, gids)) = resolve_user(qemu_user) else {
        return not_usable(format!(
            "QEMU user {} not found; set host.qemu_user in agent.toml",
            qemu_user.unwrap_or("libvirt-qemu/qemu")
        ));
    };
    let mode = meta.mode();
    let rw = |shift: u32| (mode >> shift) & 0o6 == 0o6;
    let ok =
        uid == 0 || (meta.uid() == uid && rw(6)) || (gids.contains(&meta.gid()) && rw(3)) || rw(0);
    if ok {
        KvmStatus {
            usable: true,
            detail: format!("{} read-write for user {name}", path.display()),
        }
    } else {
        not_usable(format!(
            "user {name} cannot open {} read-write (mode {:o}, owner {}, group {}); add {name} \
             to the device's group (usually kvm)",
            path.display(),
            mode & 0o777,
            meta.uid(),
            meta.gid()
        ))
    }
}

fn not_usable(detail: String) -> KvmStatus {
    KvmStatus {
        usable: false,
        detail,
    }
}

/// (name, uid, all gids) of the configured or first existing QEMU user.
fn resolve_user(configured: Option<&str>) -> Option<(String, u32, Vec<u32>)> {
    let candidates: Vec<&str> = match configured {
        Some(u) => vec![u],
        None => vec!["libvirt-qemu", "qemu"],
    };
    candidates.into_iter().find_map(|name| {
        let user = nix::unistd::User::from_name(name).ok().flatten()?;
        let cname = std::ffi::CString::new(name).ok()?;
        let gids = nix::unistd::getgrouplist(&cname, user.gid)
            .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_else(|_| vec![user.gid.as_raw()]);
        Some((name.to_string(), user.uid.as_raw(), gids))
    })
}

/// PCI devices worth passing through: display (0x03), processing
/// accelerators (0x12) and co-processors (0x0b40).
fn pci_devices(sys: &Path) -> Vec<PciDevice> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(sys.join("bus/pci/devices")) else {
        return out;
    };
    for entry in rd.filter_map(Result::ok) {
        let dir = entry.path();
        let Some(class) = sysfs::read_hex_opt(&dir.join("class")) else {
            continue;
        };
        let Some(class_name) = passthrough_class(class) else {
            continue;
        };
        out.push(PciDevice {
            address: entry.file_name().to_string_lossy().into_owned(),
            class,
            class_name: class_name.to_string(),
            vendor_id: sysfs::read_hex_opt(&dir.join("vendor")).unwrap_or(0) as u16,
            device_id: sysfs::read_hex_opt(&dir.join("device")).unwrap_or(0) as u16,
            driver: sysfs::link_name(&dir.join("driver")),
            iommu_group: sysfs::link_name(&dir.join("iommu_group")).and_then(|g| g.parse().ok()),
            numa_node: sysfs::read_i64_opt(&dir.join("numa_node")).map(|n| n as i32),
        });
    }
    out.sort_by(|a, b| a.address.cmp(&b.address));
    out
}

fn passthrough_class(class: u32) -> Option<&'static str> {
    match (class >> 16, (class >> 8) & 0xff) {
        (0x03, 0x00) => Some("VGA compatible controller"),
        (0x03, 0x02) => Some("3D controller"),
        (0x03, _) => Some("Display controller"),
        (0x12, _) => Some("Processing accelerator"),
        (0x0b, 0x40) => Some("Co-processor"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuinfo_two_sockets_with_smt() {
        let mut text = String::new();
        for (p, s, c) in [(0, 0, 0), (1, 0, 0), (2, 1, 0), (3, 1, 0)] {
            text += &format!(
                "processor\t: {p}\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon\ncpu MHz\t\t: 2100.5\nphysical id\t: {s}\ncore id\t\t: {c}\nflags\t\t: vmx sse\n\n"
            );
        }
        let c = parse_cpuinfo(&text);
        assert_eq!((c.sockets, c.cores, c.threads), (2, 2, 4));
        assert_eq!(c.flags, ["vmx", "sse"]);
        assert_eq!(c.mhz, 2100.5);
    }

    #[test]
    fn pci_classes() {
        assert!(passthrough_class(0x030000).is_some());
        assert_eq!(passthrough_class(0x030200), Some("3D controller"));
        assert!(passthrough_class(0x020000).is_none());
    }
}
