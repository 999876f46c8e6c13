//! libvirt domain events as the plane's `Event` messages.
//!
//! Owns what one event means to the plane: a state and a reason. A guest
//! reboot is one REBOOTING event (libvirt's RESUMED that follows a fake
//! reboot is folded into it); an I/O-error pause names the device and the
//! error; define/undefine and "guest finished shutting down" are not power
//! changes and are not sent (the snapshot and the STOPPED that follows
//! carry them), nor is a VM leaving this host by live migration.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use csagent_libvirt::{DomainEvent, EventKind, PauseReason, StopReason};
use csagent_proto::v1 as pb;

use crate::ctx::{VmEvent, VmTransition};

/// The wire state of a transition a command reports itself.
pub fn transition_state(t: VmTransition) -> pb::VmPowerState {
    match t {
        VmTransition::Starting => pb::VmPowerState::Starting,
        VmTransition::Running => pb::VmPowerState::Running,
        VmTransition::Stopping => pb::VmPowerState::Stopping,
        VmTransition::Stopped => pb::VmPowerState::Stopped,
    }
}

/// The transition a wire state is, if a command could have claimed it.
pub fn transition_of(state: i32) -> Option<VmTransition> {
    use pb::VmPowerState as S;
    match S::try_from(state).ok()? {
        S::Starting => Some(VmTransition::Starting),
        S::Running => Some(VmTransition::Running),
        S::Stopping => Some(VmTransition::Stopping),
        S::Stopped => Some(VmTransition::Stopped),
        _ => None,
    }
}

/// A command's own VM event as a stream message.
pub fn command_event(command_id: &str, e: VmEvent) -> pb::AgentMessage {
    message(pb::Event {
        vm_uuid: e.uuid,
        vm_name: e.name,
        state: transition_state(e.state) as i32,
        reason: e.reason,
        at_unix_ms: csagent_core::time::unix_ms(),
        command_id: command_id.to_string(),
        // Commands only ever act on csagent's own domains.
        managed: true,
    })
}

/// A RESUMED this soon after a reboot is part of the reboot.
const REBOOT_FOLD: Duration = Duration::from_secs(3);

/// What earlier events say about later ones.
#[derive(Default)]
pub struct Memo {
    /// Latest I/O error per VM ("enospc on virtio-disk0"), for the pause
    /// event libvirt sends right after it.
    io_errors: HashMap<String, String>,
    rebooted: HashMap<String, Instant>,
}

impl Memo {
    /// The plane's event for a libvirt event, or None when it is not sent.
    pub fn event(&mut self, e: &DomainEvent, managed: bool) -> Option<pb::Event> {
        let (state, reason) = self.state_and_reason(e)?;
        Some(pb::Event {
            vm_uuid: e.uuid.clone(),
            vm_name: e.name.clone(),
            state: state as i32,
            reason,
            at_unix_ms: e.at_unix_ms,
            command_id: String::new(),
            managed,
        })
    }

    fn state_and_reason(&mut self, e: &DomainEvent) -> Option<(pb::VmPowerState, String)> {
        use pb::VmPowerState as S;
        Some(match &e.kind {
            EventKind::Started(r) => (S::Running, (*r).to_string()),
            EventKind::Resumed(r) => {
                if self
                    .rebooted
                    .get(&e.uuid)
                    .is_some_and(|t| t.elapsed() < REBOOT_FOLD)
                {
                    return None;
                }
                (S::Running, (*r).to_string())
            }
            // A VM leaving by live migration is paused for the switch-over
            // and stopped once the target runs it: not news of this host.
            // The target reports it Running, and the source's heartbeat no
            // longer lists it, so the plane sees it move once.
            EventKind::Paused(PauseReason::Migration | PauseReason::Postcopy)
            | EventKind::Stopped(StopReason::Migrated) => return None,
            EventKind::Paused(PauseReason::IoError) => {
                let detail = self.io_errors.remove(&e.uuid);
                let reason = match detail {
                    Some(d) => format!("io-error: {d}"),
                    None => "io-error".to_string(),
                };
                (S::Paused, reason)
            }
            EventKind::Paused(r) => (S::Paused, r.as_str().to_string()),
            EventKind::Stopped(r) => {
                self.rebooted.remove(&e.uuid);
                (S::Stopped, r.as_str().to_string())
            }
            EventKind::Crashed(r) => (S::Crashed, (*r).to_string()),
            EventKind::PmSuspended => (S::Suspended, "pm-suspended".to_string()),
            EventKind::Rebooted => {
                self.rebooted.insert(e.uuid.clone(), Instant::now());
                (S::Rebooting, "reboot".to_string())
            }
            EventKind::IoError {
                device,
                reason,
                paused,
            } => {
                let detail = format!("{reason} on {device}");
                if *paused {
                    self.io_errors.insert(e.uuid.clone(), detail);
                } else {
                    tracing::warn!(vm = %e.uuid, error = %detail, "I/O error reported to the guest; the VM keeps running");
                }
                return None;
            }
            EventKind::Defined | EventKind::Undefined | EventKind::ShutdownFinished => return None,
        })
    }
}

pub fn message(ev: pb::Event) -> pb::AgentMessage {
    pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Event(ev)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use csagent_libvirt::StopReason;

    fn ev(kind: EventKind) -> DomainEvent {
        DomainEvent {
            uuid: "u".into(),
            name: "n".into(),
            kind,
            at_unix_ms: 1,
        }
    }

    #[test]
    fn a_reboot_is_one_event_not_a_stop_and_start() {
        let mut m = Memo::default();
        let seq = [
            EventKind::ShutdownFinished,
            EventKind::Rebooted,
            EventKind::Resumed("unpaused"),
        ];
        let out: Vec<_> = seq
            .into_iter()
            .filter_map(|k| m.event(&ev(k), true))
            .map(|e| (e.state, e.reason))
            .collect();
        assert_eq!(
            out,
            vec![(pb::VmPowerState::Rebooting as i32, "reboot".to_string())]
        );
    }

    #[test]
    fn an_io_error_pause_names_the_device_and_error() {
        let mut m = Memo::default();
        let io = EventKind::IoError {
            device: "virtio-disk0".into(),
            reason: "enospc".into(),
            paused: true,
        };
        assert!(m.event(&ev(io), true).is_none());
        let e = m
            .event(&ev(EventKind::Paused(PauseReason::IoError)), true)
            .unwrap();
        assert_eq!(e.state, pb::VmPowerState::Paused as i32);
        assert_eq!(e.reason, "io-error: enospc on virtio-disk0");
    }

    #[test]
    fn a_destroy_is_stopped_destroyed_with_managed_flag() {
        let mut m = Memo::default();
        let e = m
            .event(&ev(EventKind::Stopped(StopReason::Destroyed)), false)
            .unwrap();
        assert_eq!(e.state, pb::VmPowerState::Stopped as i32);
        assert_eq!(e.reason, "destroyed");
        assert!(!e.managed);
    }
}
