//! CheckHost: this host, as a neighbour, judges whether a silent host is
//! alive from what it writes on the shared storage.
//!
//! Owns the defaults of a check (this host's pools, a window of three
//! heartbeat intervals) and refusing nonsense (a host asked about itself).
//! Watching and judging are csagent-ha's; acting on the verdict is the
//! plane's.

use std::path::PathBuf;
use std::time::Duration;

use super::{Handlers, Reply};
use csagent_core::error::CommandError;

#[derive(Debug)]
pub struct CheckRequest {
    pub host: uuid::Uuid,
    /// Empty: this host's own [ha] pools.
    pub pools: Vec<PathBuf>,
    pub disks: Vec<PathBuf>,
    pub window: Option<Duration>,
}

impl Handlers {
    pub(super) async fn check_host(&self, req: CheckRequest) -> Result<Reply, CommandError> {
        let cfg = self.ha.config();
        if req.host == cfg.host {
            return Err(CommandError::invalid(
                "CheckHost asks a neighbour about another host, not about itself",
            ));
        }
        let pools = if req.pools.is_empty() {
            cfg.pools.clone()
        } else {
            req.pools
        };
        if pools.is_empty() && req.disks.is_empty() {
            return Err(CommandError::invalid(
                "this host has no [ha] pools and the check names none: nothing to read",
            ));
        }
        let q = csagent_ha::Question {
            host: req.host,
            pools,
            disks: req.disks,
            window: req.window.unwrap_or(cfg.interval * 3),
            timeout: cfg.timeout,
        };
        tracing::info!(host = %q.host, pools = q.pools.len(), disks = q.disks.len(), window_ms = q.window.as_millis() as u64, "checking a silent host");
        // A Cancel or the deadline drops this future: the check only reads.
        let finding = csagent_ha::check(&q).await;
        tracing::info!(host = %q.host, verdict = ?finding.verdict, "silent host checked");
        Ok(Reply::HostChecked(req.host, finding))
    }
}
