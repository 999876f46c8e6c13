//! The agent's operator-facing side: systemd readiness and watchdog, the
//! status socket and the metrics endpoint, started together by agent.rs.
//!
//! Owns deciding when the agent is "ready" (configuration loaded, every
//! part started, the link task dialing or connected) and "alive" (the
//! runtime schedules tasks, the link task runs, the dispatcher answers):
//! only then is the watchdog pinged, so systemd restarts a hung agent. A
//! failure of these interfaces is logged and never stops the agent: they
//! observe it, they are not it.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::notify::{self, Notifier};
use crate::status::{LinkState, Sources};

/// Without a systemd watchdog, STATUS= is still refreshed this often.
const STATUS_REFRESH: Duration = Duration::from_secs(10);
/// A runtime that cannot run a trivial task within this is hung.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The running operator interfaces.
pub struct Ops {
    notifier: Arc<Notifier>,
}

/// Starts everything and tells systemd the agent is ready. `stop` is the
/// agent's stop token: the watchdog and servers end with it.
pub async fn start(
    cfg: &Config,
    sources: Sources,
    commands: Arc<crate::metrics::CommandMetrics>,
    link: AbortHandle,
    stop: CancellationToken,
) -> Ops {
    let notifier = Arc::new(Notifier::from_env().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "not notifying systemd");
        Notifier::to_nowhere()
    }));
    let sources = Arc::new(sources);
    start_status(cfg, &sources, &stop).await;
    start_metrics(cfg, &sources, commands, &stop).await;
    notifier.send_or_log(&format!(
        "READY=1\n{}",
        notify::status_line(&summary(&sources))
    ));
    tokio::spawn(watchdog(
        Arc::clone(&notifier),
        Arc::clone(&sources),
        link,
        stop,
    ));
    Ops { notifier }
}

impl Ops {
    /// Tells systemd the agent is stopping (it then waits, not restarts).
    pub fn stopping(&self) {
        self.notifier
            .send_or_log("STOPPING=1\nSTATUS=stopping: finishing in-flight commands");
    }
}

async fn start_status(cfg: &Config, sources: &Arc<Sources>, stop: &CancellationToken) {
    let path = &cfg.status.socket;
    if path.as_os_str().is_empty() {
        return;
    }
    match crate::status::server::bind(path).await {
        Ok(sock) => {
            tracing::info!(socket = %path.display(), "status socket ready");
            tokio::spawn(crate::status::server::serve(
                sock,
                Arc::clone(sources),
                stop.clone(),
            ));
        }
        Err(e) => tracing::warn!(error = %e, "csagent status will not answer"),
    }
}

async fn start_metrics(
    cfg: &Config,
    sources: &Arc<Sources>,
    commands: Arc<crate::metrics::CommandMetrics>,
    stop: &CancellationToken,
) {
    if !cfg.metrics.enabled {
        return;
    }
    match crate::metrics::http::bind(cfg.metrics.port).await {
        Ok(l) => {
            tracing::info!(
                port = cfg.metrics.port,
                "metrics on http://127.0.0.1:{}/metrics",
                cfg.metrics.port
            );
            tokio::spawn(crate::metrics::http::serve(
                l,
                Arc::clone(sources),
                commands,
                stop.clone(),
            ));
        }
        Err(e) => {
            tracing::error!(error = %e, port = cfg.metrics.port, "metrics endpoint unavailable: cannot bind 127.0.0.1:{}", cfg.metrics.port)
        }
    }
}

/// Pings the watchdog at half its interval while the agent proves alive.
async fn watchdog(
    notifier: Arc<Notifier>,
    sources: Arc<Sources>,
    link: AbortHandle,
    stop: CancellationToken,
) {
    if !notifier.is_active() {
        return;
    }
    let ping = notify::watchdog_ping_interval();
    let mut tick = tokio::time::interval(ping.unwrap_or(STATUS_REFRESH));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let status = notify::status_line(&summary(&sources));
        match alive(&sources, &link).await {
            Ok(()) if ping.is_some() => notifier.send_or_log(&format!("WATCHDOG=1\n{status}")),
            Ok(()) => notifier.send_or_log(&status),
            // No ping: systemd restarts the agent when WatchdogSec passes.
            Err(why) => tracing::error!(
                reason = why,
                "agent not healthy; withholding the watchdog ping"
            ),
        }
    }
}

/// The liveness proof behind a ping.
async fn alive(sources: &Sources, link: &AbortHandle) -> Result<(), &'static str> {
    if link.is_finished() {
        return Err("the link task ended while the agent runs");
    }
    // A runtime whose workers are all stuck cannot run a spawned task.
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::spawn(async {})).await {
        Ok(Ok(())) => {}
        _ => return Err("the async runtime did not run a task in time"),
    }
    // Takes the dispatcher's lock: a deadlock there stops the pings.
    let _ = (sources.in_flight)();
    Ok(())
}

/// One line for `systemctl status`.
fn summary(sources: &Sources) -> String {
    let l = sources.link.view();
    let vms = sources.vms.borrow().vms.len();
    let link = match l.state {
        LinkState::Connected => format!("connected to {} ({})", l.endpoint, l.plane_id),
        LinkState::Connecting => format!("connecting to {}", l.endpoint),
        LinkState::Retrying => format!("retrying ({})", l.last_error),
        LinkState::Starting => "starting".to_string(),
        LinkState::Closed => "closed".to_string(),
    };
    format!(
        "{link}; {vms} VMs; {} commands in flight",
        (sources.in_flight)().len()
    )
}
