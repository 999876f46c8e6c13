//! Command handlers: what each command does, on the crate's own types.
//!
//! Owns the `Request`/`Reply` vocabulary between dispatch and the capability
//! modules (hypervisor, and later vm/, storage/, network/). A handler runs
//! inside dispatch's limits (deadline, per-VM lock, worker permit) and must
//! stop promptly when `ctx.cancel` fires. Adding a command: a `Request`
//! variant, a `Reply` variant, one arm in `handle`.

pub mod ha;
mod migration;
pub mod network;
pub mod storage;

use std::sync::Arc;
use std::time::Duration;

use crate::ctx::Ctx;

use csagent_core::error::{CommandError, ErrorKind};
use csagent_libvirt::{Hypervisor, VmInfo};

#[derive(Debug)]
pub enum Request {
    Noop,
    Echo {
        payload: String,
        delay: Duration,
    },
    GetVmState(uuid::Uuid),
    /// `page_size` VMs (0: all) with UUIDs after `after`, in UUID order.
    ListVms {
        page_size: usize,
        after: Option<uuid::Uuid>,
    },
    GetHostFacts,
    StartVm(Box<crate::vm::prepare::StartRequest>),
    StopVm {
        vm: uuid::Uuid,
        force: bool,
        timeout: Duration,
    },
    Lifecycle(uuid::Uuid, crate::vm::Simple),
    DestroyVm(uuid::Uuid),
    Storage(storage::StorageOp),
    Network(network::NetworkOp),
    ScaleVm(crate::vm::scale::ScaleRequest),
    AttachDevice(uuid::Uuid, crate::vm::devices::Attach),
    DetachDevice(uuid::Uuid, crate::vm::devices::Detach),
    GetVmStats {
        collector: String,
        vms: Vec<uuid::Uuid>,
    },
    GetConsole(uuid::Uuid),
    PrepareMigration(crate::vm::migrate::PrepareRequest),
    MigrateVm(Box<crate::vm::migrate::MigrateRequest>),
    CheckHost(ha::CheckRequest),
}

impl Request {
    /// A command whose clean-up must run when it is cancelled or runs out
    /// of time: dispatch lets it see `ctx.cancel` and `ctx.deadline` itself
    /// instead of dropping it. Dropping a migration would leave libvirt's
    /// job running on after the plane was told it stopped.
    pub fn stops_itself(&self) -> bool {
        // StartVm: its undo (volumes, bridges) lives in the handler, and
        // dropping it mid-prepare would leave them behind.
        matches!(self, Request::MigrateVm(_) | Request::StartVm(_))
    }

    pub fn name(&self) -> &'static str {
        match self {
            Request::Noop => "noop",
            Request::Echo { .. } => "echo",
            Request::GetVmState(_) => "get_vm_state",
            Request::ListVms { .. } => "list_vms",
            Request::GetHostFacts => "get_host_facts",
            Request::StartVm(_) => "start_vm",
            Request::StopVm { .. } => "stop_vm",
            Request::Lifecycle(..) => "vm_lifecycle",
            Request::DestroyVm(_) => "destroy_vm",
            Request::Storage(_) => "storage",
            Request::Network(_) => "network",
            Request::ScaleVm(_) => "scale_vm",
            Request::AttachDevice(..) => "attach_device",
            Request::DetachDevice(..) => "detach_device",
            Request::GetVmStats { .. } => "get_vm_stats",
            Request::GetConsole(_) => "get_console",
            Request::PrepareMigration(_) => "prepare_migration",
            Request::MigrateVm(_) => "migrate_vm",
            Request::CheckHost(_) => "check_host",
        }
    }
}

#[derive(Debug)]
pub enum Reply {
    Noop,
    Echo(String),
    VmStatus(VmInfo),
    /// One page of VMs and the UUID the next page starts after (None: last).
    VmList(Vec<VmInfo>, Option<uuid::Uuid>),
    HostFacts(Box<csagent_host::HostFacts>),
    Started(VmInfo, Option<u16>, crate::vm::prepare::Prepared),
    Destroyed,
    Volume(csagent_storage::VolumeInfo),
    Snapshot(csagent_storage::SnapshotInfo),
    Snapshots(Vec<csagent_storage::SnapshotInfo>),
    Pool(csagent_storage::PoolStatus),
    Pools(Vec<csagent_storage::PoolStatus>),
    StorageDone,
    Bridge(csagent_network::IfName),
    NetworkReleased(bool),
    SecurityGroupApplied(bool),
    SecurityGroupRemoved,
    Counters(csagent_network::TrafficReport),
    Scaled(crate::vm::scale::Scaled),
    Device(uuid::Uuid, crate::vm::devices::DeviceChange),
    /// The VMs' figures and when they were taken (Unix ms).
    VmStats(Vec<crate::vm::stats::VmStat>, i64),
    Console(uuid::Uuid, crate::vm::console::Console),
    /// The target is ready: the VM, this host's migration address and
    /// whether it expects TLS.
    MigrationPrepared(uuid::Uuid, String, bool),
    Migrated(crate::vm::migrate::Migrated),
    /// A neighbour's verdict on a silent host.
    HostChecked(uuid::Uuid, csagent_ha::Finding),
}

/// The page of `vms` after `after`, in UUID order, and where the next
/// page starts.
fn page_of(mut vms: Vec<VmInfo>, page_size: usize, after: Option<uuid::Uuid>) -> Reply {
    let key = |v: &VmInfo| uuid::Uuid::parse_str(&v.uuid).unwrap_or_default();
    vms.sort_by_key(key);
    if let Some(a) = after {
        vms.retain(|v| key(v) > a);
    }
    if page_size == 0 || vms.len() <= page_size {
        return Reply::VmList(vms, None);
    }
    vms.truncate(page_size);
    let next = vms.last().map(key);
    Reply::VmList(vms, next)
}

pub struct Handlers {
    pub hypervisor: Hypervisor,
    pub monitor: Arc<crate::monitor::HostMonitor>,
    pub storage: Arc<csagent_storage::Storage>,
    /// None when netlink could not be opened (the agent still runs VMs).
    pub network: Option<csagent_network::Network>,
    /// Previous samples per collector and unresponsive VMs, for GetVmStats.
    pub vm_stats: Arc<crate::vm::stats::VmStatsService>,
    pub migration: crate::config::MigrationSection,
    /// This host's storage heartbeat; its config answers CheckHost's defaults.
    pub ha: Arc<csagent_ha::Beat>,
    /// `[guest] path_roots`: where a VM's host files may be, besides pools.
    pub path_roots: Vec<std::path::PathBuf>,
    /// `[guest]`: what StartVm fills in where the spec says nothing.
    pub guest: crate::vm::defaults::GuestDefaults,
}

impl Handlers {
    /// Runs one command. Cheap commands run inline; every other one runs
    /// in a future of its own on the heap. Without that box each command's
    /// task, queued or running, would be as large as the largest handler
    /// (StartVm: tens of KiB), and a burst of queued no-ops would cost the
    /// host as much memory as a burst of VM starts.
    pub async fn handle(&self, req: Request, ctx: &Ctx) -> Result<Reply, CommandError> {
        match req {
            Request::Noop => Ok(Reply::Noop),
            Request::Echo { payload, delay } => echo(payload, delay, ctx).await,
            Request::GetHostFacts => Ok(Reply::HostFacts(Box::new(self.monitor.facts()))),
            other => Box::pin(self.run(other, ctx)).await,
        }
    }

    /// Every command but the cheap ones; `handle` runs this boxed.
    async fn run(&self, req: Request, ctx: &Ctx) -> Result<Reply, CommandError> {
        match req {
            Request::GetVmState(uuid) => self
                .hypervisor
                .vm(uuid)
                .await
                .map(Reply::VmStatus)
                .map_err(CommandError::from),
            Request::ListVms { page_size, after } => self
                .hypervisor
                .list_vms()
                .await
                .map(|vms| page_of(vms, page_size, after))
                .map_err(CommandError::from),
            Request::StartVm(req) => self.start_vm(*req, ctx).await,
            Request::StopVm { vm, force, timeout } => {
                crate::vm::stop(&self.hypervisor, vm, force, timeout, ctx)
                    .await
                    .map(Reply::VmStatus)
            }
            Request::Lifecycle(vm, op) => crate::vm::simple(&self.hypervisor, vm, op)
                .await
                .map(Reply::VmStatus),
            Request::DestroyVm(vm) => {
                crate::vm::destroy(&self.hypervisor, vm, ctx).await?;
                self.release_networks(vm, ctx).await;
                Ok(Reply::Destroyed)
            }
            Request::Storage(op) => storage::handle(&self.storage, op, ctx).await,
            Request::Network(op) => network::handle(self.network.as_ref(), op).await,
            Request::PrepareMigration(req) => self.prepare_migration(req).await,
            Request::MigrateVm(req) => self.migrate_vm(*req, ctx).await,
            Request::CheckHost(req) => self.check_host(req).await,
            other => self.vm_ops(other).await,
        }
    }
}

impl Handlers {
    /// Admission first (unless the VM already runs: it holds its share), then
    /// volumes, networks and the lifecycle (vm::prepare).
    async fn start_vm(
        &self,
        mut req: crate::vm::prepare::StartRequest,
        ctx: &Ctx,
    ) -> Result<Reply, CommandError> {
        self.guest.apply(&mut req.spec);
        csagent_domain::validate(&req.spec).map_err(|e| CommandError::invalid(e.to_string()))?;
        let prepared: Vec<String> = req.volumes.iter().map(|v| v.disk_target.clone()).collect();
        let (s, p) = (req.spec.clone(), prepared);
        self.confine("start", move |roots| {
            crate::vm::paths::check_spec(&s, &p, roots)
        })
        .await?;
        let spec = &req.spec;
        let running = matches!(self.hypervisor.vm(spec.uuid.0).await, Ok(v) if v.state == csagent_libvirt::PowerState::Running);
        if !running {
            let vms = self
                .hypervisor
                .list_vms()
                .await
                .map_err(CommandError::from)?;
            let vcpus = spec.vcpu.current.unwrap_or(spec.vcpu.max);
            self.admit(&vms, vcpus, spec.memory.size.0).await?;
        }
        let deps = crate::vm::prepare::Deps {
            hypervisor: &self.hypervisor,
            storage: &self.storage,
            network: self.network.as_ref(),
        };
        let (s, prepared) = crate::vm::prepare::start(&deps, req, ctx).await?;
        Ok(Reply::Started(s.info, s.vnc_port, prepared))
    }
}

impl Handlers {
    /// Runs a path check against the allowed roots (the configured ones and
    /// every pool's directory) off the workers: it resolves symlinks on pool
    /// storage, which may hang.
    async fn confine<F>(&self, step: &'static str, check: F) -> Result<(), CommandError>
    where
        F: FnOnce(&[std::path::PathBuf]) -> Result<(), CommandError> + Send + 'static,
    {
        let mut roots = self.path_roots.clone();
        roots.extend(
            self.storage
                .pool_paths(csagent_storage::CallOpts::default())
                .await
                .map_err(CommandError::from)?,
        );
        let ctl = csagent_storage::qemu_img::RunCtl::new(
            self.storage.config().fs_timeout,
            Default::default(),
        );
        csagent_storage::pool_fs::run(
            step,
            std::path::Path::new("the VM's host paths"),
            &ctl,
            self.storage.config().fs_timeout,
            move || Ok(check(&roots)),
        )
        .await
        .map_err(CommandError::from)?
    }

    /// Host admission of a VM with `vcpus` and `memory_kib` beside `vms`,
    /// the domains this host runs now.
    async fn admit(&self, vms: &[VmInfo], vcpus: u32, memory_kib: u64) -> Result<(), CommandError> {
        let want = csagent_host::Request {
            vcpus,
            memory: csagent_host::MiB(memory_kib.div_ceil(1024)),
        };
        self.monitor.admit(want, vms).await
    }

    /// A destroyed VM no longer holds its bridges nor its security group:
    /// its rules go, and the last user's leaving removes a bridge csagent
    /// made. A failure here is logged, not returned: the VM is gone either
    /// way.
    async fn release_networks(&self, vm: uuid::Uuid, ctx: &Ctx) {
        let Some(n) = &self.network else { return };
        if let Err(e) = n.remove_security_group(csagent_network::VmUuid(vm)).await {
            tracing::warn!(command_id = %ctx.command_id, vm = %vm, error = %e,
                "destroyed VM's security group could not be removed");
        }
        if let Err(e) = n.release_vm(csagent_network::VmUuid(vm)).await {
            tracing::warn!(command_id = %ctx.command_id, vm = %vm, error = %e,
                "destroyed VM's bridges could not be released");
        }
    }
}

impl Handlers {
    /// Scale, devices, stats and console (src/vm/).
    async fn vm_ops(&self, req: Request) -> Result<Reply, CommandError> {
        let h = &self.hypervisor;
        match req {
            Request::ScaleVm(r) => crate::vm::scale::scale(h, r).await.map(Reply::Scaled),
            Request::AttachDevice(vm, a) => {
                let attached = a.clone();
                self.confine("attach", move |roots| {
                    crate::vm::devices::check_paths(&attached, roots)
                })
                .await?;
                crate::vm::devices::attach(h, vm, a)
                    .await
                    .map(|d| Reply::Device(vm, d))
            }
            Request::DetachDevice(vm, d) => crate::vm::devices::detach(h, vm, d)
                .await
                .map(|d| Reply::Device(vm, d)),
            Request::GetVmStats { collector, vms } => {
                let v = self.vm_stats.collect(h, &collector, &vms).await?;
                Ok(Reply::VmStats(v, csagent_core::time::unix_ms()))
            }
            Request::GetConsole(vm) => {
                let host = self.monitor.address();
                crate::vm::console::console(h, vm, host)
                    .await
                    .map(|c| Reply::Console(vm, c))
            }
            other => Err(CommandError::new(
                ErrorKind::Internal,
                format!(
                    "request {} reached the VM handlers by mistake",
                    other.name()
                ),
            )),
        }
    }
}

async fn echo(payload: String, delay: Duration, ctx: &Ctx) -> Result<Reply, CommandError> {
    tokio::select! {
        _ = tokio::time::sleep(delay) => Ok(Reply::Echo(payload)),
        _ = ctx.cancel.cancelled() => Err(CommandError::new(ErrorKind::Cancelled, "echo cancelled")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn future_size<'a, F: std::future::Future>(
        _: fn(&'a Handlers, Request, &'a Ctx) -> F,
    ) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn a_command_future_stays_small_whatever_the_largest_handler() {
        let inline = future_size(|h, r, c| h.handle(r, c));
        let boxed = future_size(|h, r, c| h.run(r, c));
        eprintln!("handle: {inline} bytes; the boxed handlers: {boxed} bytes");
        assert!(inline <= 1024, "handle's future is {inline} bytes");
    }
}
