//! Arrival order per VM: each command on a VM waits for the one that
//! arrived before it on that VM, and for nothing else.
//!
//! Owns the order, not the work: a `Place` is taken synchronously when the
//! command is received (so the order is the stream's order, whatever the
//! runtime's scheduler does with the tasks afterwards), and the command's
//! task awaits `turn` before it runs. A command that gives up its place
//! while still waiting (cancelled, deadline) passes its predecessor's end on
//! to its successor, so the chain never skips a command that still runs.
//! Entries vanish when their last command ends: the map does not grow with
//! every VM ever seen.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

#[derive(Default)]
pub struct VmQueues {
    /// Per VM: the newest command's ticket and the signal of its end.
    tails: Mutex<HashMap<String, (u64, oneshot::Receiver<()>)>>,
    next_ticket: std::sync::atomic::AtomicU64,
}

/// A command's place in its VM's queue. Dropping it ends the command's turn.
pub struct Place {
    queues: Arc<VmQueues>,
    key: String,
    ticket: u64,
    /// The end of the command before this one; None once it has ended.
    before: Option<oneshot::Receiver<()>>,
    /// Dropped when this command ends: the next one's `before`.
    done: Option<oneshot::Sender<()>>,
}

impl VmQueues {
    /// Takes the next place on `key`. Never waits.
    pub fn enter(self: &Arc<Self>, key: &str) -> Place {
        let ticket = self
            .next_ticket
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (done, end) = oneshot::channel();
        let before = csagent_core::sync::lock(&self.tails)
            .insert(key.to_string(), (ticket, end))
            .map(|(_, before)| before);
        Place {
            queues: Arc::clone(self),
            key: key.to_string(),
            ticket,
            before,
            done: Some(done),
        }
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        csagent_core::sync::lock(&self.tails).is_empty()
    }
}

impl Place {
    /// Waits until every command that arrived earlier on this VM has ended.
    pub async fn turn(&mut self) {
        if let Some(before) = self.before.as_mut() {
            // Err means its sender was dropped: that command ended.
            let _ = before.await;
            self.before = None;
        }
    }

    fn end(queues: &VmQueues, key: &str, ticket: u64, done: Option<oneshot::Sender<()>>) {
        let mut tails = csagent_core::sync::lock(&queues.tails);
        if tails.get(key).is_some_and(|(t, _)| *t == ticket) {
            tails.remove(key);
        }
        drop(done);
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let done = self.done.take();
        let Some(before) = self.before.take() else {
            Place::end(&self.queues, &self.key, self.ticket, done);
            return;
        };
        // Given up while waiting: the successor must still wait for the
        // predecessor, so the handoff outlives this place.
        let (queues, key, ticket) = (Arc::clone(&self.queues), self.key.clone(), self.ticket);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    let _ = before.await;
                    Place::end(&queues, &key, ticket, done);
                });
            }
            // No runtime means the process is ending; nothing waits any more.
            Err(_) => Place::end(&queues, &key, ticket, done),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn commands_on_one_vm_run_in_the_order_they_took_their_place() {
        let q = Arc::new(VmQueues::default());
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..200 {
            let mut place = q.enter("vm");
            let order = Arc::clone(&order);
            tasks.push(tokio::spawn(async move {
                place.turn().await;
                tokio::task::yield_now().await;
                csagent_core::sync::lock(&order).push(i);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let order = csagent_core::sync::lock(&order).clone();
        assert_eq!(order, (0..200).collect::<Vec<_>>());
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn a_place_given_up_while_waiting_does_not_let_the_next_skip_ahead() {
        let q = Arc::new(VmQueues::default());
        let mut first = q.enter("vm");
        first.turn().await;
        let second = q.enter("vm");
        let mut third = q.enter("vm");
        drop(second); // cancelled while the first still runs
        let waiter = tokio::spawn(async move { third.turn().await });
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!waiter.is_finished(), "the third ran beside the first");
        drop(first);
        tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .expect("the third never got its turn")
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn other_vms_do_not_wait() {
        let q = Arc::new(VmQueues::default());
        let mut a = q.enter("a");
        a.turn().await;
        let mut b = q.enter("b");
        tokio::time::timeout(Duration::from_millis(100), b.turn())
            .await
            .expect("b waited for a");
    }
}
