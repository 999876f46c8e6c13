//! The storage module's libvirt connection, until the hypervisor module owns
//! the agent's one connection.
//!
//! One `Connect` is kept behind a mutex and reopened when it dies: opening a
//! connection per call costs milliseconds (socket + auth), which would eat
//! the linked-clone budget. The mutex guards only the handle: libvirt
//! connections are thread-safe, so a clone is taken and calls run
//! unlocked, each on `spawn_blocking`. Must not: render or parse XML.

use std::sync::{Arc, Mutex};

use virt::connect::Connect;

use super::error::StorageError;
use super::qemu_img::RunCtl;

pub struct VirtConn {
    uri: String,
    conn: Arc<Mutex<Option<Connect>>>,
}

impl VirtConn {
    pub fn new(uri: String) -> Self {
        // libvirt prints every error to stderr by default; ours are returned.
        virt::error::clear_error_callback();
        Self {
            uri,
            conn: Arc::new(Mutex::new(None)),
        }
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Runs `f` with a live connection on a blocking thread, bounded by the
    /// operation's deadline and token. A libvirt call cannot be interrupted:
    /// on timeout we stop waiting and report it; the call finishes unseen.
    pub async fn call<T, F>(
        &self,
        step: &'static str,
        object: &str,
        ctl: &RunCtl,
        f: F,
    ) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Connect) -> Result<T, StorageError> + Send + 'static,
    {
        let uri = self.uri.clone();
        let slot = self.conn.clone();
        let job = tokio::task::spawn_blocking(move || {
            let conn = live_conn(&slot, &uri)?;
            f(&conn)
        });
        tokio::select! {
            r = job => r.map_err(|e| StorageError::Internal { step, reason: e.to_string() })?,
            _ = tokio::time::sleep_until(ctl.deadline) => Err(StorageError::Timeout {
                step, object: object.to_string(), after: ctl.budget,
            }),
            _ = ctl.cancel.cancelled() => Err(StorageError::Cancelled {
                step, object: object.to_string(),
            }),
        }
    }
}

fn live_conn(slot: &Mutex<Option<Connect>>, uri: &str) -> Result<Connect, StorageError> {
    // Poison only means a panic elsewhere; the Option is still usable.
    let mut guard = crate::sync::lock(slot);
    if let Some(c) = guard.as_ref() {
        if c.is_alive().unwrap_or(false) {
            return Ok(c.clone());
        }
    }
    let c = Connect::open(Some(uri)).map_err(|e| StorageError::Unavailable {
        what: format!("libvirt at {uri}"),
        reason: format!("{}; is libvirtd running?", e.message()),
    })?;
    *guard = Some(c.clone());
    Ok(c)
}
