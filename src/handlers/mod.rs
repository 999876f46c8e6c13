//! Command handlers: what each command does, on the crate's own types.
//!
//! Owns the `Request`/`Reply` vocabulary between dispatch and the capability
//! modules (hypervisor, and later vm/, storage/, network/). A handler runs
//! inside dispatch's limits (deadline, per-VM lock, worker permit) and must
//! stop promptly when `ctx.cancel` fires. Adding a command: a `Request`
//! variant, a `Reply` variant, one arm in `handle`.

pub mod network;
pub mod storage;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::error::{CommandError, ErrorKind};
use crate::hypervisor::{HvError, Hypervisor, VmInfo};
use crate::link::outbox::Outbox;
use crate::proto::v1 as pb;

#[derive(Debug)]
pub enum Request {
    Noop,
    Echo { payload: String, delay: Duration },
    GetVmState(uuid::Uuid),
    ListVms,
    GetHostFacts,
    Storage(storage::StorageOp),
    Network(network::NetworkOp),
}

impl Request {
    pub fn name(&self) -> &'static str {
        match self {
            Request::Noop => "noop",
            Request::Echo { .. } => "echo",
            Request::GetVmState(_) => "get_vm_state",
            Request::ListVms => "list_vms",
            Request::GetHostFacts => "get_host_facts",
            Request::Storage(_) => "storage",
            Request::Network(_) => "network",
        }
    }
}

#[derive(Debug)]
pub enum Reply {
    Noop,
    Echo(String),
    VmStatus(VmInfo),
    VmList(Vec<VmInfo>),
    HostFacts(Box<pb::HostFacts>),
    Volume(crate::storage::VolumeInfo),
    Snapshot(crate::storage::SnapshotInfo),
    Snapshots(Vec<crate::storage::SnapshotInfo>),
    Pool(crate::storage::PoolStatus),
    Pools(Vec<crate::storage::PoolStatus>),
    StorageDone,
    Bridge(crate::network::IfName),
    NetworkReleased(bool),
    SecurityGroupApplied(bool),
    SecurityGroupRemoved,
    Counters(crate::network::TrafficReport),
}

/// What a running command may use besides its request.
pub struct Ctx {
    pub command_id: String,
    pub cancel: CancellationToken,
    /// When dispatch gives up on the command.
    pub deadline: Instant,
    /// For CommandProgress and Events caused by this command.
    pub outbox: Arc<Outbox>,
}

pub struct Handlers {
    pub hypervisor: Hypervisor,
    pub facts: pb::HostFacts,
    pub storage: Arc<crate::storage::Storage>,
    /// None when netlink could not be opened (the agent still runs VMs).
    pub network: Option<crate::network::Network>,
}

impl Handlers {
    pub async fn handle(&self, req: Request, ctx: &Ctx) -> Result<Reply, CommandError> {
        match req {
            Request::Noop => Ok(Reply::Noop),
            Request::Echo { payload, delay } => echo(payload, delay, ctx).await,
            Request::GetVmState(uuid) => self
                .hypervisor
                .vm(uuid)
                .await
                .map(Reply::VmStatus)
                .map_err(hv_error),
            Request::ListVms => self
                .hypervisor
                .list_vms()
                .await
                .map(Reply::VmList)
                .map_err(hv_error),
            Request::GetHostFacts => Ok(Reply::HostFacts(Box::new(self.facts.clone()))),
            Request::Storage(op) => storage::handle(&self.storage, op, ctx).await,
            Request::Network(op) => network::handle(self.network.as_ref(), op).await,
        }
    }
}

async fn echo(payload: String, delay: Duration, ctx: &Ctx) -> Result<Reply, CommandError> {
    tokio::select! {
        _ = tokio::time::sleep(delay) => Ok(Reply::Echo(payload)),
        _ = ctx.cancel.cancelled() => Err(CommandError::new(ErrorKind::Cancelled, "echo cancelled")),
    }
}

fn hv_error(e: HvError) -> CommandError {
    CommandError::new(e.kind(), e.to_string())
}
