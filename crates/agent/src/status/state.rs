//! The link's state as operators see it: where it is connected, since when,
//! heartbeats sent and acknowledged, sessions and reconnects.
//!
//! Owns only bookkeeping that link/ writes in one line per event and the
//! status socket and metrics read. It never influences the link: a reader
//! gets a copy, and a writer never waits on a reader for longer than a copy.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// What the link is doing now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Started; no endpoint dialed yet.
    #[default]
    Starting,
    /// Dialing or registering with `endpoint`.
    Connecting,
    /// Registered; heartbeats flow.
    Connected,
    /// The last attempt or session failed; waiting for the backoff.
    Retrying,
    /// Closed on shutdown.
    Closed,
}

/// A copy of the link's state, as served by `csagent status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LinkView {
    pub state: LinkState,
    /// The endpoint dialed or connected ("host:port").
    pub endpoint: String,
    /// The plane's id from RegisterAck while connected.
    pub plane_id: String,
    /// When `state` last changed, Unix ms.
    pub since_unix_ms: i64,
    /// Why the last attempt or session failed, until the next success.
    pub last_error: String,
    /// Sessions established since start.
    pub sessions: u64,
    /// Sessions established after the first: how often the link came back.
    pub reconnects: u64,
    pub heartbeat_seq: u64,
    /// 0: none yet.
    pub last_heartbeat_sent_unix_ms: i64,
    pub last_heartbeat_ack_unix_ms: i64,
}

#[derive(Default)]
struct Phase {
    state: LinkState,
    endpoint: String,
    plane_id: String,
    since_unix_ms: i64,
    last_error: String,
}

/// Shared between the link (writer) and the operator interfaces (readers).
#[derive(Default)]
pub struct LinkStatus {
    phase: Mutex<Phase>,
    sessions: AtomicU64,
    heartbeat_seq: AtomicU64,
    heartbeat_sent: AtomicI64,
    heartbeat_acked: AtomicI64,
}

impl LinkStatus {
    pub fn dialing(&self, endpoint: &str) {
        self.set(LinkState::Connecting, |p| {
            p.endpoint = endpoint.to_string();
            p.plane_id.clear();
        });
    }

    pub fn connected(&self, endpoint: &str, plane_id: &str) {
        self.sessions.fetch_add(1, Ordering::Relaxed);
        self.set(LinkState::Connected, |p| {
            p.endpoint = endpoint.to_string();
            p.plane_id = plane_id.to_string();
            p.last_error.clear();
        });
    }

    pub fn failed(&self, error: &str) {
        self.set(LinkState::Retrying, |p| p.last_error = error.to_string());
    }

    pub fn closed(&self) {
        self.set(LinkState::Closed, |_| {});
    }

    pub fn heartbeat_sent(&self, seq: u64, at_unix_ms: i64) {
        self.heartbeat_seq.store(seq, Ordering::Relaxed);
        self.heartbeat_sent.store(at_unix_ms, Ordering::Relaxed);
    }

    pub fn heartbeat_acked(&self, at_unix_ms: i64) {
        self.heartbeat_acked.store(at_unix_ms, Ordering::Relaxed);
    }

    pub fn view(&self) -> LinkView {
        let p = self.lock();
        let sessions = self.sessions.load(Ordering::Relaxed);
        LinkView {
            state: p.state,
            endpoint: p.endpoint.clone(),
            plane_id: p.plane_id.clone(),
            since_unix_ms: p.since_unix_ms,
            last_error: p.last_error.clone(),
            sessions,
            reconnects: sessions.saturating_sub(1),
            heartbeat_seq: self.heartbeat_seq.load(Ordering::Relaxed),
            last_heartbeat_sent_unix_ms: self.heartbeat_sent.load(Ordering::Relaxed),
            last_heartbeat_ack_unix_ms: self.heartbeat_acked.load(Ordering::Relaxed),
        }
    }

    fn set(&self, state: LinkState, f: impl FnOnce(&mut Phase)) {
        let mut p = self.lock();
        if p.state != state {
            p.state = state;
            p.since_unix_ms = csagent_core::time::unix_ms();
        }
        f(&mut p);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Phase> {
        // Each update is a few field assignments; a poisoned lock still
        // holds a usable state.
        csagent_core::sync::lock(&self.phase)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_count_sessions_after_the_first() {
        let s = LinkStatus::default();
        assert_eq!(s.view().state, LinkState::Starting);
        s.dialing("m1:8250");
        s.failed("refused");
        assert_eq!(s.view().state, LinkState::Retrying);
        assert_eq!(s.view().last_error, "refused");
        s.connected("m1:8250", "p1");
        let v = s.view();
        assert_eq!(
            (v.state, v.sessions, v.reconnects),
            (LinkState::Connected, 1, 0)
        );
        assert!(v.last_error.is_empty());
        s.failed("lost");
        s.dialing("m2:8250");
        s.connected("m2:8250", "p2");
        let v = s.view();
        assert_eq!(
            (v.endpoint.as_str(), v.plane_id.as_str()),
            ("m2:8250", "p2")
        );
        assert_eq!(v.reconnects, 1);
        s.heartbeat_sent(7, 1000);
        s.heartbeat_acked(1001);
        let v = s.view();
        assert_eq!(
            (
                v.heartbeat_seq,
                v.last_heartbeat_sent_unix_ms,
                v.last_heartbeat_ack_unix_ms
            ),
            (7, 1000, 1001)
        );
    }
}
