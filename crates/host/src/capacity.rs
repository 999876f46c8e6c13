//! Capacity and load: CPU and memory totals, the host's reservation,
//! what VMs have been given (passed in by the caller) and what is free; CPU
//! utilisation from /proc/stat deltas, load average, MemAvailable, swap and
//! per-interface rx/tx rates from /proc/net/dev deltas.
//!
//! Only procfs is read here, one small file each, no process is spawned and
//! libvirt is never called: VM allocations come from the caller.

use super::units::{Bytes, MiB};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// `[host.capacity]` in agent.toml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CapacityConfig {
    /// Memory kept for the host OS, libvirt, QEMU overhead and the agent (MiB).
    /// Default 1024.
    pub reserved_memory_mib: u64,
    /// Host CPU threads kept out of VM placement. Default 0.
    pub reserved_cpus: u32,
    /// vCPUs offered per free host thread (CloudStack's cpu
    /// overprovisioning factor). Default 1.0.
    pub cpu_overcommit: f64,
    /// Memory offered per MiB of free host memory. Default 1.0 (no overcommit).
    pub memory_overcommit: f64,
    /// Interfaces whose name starts with one of these are left out of the
    /// per-interface rates (VM taps would otherwise make reports huge).
    /// Default: lo, vnet, tap, veth, fwbr, fwln, fwpr.
    pub skip_interface_prefixes: Vec<String>,
}

impl Default for CapacityConfig {
    fn default() -> Self {
        CapacityConfig {
            reserved_memory_mib: 1024,
            reserved_cpus: 0,
            cpu_overcommit: 1.0,
            memory_overcommit: 1.0,
            skip_interface_prefixes: ["lo", "vnet", "tap", "veth", "fwbr", "fwln", "fwpr"]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// What the host's VMs have been given, from the caller's VM table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Allocated {
    pub vcpus: u32,
    pub memory: MiB,
    pub vms: u32,
}

/// A storage pool's usage, passed through from the storage module.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolUsage {
    pub name: String,
    pub capacity: Bytes,
    pub allocation: Bytes,
    pub available: Bytes,
}

/// Placement capacity: what the plane may still give to VMs here.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Capacity {
    /// Host CPU threads.
    pub cpu_threads: u32,
    /// vCPUs offered to VMs: (threads - reserved) * overcommit.
    pub vcpu_total: u32,
    pub vcpu_allocated: u32,
    /// Zero when overcommitted beyond the total.
    pub vcpu_free: u32,
    pub memory_total: MiB,
    pub memory_reserved: MiB,
    /// Memory offered to VMs: (total - reserved) * overcommit.
    pub memory_offered: MiB,
    pub memory_allocated: MiB,
    pub memory_free: MiB,
    /// MemAvailable minus the reservation: what a new VM can get right now.
    /// Set only without memory overcommit; with overcommit, operators rely
    /// on KSM/ballooning and only the allocation figures count.
    pub memory_available_for_vms: Option<MiB>,
}

impl Capacity {
    pub fn compute(
        threads: u32,
        memory_total: MiB,
        memory_available: MiB,
        alloc: &Allocated,
        cfg: &CapacityConfig,
    ) -> Self {
        let cpu_overcommit = sane_factor(cfg.cpu_overcommit);
        let mem_overcommit = sane_factor(cfg.memory_overcommit);
        let usable_threads = threads.saturating_sub(cfg.reserved_cpus);
        let vcpu_total = (f64::from(usable_threads) * cpu_overcommit).floor() as u32;
        let reserved = MiB(cfg.reserved_memory_mib);
        let offered =
            MiB((memory_total.saturating_sub(reserved).0 as f64 * mem_overcommit).floor() as u64);
        Capacity {
            cpu_threads: threads,
            vcpu_total,
            vcpu_allocated: alloc.vcpus,
            vcpu_free: vcpu_total.saturating_sub(alloc.vcpus),
            memory_total,
            memory_reserved: reserved,
            memory_offered: offered,
            memory_allocated: alloc.memory,
            memory_free: offered.saturating_sub(alloc.memory),
            memory_available_for_vms: (mem_overcommit <= 1.0)
                .then(|| memory_available.saturating_sub(reserved)),
        }
    }
}

/// A bad factor in config (0, negative, NaN) must not zero a host's capacity
/// or make it infinite; 1.0 is the safe reading.
fn sane_factor(f: f64) -> f64 {
    if f.is_finite() && f > 0.0 && f <= 64.0 {
        f
    } else {
        1.0
    }
}

/// Load and usage, measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostStats {
    /// Busy share of all CPUs since the previous report, 0..=1.
    pub cpu_utilisation: f64,
    /// Share stolen by an outer hypervisor, 0..=1 (nested or cloud hosts).
    pub cpu_steal: f64,
    pub load_1m: f64,
    pub load_5m: f64,
    pub load_15m: f64,
    pub memory_total: Bytes,
    pub memory_available: Bytes,
    pub swap_total: Bytes,
    pub swap_free: Bytes,
    pub interfaces: Vec<InterfaceStats>,
}

/// One interface's traffic rates since the previous report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InterfaceStats {
    pub name: String,
    pub rx_bytes_per_s: f64,
    pub tx_bytes_per_s: f64,
    pub rx_packets_per_s: f64,
    pub tx_packets_per_s: f64,
    /// Errors plus drops since the previous report, both directions.
    pub errors: u64,
    /// Cumulative counters, for plotting without gaps across agent restarts.
    pub rx_bytes_total: u64,
    pub tx_bytes_total: u64,
}

/// Counters from /proc/stat's first line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct CpuTimes {
    total: u64,
    idle: u64,
    steal: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct NetCounters {
    rx_bytes: u64,
    rx_packets: u64,
    rx_bad: u64,
    tx_bytes: u64,
    tx_packets: u64,
    tx_bad: u64,
}

/// Keeps the previous counters so each sample is a delta.
#[derive(Debug)]
pub struct StatsSampler {
    stat: PathBuf,
    meminfo: PathBuf,
    loadavg: PathBuf,
    netdev: PathBuf,
    prev_cpu: Option<CpuTimes>,
    prev_net: HashMap<String, NetCounters>,
    prev_at: Instant,
}

impl StatsSampler {
    /// Takes a first sample so the first report already has rates.
    pub fn new(proc_root: &Path) -> Self {
        let mut s = StatsSampler {
            stat: proc_root.join("stat"),
            meminfo: proc_root.join("meminfo"),
            loadavg: proc_root.join("loadavg"),
            netdev: proc_root.join("net/dev"),
            prev_cpu: None,
            prev_net: HashMap::new(),
            prev_at: Instant::now(),
        };
        s.prev_cpu = read_cpu_times(&s.stat);
        s.prev_net = read_net_dev(&s.netdev);
        s
    }

    /// One sample. Unreadable files leave their fields at zero (logged at debug).
    pub fn sample(&mut self, skip_prefixes: &[String]) -> HostStats {
        let now = Instant::now();
        let secs = now.duration_since(self.prev_at).as_secs_f64();
        self.prev_at = now;
        let mut st = HostStats::default();
        if let Some(cpu) = read_cpu_times(&self.stat) {
            if let Some(prev) = self.prev_cpu {
                (st.cpu_utilisation, st.cpu_steal) = cpu_delta(prev, cpu);
            }
            self.prev_cpu = Some(cpu);
        }
        read_loadavg(&self.loadavg, &mut st);
        read_meminfo(&self.meminfo, &mut st);
        let net = read_net_dev(&self.netdev);
        st.interfaces = net_rates(&self.prev_net, &net, secs, skip_prefixes);
        self.prev_net = net;
        st
    }
}

fn read_file(path: &Path) -> Option<String> {
    match fs::read_to_string(path) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::debug!(path = %path.display(), "host stats: {e}");
            None
        }
    }
}

fn read_cpu_times(path: &Path) -> Option<CpuTimes> {
    parse_cpu_times(&read_file(path)?)
}

/// "cpu  user nice system idle iowait irq softirq steal guest guest_nice".
/// guest time is already inside user, so it is not added again.
fn parse_cpu_times(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    Some(CpuTimes {
        total: (0..8).map(get).sum(),
        idle: get(3) + get(4),
        steal: get(7),
    })
}

fn cpu_delta(prev: CpuTimes, now: CpuTimes) -> (f64, f64) {
    let total = now.total.saturating_sub(prev.total);
    if total == 0 {
        return (0.0, 0.0);
    }
    let idle = now.idle.saturating_sub(prev.idle);
    let steal = now.steal.saturating_sub(prev.steal);
    let busy = total.saturating_sub(idle) as f64 / total as f64;
    (
        busy.clamp(0.0, 1.0),
        (steal as f64 / total as f64).clamp(0.0, 1.0),
    )
}

fn read_loadavg(path: &Path, st: &mut HostStats) {
    let Some(s) = read_file(path) else { return };
    let mut f = s
        .split_whitespace()
        .map(|x| x.parse::<f64>().unwrap_or(0.0));
    st.load_1m = f.next().unwrap_or(0.0);
    st.load_5m = f.next().unwrap_or(0.0);
    st.load_15m = f.next().unwrap_or(0.0);
}

fn read_meminfo(path: &Path, st: &mut HostStats) {
    let Some(s) = read_file(path) else { return };
    for line in s.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let kib = rest.split_whitespace().next().and_then(|n| n.parse().ok());
        let Some(kib) = kib else { continue };
        match key {
            "MemTotal" => st.memory_total = Bytes::from_kib(kib),
            "MemAvailable" => st.memory_available = Bytes::from_kib(kib),
            "SwapTotal" => st.swap_total = Bytes::from_kib(kib),
            "SwapFree" => st.swap_free = Bytes::from_kib(kib),
            _ => {}
        }
    }
}

/// MemTotal from `<proc>/meminfo`.
pub fn memory_total(proc_root: &Path) -> Bytes {
    let mut st = HostStats::default();
    read_meminfo(&proc_root.join("meminfo"), &mut st);
    st.memory_total
}

fn read_net_dev(path: &Path) -> HashMap<String, NetCounters> {
    read_file(path)
        .map(|s| parse_net_dev(&s))
        .unwrap_or_default()
}

/// /proc/net/dev: two header lines, then "name: 16 counters".
fn parse_net_dev(s: &str) -> HashMap<String, NetCounters> {
    let mut out = HashMap::new();
    for line in s.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let v: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if v.len() < 16 {
            continue;
        }
        out.insert(
            name.trim().to_string(),
            NetCounters {
                rx_bytes: v[0],
                rx_packets: v[1],
                rx_bad: v[2] + v[3],
                tx_bytes: v[8],
                tx_packets: v[9],
                tx_bad: v[10] + v[11],
            },
        );
    }
    out
}

fn net_rates(
    prev: &HashMap<String, NetCounters>,
    now: &HashMap<String, NetCounters>,
    secs: f64,
    skip_prefixes: &[String],
) -> Vec<InterfaceStats> {
    let mut out: Vec<InterfaceStats> = now
        .iter()
        .filter(|(name, _)| !skip_prefixes.iter().any(|p| name.starts_with(p.as_str())))
        .map(|(name, c)| {
            // A new interface, or counters that went backwards (driver reset),
            // give no rate this time rather than a huge bogus one.
            let p = prev
                .get(name)
                .filter(|p| c.rx_bytes >= p.rx_bytes && c.tx_bytes >= p.tx_bytes);
            let rate = |now: u64, before: Option<u64>| match before {
                Some(b) if secs > 0.0 => now.saturating_sub(b) as f64 / secs,
                _ => 0.0,
            };
            InterfaceStats {
                name: name.clone(),
                rx_bytes_per_s: rate(c.rx_bytes, p.map(|p| p.rx_bytes)),
                tx_bytes_per_s: rate(c.tx_bytes, p.map(|p| p.tx_bytes)),
                rx_packets_per_s: rate(c.rx_packets, p.map(|p| p.rx_packets)),
                tx_packets_per_s: rate(c.tx_packets, p.map(|p| p.tx_packets)),
                errors: p.map_or(0, |p| {
                    (c.rx_bad + c.tx_bad).saturating_sub(p.rx_bad + p.tx_bad)
                }),
                rx_bytes_total: c.rx_bytes,
                tx_bytes_total: c.tx_bytes,
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_utilisation_from_deltas() {
        let a = parse_cpu_times("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3").unwrap();
        let b = parse_cpu_times("cpu  200 0 200 1200 100 0 0 100 0 0\n").unwrap();
        let (busy, steal) = cpu_delta(a, b);
        // total 800, idle+iowait 500: busy 300/800; steal 100/800.
        assert!((busy - 0.375).abs() < 1e-9, "{busy}");
        assert!((steal - 0.125).abs() < 1e-9, "{steal}");
        assert_eq!(cpu_delta(b, b), (0.0, 0.0));
    }

    #[test]
    fn net_dev_rates_and_resets() {
        let h = "Inter-|   Receive\n face |bytes\n";
        let a = parse_net_dev(&format!("{h}  eth0: 1000 10 0 0 0 0 0 0 5000 50 0 0 0 0 0 0\n    lo: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n"));
        let b = parse_net_dev(&format!("{h}  eth0: 3000 30 1 1 0 0 0 0 5500 55 0 0 0 0 0 0\n  vnet3: 9 9 0 0 0 0 0 0 9 9 0 0 0 0 0 0\n"));
        let skip = CapacityConfig::default().skip_interface_prefixes;
        let r = net_rates(&a, &b, 2.0, &skip);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].rx_bytes_per_s, 1000.0);
        assert_eq!(r[0].tx_packets_per_s, 2.5);
        assert_eq!(r[0].errors, 2);
        let reset = net_rates(&b, &a, 2.0, &skip);
        assert_eq!(reset[0].rx_bytes_per_s, 0.0);
    }

    #[test]
    fn capacity_with_reservation_and_overcommit() {
        let cfg = CapacityConfig {
            reserved_memory_mib: 2048,
            reserved_cpus: 2,
            cpu_overcommit: 4.0,
            ..Default::default()
        };
        let alloc = Allocated {
            vcpus: 10,
            memory: MiB(4096),
            vms: 2,
        };
        let c = Capacity::compute(8, MiB(16384), MiB(9000), &alloc, &cfg);
        assert_eq!(c.vcpu_total, 24);
        assert_eq!(c.vcpu_free, 14);
        assert_eq!(c.memory_offered, MiB(14336));
        assert_eq!(c.memory_free, MiB(10240));
        assert_eq!(c.memory_available_for_vms, Some(MiB(9000 - 2048)));
        let bad = CapacityConfig {
            cpu_overcommit: f64::NAN,
            ..cfg
        };
        assert_eq!(
            Capacity::compute(8, MiB(16384), MiB(0), &alloc, &bad).vcpu_total,
            6
        );
    }
}
