//! The truth about VM state: the snapshot heartbeats read, and the VM events
//! the plane hears from libvirt.
//!
//! Owns keeping `VmSnapshot` right (a poll every interval, and at once after
//! every libvirt event or reconnection), saying when the hypervisor is
//! unavailable (logged once per transition), and forwarding each libvirt
//! domain event to the plane through the outbox within a second. It never
//! acts on a VM: events of domains csagent did not define are reported
//! with managed=false, like the others, and nothing else happens.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::convert::vmstate::{self as convert, Memo};
use crate::outbox::Outbox;
use csagent_libvirt::{DomainEvent, HvError, HvEvent, Hypervisor, VmInfo};

/// The latest view of the host's VMs, refreshed in the background so a
/// heartbeat never waits on libvirt.
#[derive(Clone, Debug, Default)]
pub struct VmSnapshot {
    pub vms: Vec<VmInfo>,
    /// False while libvirt is unreachable or hung; `vms` is then the last
    /// known list.
    pub available: bool,
    /// Why `available` is false; empty while it is true.
    pub status: String,
}

/// How long forwarding waits for the refresh that tells whether a new domain
/// is csagent's; the event goes out after this even if libvirt is slow.
const FORWARD_WAIT: Duration = Duration::from_millis(500);
/// Events taken in one batch (one refresh serves them all).
const BATCH: usize = 256;

/// Keeps the snapshot and forwards events until `stop` fires.
pub async fn run(
    hv: Hypervisor,
    snap: watch::Sender<VmSnapshot>,
    outbox: Arc<Outbox>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut events = hv.subscribe();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut w = Watcher {
        hv,
        snap,
        outbox,
        memo: Memo::default(),
        logged: None,
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => w.refresh().await,
            first = events.recv() => {
                let batch = drain(first, &mut events);
                w.on_batch(batch).await;
            }
        }
    }
}

/// The first event and whatever else is already queued.
fn drain(
    first: Result<HvEvent, RecvError>,
    rx: &mut broadcast::Receiver<HvEvent>,
) -> Vec<Result<HvEvent, RecvError>> {
    let mut batch = vec![first];
    while batch.len() < BATCH {
        match rx.try_recv() {
            Ok(e) => batch.push(Ok(e)),
            Err(broadcast::error::TryRecvError::Lagged(n)) => batch.push(Err(RecvError::Lagged(n))),
            Err(_) => break,
        }
    }
    batch
}

struct Watcher {
    hv: Hypervisor,
    snap: watch::Sender<VmSnapshot>,
    outbox: Arc<Outbox>,
    memo: Memo,
    /// Availability last logged, so each transition is logged once.
    logged: Option<bool>,
}

impl Watcher {
    async fn on_batch(&mut self, batch: Vec<Result<HvEvent, RecvError>>) {
        let before = managed_map(&self.snap.borrow());
        let mut domain = Vec::new();
        let mut refresh = false;
        for item in batch {
            match item {
                Ok(HvEvent::Domain(e)) => {
                    domain.push(e);
                    refresh = true;
                }
                Ok(HvEvent::Connected) => refresh = true,
                Ok(HvEvent::Disconnected { reason }) => {
                    self.unavailable(format!("libvirt connection lost: {reason}; reconnecting"))
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "libvirt events came faster than they were forwarded; state is re-read, some events were not reported");
                    refresh = true;
                }
                // The hypervisor handle keeps the sender alive.
                Err(RecvError::Closed) => {}
            }
        }
        // VMs already known go out at once; new ones after the refresh that
        // says whether they are csagent's. Each VM's events keep their order.
        let (known, new): (Vec<_>, Vec<_>) = domain
            .into_iter()
            .partition(|e| before.contains_key(&e.uuid));
        for e in known {
            let managed = before.get(&e.uuid).copied().unwrap_or(false);
            self.forward(&e, managed);
        }
        // The listing runs on its own task: a slow one is waited for after
        // the events went out, never dropped, or the snapshot would miss a
        // new VM until the next poll.
        let mut listing = refresh.then(|| {
            let hv = self.hv.clone();
            tokio::spawn(async move { hv.list_vms().await })
        });
        if let Some(task) = listing.as_mut() {
            match tokio::time::timeout(FORWARD_WAIT, task).await {
                Ok(done) => {
                    listing = None;
                    self.apply(done);
                }
                Err(_) => tracing::debug!("snapshot refresh slower than {FORWARD_WAIT:?}; forwarding events with what is known"),
            }
        }
        let after = managed_map(&self.snap.borrow());
        for e in new {
            let managed = after.get(&e.uuid).copied().unwrap_or(false);
            self.forward(&e, managed);
        }
        if let Some(task) = listing {
            self.apply(task.await);
        }
    }

    fn apply(&mut self, done: Result<Result<Vec<VmInfo>, HvError>, tokio::task::JoinError>) {
        match done {
            Ok(listed) => self.listed(listed),
            Err(e) => self.unavailable(format!("the VM listing task failed: {e}")),
        }
    }

    fn forward(&mut self, e: &DomainEvent, managed: bool) {
        let Some(ev) = self.memo.event(e, managed) else {
            tracing::debug!(vm = %e.uuid, kind = ?e.kind, "libvirt event not forwarded");
            return;
        };
        if self
            .outbox
            .claimed(&e.uuid, convert::transition_of(ev.state))
        {
            tracing::debug!(vm = %e.uuid, state = ?ev.state(), reason = %ev.reason, "libvirt event for a command's own transition; the command reports it");
            return;
        }
        tracing::info!(vm = %e.uuid, name = %e.name, managed, state = ?ev.state(), reason = %ev.reason, "vm event from libvirt");
        self.outbox.push(convert::message(ev));
    }

    async fn refresh(&mut self) {
        let listed = self.hv.list_vms().await;
        self.listed(listed);
    }

    fn listed(&mut self, listed: Result<Vec<VmInfo>, HvError>) {
        match listed {
            Ok(vms) => {
                if self.logged != Some(true) {
                    if self.logged.is_some() {
                        tracing::info!(
                            vms = vms.len(),
                            "hypervisor available again; heartbeats say so"
                        );
                    }
                    self.logged = Some(true);
                }
                self.snap.send_replace(VmSnapshot {
                    vms,
                    available: true,
                    status: String::new(),
                });
            }
            Err(e) => self.unavailable(e.to_string()),
        }
    }

    /// Heartbeats go on with the last known VM list, flagged unavailable.
    fn unavailable(&mut self, why: String) {
        if self.logged != Some(false) {
            tracing::warn!(reason = %why, "hypervisor unavailable; heartbeats say so until it answers (running VMs are not touched)");
            self.logged = Some(false);
        }
        self.snap.send_modify(|s| {
            s.available = false;
            s.status = why;
        });
    }
}

fn managed_map(s: &VmSnapshot) -> HashMap<String, bool> {
    s.vms.iter().map(|v| (v.uuid.clone(), v.managed)).collect()
}
