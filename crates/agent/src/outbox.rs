//! Messages waiting for the stream: results, progress and events.
//!
//! Owns the queue that outlives a session: what dispatch and the hypervisor
//! event watcher produce while the link is down is kept (bounded) and sent
//! after reconnect, in order. Heartbeats never go here; a stale one is worth
//! nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use csagent_core::sync::lock;
use csagent_proto::v1::{agent_message::Msg, AgentMessage};

/// A VM state a running command takes a VM to and reports itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmTransition {
    Starting,
    Running,
    Stopping,
    Stopped,
}

pub struct Outbox {
    queue: Mutex<VecDeque<AgentMessage>>,
    capacity: usize,
    notify: Notify,
    /// VM power states a running command reports itself; see `claim`.
    claims: Mutex<HashMap<String, (VmTransition, Instant)>>,
}

/// libvirt's events for a command's own transition can trail its end.
const CLAIM_GRACE: Duration = Duration::from_secs(3);
/// Bounds a claim whose guard was leaked.
const CLAIM_MAX: Duration = Duration::from_secs(600);

/// Held by a command while it moves a VM to a state and reports the move
/// with its own events; released (after a grace period) on drop.
pub struct Claim<'a> {
    outbox: &'a Outbox,
    vm: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut c = lock(&self.outbox.claims);
        if let Some(e) = c.get_mut(&self.vm) {
            e.1 = Instant::now() + CLAIM_GRACE;
        }
    }
}

impl Outbox {
    pub fn new(capacity: usize) -> Outbox {
        Outbox {
            queue: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            notify: Notify::new(),
            claims: Mutex::new(HashMap::new()),
        }
    }

    /// A command is taking `vm` to `state` and sends its own events for
    /// it (with its command id): libvirt's event for that same state is
    /// then not sent as well, so the plane sees each transition once.
    pub fn claim(&self, vm: &str, state: VmTransition) -> Claim<'_> {
        let now = Instant::now();
        let mut c = lock(&self.claims);
        c.retain(|_, (_, until)| *until > now);
        c.insert(vm.to_string(), (state, now + CLAIM_MAX));
        Claim {
            outbox: self,
            vm: vm.to_string(),
        }
    }

    /// True when a command reports `vm` reaching `state` itself, so
    /// libvirt's event for it is not to be sent. Any other state (None: one
    /// no command reports) ends the claim: the VM has moved on, and what
    /// follows is news.
    pub fn claimed(&self, vm: &str, state: Option<VmTransition>) -> bool {
        let mut c = lock(&self.claims);
        match c.get(vm) {
            Some(&(s, until)) if Some(s) == state => until > Instant::now(),
            Some(_) => {
                c.remove(vm);
                false
            }
            None => false,
        }
    }

    /// Queues a message. When full, the oldest message is dropped (with a
    /// warning): a plane that stays away that long resends its commands and
    /// gets results from the agent's cache, and Register carries full state.
    pub fn push(&self, msg: AgentMessage) {
        let dropped = {
            let mut q = lock(&self.queue);
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
            if let Some(m) = lock(&self.queue).pop_front() {
                return m;
            }
            self.notify.notified().await;
        }
    }

    pub fn len(&self) -> usize {
        lock(&self.queue).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
    use csagent_proto::v1::CommandResult;

    fn result(id: &str) -> AgentMessage {
        AgentMessage {
            msg: Some(Msg::Result(CommandResult {
                command_id: id.into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn a_claim_hides_its_own_state_until_the_vm_moves_on() {
        let o = Outbox::new(2);
        let (running, paused) = (Some(VmTransition::Running), None);
        {
            let _c = o.claim("vm1", VmTransition::Running);
            assert!(o.claimed("vm1", running));
            assert!(!o.claimed("vm2", running));
        }
        // Released with a grace period for libvirt's trailing events.
        assert!(o.claimed("vm1", running));
        // Another state is news, and ends the claim.
        assert!(!o.claimed("vm1", paused));
        assert!(!o.claimed("vm1", running));
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
