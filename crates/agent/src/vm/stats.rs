//! GetVmStats: per-VM CPU, memory, disk and NIC figures for many collectors,
//! with no stuck QEMU ever delaying a round.
//!
//! Owns three pieces of state: the previous sample of every (collector, VM)
//! pair (so two collectors never corrupt each other's CPU percent, the cause
//! of cloudstack-agent's 200 % readings), the domains quarantined as
//! unresponsive, and a dedicated libvirt connection for stats (a hung call
//! there costs stats one timeout, never the lifecycle commands). libvirt
//! calls live in hypervisor/stats.rs; this file must not call libvirt itself.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use csagent_core::error::CommandError;
use csagent_core::sync::lock;
use csagent_libvirt::stats::{self, DomainStats, Selection};
use csagent_libvirt::{HvError, Hypervisor};

/// A bulk round that takes longer than this is stuck on a QEMU.
const STATS_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an unresponsive domain is left out; doubled on each repeat.
const QUARANTINE_FIRST: Duration = Duration::from_secs(30);
const QUARANTINE_MAX: Duration = Duration::from_secs(300);
/// Previous samples kept over all collectors; samples older than
/// `SAMPLE_TTL` are dropped first when the store is full.
const SAMPLE_CAP: usize = 20_000;
const SAMPLE_TTL: Duration = Duration::from_secs(600);
/// The collector name for requests that give none.
pub const DEFAULT_COLLECTOR: &str = "default";

/// One VM's figures for one collector.
#[derive(Clone, Debug, PartialEq)]
pub struct VmStat {
    pub raw: DomainStats,
    pub unresponsive: bool,
    pub cpu: CpuFigure,
}

/// CPU percent of a VM since the collector's previous sample.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuFigure {
    /// 0..=100 over all the VM's vCPUs; None on a first sample.
    pub percent: Option<f64>,
    /// No usable previous sample (new pair, VM restarted, or evicted).
    pub first_sample: bool,
    pub interval: Duration,
}

/// CPU busy share of `vcpus` vCPUs over `wall`, 0..=100. QEMU's own threads
/// count in cpu.time, so the raw figure can pass 100: it is capped.
pub fn cpu_percent(cpu_delta_ns: u64, wall: Duration, vcpus: u32) -> Option<f64> {
    let wall_ns = wall.as_nanos() as f64;
    if wall_ns < 1e6 || vcpus == 0 {
        return None; // too short an interval to mean anything
    }
    let pct = cpu_delta_ns as f64 * 100.0 / (wall_ns * f64::from(vcpus));
    Some(pct.clamp(0.0, 100.0))
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    cpu_ns: u64,
    at: Instant,
}

/// Previous samples by (collector, VM UUID), bounded in size.
#[derive(Debug)]
pub struct SampleStore {
    map: HashMap<(String, String), Sample>,
    cap: usize,
}

impl Default for SampleStore {
    fn default() -> Self {
        SampleStore::with_capacity(SAMPLE_CAP)
    }
}

impl SampleStore {
    pub fn with_capacity(cap: usize) -> SampleStore {
        SampleStore {
            map: HashMap::new(),
            cap: cap.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Records `cpu_ns` at `at` for the pair and returns the figure against
    /// the pair's previous sample.
    pub fn observe(
        &mut self,
        collector: &str,
        vm: &str,
        cpu_ns: u64,
        vcpus: u32,
        at: Instant,
    ) -> CpuFigure {
        let key = (collector.to_string(), vm.to_string());
        let prev = self.map.get(&key).copied();
        let fig = match prev {
            // cpu.time going backwards means the VM restarted.
            Some(p) if cpu_ns >= p.cpu_ns && at > p.at => {
                let interval = at - p.at;
                CpuFigure {
                    percent: cpu_percent(cpu_ns - p.cpu_ns, interval, vcpus),
                    first_sample: false,
                    interval,
                }
            }
            _ => CpuFigure {
                first_sample: true,
                ..Default::default()
            },
        };
        if !self.map.contains_key(&key) && self.map.len() >= self.cap {
            self.evict(at);
        }
        self.map.insert(key, Sample { cpu_ns, at });
        fig
    }

    /// Drops stale samples; when none is stale, the oldest one.
    fn evict(&mut self, now: Instant) {
        self.map
            .retain(|_, s| now.saturating_duration_since(s.at) < SAMPLE_TTL);
        if self.map.len() >= self.cap {
            let oldest = self
                .map
                .iter()
                .min_by_key(|(_, s)| s.at)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.map.remove(&k);
            }
        }
    }
}

#[derive(Clone, Debug)]
struct Quarantined {
    name: String,
    until: Instant,
    period: Duration,
}

/// The agent's stats service: shared by every GetVmStats command.
pub struct VmStatsService {
    samples: Mutex<SampleStore>,
    quarantine: Mutex<HashMap<String, Quarantined>>,
    /// The dedicated stats connection; replaced when a call hangs.
    conn: Mutex<Option<Hypervisor>>,
    timeout: Duration,
}

impl Default for VmStatsService {
    fn default() -> Self {
        VmStatsService::new(STATS_TIMEOUT)
    }
}

/// vCPU counts from the host snapshot (cached per domain, no QEMU job):
/// libvirt's vcpu stats group would ask every QEMU for per-vCPU figures
/// nobody reads. Unknown stays None, and gives no CPU percent rather than a
/// wrong one.
async fn vcpus_from_snapshot(h: &Hypervisor, records: &mut [DomainStats]) {
    if records.iter().all(|r| r.vcpus.is_some()) {
        return;
    }
    let vms = match h.list_vms().await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "no vCPU counts for VM stats; CPU percent left out this round");
            return;
        }
    };
    let counts: HashMap<&str, u32> = vms.iter().map(|v| (v.uuid.as_str(), v.vcpus)).collect();
    for r in records.iter_mut().filter(|r| r.vcpus.is_none()) {
        r.vcpus = counts.get(r.uuid.as_str()).copied().filter(|&n| n > 0);
    }
}

impl VmStatsService {
    pub fn new(timeout: Duration) -> VmStatsService {
        VmStatsService {
            samples: Mutex::new(SampleStore::default()),
            quarantine: Mutex::new(HashMap::new()),
            conn: Mutex::new(None),
            timeout,
        }
    }

    /// One round for `collector` (empty = "default"), all running VMs or
    /// only `vms`.
    pub async fn collect(
        &self,
        h: &Hypervisor,
        collector: &str,
        vms: &[uuid::Uuid],
    ) -> Result<Vec<VmStat>, CommandError> {
        let collector = if collector.is_empty() {
            DEFAULT_COLLECTOR
        } else {
            collector
        };
        let now = Instant::now();
        let skipped = self.quarantined(now);
        let sel = selection(vms, &skipped);
        let (mut records, at, retried) = self.round(h, sel).await?;
        vcpus_from_snapshot(h, &mut records).await;
        self.note(&records, at, retried);
        let mut out = self.with_cpu(collector, records, at);
        out.extend(self.left_out(&skipped, vms));
        Ok(out)
    }

    /// The bulk call on the stats connection. A call that hangs leaves its
    /// connection thread behind (it ends when QEMU answers or dies) and the
    /// round is retried once on a fresh connection, where the hung domain's
    /// job is still held and NOWAIT skips it.
    async fn round(
        &self,
        h: &Hypervisor,
        sel: Selection,
    ) -> Result<(Vec<DomainStats>, Instant, bool), CommandError> {
        let conn = self.conn(h);
        let retry_sel = sel.clone();
        let first = conn
            .call("get_all_domain_stats", move |c| timed(c, &sel))
            .await;
        match first {
            Ok((r, at)) => Ok((r, at, false)),
            Err(HvError::Timeout { .. }) => {
                tracing::warn!(
                    "VM stats call hung on a QEMU that does not answer; retrying on a new connection without waiting on busy domains"
                );
                lock(&self.conn).take();
                let (records, at) = self
                    .conn(h)
                    .call("get_all_domain_stats", move |c| timed(c, &retry_sel))
                    .await
                    .map_err(hv)?;
                Ok((records, at, true))
            }
            Err(e) => Err(hv(e)),
        }
    }

    fn conn(&self, h: &Hypervisor) -> Hypervisor {
        lock(&self.conn)
            .get_or_insert_with(|| Hypervisor::start(h.uri(), self.timeout))
            .clone()
    }

    fn quarantined(&self, now: Instant) -> HashMap<String, String> {
        lock(&self.quarantine)
            .iter()
            .filter(|(_, q)| q.until > now)
            .map(|(u, q)| (u.clone(), q.name.clone()))
            .collect()
    }

    /// Updates the quarantine after a round. A domain that answered fully
    /// leaves it. One that did not answer after a hung call (`retried`), or
    /// again after its quarantine ran out, is left out of the next rounds,
    /// each time twice as long. One merely busy once stays in the rounds.
    fn note(&self, records: &[DomainStats], at: Instant, retried: bool) {
        let mut q = lock(&self.quarantine);
        for r in records {
            if r.complete {
                q.remove(&r.uuid);
                continue;
            }
            let prev = q.get(&r.uuid).map(|p| p.period);
            if !retried && prev.is_none() {
                continue;
            }
            let period = prev.map_or(QUARANTINE_FIRST, |p| (p * 2).min(QUARANTINE_MAX));
            tracing::warn!(vm = %r.uuid, period_s = period.as_secs(), "VM does not answer; left out of stats for a while");
            q.insert(
                r.uuid.clone(),
                Quarantined {
                    name: r.name.clone(),
                    until: at + period,
                    period,
                },
            );
        }
        // Forget domains that vanished long ago.
        q.retain(|_, e| e.until + QUARANTINE_MAX > at);
    }

    fn with_cpu(&self, collector: &str, records: Vec<DomainStats>, at: Instant) -> Vec<VmStat> {
        let mut samples = lock(&self.samples);
        records
            .into_iter()
            .map(|raw| {
                let cpu = match raw.cpu_time_ns {
                    Some(ns) if raw.state == stats::STATE_RUNNING => {
                        samples.observe(collector, &raw.uuid, ns, raw.vcpus.unwrap_or(0), at)
                    }
                    _ => CpuFigure {
                        first_sample: true,
                        ..Default::default()
                    },
                };
                VmStat {
                    unresponsive: !raw.complete,
                    raw,
                    cpu,
                }
            })
            .collect()
    }

    /// Quarantined domains are still reported, as unresponsive.
    fn left_out(&self, skipped: &HashMap<String, String>, vms: &[uuid::Uuid]) -> Vec<VmStat> {
        skipped
            .iter()
            .filter(|(u, _)| vms.is_empty() || vms.iter().any(|v| &v.to_string() == *u))
            .map(|(uuid, name)| VmStat {
                raw: DomainStats {
                    uuid: uuid.clone(),
                    name: name.clone(),
                    state: stats::STATE_RUNNING,
                    ..Default::default()
                },
                unresponsive: true,
                cpu: CpuFigure {
                    first_sample: true,
                    ..Default::default()
                },
            })
            .collect()
    }

    /// Number of (collector, VM) samples held (for tests and metrics).
    pub fn sample_count(&self) -> usize {
        lock(&self.samples).len()
    }
}

fn selection(vms: &[uuid::Uuid], skipped: &HashMap<String, String>) -> Selection {
    if !vms.is_empty() {
        let keep = vms
            .iter()
            .filter(|v| !skipped.contains_key(&v.to_string()))
            .copied()
            .collect();
        Selection::Only(keep)
    } else if skipped.is_empty() {
        Selection::AllRunning
    } else {
        Selection::RunningExcept(skipped.keys().cloned().collect::<HashSet<_>>())
    }
}

/// The round and the instant it was taken, measured on the libvirt thread so
/// that queueing before the call does not stretch the interval.
fn timed(
    c: &virt::connect::Connect,
    sel: &Selection,
) -> Result<(Vec<DomainStats>, Instant), HvError> {
    let r = stats::collect(c, sel)?;
    Ok((r, Instant::now()))
}

fn hv(e: HvError) -> CommandError {
    CommandError::new(e.kind(), format!("VM stats: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_is_normalised_and_capped() {
        let s = Duration::from_secs(1);
        assert_eq!(cpu_percent(1_000_000_000, s, 1), Some(100.0));
        assert_eq!(cpu_percent(1_000_000_000, s, 4), Some(25.0));
        // QEMU's I/O threads push cpu.time past vcpus x wall: capped.
        assert_eq!(cpu_percent(3_000_000_000, s, 2), Some(100.0));
        assert_eq!(cpu_percent(5, Duration::from_micros(10), 1), None);
        assert_eq!(cpu_percent(5, s, 0), None);
    }

    #[test]
    fn collectors_do_not_disturb_each_other() {
        let mut st = SampleStore::default();
        let t0 = Instant::now();
        let sec = Duration::from_secs(1);
        assert!(st.observe("a", "vm", 0, 2, t0).first_sample);
        assert!(st.observe("b", "vm", 0, 2, t0).first_sample);
        // "a" polls every second, "b" every two: each against its own past.
        let a1 = st.observe("a", "vm", 1_000_000_000, 2, t0 + sec);
        let a2 = st.observe("a", "vm", 2_000_000_000, 2, t0 + 2 * sec);
        let b1 = st.observe("b", "vm", 2_000_000_000, 2, t0 + 2 * sec);
        assert_eq!(a1.percent, Some(50.0));
        assert_eq!(a2.percent, Some(50.0));
        assert_eq!(b1.percent, Some(50.0));
        assert_eq!(b1.interval, 2 * sec);
    }

    #[test]
    fn restart_is_a_first_sample() {
        let mut st = SampleStore::default();
        let t0 = Instant::now();
        st.observe("a", "vm", 5_000, 1, t0);
        let f = st.observe("a", "vm", 10, 1, t0 + Duration::from_secs(1));
        assert!(f.first_sample && f.percent.is_none());
    }

    #[test]
    fn store_is_bounded() {
        let mut st = SampleStore::with_capacity(3);
        let t0 = Instant::now();
        for i in 0..10u32 {
            let at = t0 + Duration::from_millis(u64::from(i));
            st.observe(&format!("c{i}"), "vm", 1, 1, at);
        }
        assert_eq!(st.len(), 3);
        // The newest pairs survived.
        let f = st.observe("c9", "vm", 2, 1, t0 + Duration::from_secs(1));
        assert!(!f.first_sample);
    }
}
