//! Messages waiting for the stream: results, progress and events.
//!
//! Owns the queue that outlives a session: what dispatch and the hypervisor
//! event watcher produce while the link is down is kept (bounded) and sent
//! after reconnect, in order. Heartbeats never go here; a stale one is worth
//! nothing.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::proto::v1::{agent_message::Msg, AgentMessage};

pub struct Outbox {
    queue: Mutex<VecDeque<AgentMessage>>,
    capacity: usize,
    notify: Notify,
}

impl Outbox {
    pub fn new(capacity: usize) -> Outbox {
        Outbox {
            queue: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            notify: Notify::new(),
        }
    }

    /// Queues a message. When full, the oldest message is dropped (with a
    /// warning): a plane that stays away that long resends its commands and
    /// gets results from the agent's cache, and Register carries full state.
    pub fn push(&self, msg: AgentMessage) {
        let dropped = {
            let mut q = self.lock();
            let dropped = if q.len() >= self.capacity {
                q.pop_front()
            } else {
                None
            };
            q.push_back(msg);
            dropped
        };
        if let Some(old) = dropped {
            tracing::warn!(
                kind = kind(&old),
                capacity = self.capacity,
                "outbox full while the link is down; dropped the oldest message"
            );
        }
        self.notify.notify_one();
    }

    /// Waits for the next message and removes it from the queue.
    pub async fn next(&self) -> AgentMessage {
        loop {
            if let Some(m) = self.lock().pop_front() {
                return m;
            }
            self.notify.notified().await;
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<AgentMessage>> {
        // A panic while holding this lock cannot leave the queue inconsistent
        // (push/pop are single operations), so a poisoned lock is still usable.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn kind(m: &AgentMessage) -> &'static str {
    match &m.msg {
        Some(Msg::Result(_)) => "result",
        Some(Msg::Progress(_)) => "progress",
        Some(Msg::Event(_)) => "event",
        Some(Msg::HostReport(_)) => "host_report",
        Some(Msg::Register(_)) => "register",
        Some(Msg::Heartbeat(_)) => "heartbeat",
        Some(Msg::RenewCertificate(_)) => "renew_certificate",
        None => "empty",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1::CommandResult;

    fn result(id: &str) -> AgentMessage {
        AgentMessage {
            msg: Some(Msg::Result(CommandResult {
                command_id: id.into(),
                ..Default::default()
            })),
        }
    }

    #[tokio::test]
    async fn bounded_fifo() {
        let o = Outbox::new(2);
        o.push(result("a"));
        o.push(result("b"));
        o.push(result("c"));
        assert_eq!(o.len(), 2);
        for want in ["b", "c"] {
            match o.next().await.msg {
                Some(Msg::Result(r)) => assert_eq!(r.command_id, want),
                other => panic!("{other:?}"),
            }
        }
    }
}
