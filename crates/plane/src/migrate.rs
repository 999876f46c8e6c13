//! `csagent-mgmt migrate`: moving one VM live to another host, through the
//! plane's admin socket.
//!
//! Owns the order of a move as the plane sees it: find the host that runs
//! the VM, ask the target to prepare (it refuses, changing nothing, when it
//! cannot take the VM), have the source migrate to where the target said,
//! and confirm the target runs it. It never talks to an agent directly and
//! never retries: a failed step is reported with the host that failed it.

use std::time::Duration;

use anyhow::{bail, Context};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use csagent_proto::v1 as pb;
use csagent_proto::v1::plane_admin_client::PlaneAdminClient;

/// What the operator asked for; 0 / false leaves the source's defaults.
#[derive(Clone, Debug, Default)]
pub struct MigrateAsk {
    pub vm: uuid::Uuid,
    /// Target host UUID.
    pub to: String,
    pub max_downtime_ms: u64,
    pub bandwidth_mib_s: u64,
    pub auto_converge: bool,
    pub post_copy_after_iterations: u32,
    pub parallel_connections: u32,
    pub copy_storage: bool,
    pub timeout: Duration,
}

/// Runs prepare → migrate → confirm; `progress` sees the source's
/// CommandProgress as it comes.
pub async fn migrate(
    client: &mut PlaneAdminClient<Channel>,
    ask: &MigrateAsk,
    mut progress: impl FnMut(&pb::CommandProgress),
) -> anyhow::Result<pb::MigrateVmResult> {
    let vm = ask.vm.to_string();
    let source = source_of(client, &vm, &ask.to).await?;
    let status = vm_status(client, &source, &vm).await?;
    let prepare = pb::command::Body::PrepareMigration(pb::PrepareMigration {
        vm_uuid: vm.clone(),
        vcpus: status.vcpus,
        memory_kib: status.memory_kib,
        disk_paths: Vec::new(),
    });
    let ready = match run(client, &ask.to, prepare, 60_000, &mut |_| {}).await? {
        Ok(pb::command_result::Result::PrepareMigration(p)) => p,
        Ok(other) => bail!("target {} answered PrepareMigration with {other:?}", ask.to),
        Err(r) => bail!("target {} refused the VM: {}", ask.to, r.message),
    };
    let body = pb::command::Body::MigrateVm(migrate_vm(ask, &ready));
    let deadline = u64::try_from(ask.timeout.as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(60_000);
    let moved = match run(client, &source, body, deadline, &mut progress).await? {
        Ok(pb::command_result::Result::MigrateVm(m)) => m,
        Ok(other) => bail!("source {source} answered MigrateVm with {other:?}"),
        Err(r) => bail!("migration failed on source {source}: {}", r.message),
    };
    let there = vm_status(client, &ask.to, &vm).await?;
    if there.state != pb::VmPowerState::Running as i32 {
        bail!(
            "the source says the VM moved, but target {} reports it {:?}",
            ask.to,
            state_name(there.state)
        );
    }
    Ok(moved)
}

fn migrate_vm(ask: &MigrateAsk, ready: &pb::PrepareMigrationResult) -> pb::MigrateVm {
    pb::MigrateVm {
        vm_uuid: ask.vm.to_string(),
        destination_libvirt_uri: ready.libvirt_uri.clone(),
        destination_migrate_uri: ready.migrate_uri.clone(),
        tls: ready.tls,
        max_downtime_ms: ask.max_downtime_ms,
        bandwidth_mib_s: ask.bandwidth_mib_s,
        auto_converge: ask.auto_converge,
        post_copy_after_iterations: ask.post_copy_after_iterations,
        parallel_connections: ask.parallel_connections,
        copy_storage: ask.copy_storage,
        completion_timeout_ms: u64::try_from(ask.timeout.as_millis()).unwrap_or(u64::MAX),
    }
}

fn state_name(state: i32) -> &'static str {
    pb::VmPowerState::try_from(state).map_or("UNKNOWN", |s| s.as_str_name())
}

/// How long a VM just started or just moved may take to appear in its
/// host's heartbeats.
const SEEN_WITHIN: Duration = Duration::from_secs(15);

/// The host whose heartbeats list the VM (waiting up to SEEN_WITHIN for a
/// VM that is in none yet); the target must be another, connected one.
async fn source_of(
    client: &mut PlaneAdminClient<Channel>,
    vm: &str,
    to: &str,
) -> anyhow::Result<String> {
    let started = tokio::time::Instant::now();
    loop {
        match lookup_source(client, vm, to).await? {
            Some(source) => return Ok(source),
            None if started.elapsed() >= SEEN_WITHIN => bail!(
                "no host reports VM {vm} (waited {} s for heartbeats)",
                SEEN_WITHIN.as_secs()
            ),
            None => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

async fn lookup_source(
    client: &mut PlaneAdminClient<Channel>,
    vm: &str,
    to: &str,
) -> anyhow::Result<Option<String>> {
    let hosts = client
        .list_hosts(pb::ListHostsRequest {})
        .await?
        .into_inner()
        .hosts;
    match hosts.iter().find(|h| h.host_uuid == to) {
        None => bail!("target host {to} is not known to this plane"),
        Some(t) if !t.connected => bail!("target host {to} is not connected"),
        Some(_) => {}
    }
    let on: Vec<&str> = hosts
        .iter()
        .filter(|h| crate::registry::live_vms(&h.vms).contains(&vm))
        .map(|h| h.host_uuid.as_str())
        .collect();
    match on.as_slice() {
        [] => Ok(None),
        [only] if *only == to => bail!("VM {vm} already runs on {to}"),
        [source] => Ok(Some(source.to_string())),
        // Right after a move both hosts may list it for one heartbeat.
        [a, b] if *a == to || *b == to => Ok(None),
        several => bail!(
            "VM {vm} is reported running on several hosts: {}",
            several.join(", ")
        ),
    }
}

pub(crate) async fn vm_status(
    client: &mut PlaneAdminClient<Channel>,
    host: &str,
    vm: &str,
) -> anyhow::Result<pb::VmStatus> {
    let body = pb::command::Body::GetVmState(pb::GetVmState {
        vm_uuid: vm.to_string(),
    });
    match run(client, host, body, 30_000, &mut |_| {}).await? {
        Ok(pb::command_result::Result::VmStatus(s)) => Ok(s),
        Ok(other) => bail!("host {host} answered GetVmState with {other:?}"),
        Err(r) => bail!("host {host} cannot say how VM {vm} is: {}", r.message),
    }
}

/// Sends one command and waits for its result: Ok(body) on success,
/// Err(result) when the host answered with an error.
async fn run(
    client: &mut PlaneAdminClient<Channel>,
    host: &str,
    body: pb::command::Body,
    deadline_ms: u64,
    progress: &mut dyn FnMut(&pb::CommandProgress),
) -> anyhow::Result<Result<pb::command_result::Result, pb::CommandResult>> {
    let cmd = pb::Command {
        id: String::new(),
        deadline_ms,
        body: Some(body),
    };
    let mut updates = client
        .send_command(pb::SendCommandRequest {
            host_uuid: host.to_string(),
            command: Some(cmd),
        })
        .await
        .with_context(|| format!("cannot send to host {host}"))?
        .into_inner();
    while let Some(u) = updates.next().await {
        match u?.update {
            Some(pb::command_update::Update::Progress(p)) => progress(&p),
            Some(pb::command_update::Update::Result(r)) => {
                if r.status != pb::CommandStatus::Ok as i32 {
                    return Ok(Err(r));
                }
                return r
                    .result
                    .map(Ok)
                    .context("the host answered without a result body");
            }
            _ => {}
        }
    }
    bail!("the plane ended the stream to host {host} without a result")
}
