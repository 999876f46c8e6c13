//! The libvirt boundary: one connection, kept alive by one manager thread,
//! shared by every call.
//!
//! libvirt calls block, sometimes for long (a hung QEMU holds its domain's job
//! lock), so no libvirt call ever runs on an async worker: each runs on a
//! blocking thread of its own (at most `MAX_CALLS` at once) and its caller
//! waits with a time limit. A stuck call costs its caller a timeout, never
//! another VM's call, the heartbeat or the link. The manager thread opens the
//! connection, subscribes to domain events (events.rs), notices a closed
//! connection at once (close callback) or by polling, and reconnects with
//! backoff; the running VMs are not touched by any of this.

pub mod devices;
mod events;
mod ffi;
pub mod lifecycle;
pub mod migrate;
mod power;
pub mod stats;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, watch, Semaphore};
use virt::connect::Connect;

pub use events::{DomainEvent, EventKind, HvEvent, PauseReason, StopReason};
pub use power::{PowerState, VmInfo};

use csagent_core::backoff::Backoff;
use csagent_core::error::ErrorKind;
use csagent_core::sync::lock;

/// Libvirt calls in flight at once; more wait (within their time limit).
/// Bounds the threads a hung libvirtd can pin.
const MAX_CALLS: usize = 16;
/// How often the manager checks a connection that has no close callback.
const ALIVE_CHECK: Duration = Duration::from_secs(1);
const EVENT_BUFFER: usize = 4096;

#[derive(Debug, Clone, thiserror::Error)]
pub enum HvError {
    #[error("libvirt at {uri} is unreachable: {reason}; is libvirtd running? (systemctl status libvirtd)")]
    Unavailable { uri: String, reason: String },
    #[error("libvirt call {call} did not answer within {timeout_ms} ms (libvirtd or a QEMU process is hung)")]
    Timeout {
        call: &'static str,
        timeout_ms: u128,
    },
    #[error("VM {0} not found on this host")]
    NotFound(String),
    #[error("libvirt {call} failed: {message}")]
    Libvirt {
        call: &'static str,
        message: String,
        /// What the failure means to a plane, from libvirt's error code.
        kind: ErrorKind,
    },
}

impl HvError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            HvError::Unavailable { .. } | HvError::Timeout { .. } => ErrorKind::Unavailable,
            HvError::NotFound(_) => ErrorKind::NotFound,
            HvError::Libvirt { kind, .. } => *kind,
        }
    }

    pub fn libvirt(call: &'static str, e: virt::error::Error) -> HvError {
        let from_rpc = matches!(
            e.domain(),
            virt::enumutil::Enum::Known(virt::error::ErrorDomain::Rpc)
        );
        let kind = match e.code() {
            virt::enumutil::Enum::Known(code) => kind_of(code, from_rpc, e.message()),
            virt::enumutil::Enum::Unknown(_) => ErrorKind::Internal,
        };
        HvError::Libvirt {
            call,
            message: e.message().to_string(),
            kind,
        }
    }

    /// A failure of csagent's own around a libvirt call (not libvirt's).
    fn internal(call: &'static str, message: String) -> HvError {
        HvError::Libvirt {
            call,
            message,
            kind: ErrorKind::Internal,
        }
    }
}

/// libvirt's error codes as the wire's: taken → CONFLICT, missing →
/// NOT_FOUND, wrong state → FAILED_PRECONDITION, libvirt unreachable →
/// UNAVAILABLE; anything else stays INTERNAL.
pub fn kind_of(code: virt::error::ErrorNumber, from_rpc: bool, message: &str) -> ErrorKind {
    use virt::error::ErrorNumber as N;
    match code {
        N::DomExist | N::StorageVolExist | N::ResourceBusy => ErrorKind::Conflict,
        // "domain 'x' already exists with uuid ...": libvirt has no code of
        // its own for a name taken by another UUID.
        N::OperationFailed if message.contains("already exists") => ErrorKind::Conflict,
        N::NoDomain
        | N::NoStoragePool
        | N::NoStorageVolume
        | N::NoNetwork
        | N::NoSecret
        | N::NoDomainSnapshot
        | N::NoNodeDevice => ErrorKind::NotFound,
        N::OperationInvalid => ErrorKind::FailedPrecondition,
        N::NoConnect | N::Rpc => ErrorKind::Unavailable,
        N::SystemError if from_rpc => ErrorKind::Unavailable,
        _ => ErrorKind::Internal,
    }
}

/// One open connection with its event subscription. The subscription goes
/// first when the last user lets go, then the connection is closed.
struct Live {
    sub: Option<ffi::Subscription>,
    conn: Option<Connect>,
    closed: Arc<AtomicBool>,
}

impl Drop for Live {
    fn drop(&mut self) {
        drop(self.sub.take());
        if let Some(c) = self.conn.take() {
            ffi::close_quietly(c);
        }
    }
}

#[derive(Clone)]
enum ConnState {
    /// An attempt is under way (calls wait for it, within their limit).
    Connecting,
    Up(Arc<Live>),
    /// The last attempt failed with this message.
    Down(String),
}

/// Facts about a domain that do not change while it stays defined and
/// stopped/started the same way; fetched once per domain, dropped on any
/// event for it.
type Facts = Arc<Mutex<HashMap<String, power::Facts>>>;

struct Shared {
    uri: String,
    state: watch::Sender<ConnState>,
    events: broadcast::Sender<HvEvent>,
    permits: Arc<Semaphore>,
    facts: Facts,
}

/// Handle to the libvirt boundary. Cheap to clone.
#[derive(Clone)]
pub struct Hypervisor {
    shared: Arc<Shared>,
    call_timeout: Duration,
}

impl Hypervisor {
    /// Starts libvirt's event loop (once per process, before any connection)
    /// and the connection manager. Returns at once: an agent starts (and
    /// registers, saying libvirt is unavailable) even while libvirtd is down.
    pub fn start(uri: &str, call_timeout: Duration) -> Hypervisor {
        // libvirt's default handler prints every error to stderr, including
        // expected ones (a domain without csagent metadata); errors reach us
        // as return values and are logged where they matter.
        virt::error::clear_error_callback();
        events::ensure_event_loop();
        let shared = Arc::new(Shared {
            uri: uri.to_string(),
            state: watch::Sender::new(ConnState::Connecting),
            events: broadcast::channel(EVENT_BUFFER).0,
            permits: Arc::new(Semaphore::new(MAX_CALLS)),
            facts: Facts::default(),
        });
        let weak = Arc::downgrade(&shared);
        let spawned = std::thread::Builder::new()
            .name("libvirt".into())
            .spawn(move || manage(&weak));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the libvirt connection thread");
            shared
                .state
                .send_replace(ConnState::Down(format!("no connection thread: {e}")));
        }
        Hypervisor {
            shared,
            call_timeout,
        }
    }

    pub fn uri(&self) -> &str {
        &self.shared.uri
    }

    /// Domain events and connection changes, from now on. A receiver that
    /// lags gets `Lagged` and should re-read the whole state.
    pub fn subscribe(&self) -> broadcast::Receiver<HvEvent> {
        self.shared.events.subscribe()
    }

    /// True while a connection is open (it may still hang).
    pub fn is_connected(&self) -> bool {
        matches!(*self.shared.state.borrow(), ConnState::Up(_))
    }

    /// Runs `f` on a blocking thread with the current connection, waiting at
    /// most the call timeout (for a connection attempt in progress, a free
    /// slot and the call itself together).
    pub async fn call<R, F>(&self, call: &'static str, f: F) -> Result<R, HvError>
    where
        R: Send + 'static,
        F: FnOnce(&Connect) -> Result<R, HvError> + Send + 'static,
    {
        self.call_within(call, self.call_timeout, f).await
    }

    /// [`Hypervisor::call`] with the caller's own budget instead of the
    /// call timeout: storage operations (a pool build, a snapshot of a big
    /// disk) have longer, configured ones.
    pub async fn call_within<R, F>(
        &self,
        call: &'static str,
        budget: Duration,
        f: F,
    ) -> Result<R, HvError>
    where
        R: Send + 'static,
        F: FnOnce(&Connect) -> Result<R, HvError> + Send + 'static,
    {
        let deadline = tokio::time::Instant::now() + budget;
        let timeout = || HvError::Timeout {
            call,
            timeout_ms: budget.as_millis(),
        };
        let live = self.live(deadline).await.ok_or_else(timeout)??;
        let permit =
            tokio::time::timeout_at(deadline, Arc::clone(&self.shared.permits).acquire_owned())
                .await
                .map_err(|_| timeout())?
                .map_err(|_| self.unavailable("the call limiter is closed"))?;
        let job = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            match live.conn.as_ref() {
                Some(c) => f(c),
                None => Err(HvError::internal(call, "connection already closed".into())),
            }
        });
        match tokio::time::timeout_at(deadline, job).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(HvError::internal(
                call,
                format!("the call panicked or was cancelled: {e}"),
            )),
            Err(_) => Err(timeout()),
        }
    }

    /// The open connection; waits for an attempt in progress. None when the
    /// deadline passed first.
    async fn live(&self, deadline: tokio::time::Instant) -> Option<Result<Arc<Live>, HvError>> {
        let mut rx = self.shared.state.subscribe();
        let ready = rx.wait_for(|s| !matches!(s, ConnState::Connecting));
        let state = tokio::time::timeout_at(deadline, ready).await.ok()?;
        let Ok(state) = state else {
            return Some(Err(self.unavailable("connection thread is gone")));
        };
        Some(match &*state {
            ConnState::Up(l) => Ok(Arc::clone(l)),
            ConnState::Down(reason) => Err(self.unavailable(reason)),
            ConnState::Connecting => Err(self.unavailable("still connecting")),
        })
    }

    fn unavailable(&self, reason: &str) -> HvError {
        HvError::Unavailable {
            uri: self.shared.uri.clone(),
            reason: reason.into(),
        }
    }

    /// Every domain on the host with its power state: one bulk-stats call,
    /// plus two lookups for each domain not seen before.
    pub async fn list_vms(&self) -> Result<Vec<VmInfo>, HvError> {
        let facts = Arc::clone(&self.shared.facts);
        self.call("get_all_domain_stats", move |c| power::list_all(c, &facts))
            .await
    }

    /// Drops what the snapshot cached about a domain (vCPUs, memory) after
    /// a change no libvirt event announces, such as a vCPU hotplug.
    pub fn forget_facts(&self, uuid: &uuid::Uuid) {
        lock(&self.shared.facts).remove(&uuid.to_string());
    }

    /// One domain, by UUID.
    pub async fn vm(&self, uuid: uuid::Uuid) -> Result<VmInfo, HvError> {
        self.call("lookup_domain_by_uuid", move |c| power::one(c, uuid))
            .await
    }
}

/// Keeps a connection open while any `Hypervisor` handle lives: connect and
/// subscribe, watch it, and after a loss start over with backoff. Holds the
/// shared state only weakly, so the last handle dropped ends the thread and
/// closes the connection.
fn manage(weak: &Weak<Shared>) {
    let (wake_tx, wake_rx) = mpsc::channel::<()>();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut down_since: Option<Instant> = None;
    loop {
        let Some(shared) = weak.upgrade() else { return };
        shared.state.send_replace(ConnState::Connecting);
        let live = match connect(&shared, &wake_tx) {
            Ok(l) => Arc::new(l),
            Err(e) => {
                let delay = backoff.next_delay();
                if down_since.is_none() {
                    tracing::warn!(uri = %shared.uri, error = %e, "cannot connect to libvirt; heartbeats report the hypervisor unavailable; retrying with backoff");
                    down_since = Some(Instant::now());
                } else {
                    tracing::debug!(uri = %shared.uri, error = %e, retry_in_ms = delay.as_millis() as u64, "libvirt still unreachable");
                }
                shared.state.send_replace(ConnState::Down(e));
                drop(shared);
                std::thread::sleep(delay);
                continue;
            }
        };
        backoff.reset();
        match down_since.take() {
            Some(t) => {
                tracing::info!(uri = %shared.uri, down_ms = t.elapsed().as_millis() as u64, "reconnected to libvirt; events re-subscribed")
            }
            None => tracing::info!(uri = %shared.uri, "connected to libvirt"),
        }
        // Anything may have changed while we were away.
        lock(&shared.facts).clear();
        while wake_rx.try_recv().is_ok() {}
        shared.state.send_replace(ConnState::Up(Arc::clone(&live)));
        let _ = shared.events.send(HvEvent::Connected);
        drop(shared);
        let Some(reason) = watch_until_lost(&live, &wake_rx, weak) else {
            return;
        };
        let Some(shared) = weak.upgrade() else { return };
        tracing::warn!(uri = %shared.uri, reason = %reason, "libvirt connection lost; reconnecting with backoff (running VMs are not touched)");
        down_since = Some(Instant::now());
        shared.state.send_replace(ConnState::Down(reason.clone()));
        let _ = shared.events.send(HvEvent::Disconnected { reason });
        // Calls still holding it finish (or fail) on their own; the last
        // one closes it.
        drop(live);
    }
}

// The one place csagent opens libvirt: every other part borrows this
// bounded connection (clippy.toml bans Connect::open elsewhere).
#[allow(clippy::disallowed_methods)]
fn connect(shared: &Shared, wake: &mpsc::Sender<()>) -> Result<Live, String> {
    let conn = Connect::open(Some(&shared.uri)).map_err(|e| e.message().to_string())?;
    let closed = Arc::new(AtomicBool::new(false));
    let facts = Arc::clone(&shared.facts);
    let sink = Arc::new(events::Forward {
        events: shared.events.clone(),
        closed: Arc::clone(&closed),
        wake: wake.clone(),
        on_domain: Arc::new(move |uuid: &str| {
            lock(&facts).remove(uuid);
        }),
    });
    match ffi::subscribe(&conn, sink) {
        Ok(sub) => Ok(Live {
            sub: Some(sub),
            conn: Some(conn),
            closed,
        }),
        Err(e) => {
            ffi::close_quietly(conn);
            Err(e)
        }
    }
}

/// Returns why the connection is gone: the close callback fired, or
/// libvirt says it is no longer alive. None when every handle is gone.
fn watch_until_lost(
    live: &Live,
    wake: &mpsc::Receiver<()>,
    owner: &Weak<Shared>,
) -> Option<String> {
    loop {
        let _ = wake.recv_timeout(ALIVE_CHECK);
        if owner.strong_count() == 0 {
            return None;
        }
        if live.closed.load(Ordering::SeqCst) {
            return Some("libvirtd closed the connection (stopped, restarted or crashed)".into());
        }
        let alive = live
            .conn
            .as_ref()
            .is_some_and(|c| c.is_alive().unwrap_or(false));
        if !alive {
            return Some("the connection is no longer alive".into());
        }
    }
}

/// What a command answers when this failure ends it: its kind, and the
/// message as the operator should read it.
impl From<HvError> for csagent_core::CommandError {
    fn from(e: HvError) -> Self {
        csagent_core::CommandError::new(e.kind(), e.to_string())
    }
}

#[cfg(test)]
mod error_tests {
    use super::*;
    use virt::error::ErrorNumber as N;

    #[test]
    fn libvirt_codes_become_what_a_plane_can_act_on() {
        for (code, rpc, message, want) in [
            (N::DomExist, false, "", ErrorKind::Conflict),
            (
                N::ResourceBusy,
                false,
                "Lockspace resource is locked",
                ErrorKind::Conflict,
            ),
            (N::StorageVolExist, false, "", ErrorKind::Conflict),
            (
                N::OperationFailed,
                false,
                "domain 'web-1' already exists with uuid 4f1a",
                ErrorKind::Conflict,
            ),
            (
                N::OperationFailed,
                false,
                "cannot open file",
                ErrorKind::Internal,
            ),
            (N::NoDomain, false, "", ErrorKind::NotFound),
            (N::NoStoragePool, false, "", ErrorKind::NotFound),
            (N::NoStorageVolume, false, "", ErrorKind::NotFound),
            (N::NoDomainSnapshot, false, "", ErrorKind::NotFound),
            (
                N::OperationInvalid,
                false,
                "domain is not running",
                ErrorKind::FailedPrecondition,
            ),
            (N::NoConnect, false, "", ErrorKind::Unavailable),
            (N::Rpc, false, "", ErrorKind::Unavailable),
            (
                N::SystemError,
                true,
                "Cannot recv data",
                ErrorKind::Unavailable,
            ),
            (
                N::SystemError,
                false,
                "Permission denied",
                ErrorKind::Internal,
            ),
            (N::InternalError, false, "", ErrorKind::Internal),
        ] {
            assert_eq!(kind_of(code, rpc, message), want, "{code:?} {message:?}");
        }
    }
}
