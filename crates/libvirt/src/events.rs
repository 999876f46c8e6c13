//! libvirt events: the process-wide event loop and the meaning of each
//! domain event.
//!
//! Owns turning libvirt's lifecycle, reboot and I/O-error callbacks into
//! `HvEvent`s on a broadcast channel, and noticing a closed connection at
//! once. The raw registration lives in ffi.rs; this file decides what an
//! event means. Nothing here calls libvirt from a callback or acts on a VM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::Duration;

use tokio::sync::broadcast;
use virt::sys;

use super::ffi::{self, RawEvent};

/// Something libvirt told us, or the state of our connection to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HvEvent {
    Domain(DomainEvent),
    /// Connected (at start or again after a loss), events subscribed.
    Connected,
    /// The connection is gone; the agent reconnects with backoff.
    Disconnected {
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainEvent {
    pub uuid: String,
    pub name: String,
    pub kind: EventKind,
    /// When the agent received it (Unix ms).
    pub at_unix_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    Defined,
    Undefined,
    Started(&'static str),
    Paused(PauseReason),
    Resumed(&'static str),
    Stopped(StopReason),
    /// The guest finished shutting down; QEMU may still run (a fake reboot).
    ShutdownFinished,
    Crashed(&'static str),
    PmSuspended,
    /// The guest reset (a reboot from inside or `virsh reset`); it runs on.
    Rebooted,
    IoError {
        device: String,
        reason: String,
        /// The VM was paused for it (else the guest saw the error).
        paused: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    Shutdown,
    Destroyed,
    Crashed,
    Migrated,
    Saved,
    Failed,
    FromSnapshot,
    Other(i32),
}

impl StopReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            StopReason::Shutdown => "shutdown",
            StopReason::Destroyed => "destroyed",
            StopReason::Crashed => "crashed",
            StopReason::Migrated => "migrated",
            StopReason::Saved => "saved",
            StopReason::Failed => "failed",
            StopReason::FromSnapshot => "from-snapshot",
            StopReason::Other(_) => "unknown",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PauseReason {
    User,
    Migration,
    IoError,
    Watchdog,
    Restored,
    FromSnapshot,
    ApiError,
    Postcopy,
    Other(i32),
}

impl PauseReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            PauseReason::User => "user",
            PauseReason::Migration => "migration",
            PauseReason::IoError => "io-error",
            PauseReason::Watchdog => "watchdog",
            PauseReason::Restored => "restored",
            PauseReason::FromSnapshot => "from-snapshot",
            PauseReason::ApiError => "api-error",
            PauseReason::Postcopy => "postcopy",
            PauseReason::Other(_) => "unknown",
        }
    }
}

/// Registers libvirt's default event loop implementation and runs it on its
/// own thread, once per process. Must run before the first connection is
/// opened, or that connection never delivers events. False when libvirt
/// refused (events then never arrive; polling still keeps state right).
pub fn ensure_event_loop() -> bool {
    static LOOP: OnceLock<bool> = OnceLock::new();
    *LOOP.get_or_init(|| {
        if let Err(e) = virt::event::event_register_default_impl() {
            tracing::error!(error = %e, "cannot register libvirt's event loop; VM events will not be reported, only polled state");
            return false;
        }
        let spawned = std::thread::Builder::new()
            .name("libvirt-events".into())
            .spawn(|| loop {
                if let Err(e) = virt::event::event_run_default_impl() {
                    tracing::warn!(error = %e, "libvirt event loop iteration failed");
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the libvirt event thread");
            return false;
        }
        true
    })
}

/// The callback side of one connection: forwards domain events and raises
/// `closed` (then wakes the connection manager) when libvirt closes it.
pub(super) struct Forward {
    pub events: broadcast::Sender<HvEvent>,
    pub closed: Arc<AtomicBool>,
    pub wake: mpsc::Sender<()>,
    /// Called with the UUID of every domain event, before it is sent
    /// (drops cached facts). Must not block.
    pub on_domain: Arc<dyn Fn(&str) + Send + Sync>,
}

impl ffi::Sink for Forward {
    fn domain(&self, uuid: String, name: String, raw: RawEvent) {
        (self.on_domain)(&uuid);
        let Some(kind) = translate(&raw) else {
            tracing::debug!(vm = %uuid, ?raw, "libvirt event ignored");
            return;
        };
        let ev = DomainEvent {
            uuid,
            name,
            kind,
            at_unix_ms: csagent_core::time::unix_ms(),
        };
        // No receiver yet is fine: the snapshot poll still sees the state.
        let _ = self.events.send(HvEvent::Domain(ev));
    }

    fn closed(&self, reason: i32) {
        let why = match reason as u32 {
            sys::VIR_CONNECT_CLOSE_REASON_EOF => {
                "libvirtd closed the connection (stopped or restarted)"
            }
            sys::VIR_CONNECT_CLOSE_REASON_KEEPALIVE => "libvirtd stopped answering keepalives",
            sys::VIR_CONNECT_CLOSE_REASON_CLIENT => "closed by the agent",
            _ => "connection error",
        };
        tracing::debug!(reason = why, "libvirt close callback");
        self.closed.store(true, Ordering::SeqCst);
        let _ = self.wake.send(());
    }
}

/// The meaning of a raw callback; None for details nobody acts on.
pub fn translate(raw: &RawEvent) -> Option<EventKind> {
    match raw {
        RawEvent::Reboot => Some(EventKind::Rebooted),
        RawEvent::BalloonChange => None,
        RawEvent::IoError {
            device,
            action,
            reason,
        } => Some(EventKind::IoError {
            device: device.clone(),
            reason: reason.clone(),
            paused: *action as u32 == sys::VIR_DOMAIN_EVENT_IO_ERROR_PAUSE,
        }),
        RawEvent::Lifecycle { event, detail } => lifecycle(*event as u32, *detail as u32),
    }
}

fn lifecycle(event: u32, detail: u32) -> Option<EventKind> {
    Some(match event {
        sys::VIR_DOMAIN_EVENT_DEFINED => EventKind::Defined,
        sys::VIR_DOMAIN_EVENT_UNDEFINED => EventKind::Undefined,
        sys::VIR_DOMAIN_EVENT_STARTED => EventKind::Started(started(detail)),
        sys::VIR_DOMAIN_EVENT_SUSPENDED => EventKind::Paused(paused(detail)),
        sys::VIR_DOMAIN_EVENT_RESUMED => EventKind::Resumed(resumed(detail)),
        sys::VIR_DOMAIN_EVENT_STOPPED => EventKind::Stopped(stopped(detail)),
        sys::VIR_DOMAIN_EVENT_SHUTDOWN => EventKind::ShutdownFinished,
        sys::VIR_DOMAIN_EVENT_PMSUSPENDED => EventKind::PmSuspended,
        sys::VIR_DOMAIN_EVENT_CRASHED => {
            EventKind::Crashed(if detail == sys::VIR_DOMAIN_EVENT_CRASHED_CRASHLOADED {
                "crashloaded"
            } else {
                "panicked"
            })
        }
        _ => return None,
    })
}

fn started(detail: u32) -> &'static str {
    match detail {
        sys::VIR_DOMAIN_EVENT_STARTED_BOOTED => "booted",
        sys::VIR_DOMAIN_EVENT_STARTED_MIGRATED => "migrated",
        sys::VIR_DOMAIN_EVENT_STARTED_RESTORED => "restored",
        sys::VIR_DOMAIN_EVENT_STARTED_FROM_SNAPSHOT => "from-snapshot",
        sys::VIR_DOMAIN_EVENT_STARTED_WAKEUP => "wakeup",
        _ => "started",
    }
}

fn resumed(detail: u32) -> &'static str {
    match detail {
        sys::VIR_DOMAIN_EVENT_RESUMED_UNPAUSED => "unpaused",
        sys::VIR_DOMAIN_EVENT_RESUMED_MIGRATED => "migrated",
        sys::VIR_DOMAIN_EVENT_RESUMED_FROM_SNAPSHOT => "from-snapshot",
        _ => "resumed",
    }
}

fn paused(detail: u32) -> PauseReason {
    match detail {
        sys::VIR_DOMAIN_EVENT_SUSPENDED_PAUSED => PauseReason::User,
        sys::VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED => PauseReason::Migration,
        sys::VIR_DOMAIN_EVENT_SUSPENDED_IOERROR => PauseReason::IoError,
        sys::VIR_DOMAIN_EVENT_SUSPENDED_WATCHDOG => PauseReason::Watchdog,
        sys::VIR_DOMAIN_EVENT_SUSPENDED_RESTORED => PauseReason::Restored,
        sys::VIR_DOMAIN_EVENT_SUSPENDED_FROM_SNAPSHOT => PauseReason::FromSnapshot,
        sys::VIR_DOMAIN_EVENT_SUSPENDED_API_ERROR => PauseReason::ApiError,
        sys::VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY => PauseReason::Postcopy,
        other => PauseReason::Other(other as i32),
    }
}

fn stopped(detail: u32) -> StopReason {
    match detail {
        sys::VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN => StopReason::Shutdown,
        sys::VIR_DOMAIN_EVENT_STOPPED_DESTROYED => StopReason::Destroyed,
        sys::VIR_DOMAIN_EVENT_STOPPED_CRASHED => StopReason::Crashed,
        sys::VIR_DOMAIN_EVENT_STOPPED_MIGRATED => StopReason::Migrated,
        sys::VIR_DOMAIN_EVENT_STOPPED_SAVED => StopReason::Saved,
        sys::VIR_DOMAIN_EVENT_STOPPED_FAILED => StopReason::Failed,
        sys::VIR_DOMAIN_EVENT_STOPPED_FROM_SNAPSHOT => StopReason::FromSnapshot,
        other => StopReason::Other(other as i32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lc(event: u32, detail: u32) -> Option<EventKind> {
        translate(&RawEvent::Lifecycle {
            event: event as i32,
            detail: detail as i32,
        })
    }

    #[test]
    fn lifecycle_details_carry_their_reason() {
        assert_eq!(
            lc(
                sys::VIR_DOMAIN_EVENT_STOPPED,
                sys::VIR_DOMAIN_EVENT_STOPPED_DESTROYED
            ),
            Some(EventKind::Stopped(StopReason::Destroyed))
        );
        assert_eq!(
            lc(
                sys::VIR_DOMAIN_EVENT_SUSPENDED,
                sys::VIR_DOMAIN_EVENT_SUSPENDED_IOERROR
            ),
            Some(EventKind::Paused(PauseReason::IoError))
        );
        assert_eq!(
            lc(
                sys::VIR_DOMAIN_EVENT_STARTED,
                sys::VIR_DOMAIN_EVENT_STARTED_BOOTED
            ),
            Some(EventKind::Started("booted"))
        );
        assert_eq!(lc(99, 0), None);
        assert_eq!(translate(&RawEvent::Reboot), Some(EventKind::Rebooted));
    }

    #[test]
    fn io_error_says_whether_the_vm_was_paused() {
        let raw = RawEvent::IoError {
            device: "virtio-disk0".into(),
            action: sys::VIR_DOMAIN_EVENT_IO_ERROR_PAUSE as i32,
            reason: "enospc".into(),
        };
        assert!(matches!(
            translate(&raw),
            Some(EventKind::IoError { paused: true, .. })
        ));
    }
}
