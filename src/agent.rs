//! The agent process: wires configuration, the libvirt boundary, dispatch
//! and the link together, and runs the shutdown sequence.
//!
//! Shutdown order matters: stop taking commands, let in-flight ones finish
//! (their results still travel on the open stream), then close the stream
//! cleanly. Nothing in here stops, pauses or otherwise touches a VM.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::dispatch::{DispatchConfig, Dispatcher};
use crate::handlers::Handlers;
use crate::hypervisor::Hypervisor;
use crate::link::backoff::Backoff;
use crate::link::connector::DialOptions;
use crate::link::endpoints::{Endpoint, Endpoints};
use crate::link::outbox::Outbox;
use crate::link::{self, Identity, LinkCtx, Policy, VmSnapshot};
use crate::proto::v1 as pb;
use crate::tls::{self, TlsFiles};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("host identity: {0}")]
    Identity(String),
    #[error("management.hosts: {0}")]
    Endpoint(String),
}

/// Runs the agent until `stop` fires, then shuts down cleanly.
pub async fn run(cfg: Config, stop: CancellationToken) -> Result<(), AgentError> {
    let host_uuid = host_uuid(&cfg.agent.guid, &cfg.agent.state_dir)?;
    let m = &cfg.management;
    let tls = tls::client_config(&TlsFiles {
        ca: m.ca_file.clone(),
        cert: m.cert_file.clone(),
        key: m.key_file.clone(),
    })?;
    let list = m
        .hosts
        .iter()
        .map(|h| Endpoint::parse(h, m.port))
        .collect::<Result<Vec<_>, _>>()
        .map_err(AgentError::Endpoint)?;
    let policy = Policy {
        endpoints: Endpoints::new(list, m.order),
        backoff: Backoff::new(
            Duration::from_millis(m.backoff_initial_ms),
            Duration::from_millis(m.backoff_max_ms),
        ),
    };
    let hv = Hypervisor::start(
        &cfg.hypervisor.uri,
        Duration::from_millis(cfg.hypervisor.call_timeout_ms),
    );
    let facts = basic_facts();
    let outbox = Arc::new(Outbox::new(cfg.agent.outbox_capacity));
    let handlers = Arc::new(Handlers {
        hypervisor: hv.clone(),
        facts: facts.clone(),
    });
    let dispatcher = Dispatcher::new(
        DispatchConfig {
            workers: cfg.agent.workers,
            default_deadline: Duration::from_secs(cfg.agent.cmds_timeout_secs),
            result_cache_size: cfg.agent.result_cache_size,
        },
        Arc::clone(&outbox),
        handlers,
    );
    let (vm_tx, vm_rx) = watch::channel(VmSnapshot::default());
    let background = CancellationToken::new();
    tokio::spawn(link::poll_vms(
        hv.clone(),
        vm_tx,
        Duration::from_millis(cfg.hypervisor.poll_interval_ms),
        background.clone(),
    ));
    let ctx = Arc::new(LinkCtx::new(
        Identity {
            host_uuid: host_uuid.to_string(),
            zone: cfg.agent.zone.clone(),
            pod: cfg.agent.pod.clone(),
            cluster: cfg.agent.cluster.clone(),
            host_tags: cfg.agent.host_tags.clone(),
        },
        tls,
        DialOptions {
            connect_timeout: m.connect_timeout(),
            keepalive_interval: Duration::from_millis(m.keepalive_interval_ms),
            keepalive_timeout: Duration::from_millis(m.keepalive_timeout_ms),
        },
        m.max_message_bytes,
        m.ping_retries,
        Arc::clone(&dispatcher),
        outbox,
        hv,
        vm_rx,
        facts,
    ));
    tracing::info!(host_uuid = %host_uuid, endpoints = ?m.hosts, version = env!("CARGO_PKG_VERSION"), "csagent starting");
    let close = CancellationToken::new();
    let link_task = tokio::spawn(link::run(ctx, policy, close.clone()));
    stop.cancelled().await;
    tracing::info!("shutdown requested: no new commands; finishing in-flight ones");
    dispatcher
        .shutdown(Duration::from_secs(cfg.agent.shutdown_grace_secs))
        .await;
    close.cancel();
    if tokio::time::timeout(Duration::from_secs(5), link_task)
        .await
        .is_err()
    {
        tracing::warn!("link did not close within 5 s; exiting anyway");
    }
    background.cancel();
    tracing::info!("csagent stopped");
    Ok(())
}

/// The configured guid, else the one kept in the state directory, else a new
/// one written there (atomically) so the host keeps its identity forever.
pub fn host_uuid(configured: &str, state_dir: &Path) -> Result<uuid::Uuid, AgentError> {
    if !configured.is_empty() {
        return uuid::Uuid::parse_str(configured)
            .map_err(|e| AgentError::Identity(format!("agent.guid {configured:?}: {e}")));
    }
    let path = state_dir.join("host-uuid");
    if let Ok(text) = std::fs::read_to_string(&path) {
        return uuid::Uuid::parse_str(text.trim())
            .map_err(|e| AgentError::Identity(format!("{}: {e}", path.display())));
    }
    let id = uuid::Uuid::new_v4();
    let io = |e: std::io::Error| AgentError::Identity(format!("{}: {e}", path.display()));
    std::fs::create_dir_all(state_dir).map_err(io)?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{id}\n")).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok(id)
}

/// Minimal host facts; the host module replaces these with the full set.
pub fn basic_facts() -> pb::HostFacts {
    let uname = nix::sys::utsname::uname().ok();
    pb::HostFacts {
        hostname: nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default(),
        kernel: uname
            .as_ref()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        os: os_pretty_name().unwrap_or_default(),
        cpu_threads: std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
            .unwrap_or(1),
        memory_total_bytes: meminfo_kib("MemTotal:").unwrap_or(0) * 1024,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// Minimal host report; the host module replaces it with capacity and sensors.
pub fn basic_host_report() -> pb::HostReport {
    pb::HostReport {
        collected_at_unix_ms: link::session::unix_ms(),
        health: Some(pb::HostHealth {
            state: pb::HealthState::Ok as i32,
            reasons: Vec::new(),
        }),
        memory_total_bytes: meminfo_kib("MemTotal:").unwrap_or(0) * 1024,
        memory_available_bytes: meminfo_kib("MemAvailable:").unwrap_or(0) * 1024,
        cpu_threads: basic_facts().cpu_threads,
        load_average_1m: std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
            .unwrap_or(0.0),
    }
}

fn os_pretty_name() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
}

fn meminfo_kib(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}
