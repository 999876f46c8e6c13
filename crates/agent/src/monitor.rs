//! The agent's live view of its host, for the link.
//!
//! Owns when host data is collected and in which thread: sysfs reads (slow
//! i2c sensor buses can take milliseconds) run on the blocking pool, health is
//! refreshed in the background so a heartbeat only reads the latest value,
//! and reports are collected when the session asks for one. Hands out the
//! host crate's own types (the link converts them at its edge); it never
//! refuses or changes anything.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use csagent_core::error::{CommandError, ErrorKind};
use csagent_core::sync::lock;
use csagent_host::{self as host, Allocated, Bytes, HostCollector, MiB, PoolUsage};
use csagent_libvirt::{HvError, Hypervisor, PowerState, VmInfo};
use csagent_storage::{CallOpts, PoolStatus, Storage};

/// A report must not wait long on libvirt; pools are left out instead.
const POOL_LIST_TIMEOUT: Duration = Duration::from_secs(5);

pub struct HostMonitor {
    collector: Arc<Mutex<HostCollector>>,
    storage: Arc<Storage>,
    health: watch::Receiver<host::HostHealth>,
    facts: host::HostFacts,
}

/// A full host report: the host's figures, how many VMs its allocation
/// counts, and the storage pools as libvirt lists them.
pub struct Report {
    pub host: host::HostReport,
    pub vms: u32,
    pub pools: Vec<PoolStatus>,
}

impl HostMonitor {
    /// Collects facts (with libvirt's capabilities when libvirt answers) and
    /// starts refreshing health every `every` until `stop`.
    pub async fn start(
        collector: HostCollector,
        hv: &Hypervisor,
        storage: Arc<Storage>,
        every: Duration,
        stop: CancellationToken,
    ) -> HostMonitor {
        let collector = Arc::new(Mutex::new(collector));
        let mut facts = blocking(&collector, |c| c.facts())
            .await
            .unwrap_or_default();
        match libvirt_facts(hv).await {
            Ok(l) => facts.libvirt = Some(l),
            Err(e) => tracing::warn!(error = %e, "registering without libvirt's capabilities"),
        }
        let first = blocking(&collector, |c| c.health())
            .await
            .unwrap_or_default();
        let (tx, rx) = watch::channel(first);
        tokio::spawn(refresh_health(Arc::clone(&collector), tx, every, stop));
        HostMonitor {
            collector,
            storage,
            health: rx,
            facts,
        }
    }

    pub fn facts(&self) -> host::HostFacts {
        self.facts.clone()
    }

    /// The latest health, without waiting.
    pub fn health(&self) -> host::HostHealth {
        self.health.borrow().clone()
    }

    /// The host address a console viewer should use when QEMU listens on
    /// every address: the first global IPv4 address in the host facts (IPv6
    /// when there is none), skipping loopback and link-local. None when the
    /// facts have none.
    pub fn address(&self) -> Option<String> {
        first_routable(&self.facts.interfaces)
    }

    /// A full report; allocations are summed from the VM snapshot, pools
    /// come from one libvirt listing.
    pub async fn report(&self, vms: &[VmInfo]) -> Report {
        let allocated = allocated(vms);
        let n = allocated.vms;
        let pools = self.pools().await;
        let usage: Vec<PoolUsage> = pools.iter().map(pool_usage).collect();
        let host = blocking(&self.collector, move |c| c.report(&allocated, &usage))
            .await
            .unwrap_or_default();
        Report {
            host,
            vms: n,
            pools,
        }
    }

    /// Host admission for a new VM: refused when the host is critical or the
    /// VM does not fit, with the reason ("Insufficient capacity: ...").
    pub async fn admit(&self, req: host::Request, vms: &[VmInfo]) -> Result<(), CommandError> {
        let allocated = allocated(vms);
        let verdict = blocking(&self.collector, move |c| {
            let report = c.report(&allocated, &[]);
            host::admission::check(&report, &req, &c.config().health)
        })
        .await
        .ok_or_else(|| CommandError::new(ErrorKind::Internal, "host admission could not run"))?;
        verdict.map_err(|e| {
            let kind = if e.is_capacity() {
                ErrorKind::InsufficientCapacity
            } else if matches!(e, host::AdmissionError::InvalidRequest(_)) {
                ErrorKind::InvalidArgument
            } else {
                ErrorKind::HostUnhealthy
            };
            CommandError::new(kind, e.to_string())
        })
    }

    async fn pools(&self) -> Vec<PoolStatus> {
        let opts = CallOpts::new(CancellationToken::new()).with_timeout(POOL_LIST_TIMEOUT);
        match self.storage.list_pools(opts).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "host report without pool status");
                Vec::new()
            }
        }
    }

    /// Feeds the clock skew measured from a heartbeat and its ack.
    pub fn record_skew(&self, sent_ms: i64, plane_ms: i64, received_ms: i64) {
        match host::clock::skew(sent_ms, plane_ms, received_ms) {
            Ok(s) => lock(&self.collector).record_skew(s),
            Err(e) => tracing::debug!(error = %e, "skew sample ignored"),
        }
    }
}

async fn blocking<R: Send + 'static>(
    c: &Arc<Mutex<HostCollector>>,
    f: impl FnOnce(&mut HostCollector) -> R + Send + 'static,
) -> Option<R> {
    let c = Arc::clone(c);
    tokio::task::spawn_blocking(move || f(&mut lock(&c)))
        .await
        .ok()
}

async fn refresh_health(
    c: Arc<Mutex<HostCollector>>,
    tx: watch::Sender<host::HostHealth>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Some(h) = blocking(&c, |c| c.health()).await {
            tx.send_replace(h);
        }
    }
}

fn first_routable(interfaces: &[host::facts::InterfaceAddrs]) -> Option<String> {
    let addrs: Vec<std::net::IpAddr> = interfaces
        .iter()
        .flat_map(|i| i.addresses.iter())
        .filter_map(|cidr| cidr.split('/').next()?.parse().ok())
        .filter(|ip: &std::net::IpAddr| match ip {
            std::net::IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local(),
            std::net::IpAddr::V6(v6) => !v6.is_loopback() && (v6.segments()[0] & 0xffc0) != 0xfe80,
        })
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .map(|a| a.to_string())
}

fn pool_usage(p: &PoolStatus) -> PoolUsage {
    PoolUsage {
        name: p.name.clone(),
        capacity: Bytes(p.capacity.0),
        allocation: Bytes(p.allocation.0),
        available: Bytes(p.available.0),
    }
}

/// What running and paused VMs hold of the host.
fn allocated(vms: &[VmInfo]) -> Allocated {
    let active: Vec<_> = vms
        .iter()
        .filter(|v| {
            matches!(
                v.state,
                PowerState::Running | PowerState::Paused | PowerState::Stopping
            )
        })
        .collect();
    Allocated {
        vcpus: active.iter().map(|v| v.vcpus).sum(),
        memory: MiB(active.iter().map(|v| v.memory_kib / 1024).sum()),
        vms: u32::try_from(active.len()).unwrap_or(u32::MAX),
    }
}

async fn libvirt_facts(hv: &Hypervisor) -> Result<host::libvirt_caps::LibvirtFacts, String> {
    let (caps, dom, lib, hyp) = hv
        .call("capabilities", |c| {
            let err = |call| move |e| HvError::libvirt(call, e);
            let caps = c.capabilities().map_err(err("capabilities"))?;
            let dom = c
                .domain_capabilities(None, None, None, None, 0)
                .map_err(err("domain_capabilities"))?;
            let lib = c.lib_version().map_err(err("lib_version"))?;
            let hyp = c.hyp_version().map_err(err("hyp_version"))?;
            Ok((caps, dom, lib, hyp))
        })
        .await
        .map_err(|e| e.to_string())?;
    host::libvirt_caps::parse(&caps, &dom, u64::from(lib), u64::from(hyp))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use csagent_host::facts::InterfaceAddrs;

    #[test]
    fn console_host_skips_loopback_and_link_local() {
        let interfaces = vec![
            InterfaceAddrs {
                name: "lo".into(),
                addresses: vec!["127.0.0.1/8".into(), "::1/128".into()],
                ..Default::default()
            },
            InterfaceAddrs {
                name: "eth0".into(),
                addresses: vec!["fe80::1/64".into(), "192.0.2.5/24".into()],
                ..Default::default()
            },
        ];
        assert_eq!(first_routable(&interfaces).as_deref(), Some("192.0.2.5"));
        assert_eq!(first_routable(&[]), None);
    }
}
