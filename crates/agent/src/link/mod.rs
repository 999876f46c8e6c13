//! The agent's side of the stream to the management plane.
//!
//! Owns staying connected: which endpoint to dial next (endpoints.rs), how
//! long to wait (csagent-core's backoff), one session at a time (session.rs), and what
//! outlives a session (outbox.rs). Losing a session costs one reconnect: the
//! dispatcher, its running commands and the VMs carry on untouched, and the
//! next Register tells the plane the whole truth.

mod identity;
pub mod session;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use rustls::ClientConfig;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::dial::DialOptions;
use crate::dispatch::Dispatcher;
use crate::endpoints::Endpoints;
use crate::monitor::HostMonitor;
use crate::outbox::Outbox;
pub use crate::vmstate::VmSnapshot;
use csagent_core::backoff::Backoff;
use csagent_libvirt::Hypervisor;
use csagent_proto::v1 as pb;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Dial(#[from] crate::dial::DialError),
    #[error("stream to management endpoint {endpoint} ended: {reason}")]
    Stream { endpoint: String, reason: String },
}

/// Who this host is, as sent in Register.
#[derive(Clone, Debug)]
pub struct Identity {
    pub host_uuid: String,
    pub zone: String,
    pub pod: String,
    pub cluster: String,
    pub host_tags: Vec<String>,
    /// The local storage pool's name; empty: none.
    pub local_pool: String,
}

/// Everything a session needs, shared across sessions.
pub struct LinkCtx {
    pub identity: Identity,
    /// What to dial with, as identity/ publishes it.
    pub tls: crate::identity::DialTls,
    pub dial: DialOptions,
    pub max_message_bytes: usize,
    pub ping_retries: u32,
    pub dispatcher: Arc<Dispatcher>,
    pub outbox: Arc<Outbox>,
    pub hypervisor: Hypervisor,
    pub vms: watch::Receiver<VmSnapshot>,
    pub host: Arc<HostMonitor>,
    /// The storage heartbeat whose status each heartbeat carries.
    pub storage_heartbeat: Option<Arc<csagent_ha::Beat>>,
    /// What operators see of the link (`csagent status`, metrics).
    pub status: Arc<crate::status::LinkStatus>,
    /// What the agent did while isolated, for every Register.
    pub isolation: Arc<crate::isolation::Record>,
    heartbeat_seq: std::sync::atomic::AtomicU64,
    /// Send time (Unix ms) of the latest heartbeat, to measure clock skew
    /// when its ack arrives.
    last_heartbeat_sent: AtomicI64,
}

impl LinkCtx {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        identity: Identity,
        tls: Arc<ClientConfig>,
        dial: DialOptions,
        max_message_bytes: usize,
        ping_retries: u32,
        dispatcher: Arc<Dispatcher>,
        outbox: Arc<Outbox>,
        hypervisor: Hypervisor,
        vms: watch::Receiver<VmSnapshot>,
        host: Arc<HostMonitor>,
    ) -> LinkCtx {
        LinkCtx {
            identity,
            tls: crate::identity::DialTls::Fixed(tls),
            dial,
            max_message_bytes,
            ping_retries,
            dispatcher,
            outbox,
            hypervisor,
            vms,
            host,
            storage_heartbeat: None,
            status: Arc::default(),
            isolation: Arc::default(),
            heartbeat_seq: std::sync::atomic::AtomicU64::new(0),
            last_heartbeat_sent: AtomicI64::new(0),
        }
    }

    /// Dial with, and renew, these credentials instead of the fixed `tls`.
    pub fn with_credentials(mut self, c: Arc<crate::identity::Credentials>) -> LinkCtx {
        self.tls = crate::identity::DialTls::Managed(c);
        self
    }

    /// Report this storage heartbeat's status in every heartbeat.
    pub fn with_storage_heartbeat(mut self, b: Arc<csagent_ha::Beat>) -> LinkCtx {
        self.storage_heartbeat = Some(b);
        self
    }

    pub fn heartbeat(&self) -> pb::Heartbeat {
        let snap = self.vms.borrow();
        let sent = session::unix_ms();
        self.last_heartbeat_sent.store(sent, Ordering::Relaxed);
        let seq = self.heartbeat_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let beats = self
            .storage_heartbeat
            .as_ref()
            .map(|b| b.status())
            .unwrap_or_default();
        self.status.heartbeat_sent(seq, sent);
        pb::Heartbeat {
            seq,
            sent_at_unix_ms: sent,
            vms: snap
                .vms
                .iter()
                .map(crate::convert::link::vm_power)
                .collect(),
            health: Some(self.health_with_storage(&beats)),
            hypervisor_available: snap.available,
            hypervisor_status: snap.status.clone(),
            in_flight_commands: u32::try_from(self.dispatcher.in_flight().len())
                .unwrap_or(u32::MAX),
            cert_not_after_unix_ms: self.cert_not_after_unix_ms(),
            storage_heartbeats: beats
                .iter()
                .map(crate::convert::ha::beat_to_proto)
                .collect(),
        }
    }

    fn health_with_storage(&self, beats: &[csagent_ha::PoolBeat]) -> pb::HostHealth {
        let mut health = self
            .health_with_certificate(crate::convert::host::health_to_proto(&self.host.health()));
        crate::convert::ha::beat_findings(beats, &mut health);
        health
    }

    pub async fn host_report(&self) -> pb::HostReport {
        let vms = self.vms.borrow().vms.clone();
        let r = self.host.report(&vms).await;
        let mut report = crate::convert::host::report_to_proto(&r.host, r.vms);
        // The host crate sees only pool usage; the pools' own state comes
        // from storage.
        report.pool_status = r
            .pools
            .iter()
            .map(crate::convert::storage::pool_status)
            .collect();
        report
    }

    /// A fresh VM list for Register, falling back to the snapshot when
    /// libvirt does not answer in time.
    pub async fn fresh_vms(&self) -> VmSnapshot {
        match self.hypervisor.list_vms().await {
            Ok(vms) => VmSnapshot {
                vms,
                available: true,
                status: String::new(),
            },
            Err(e) => {
                tracing::warn!(error = %e, "registering with the last known VM list");
                let mut s = self.vms.borrow().clone();
                s.available = false;
                s.status = e.to_string();
                s
            }
        }
    }

    /// An ack answers the latest heartbeat (acks are immediate and the
    /// interval is seconds), so its send time pairs with the plane's clock.
    fn note_server_time(&self, server_ms: i64) {
        let sent = self.last_heartbeat_sent.load(Ordering::Relaxed);
        self.status.heartbeat_acked(session::unix_ms());
        self.host.record_skew(sent, server_ms, session::unix_ms());
    }
}

/// Reconnect policy of the link.
pub struct Policy {
    pub endpoints: Endpoints,
    pub backoff: Backoff,
}

/// Keeps a session up until `close` fires. The first dial is immediate (a
/// starting agent registers at once); every later one waits a jittered
/// backoff, the first of them too, so a fleet whose plane restarted comes
/// back spread out.
pub async fn run(ctx: Arc<LinkCtx>, mut policy: Policy, close: CancellationToken) {
    let mut first = true;
    loop {
        if !first {
            let delay = policy.backoff.next_delay();
            tracing::debug!(
                delay_ms = delay.as_millis() as u64,
                "reconnecting after backoff"
            );
            tokio::select! {
                _ = close.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        first = false;
        let ep = policy.endpoints.current().clone();
        tracing::debug!(endpoint = %ep, "dialing management endpoint");
        ctx.status.dialing(&ep.to_string());
        let mut was_up = false;
        let outcome = session::run(&ep, &ctx, &close, |ack| {
            was_up = true;
            ctx.status.connected(&ep.to_string(), &ack.plane_id);
            tracing::info!(endpoint = %ep, plane = %ack.plane_id, heartbeat_ms = ack.heartbeat_interval_ms, "registered with management plane");
        })
        .await;
        match outcome {
            Ok(session::Ended::Closed) => {
                tracing::info!(endpoint = %ep, "stream closed cleanly");
                ctx.status.closed();
                return;
            }
            Err(e) => {
                ctx.status.failed(&e.to_string());
                if was_up {
                    tracing::warn!(error = %e, "lost the management plane; failing over");
                    policy.backoff.reset();
                } else {
                    tracing::warn!(error = %e, "management endpoint unavailable");
                }
                policy.endpoints.failed(was_up);
            }
        }
    }
}
