//! Self-protection when the host is cut off from everything: no plane has
//! acknowledged a heartbeat, and no shared pool has taken a storage
//! heartbeat, for longer than `[ha] isolation_after_secs`.
//!
//! Owns that judgement and the `[ha] on_isolation` action taken on it, once
//! per isolation: `none` (log and report only, the default), `stop-ha-vms`
//! (power off this host's own HA VMs, so their disks are free for the host
//! the plane restarts them on), `reboot`. Either signal alone is never
//! isolation: a plane outage or a hung mount with the other path working
//! changes nothing here. It acts only on domains csagent defined, and what
//! it did is logged and reported in every later Register.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use csagent_core::sync::lock;
use csagent_core::time::unix_ms;
use csagent_libvirt::{lifecycle, Hypervisor, PowerState};

pub use crate::config::OnIsolation;

/// What the agent sees of its two paths out.
#[derive(Clone, Copy, Debug)]
pub struct Paths {
    /// Since the last heartbeat a plane acknowledged (or since start).
    pub plane_silent_for: Duration,
    /// Since every shared pool last took a write; None while one does, or
    /// when there are no pools.
    pub storage_failing_for: Option<Duration>,
}

/// True when both paths have been gone for longer than `after`.
pub fn isolated(p: Paths, after: Duration) -> bool {
    p.plane_silent_for > after && p.storage_failing_for.is_some_and(|f| f > after)
}

/// Actions taken while isolated, kept for the Register (newest last).
#[derive(Default)]
pub struct Record {
    notes: Mutex<Vec<String>>,
}

const NOTES: usize = 32;

impl Record {
    fn note(&self, what: String) {
        let mut n = lock(&self.notes);
        if n.len() >= NOTES {
            n.remove(0);
        }
        n.push(what);
    }

    pub fn notes(&self) -> Vec<String> {
        lock(&self.notes).clone()
    }
}

pub struct Watch {
    pub policy: OnIsolation,
    pub after: Duration,
    pub hypervisor: Hypervisor,
    pub link: Arc<crate::status::LinkStatus>,
    pub beat: Arc<csagent_ha::Beat>,
    pub record: Arc<Record>,
    /// When the agent started, Unix ms: the plane's silence counts from it
    /// until the first acknowledged heartbeat.
    pub started_unix_ms: i64,
    /// `reboot_host`; a test passes one that only records the decision.
    pub reboot: fn(),
}

impl Watch {
    fn paths(&self) -> Paths {
        let now = unix_ms();
        let acked = self.link.view().last_heartbeat_ack_unix_ms;
        let since = if acked > 0 {
            acked
        } else {
            self.started_unix_ms
        };
        Paths {
            plane_silent_for: Duration::from_millis(
                u64::try_from(now.saturating_sub(since)).unwrap_or(0),
            ),
            storage_failing_for: self.beat.failing_for(now),
        }
    }

    /// Checks every second; acts once when isolation begins, again only
    /// after a path came back and isolation began anew.
    pub async fn run(self, stop: CancellationToken) {
        if self.beat.config().pools.is_empty() {
            return;
        }
        let mut acted = false;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let p = self.paths();
            match (isolated(p, self.after), acted) {
                (true, false) => {
                    acted = true;
                    self.act(p).await;
                }
                (false, true) => {
                    acted = false;
                    tracing::info!("no longer isolated: a plane or a shared pool answers again");
                }
                _ => {}
            }
        }
    }

    async fn act(&self, p: Paths) {
        let why = format!(
            "isolated: no plane acknowledged a heartbeat for {} s and no shared pool took one for {} s",
            p.plane_silent_for.as_secs(),
            p.storage_failing_for.unwrap_or_default().as_secs()
        );
        match self.policy {
            OnIsolation::None => {
                tracing::error!("{why}; on_isolation = none: nothing done");
                self.record
                    .note(format!("{why}; on_isolation none: nothing done"));
            }
            OnIsolation::StopHaVms => self.stop_ha_vms(&why).await,
            OnIsolation::Reboot => {
                tracing::error!("{why}; on_isolation = reboot: rebooting the host");
                self.record.note(format!("{why}; on_isolation reboot"));
                (self.reboot)();
            }
        }
    }

    async fn stop_ha_vms(&self, why: &str) {
        let vms = match ha_vms_running(&self.hypervisor).await {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "{why}; on_isolation = stop-ha-vms, but the VMs cannot be listed");
                self.record
                    .note(format!("{why}; stop-ha-vms failed to list VMs: {e}"));
                return;
            }
        };
        tracing::error!(
            vms = vms.len(),
            "{why}; on_isolation = stop-ha-vms: powering off this host's HA VMs"
        );
        for vm in vms {
            let done = self
                .hypervisor
                .call("destroy", move |c| lifecycle::power_off(c, &vm))
                .await;
            let what = match done {
                Ok(()) => format!("{why}; powered off HA VM {vm}"),
                Err(e) => format!("{why}; could not power off HA VM {vm}: {e}"),
            };
            tracing::error!(vm = %vm, "{what}");
            self.record.note(what);
        }
    }
}

/// Running or paused domains csagent defined with `ha`.
async fn ha_vms_running(h: &Hypervisor) -> Result<Vec<uuid::Uuid>, csagent_libvirt::HvError> {
    let mut out = Vec::new();
    for vm in h.list_vms().await? {
        let live = matches!(vm.state, PowerState::Running | PowerState::Paused);
        let Ok(uuid) = uuid::Uuid::parse_str(&vm.uuid) else {
            continue;
        };
        if !live || !vm.managed {
            continue;
        }
        let xml = h
            .call("get_xml_desc", move |c| lifecycle::xml(c, &uuid, false))
            .await?;
        let ha = xml
            .and_then(|x| csagent_domain::metadata(&x).ok().flatten())
            .is_some_and(|m| m.ha);
        if ha {
            out.push(uuid);
        }
    }
    Ok(out)
}

/// Syncs and reboots. Only reached with on_isolation = reboot, which an
/// operator chose knowing it ends every VM on the host.
pub fn reboot_host() {
    nix::unistd::sync();
    // Returns only when the reboot failed.
    let Err(e) = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    tracing::error!(error = %e, "reboot failed; the host stays up, isolated");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(plane: u64, storage: Option<u64>) -> Paths {
        Paths {
            plane_silent_for: Duration::from_secs(plane),
            storage_failing_for: storage.map(Duration::from_secs),
        }
    }

    #[test]
    fn isolation_needs_both_paths_gone_past_the_limit() {
        let after = Duration::from_secs(30);
        assert!(isolated(paths(31, Some(31)), after));
        // The plane alone (a plane outage) or storage alone (a hung mount).
        assert!(!isolated(paths(31, None), after));
        assert!(!isolated(paths(5, Some(300)), after));
        assert!(!isolated(paths(31, Some(29)), after));
    }

    #[test]
    fn the_policies_read_from_config_as_operators_write_them() {
        for (text, want) in [
            ("none", OnIsolation::None),
            ("stop-ha-vms", OnIsolation::StopHaVms),
            ("reboot", OnIsolation::Reboot),
        ] {
            let v: OnIsolation = serde_json::from_value(serde_json::json!(text)).unwrap();
            assert_eq!(v, want);
        }
        assert!(serde_json::from_value::<OnIsolation>(serde_json::json!("sysrq")).is_err());
    }

    static REBOOTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    fn record_reboot() {
        REBOOTED.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    #[tokio::test]
    async fn reboot_is_decided_and_handed_to_the_reboot_hook() {
        let w = Watch {
            policy: OnIsolation::Reboot,
            after: Duration::from_secs(30),
            hypervisor: Hypervisor::start("test:///default", Duration::from_secs(5)),
            link: Arc::default(),
            beat: Arc::new(csagent_ha::Beat::new(csagent_ha::BeatConfig {
                host: uuid::Uuid::new_v4(),
                pools: vec!["/nonexistent/csat-iso".into()],
                interval: Duration::from_secs(1),
                timeout: Duration::from_secs(1),
            })),
            record: Arc::default(),
            started_unix_ms: 0,
            reboot: record_reboot,
        };
        w.act(paths(40, Some(40))).await;
        assert!(REBOOTED.load(std::sync::atomic::Ordering::SeqCst));
        let notes = w.record.notes();
        assert!(
            notes[0].contains("isolated") && notes[0].contains("on_isolation reboot"),
            "{notes:?}"
        );
    }
}
