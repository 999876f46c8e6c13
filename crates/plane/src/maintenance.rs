//! `csagent-mgmt maintenance`: draining a host by live migration, and
//! returning it to service.
//!
//! Owns the order of a drain: the host first stops taking new VMs
//! (PREPARING), then its running VMs move a few at a time, each to a host
//! chosen by placement (capacity and health, never the drained host), and
//! the host ends ON, or ERROR naming every VM that could not move and why.
//! It never stops or destroys a VM: one that cannot move keeps running.

use std::time::Duration;

use anyhow::{bail, Context};
use tonic::transport::Channel;

use crate::migrate::{self, MigrateAsk};
use csagent_proto::v1 as pb;
use csagent_proto::v1::plane_admin_client::PlaneAdminClient;

/// How a drain moves each VM.
#[derive(Clone, Debug)]
pub struct Drain {
    pub host: String,
    /// VMs moved at once.
    pub concurrency: usize,
    /// Per VM; the source aborts a move that takes longer (the VM stays).
    pub timeout: Duration,
}

/// What a drain did: moved (VM, target) and failed (VM, why).
#[derive(Clone, Debug, Default)]
pub struct Drained {
    pub moved: Vec<(String, String)>,
    pub failed: Vec<(String, String)>,
}

/// Rounds of a drain: a VM started while the first round ran (a StartVm
/// accepted just before PREPARING) is moved by the next one.
const ROUNDS: usize = 3;
/// How long a drain waits for the host's next heartbeat before it gives up.
const FRESH_WAIT: Duration = Duration::from_secs(30);

/// Puts the host in maintenance and moves its running VMs off it.
///
/// The list of VMs to move is read from a heartbeat the host sent after it
/// entered PREPARING, never an older one, and re-read after each round, so
/// the host ends ON only when a fresh heartbeat lists no running VM of
/// csagent's left on it.
pub async fn enter(
    client: &mut PlaneAdminClient<Channel>,
    drain: &Drain,
    mut report: impl FnMut(&str),
) -> anyhow::Result<Drained> {
    set(
        client,
        &drain.host,
        pb::MaintenanceState::Preparing,
        Vec::new(),
    )
    .await?;
    let mut done = Drained::default();
    for round in 0..ROUNDS {
        let vms: Vec<String> = running_vms(client, &drain.host)
            .await?
            .into_iter()
            .filter(|vm| !done.tried(vm))
            .collect();
        if vms.is_empty() {
            break;
        }
        report(&format!(
            "maintenance: {} VMs to move off {}{}",
            vms.len(),
            drain.host,
            if round > 0 {
                " (started meanwhile)"
            } else {
                ""
            }
        ));
        move_all(client, drain, &vms, &mut done, &mut report).await;
    }
    let left: Vec<String> = running_vms(client, &drain.host)
        .await?
        .into_iter()
        .filter(|vm| !done.tried(vm))
        .collect();
    for vm in left {
        let why = format!("still started on the host after {ROUNDS} rounds");
        report(&format!("maintenance: VM {vm} did not move: {why}"));
        done.failed.push((vm, why));
    }
    let (state, errors) = if done.failed.is_empty() {
        (pb::MaintenanceState::On, Vec::new())
    } else {
        let errors = done
            .failed
            .iter()
            .map(|(vm, why)| format!("{vm}: {why}"))
            .collect();
        (pb::MaintenanceState::Error, errors)
    };
    set(client, &drain.host, state, errors).await?;
    Ok(done)
}

impl Drained {
    /// Moved or failed already: a later round leaves it alone (the source
    /// may list a moved VM for one more heartbeat).
    fn tried(&self, vm: &str) -> bool {
        self.moved.iter().chain(&self.failed).any(|(v, _)| v == vm)
    }
}

/// Moves `vms`, `concurrency` at a time, recording each outcome.
async fn move_all(
    client: &mut PlaneAdminClient<Channel>,
    drain: &Drain,
    vms: &[String],
    done: &mut Drained,
    report: &mut impl FnMut(&str),
) {
    for batch in vms.chunks(drain.concurrency.max(1)) {
        let moves = batch.iter().map(|vm| {
            let mut c = client.clone();
            let vm = vm.clone();
            async move {
                let r = move_one(&mut c, drain, &vm).await;
                (vm, r)
            }
        });
        for (vm, r) in futures::future::join_all(moves).await {
            match r {
                Ok(to) => {
                    report(&format!("maintenance: VM {vm} moved to {to}"));
                    done.moved.push((vm, to));
                }
                Err(e) => {
                    report(&format!("maintenance: VM {vm} did not move: {e:#}"));
                    done.failed.push((vm, format!("{e:#}")));
                }
            }
        }
    }
}

/// Returns the host to service.
pub async fn leave(client: &mut PlaneAdminClient<Channel>, host: &str) -> anyhow::Result<()> {
    set(client, host, pb::MaintenanceState::Off, Vec::new()).await
}

async fn set(
    client: &mut PlaneAdminClient<Channel>,
    host: &str,
    state: pb::MaintenanceState,
    errors: Vec<String>,
) -> anyhow::Result<()> {
    client
        .set_maintenance(pb::SetMaintenanceRequest {
            host_uuid: host.to_string(),
            state: state as i32,
            errors,
        })
        .await
        .with_context(|| format!("cannot set host {host} to {}", state.as_str_name()))?;
    Ok(())
}

/// The csagent VMs the host lists running or paused, in a heartbeat it
/// sent after this call began (two sequence numbers on: the first may have
/// been on its way already).
async fn running_vms(
    client: &mut PlaneAdminClient<Channel>,
    host: &str,
) -> anyhow::Result<Vec<String>> {
    let first = host_summary(client, host).await?;
    let deadline = tokio::time::Instant::now() + FRESH_WAIT;
    let mut h = first.clone();
    // A reconnect restarts the sequence; a heartbeat on the new stream is
    // fresh enough.
    let fresh = |h: &pb::HostSummary| {
        h.heartbeat_seq >= first.heartbeat_seq + 2
            || (h.heartbeat_seq > 0 && h.heartbeat_seq < first.heartbeat_seq)
    };
    while !fresh(&h) {
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "host {host} sent no heartbeat for {}s; its VM list cannot be trusted",
                FRESH_WAIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        h = host_summary(client, host).await?;
    }
    Ok(h.vms
        .iter()
        .filter(|v| v.managed && crate::registry::is_live(v))
        .map(|v| v.vm_uuid.clone())
        .collect())
}

async fn host_summary(
    client: &mut PlaneAdminClient<Channel>,
    host: &str,
) -> anyhow::Result<pb::HostSummary> {
    let hosts = client
        .list_hosts(pb::ListHostsRequest {})
        .await?
        .into_inner()
        .hosts;
    match hosts.into_iter().find(|h| h.host_uuid == host) {
        Some(h) => Ok(h),
        None => bail!("host {host} is not known to this plane"),
    }
}

/// Places one VM on another host and moves it there; the target's UUID.
async fn move_one(
    client: &mut PlaneAdminClient<Channel>,
    drain: &Drain,
    vm: &str,
) -> anyhow::Result<String> {
    let status = migrate::vm_status(client, &drain.host, vm).await?;
    let to = client
        .place_vm(pb::PlaceVmRequest {
            vcpus: status.vcpus,
            memory_mib: status.memory_kib.div_ceil(1024),
            exclude_hosts: vec![drain.host.clone()],
        })
        .await
        .map_err(|s| anyhow::anyhow!("no host can take it: {}", s.message()))?
        .into_inner()
        .host_uuid;
    let ask = MigrateAsk {
        vm: uuid::Uuid::parse_str(vm).context("the heartbeat named a VM by a non-UUID")?,
        to: to.clone(),
        timeout: drain.timeout,
        ..MigrateAsk::default()
    };
    migrate::migrate(client, &ask, |_| {}).await?;
    Ok(to)
}
