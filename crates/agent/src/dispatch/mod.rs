//! Command routing: dedupe, per-VM serialisation, worker limit, deadlines,
//! cancellation and the size limit of results.
//!
//! Owns the life of a command from receipt to result. A command id is run at
//! most once per agent process: a repeat while it runs is ignored (its result
//! is coming), a repeat after it finished is answered from the result cache.
//! Commands on the same VM run one after another in arrival order; at most
//! `workers` run at once. The deadline counts from receipt, so time spent
//! queueing counts too. Results go to the outbox, which survives reconnects.
//! Commands arrive and leave as wire envelopes; convert/command.rs turns
//! their bodies into the crate's own `Request`/`Reply` and back, so
//! handlers never see generated code.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::convert::command::{decode, error_result, finish};
use crate::ctx::Ctx;
use crate::handlers::{Handlers, Reply, Request};
use crate::metrics::CommandMetrics;
use crate::outbox::Outbox;
use vm_queue::{Place, VmQueues};

mod vm_queue;
use csagent_core::error::{CommandError, ErrorKind};
use csagent_proto::v1 as pb;

/// Limits of a dispatcher.
#[derive(Clone, Debug)]
pub struct DispatchConfig {
    pub workers: usize,
    pub default_deadline: Duration,
    pub result_cache_size: usize,
    /// The link's message limit: a result that would not fit in one stream
    /// message is answered with RESOURCE_EXHAUSTED instead (see `fit`).
    pub max_message_bytes: usize,
    /// Accepted, unfinished commands past which new ones are refused.
    pub max_queued: usize,
}

pub struct Dispatcher {
    cfg: DispatchConfig,
    workers: Arc<Semaphore>,
    vm_queues: Arc<VmQueues>,
    cache: Mutex<ResultCache>,
    outbox: Arc<Outbox>,
    handlers: Arc<Handlers>,
    metrics: Arc<CommandMetrics>,
    accepting: AtomicBool,
    /// Parent of every command's token: cancelled at the end of shutdown.
    root: CancellationToken,
    tasks: TaskTracker,
}

impl Dispatcher {
    pub fn new(
        cfg: DispatchConfig,
        outbox: Arc<Outbox>,
        handlers: Arc<Handlers>,
        metrics: Arc<CommandMetrics>,
    ) -> Arc<Dispatcher> {
        Arc::new(Dispatcher {
            workers: Arc::new(Semaphore::new(cfg.workers.max(1))),
            cache: Mutex::new(ResultCache::new(cfg.result_cache_size)),
            cfg,
            vm_queues: Arc::new(VmQueues::default()),
            outbox,
            handlers,
            metrics,
            accepting: AtomicBool::new(true),
            root: CancellationToken::new(),
            tasks: TaskTracker::new(),
        })
    }

    /// Accepts a command from the plane. Never blocks; the result arrives in
    /// the outbox.
    pub fn submit(self: &Arc<Self>, cmd: pb::Command) {
        let received = Instant::now();
        if cmd.id.is_empty() {
            tracing::warn!("command without id refused");
            self.outbox.push(result_msg(finish(
                "",
                Err(CommandError::invalid("command id is empty")),
                received,
            )));
            return;
        }
        let token = match self.lock_cache().admit(&cmd.id, &self.root) {
            Admission::Cached(res) => {
                tracing::debug!(command_id = %cmd.id, "repeated command answered from cache");
                self.outbox.push(result_msg((*res).clone()));
                return;
            }
            Admission::Running => {
                tracing::debug!(command_id = %cmd.id, "repeated command is still running");
                return;
            }
            Admission::New(token) => token,
        };
        if !self.accepting.load(Ordering::SeqCst) {
            self.complete(&cmd.id, received, Err(shutting_down()));
            return;
        }
        let queued = self.tasks.len();
        if queued >= self.cfg.max_queued {
            tracing::warn!(command_id = %cmd.id, queued, "command queue full; refused");
            // Not cached: the same id sent again later is run then.
            self.lock_cache().forget(&cmd.id);
            let res = finish(&cmd.id, Err(queue_full(queued)), received);
            self.outbox.push(result_msg(res));
            return;
        }
        let deadline = received + self.deadline_of(&cmd);
        let pb::Command { id, body, .. } = cmd;
        // Decoded here, not in the task, so the command takes its place in
        // its VM's queue in the order the stream delivered it.
        let decoded = decode(body);
        let place = match &decoded {
            Ok((_, Some(key))) => Some(self.vm_queues.enter(key)),
            _ => None,
        };
        let this = Arc::clone(self);
        self.tasks.spawn(async move {
            let outcome = this.execute(&id, decoded, place, token, deadline).await;
            this.complete(&id, received, outcome);
            // This task is the last one: a burst, if there was one, is over.
            if this.tasks.len() <= 1 {
                crate::heap::trim_when_idle();
            }
        });
    }

    /// Cancels a running command; unknown or finished ids are ignored.
    pub fn cancel(&self, command_id: &str) {
        if let Some(token) = self.lock_cache().running_token(command_id) {
            tracing::info!(command_id, "cancel requested");
            token.cancel();
        }
    }

    /// Ids of commands still running (sent in Register after a reconnect).
    pub fn in_flight(&self) -> Vec<String> {
        self.lock_cache().running_ids()
    }

    /// Graceful stop: refuse new commands, let running ones finish within
    /// `grace`, then cancel the rest and wait for their results.
    pub async fn shutdown(&self, grace: Duration) {
        self.accepting.store(false, Ordering::SeqCst);
        self.tasks.close();
        let n = self.tasks.len();
        if n > 0 {
            tracing::info!(
                in_flight = n,
                grace_ms = grace.as_millis() as u64,
                "waiting for in-flight commands"
            );
        }
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                in_flight = self.tasks.len(),
                "grace period over; cancelling in-flight commands"
            );
            self.root.cancel();
            self.tasks.wait().await;
        }
    }

    fn deadline_of(&self, cmd: &pb::Command) -> Duration {
        match cmd.deadline_ms {
            0 => self.cfg.default_deadline,
            ms => Duration::from_millis(ms),
        }
    }

    async fn execute(
        &self,
        id: &str,
        decoded: Result<(Request, Option<String>), CommandError>,
        mut place: Option<Place>,
        token: CancellationToken,
        deadline: Instant,
    ) -> Result<Reply, CommandError> {
        let started = Instant::now();
        let (req, vm) = match decoded {
            Ok(d) => d,
            Err(e) => {
                // Refused before it had a type: still a command the plane
                // sent, counted so a misbehaving plane shows in metrics.
                let refused = Err(e);
                self.metrics
                    .record("undecodable", &refused, started.elapsed());
                return refused;
            }
        };
        let kind = req.name();
        let stops_itself = req.stops_itself();
        let span = tracing::info_span!("command", command_id = %id, vm = %vm.as_deref().unwrap_or("-"), kind = req.name());
        let ctx = Ctx {
            command_id: id.to_string(),
            cancel: token.clone(),
            deadline,
            outbox: Arc::clone(&self.outbox),
            progress: progress_on_stream(id, &self.outbox),
            events: events_on_stream(id, &self.outbox),
        };
        // Waiting for the VM's turn and a worker is bounded for every
        // command; the handler of one that stops itself is not dropped.
        let queued = async {
            if let Some(place) = place.as_mut() {
                place.turn().await;
            }
            self.workers.acquire().await.map_err(|_| shutting_down())
        };
        let handlers = &self.handlers;
        let ctx = &ctx;
        let accepting = &self.accepting;
        let token = &token;
        async move {
            let outcome = match bounded(token, deadline, accepting, queued).await {
                Err(e) => Err(e),
                Ok(_permit) => {
                    tracing::debug!("started");
                    let work = handlers.handle(req, ctx);
                    if stops_itself {
                        work.await
                    } else {
                        bounded(token, deadline, accepting, work).await
                    }
                }
            };
            self.metrics.record(kind, &outcome, started.elapsed());
            match &outcome {
                Ok(_) => tracing::info!("done"),
                Err(e) => tracing::warn!(code = ?e.kind, error = %e.message, "failed"),
            }
            outcome
        }
        .instrument(span)
        .await
    }

    fn complete(&self, id: &str, received: Instant, outcome: Result<Reply, CommandError>) {
        let res = fit(finish(id, outcome, received), self.cfg.max_message_bytes);
        let res = self.lock_cache().finish(id, res);
        self.outbox.push(result_msg((*res).clone()));
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, ResultCache> {
        // Every cache operation is a single map update; poisoning cannot
        // leave it half-changed.
        csagent_core::sync::lock(&self.cache)
    }
}

/// `work` unless the command is cancelled or its deadline passes first.
async fn bounded<T>(
    token: &CancellationToken,
    deadline: Instant,
    accepting: &AtomicBool,
    work: impl std::future::Future<Output = Result<T, CommandError>>,
) -> Result<T, CommandError> {
    tokio::select! {
        biased;
        _ = token.cancelled() => Err(cancelled(accepting)),
        r = tokio::time::timeout_at(deadline.into(), work) => r.unwrap_or_else(|_| Err(deadline_exceeded())),
    }
}

fn shutting_down() -> CommandError {
    CommandError::new(
        ErrorKind::ShuttingDown,
        "the agent is shutting down and takes no new commands; resend after it reconnects",
    )
}

fn queue_full(queued: usize) -> CommandError {
    CommandError::new(
        ErrorKind::ResourceExhausted,
        format!(
            "the agent already holds {queued} unfinished commands (agent.max_queued_commands); \
             refused without running, resend when earlier ones have answered"
        ),
    )
}

fn cancelled(accepting: &AtomicBool) -> CommandError {
    if accepting.load(Ordering::SeqCst) {
        CommandError::new(ErrorKind::Cancelled, "cancelled by the management plane")
    } else {
        CommandError::new(
            ErrorKind::Cancelled,
            "cancelled: the agent is shutting down",
        )
    }
}

fn deadline_exceeded() -> CommandError {
    CommandError::new(
        ErrorKind::DeadlineExceeded,
        "deadline exceeded before the command finished (time spent queueing counts)",
    )
}

/// Room for gRPC's framing and the AgentMessage wrapper around a result:
/// tonic counts the encoded message against the limit, the 5-byte frame
/// header is outside it, so this is margin, not a measured overhead.
const RESULT_MARGIN: usize = 64;
/// `AgentMessage.result`'s field number in agent.proto.
const AGENT_MESSAGE_RESULT: u32 = 3;

/// A result too large for the stream would kill the session, and every
/// resend of its id (answered from the cache) would kill it again, so the
/// plane could never learn the outcome. It becomes an error that fits; this
/// runs before the cache, so a resend gets the same error.
fn fit(res: pb::CommandResult, max_message_bytes: usize) -> pb::CommandResult {
    let limit = max_message_bytes.saturating_sub(RESULT_MARGIN);
    let size = wrapped_len(&res);
    if size <= limit {
        return res;
    }
    tracing::warn!(
        command_id = %res.command_id,
        size,
        limit,
        "result too large for one stream message; answering RESOURCE_EXHAUSTED"
    );
    let e = CommandError::new(
        ErrorKind::ResourceExhausted,
        format!(
            "the result is {size} bytes, more than the {limit} bytes one stream message may carry \
             (management.max_message_bytes {max_message_bytes} less framing); ask for less \
             (fewer VMs, a page) or raise the limit on both ends"
        ),
    );
    error_result(&res.command_id, e, res.elapsed_ms)
}

/// The encoded length of `res` inside its AgentMessage: the wrapper adds its
/// field key and a length, measured without copying a result that may be
/// megabytes.
fn wrapped_len(res: &pb::CommandResult) -> usize {
    use prost::Message;
    let inner = res.encoded_len();
    prost::encoding::key_len(AGENT_MESSAGE_RESULT)
        + prost::encoding::encoded_len_varint(inner as u64)
        + inner
}

fn result_msg(r: pb::CommandResult) -> pb::AgentMessage {
    pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Result(r)),
    }
}

// ---------------------------------------------------------------------------

enum Entry {
    Running(CancellationToken),
    Done(Arc<pb::CommandResult>),
}

enum Admission {
    New(CancellationToken),
    Running,
    Cached(Arc<pb::CommandResult>),
}

/// Running commands and the last `capacity` results, by command id.
struct ResultCache {
    entries: HashMap<String, Entry>,
    done_order: VecDeque<String>,
    capacity: usize,
}

impl ResultCache {
    fn new(capacity: usize) -> ResultCache {
        ResultCache {
            entries: HashMap::new(),
            done_order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    fn admit(&mut self, id: &str, root: &CancellationToken) -> Admission {
        match self.entries.get(id) {
            Some(Entry::Running(_)) => Admission::Running,
            Some(Entry::Done(r)) => Admission::Cached(Arc::clone(r)),
            None => {
                let token = root.child_token();
                self.entries
                    .insert(id.to_string(), Entry::Running(token.clone()));
                Admission::New(token)
            }
        }
    }

    fn finish(&mut self, id: &str, res: pb::CommandResult) -> Arc<pb::CommandResult> {
        let res = Arc::new(res);
        self.entries
            .insert(id.to_string(), Entry::Done(Arc::clone(&res)));
        self.done_order.push_back(id.to_string());
        while self.done_order.len() > self.capacity {
            if let Some(old) = self.done_order.pop_front() {
                self.entries.remove(&old);
            }
        }
        res
    }

    /// Drops a command admitted but never run.
    fn forget(&mut self, id: &str) {
        if matches!(self.entries.get(id), Some(Entry::Running(_))) {
            self.entries.remove(id);
        }
    }

    fn running_token(&self, id: &str) -> Option<CancellationToken> {
        match self.entries.get(id) {
            Some(Entry::Running(t)) => Some(t.clone()),
            _ => None,
        }
    }

    fn running_ids(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(_, e)| matches!(e, Entry::Running(_)))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// A command's progress as CommandProgress messages on the stream.
fn progress_on_stream(command_id: &str, outbox: &Arc<Outbox>) -> crate::ctx::ProgressReporter {
    let outbox = Arc::clone(outbox);
    let id = command_id.to_string();
    Arc::new(move |stage, p| {
        let msg = crate::convert::migrate::progress(&id, stage, p);
        outbox.push(pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Progress(msg)),
        });
    })
}

/// A command's own VM events as Event messages on the stream.
fn events_on_stream(command_id: &str, outbox: &Arc<Outbox>) -> crate::ctx::EventReporter {
    let outbox = Arc::clone(outbox);
    let id = command_id.to_string();
    Arc::new(move |e| outbox.push(crate::convert::vmstate::command_event(&id, e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_bounds_and_dedupes() {
        let root = CancellationToken::new();
        let mut c = ResultCache::new(2);
        for id in ["a", "b", "c"] {
            assert!(matches!(c.admit(id, &root), Admission::New(_)));
            assert!(matches!(c.admit(id, &root), Admission::Running));
            c.finish(id, pb::CommandResult::default());
        }
        assert!(matches!(c.admit("c", &root), Admission::Cached(_)));
        // "a" was evicted: the oldest finished entry goes first.
        assert!(matches!(c.admit("a", &root), Admission::New(_)));
    }

    fn echo_result(payload: &str) -> pb::CommandResult {
        finish("big-1", Ok(Reply::Echo(payload.into())), Instant::now())
    }

    #[test]
    fn a_result_that_fits_is_sent_as_it_is() {
        let res = echo_result("small");
        assert_eq!(fit(res.clone(), 64 * 1024), res);
    }

    #[test]
    fn a_result_too_large_becomes_resource_exhausted_naming_size_and_limit() {
        let res = fit(echo_result(&"x".repeat(70_000)), 64 * 1024);
        assert_eq!(res.command_id, "big-1");
        assert_eq!(res.status, pb::CommandStatus::Error as i32);
        assert_eq!(res.error_code, pb::ErrorCode::ResourceExhausted as i32);
        assert!(res.result.is_none());
        assert!(
            res.message.contains("70")
                && res
                    .message
                    .contains(&(64 * 1024 - RESULT_MARGIN).to_string()),
            "{}",
            res.message
        );
        use prost::Message;
        assert!(result_msg(res).encoded_len() < 64 * 1024);
    }

    #[test]
    fn the_size_fit_measures_is_the_wrapped_messages_encoded_length() {
        use prost::Message;
        for n in [0, 100, 200, 70_000, 3 << 20] {
            let res = echo_result(&"x".repeat(n));
            assert_eq!(
                wrapped_len(&res),
                result_msg(res).encoded_len(),
                "payload of {n}"
            );
        }
    }
}
