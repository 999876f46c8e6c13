//! The agent process: wires configuration, the libvirt boundary, dispatch
//! and the link together, and runs the shutdown sequence.
//!
//! Shutdown order matters: stop taking commands, let in-flight ones finish
//! (their results still travel on the open stream), then close the stream
//! cleanly. Nothing in here stops, pauses or otherwise touches a VM.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::dial::DialOptions;
use crate::dispatch::{DispatchConfig, Dispatcher};
use crate::endpoints::{Endpoint, Endpoints};
use crate::handlers::Handlers;
use crate::identity::Credentials;
use crate::link::{self, Identity, LinkCtx, Policy, VmSnapshot};
use crate::local_pool::LocalPool;
use crate::monitor::HostMonitor;
use crate::outbox::Outbox;
use csagent_core::backoff::Backoff;
use csagent_host::{self as host, HostCollector, SysRoots};
use csagent_libvirt::Hypervisor;
use csagent_libvirt::PowerState;
use csagent_network::{Network, VmUuid};
use csagent_storage::Storage;
use csagent_tls::{self as tls, TlsFiles};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Identity(#[from] host::HostIdError),
    #[error("management.hosts: {0}")]
    Endpoint(String),
    /// A `[guest]` key (the config given in code, not loaded from a file).
    #[error("{0}: {1}")]
    Guest(&'static str, String),
    #[error(transparent)]
    Certificate(#[from] crate::identity::IdentityError),
}

/// How often sensors and the clock are re-read for heartbeats' health.
const HEALTH_REFRESH: Duration = Duration::from_secs(2);

/// File in state_dir where guest networking remembers its groups.
const NETWORK_STATE: &str = "network-state.json";

/// Once libvirt has listed the VMs, puts the security groups of the running
/// ones back in force (see `Network::restore`).
async fn restore_network(handlers: Arc<Handlers>, mut vms: watch::Receiver<VmSnapshot>) {
    let Some(net) = handlers.network.as_ref() else {
        return;
    };
    let Ok(snap) = vms.wait_for(|s| s.available).await.map(|s| s.clone()) else {
        return;
    };
    let running: Vec<VmUuid> = snap
        .vms
        .iter()
        .filter(|v| v.managed && matches!(v.state, PowerState::Running | PowerState::Paused))
        .filter_map(|v| uuid::Uuid::parse_str(&v.uuid).ok().map(VmUuid))
        .collect();
    match net.restore(&running).await {
        Ok(n) => tracing::info!(groups = n, "security groups of running VMs restored"),
        Err(e) => {
            tracing::error!(error = %e, "cannot restore security groups; the plane must re-apply them")
        }
    }
}

/// Starts writing this host's heartbeat on the `[ha]` pools (none: nothing
/// is written, and CheckHost needs pools named in the command).
fn storage_heartbeat(
    cfg: &Config,
    host: uuid::Uuid,
    stop: CancellationToken,
) -> Arc<csagent_ha::Beat> {
    let beat = Arc::new(csagent_ha::Beat::new(csagent_ha::BeatConfig {
        host,
        pools: cfg.ha.pools.clone(),
        interval: Duration::from_secs(cfg.ha.heartbeat_interval_secs),
        timeout: Duration::from_secs(cfg.ha.timeout_secs),
    }));
    if !cfg.ha.pools.is_empty() {
        tracing::info!(pools = ?cfg.ha.pools, interval_s = cfg.ha.heartbeat_interval_secs, "storage heartbeat on the shared pools");
    }
    tokio::spawn(Arc::clone(&beat).run(stop));
    beat
}

/// Runs the agent until `stop` fires, then shuts down cleanly.
pub async fn run(cfg: Config, stop: CancellationToken) -> Result<(), AgentError> {
    let host_uuid = host::host_uuid(&cfg.agent.state_dir, Some(&cfg.agent.guid))?;
    let m = &cfg.management;
    let files = TlsFiles {
        ca: m.ca_file.clone(),
        cert: m.cert_file.clone(),
        key: m.key_file.clone(),
    };
    crate::identity::enroll::at_start(m, &host_uuid, &files).await?;
    let credentials = Credentials::load(files, host_uuid, m.renew_at)?;
    let tls = credentials.client_config().0;
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
    let guest = cfg
        .guest
        .defaults()
        .map_err(|(key, why)| AgentError::Guest(key, why))?;
    let storage = Arc::new(Storage::new(
        cfg.storage.storage_config(guest.full_clone),
        hv.clone(),
    ));
    let background = CancellationToken::new();
    let monitor = Arc::new(
        HostMonitor::start(
            HostCollector::new(
                cfg.host.clone(),
                SysRoots {
                    sys: cfg.host.sysfs_root.clone(),
                    ..SysRoots::host()
                },
            ),
            &hv,
            Arc::clone(&storage),
            HEALTH_REFRESH,
            background.clone(),
        )
        .await,
    );
    let outbox = Arc::new(Outbox::new(cfg.agent.outbox_capacity));
    let network = match Network::new() {
        Ok(n) => Some(n.remember_in(cfg.agent.state_dir.join(NETWORK_STATE))),
        Err(e) => {
            tracing::warn!(error = %e, "guest networking unavailable; network commands will fail");
            None
        }
    };
    let beat = storage_heartbeat(&cfg, host_uuid, background.clone());
    let handlers = Arc::new(Handlers {
        hypervisor: hv.clone(),
        monitor: Arc::clone(&monitor),
        storage: Arc::clone(&storage),
        network,
        vm_stats: Default::default(),
        migration: cfg.migration.clone(),
        ha: Arc::clone(&beat),
        path_roots: cfg.guest.path_roots.clone(),
        guest,
    });
    let metrics = Arc::new(crate::metrics::CommandMetrics::default());
    let dispatcher = Dispatcher::new(
        DispatchConfig {
            workers: cfg.agent.workers,
            default_deadline: Duration::from_secs(cfg.agent.cmds_timeout_secs),
            result_cache_size: cfg.agent.result_cache_size,
            max_message_bytes: cfg.management.max_message_bytes,
            max_queued: cfg.agent.max_queued_commands,
        },
        Arc::clone(&outbox),
        Arc::clone(&handlers),
        Arc::clone(&metrics),
    );
    let (vm_tx, vm_rx) = watch::channel(VmSnapshot::default());
    tokio::spawn(restore_network(handlers, vm_rx.clone()));
    tokio::spawn(crate::vmstate::run(
        hv.clone(),
        vm_tx,
        Arc::clone(&outbox),
        Duration::from_millis(cfg.hypervisor.poll_interval_ms),
        background.clone(),
    ));
    let ops_sources = |ctx: &LinkCtx| crate::status::Sources {
        host_uuid: host_uuid.to_string(),
        started: std::time::Instant::now(),
        link: Arc::clone(&ctx.status),
        in_flight: {
            let d = Arc::clone(&ctx.dispatcher);
            Arc::new(move || d.in_flight())
        },
        vms: ctx.vms.clone(),
        host: Arc::clone(&ctx.host),
    };
    let local_pool = match LocalPool::from_config(&cfg.storage.local_uuid, &cfg.storage.local_path)
    {
        Some(p) => p.at_start(Arc::clone(&storage), background.clone()).await,
        None => String::new(),
    };
    let ctx = Arc::new(
        LinkCtx::new(
            Identity {
                host_uuid: host_uuid.to_string(),
                zone: cfg.agent.zone.clone(),
                pod: cfg.agent.pod.clone(),
                cluster: cfg.agent.cluster.clone(),
                host_tags: cfg.agent.host_tags.clone(),
                local_pool,
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
            hv.clone(),
            vm_rx,
            monitor,
        )
        .with_credentials(credentials)
        .with_storage_heartbeat(Arc::clone(&beat)),
    );
    tokio::spawn(
        crate::isolation::Watch {
            policy: cfg.ha.on_isolation,
            after: Duration::from_secs(cfg.ha.isolation_after_secs),
            hypervisor: hv,
            link: Arc::clone(&ctx.status),
            beat,
            record: Arc::clone(&ctx.isolation),
            started_unix_ms: csagent_core::time::unix_ms(),
            reboot: crate::isolation::reboot_host,
        }
        .run(background.clone()),
    );
    tracing::info!(host_uuid = %host_uuid, endpoints = ?m.hosts, version = env!("CARGO_PKG_VERSION"), "csagent starting");
    let close = CancellationToken::new();
    let sources = ops_sources(&ctx);
    let link_task = tokio::spawn(link::run(ctx, policy, close.clone()));
    let ops = crate::ops::start(
        &cfg,
        sources,
        metrics,
        link_task.abort_handle(),
        stop.clone(),
    )
    .await;
    stop.cancelled().await;
    ops.stopping();
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
