//! The libvirt boundary: one connection, owned by one dedicated thread.
//!
//! libvirt calls block, sometimes for long (a hung QEMU holds its domain's job
//! lock), so no libvirt call ever runs on an async worker. Callers send a
//! closure to the connection thread and wait for its answer with a time limit:
//! a stuck call costs its caller a timeout, never the heartbeat or the link.
//! A dead connection (libvirtd restarted) is reopened with backoff on the next
//! call; the running VMs are not touched by any of this.

pub mod devices;
pub mod lifecycle;
mod power;
pub mod stats;

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use virt::connect::Connect;

pub use power::{PowerState, VmInfo};

use crate::error::ErrorKind;

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
    Libvirt { call: &'static str, message: String },
}

impl HvError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            HvError::Unavailable { .. } | HvError::Timeout { .. } => ErrorKind::Unavailable,
            HvError::NotFound(_) => ErrorKind::NotFound,
            HvError::Libvirt { .. } => ErrorKind::Internal,
        }
    }

    pub fn libvirt(call: &'static str, e: virt::error::Error) -> HvError {
        HvError::Libvirt {
            call,
            message: e.message().to_string(),
        }
    }
}

type Job = Box<dyn FnOnce(Result<&Connect, HvError>) + Send>;

/// Handle to the connection thread. Cheap to clone.
#[derive(Clone)]
pub struct Hypervisor {
    uri: Arc<str>,
    jobs: mpsc::Sender<Job>,
    call_timeout: Duration,
}

impl Hypervisor {
    /// Starts the connection thread. The connection is opened lazily, so an
    /// agent starts (and registers, saying libvirt is unavailable) even while
    /// libvirtd is down.
    pub fn start(uri: &str, call_timeout: Duration) -> Hypervisor {
        // libvirt's default handler prints every error to stderr, including
        // expected ones (a domain without csagent metadata); errors reach us
        // as return values and are logged where they matter.
        virt::error::clear_error_callback();
        let (tx, rx) = mpsc::channel::<Job>();
        let thread_uri = uri.to_string();
        let spawned = std::thread::Builder::new()
            .name("libvirt".into())
            .spawn(move || connection_thread(&thread_uri, &rx));
        if let Err(e) = spawned {
            // Jobs will fail with Unavailable: the sender's peer is gone.
            tracing::error!(error = %e, "cannot start the libvirt connection thread");
        }
        Hypervisor {
            uri: uri.into(),
            jobs: tx,
            call_timeout,
        }
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Runs `f` on the connection thread, waiting at most the call timeout.
    pub async fn call<R, F>(&self, call: &'static str, f: F) -> Result<R, HvError>
    where
        R: Send + 'static,
        F: FnOnce(&Connect) -> Result<R, HvError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = tx.send(conn.and_then(f));
        });
        self.jobs
            .send(job)
            .map_err(|_| self.unavailable("connection thread is gone"))?;
        match tokio::time::timeout(self.call_timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(self.unavailable("connection thread dropped the call")),
            Err(_) => Err(HvError::Timeout {
                call,
                timeout_ms: self.call_timeout.as_millis(),
            }),
        }
    }

    fn unavailable(&self, reason: &str) -> HvError {
        HvError::Unavailable {
            uri: self.uri.to_string(),
            reason: reason.into(),
        }
    }

    /// Every domain on the host with its power state.
    pub async fn list_vms(&self) -> Result<Vec<VmInfo>, HvError> {
        self.call("list_all_domains", power::list_all).await
    }

    /// One domain, by UUID.
    pub async fn vm(&self, uuid: uuid::Uuid) -> Result<VmInfo, HvError> {
        self.call("lookup_domain_by_uuid", move |c| power::one(c, uuid))
            .await
    }
}

/// Owns the connection. Reopens it when it died, at most once per backoff
/// period, so a down libvirtd is not hammered by every caller.
fn connection_thread(uri: &str, jobs: &mpsc::Receiver<Job>) {
    let mut conn: Option<Connect> = None;
    let mut next_attempt = Instant::now();
    let mut delay = Duration::from_millis(200);
    let mut last_error = String::new();
    while let Ok(job) = jobs.recv() {
        if conn
            .as_ref()
            .is_some_and(|c| !c.is_alive().unwrap_or(false))
        {
            tracing::warn!(uri, "libvirt connection lost; reconnecting");
            // virConnectClose on a dead connection can fail, and the virt
            // crate panics when it does: leak the handle instead.
            std::mem::forget(conn.take());
        }
        if conn.is_none() && Instant::now() >= next_attempt {
            match Connect::open(Some(uri)) {
                Ok(c) => {
                    tracing::info!(uri, "connected to libvirt");
                    delay = Duration::from_millis(200);
                    conn = Some(c);
                }
                Err(e) => {
                    last_error = e.message().to_string();
                    tracing::warn!(uri, error = %last_error, retry_in_ms = delay.as_millis() as u64, "cannot connect to libvirt");
                    next_attempt = Instant::now() + delay;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
        match conn.as_ref() {
            Some(c) => job(Ok(c)),
            None => job(Err(HvError::Unavailable {
                uri: uri.to_string(),
                reason: last_error.clone(),
            })),
        }
    }
}
