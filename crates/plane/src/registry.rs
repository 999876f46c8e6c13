//! The plane's registry of hosts: connection, liveness state, last reports,
//! and the commands waiting for each host's answer.
//!
//! Owns host state (Up / Alert / Down from heartbeat age; with high
//! availability on, Investigating, Disconnected and Down are set by the HA
//! engine instead, ha/mod.rs) and command bookkeeping, including the book of
//! HA VMs (ha_book.rs) the results and heartbeats feed. A command for a disconnected host is queued and sent when it
//! registers; every unanswered command is sent again on each Register (the
//! agent answers repeats from its cache, so this is safe), which is how a
//! command sent during a network cut or a failover still gets its answer.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc};

use crate::ha_book::Book;
use csagent_core::time::unix_ms;
use csagent_proto::v1 as pb;

pub type ToAgent = mpsc::Sender<Result<pb::PlaneMessage, tonic::Status>>;

/// Liveness policy the plane hands to agents and applies to them.
#[derive(Clone, Debug)]
pub struct Liveness {
    pub heartbeat_interval: Duration,
    /// No heartbeat for this long: Alert.
    pub alert_after: Duration,
    /// No heartbeat for this long: Down.
    pub down_after: Duration,
    pub host_report_interval: Duration,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            heartbeat_interval: Duration::from_secs(2),
            alert_after: Duration::from_secs(6),
            down_after: Duration::from_secs(20),
            host_report_interval: Duration::from_secs(30),
        }
    }
}

struct Conn {
    id: u64,
    tx: ToAgent,
    peer: String,
}

struct Pending {
    cmd: pb::Command,
    watchers: Vec<mpsc::UnboundedSender<pb::CommandUpdate>>,
    /// Progress updates forwarded so far (bounded, see MAX_PROGRESS).
    progress: u32,
}

#[derive(Default)]
struct Host {
    register: pb::Register,
    conn: Option<Conn>,
    last_heartbeat: Option<Instant>,
    last_heartbeat_unix_ms: i64,
    heartbeat_seq: u64,
    hypervisor_available: bool,
    vms: Vec<pb::VmPower>,
    health: Option<pb::HostHealth>,
    storage_heartbeats: Vec<pb::StorageHeartbeat>,
    last_report: Option<pb::HostReport>,
    skew_ms: i64,
    state: pb::HostState,
    pending: HashMap<String, Pending>,
    /// Results of commands this plane did not send, newest last.
    late: VecDeque<pb::CommandResult>,
    /// Expiry of the host's certificate from its heartbeats, Unix ms.
    cert_not_after_unix_ms: i64,
    maintenance: pb::MaintenanceState,
    maintenance_errors: Vec<String>,
    /// The state was set by the HA engine, not by heartbeat age; it holds
    /// until the host is heard from again.
    ha_hold: bool,
    state_reason: String,
}

/// Late results kept per host.
const LATE_RESULTS: usize = 256;
/// Commands of one host waiting for their results: past this a new one is
/// answered at once, so an agent that never answers cannot grow the plane.
const MAX_PENDING_PER_HOST: usize = 4096;
/// Callers waiting on one command id, and progress updates forwarded to
/// each: a watcher that never reads holds at most this many, plus the result.
const MAX_WATCHERS: usize = 64;
const MAX_PROGRESS: u32 = 4096;

pub struct Registry {
    hosts: Mutex<HashMap<String, Host>>,
    liveness: Liveness,
    events: broadcast::Sender<pb::PlaneEvent>,
    next_conn: AtomicU64,
    next_cmd: AtomicU64,
    plane_id: String,
    /// Random per process: ids this plane generates must never repeat after
    /// a restart, or an agent would answer a new command from its cache.
    id_prefix: String,
    /// High availability is on: a silent host stays in Alert until the HA
    /// engine investigates it, never Down by heartbeat age alone.
    ha: bool,
    book: Mutex<Book>,
}

impl Registry {
    pub fn new(liveness: Liveness, plane_id: String) -> Registry {
        Registry {
            hosts: Mutex::new(HashMap::new()),
            liveness,
            events: broadcast::channel(4096).0,
            next_conn: AtomicU64::new(1),
            next_cmd: AtomicU64::new(1),
            id_prefix: format!("{plane_id}-{:08x}", rand::random::<u32>()),
            plane_id,
            ha: false,
            book: Mutex::default(),
        }
    }

    /// The same registry with high availability on.
    pub fn with_ha(mut self) -> Registry {
        self.ha = true;
        self
    }

    /// The same registry keeping its book of HA VMs in `book`.
    pub fn with_book(mut self, book: Book) -> Registry {
        self.book = Mutex::new(book);
        self
    }

    pub fn ha_enabled(&self) -> bool {
        self.ha
    }

    /// The book of HA VMs. Lock order: hosts, then book.
    pub fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        csagent_core::sync::lock(&self.book)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Host>> {
        // Each operation is a short update of one host; a poisoned lock still
        // holds consistent data.
        csagent_core::sync::lock(&self.hosts)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<pb::PlaneEvent> {
        self.events.subscribe()
    }

    /// A verified agent registered: replaces any older connection of the same
    /// host, acknowledges, and (re)sends every unanswered command.
    pub fn connect(&self, mut reg: pb::Register, tx: ToAgent, peer: String) -> u64 {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        // Keyed as every lookup spells it (the certificate's identity, lower
        // case), whatever case the agent sent.
        reg.host_uuid.make_ascii_lowercase();
        let uuid = reg.host_uuid.clone();
        let ack = pb::RegisterAck {
            heartbeat_interval_ms: ms(self.liveness.heartbeat_interval),
            heartbeat_grace_ms: ms(self.liveness.alert_after),
            host_report_interval_ms: ms(self.liveness.host_report_interval),
            server_time_unix_ms: unix_ms(),
            plane_id: self.plane_id.clone(),
        };
        let mut hosts = self.lock();
        let host = hosts.entry(uuid.clone()).or_default();
        let _ = tx.try_send(Ok(plane(pb::plane_message::Msg::RegisterAck(ack))));
        for p in host.pending.values() {
            let _ = tx.try_send(Ok(plane(pb::plane_message::Msg::Command(p.cmd.clone()))));
        }
        host.vms = reg
            .vms
            .iter()
            .map(|v| pb::VmPower {
                vm_uuid: v.vm_uuid.clone(),
                state: v.state,
                reason: v.reason.clone(),
                managed: v.managed,
            })
            .collect();
        host.hypervisor_available = reg.hypervisor_available;
        for what in &reg.isolation_actions {
            tracing::warn!(host = %uuid, "while isolated, the agent did: {what}");
        }
        host.skew_ms = unix_ms().saturating_sub(reg.sent_at_unix_ms);
        host.register = reg;
        host.conn = Some(Conn { id, tx, peer });
        host.last_heartbeat = Some(Instant::now());
        host.last_heartbeat_unix_ms = unix_ms();
        self.heard_from(&uuid, host);
        let running = live_vms(&host.vms);
        let stale = self.book().stale_on_return(&uuid, &running);
        drop(hosts);
        tracing::info!(host = %uuid, conn = id, "host registered");
        for (vm, now_on) in stale {
            self.stop_stale_copy(&uuid, &vm, &now_on);
        }
        id
    }

    /// The host came back running a VM that HA restarted on `now_on` while
    /// it was away: that copy goes, at once and without a shutdown (the
    /// other is the one the cloud kept), and its definition with it, so
    /// nothing starts it there again. A StopVm would first ask the guest
    /// for up to two minutes, both copies writing the disk meanwhile.
    fn stop_stale_copy(&self, uuid: &str, vm: &str, now_on: &str) {
        let message = format!("VM {vm} was restarted on {now_on} while {uuid} was away; {uuid} still reported it, so that copy was destroyed");
        tracing::warn!(host = %uuid, vm = %vm, now_on = %now_on, "{message}");
        let cmd = pb::Command {
            id: format!(
                "ha-stale-{vm}-{}",
                self.next_cmd.fetch_add(1, Ordering::Relaxed)
            ),
            deadline_ms: 60_000,
            body: Some(pb::command::Body::DestroyVm(pb::DestroyVm {
                vm_uuid: vm.to_string(),
            })),
        };
        let (id, _updates) = self.send(uuid, cmd);
        self.ha_event(
            uuid,
            vm,
            pb::ha_action::Kind::StoppedStaleCopy,
            "",
            &format!("{message} (command {id})"),
        );
    }

    /// Announces one HA step.
    pub fn ha_event(
        &self,
        host: &str,
        vm: &str,
        kind: pb::ha_action::Kind,
        to: &str,
        message: &str,
    ) {
        let _ = self.events.send(pb::PlaneEvent {
            host_uuid: host.to_string(),
            at_unix_ms: unix_ms(),
            event: Some(pb::plane_event::Event::Ha(pb::HaAction {
                vm_uuid: vm.to_string(),
                kind: kind as i32,
                to_host: to.to_string(),
                message: message.to_string(),
            })),
        });
    }

    /// A heartbeat or Register arrived: the host is Up, whatever HA decided.
    fn heard_from(&self, uuid: &str, host: &mut Host) {
        if host.ha_hold {
            tracing::info!(host = %uuid, was = host.state.as_str_name(), "host is heard from again");
        }
        host.ha_hold = false;
        host.state_reason.clear();
        self.set_state(uuid, host, pb::HostState::Up);
    }

    /// The stream of connection `conn` ended.
    pub fn disconnect(&self, uuid: &str, conn: u64) {
        let mut hosts = self.lock();
        if let Some(h) = hosts.get_mut(uuid) {
            if h.conn.as_ref().is_some_and(|c| c.id == conn) {
                h.conn = None;
                tracing::info!(host = %uuid, conn, "host disconnected");
                if h.state == pb::HostState::Up {
                    self.set_state(uuid, h, pb::HostState::Disconnected);
                }
            }
        }
    }

    /// The plane is stopping: every agent stream ends now, with a status
    /// saying so, as a plane process's exit would end them. Without this a
    /// stopped in-process plane would keep its agents' streams open.
    pub fn close_all(&self) {
        let mut hosts = self.lock();
        for (uuid, h) in hosts.iter_mut() {
            if let Some(c) = h.conn.take() {
                let _ = c.tx.try_send(Err(tonic::Status::unavailable(
                    "the management plane is stopping",
                )));
                tracing::info!(host = %uuid, conn = c.id, "host disconnected: the plane is stopping");
            }
        }
    }

    /// Handles one message from a registered agent.
    pub fn on_message(&self, uuid: &str, msg: pb::AgentMessage) {
        use pb::agent_message::Msg;
        let mut hosts = self.lock();
        let Some(host) = hosts.get_mut(uuid) else {
            return;
        };
        match msg.msg {
            Some(Msg::Heartbeat(hb)) => self.on_heartbeat(uuid, host, hb),
            Some(Msg::Result(r)) => match host.pending.remove(&r.command_id) {
                Some(p) => {
                    self.note_result(uuid, &p.cmd, &r);
                    let update = pb::CommandUpdate {
                        update: Some(pb::command_update::Update::Result(r)),
                    };
                    for w in &p.watchers {
                        let _ = w.send(update.clone());
                    }
                }
                None => self.on_late_result(uuid, host, r),
            },
            Some(Msg::Progress(pr)) => {
                if let Some(p) = host.pending.get_mut(&pr.command_id) {
                    p.progress = p.progress.saturating_add(1);
                    if p.progress > MAX_PROGRESS {
                        if p.progress == MAX_PROGRESS + 1 {
                            tracing::warn!(host = %uuid, command_id = %pr.command_id,
                                "more than {MAX_PROGRESS} progress updates; the rest are not forwarded");
                        }
                        return;
                    }
                    let update = pb::CommandUpdate {
                        update: Some(pb::command_update::Update::Progress(pr)),
                    };
                    for w in &p.watchers {
                        let _ = w.send(update.clone());
                    }
                }
            }
            Some(Msg::Event(ev)) => self.on_event(uuid, host, ev),
            Some(Msg::HostReport(r)) => {
                host.health = r.health.clone();
                host.last_report = Some(r);
            }
            Some(Msg::Register(_)) => {
                tracing::warn!(host = %uuid, "second Register on one stream ignored")
            }
            // Answered by the server (identity_link.rs) before it gets here.
            Some(Msg::RenewCertificate(_)) => {}
            None => tracing::warn!(host = %uuid, "empty or unknown message from agent ignored"),
        }
    }

    fn on_heartbeat(&self, uuid: &str, host: &mut Host, hb: pb::Heartbeat) {
        let now_ms = unix_ms();
        host.last_heartbeat = Some(Instant::now());
        host.last_heartbeat_unix_ms = now_ms;
        host.heartbeat_seq = hb.seq;
        host.hypervisor_available = hb.hypervisor_available;
        host.vms = hb.vms;
        host.health = hb.health;
        host.storage_heartbeats = hb.storage_heartbeats;
        host.skew_ms = now_ms.saturating_sub(hb.sent_at_unix_ms);
        host.cert_not_after_unix_ms = hb.cert_not_after_unix_ms;
        self.book().seen_running(uuid, &live_vms(&host.vms));
        if let Some(c) = &host.conn {
            let ack = pb::HeartbeatAck {
                seq: hb.seq,
                server_time_unix_ms: now_ms,
            };
            let _ =
                c.tx.try_send(Ok(plane(pb::plane_message::Msg::HeartbeatAck(ack))));
        }
        if host.state != pb::HostState::Up || host.ha_hold {
            self.heard_from(uuid, host);
        }
    }

    /// Keeps the book of HA VMs in step with what hosts answered.
    fn note_result(&self, uuid: &str, cmd: &pb::Command, r: &pb::CommandResult) {
        use pb::command::Body;
        if r.status != pb::CommandStatus::Ok as i32 {
            return;
        }
        match (&cmd.body, &r.result) {
            (Some(Body::StartVm(s)), Some(pb::command_result::Result::StartVm(res))) => {
                self.book().started(uuid, s, res)
            }
            (Some(Body::StopVm(s)), _) if !cmd.id.starts_with("ha-stale-") => {
                self.book().stopped(&s.vm_uuid)
            }
            (Some(Body::DestroyVm(d)), _) if !cmd.id.starts_with("ha-stale-") => {
                self.book().stopped(&d.vm_uuid)
            }
            _ => {}
        }
    }

    /// A result for a command sent by another plane (before a failover) or by
    /// this one before it restarted: kept, announced, and used to answer a
    /// re-send of the same id without running it again.
    fn on_late_result(&self, uuid: &str, host: &mut Host, r: pb::CommandResult) {
        tracing::info!(host = %uuid, command_id = %r.command_id, "late result for a command this plane did not send");
        let _ = self.events.send(pb::PlaneEvent {
            host_uuid: uuid.to_string(),
            at_unix_ms: unix_ms(),
            event: Some(pb::plane_event::Event::LateResult(r.clone())),
        });
        if host.late.len() >= LATE_RESULTS {
            host.late.pop_front();
        }
        host.late.push_back(r);
    }

    fn on_event(&self, uuid: &str, host: &mut Host, ev: pb::Event) {
        tracing::info!(host = %uuid, vm = %ev.vm_uuid, state = ?pb::VmPowerState::try_from(ev.state).unwrap_or_default(), reason = %ev.reason, "vm event");
        if let Some(p) = host.pending.get(&ev.command_id) {
            let update = pb::CommandUpdate {
                update: Some(pb::command_update::Update::Event(ev.clone())),
            };
            for w in &p.watchers {
                let _ = w.send(update.clone());
            }
        }
        let _ = self.events.send(pb::PlaneEvent {
            host_uuid: uuid.to_string(),
            at_unix_ms: ev.at_unix_ms,
            event: Some(pb::plane_event::Event::Vm(ev)),
        });
    }

    /// Sends (or queues) a command; updates arrive on the returned channel.
    pub fn send(
        &self,
        uuid: &str,
        mut cmd: pb::Command,
    ) -> (String, mpsc::UnboundedReceiver<pb::CommandUpdate>) {
        if cmd.id.is_empty() {
            let n = self.next_cmd.fetch_add(1, Ordering::Relaxed);
            cmd.id = format!("{}-{n}", self.id_prefix);
        }
        let id = cmd.id.clone();
        let (wtx, wrx) = mpsc::unbounded_channel();
        let mut hosts = self.lock();
        let host = hosts.entry(uuid.to_string()).or_default();
        if let Some(refused) = refuse_in_maintenance(host, &cmd) {
            answer_now(&wtx, refused);
        } else if let Some(r) = host.late.iter().find(|r| r.command_id == id) {
            answer_now(&wtx, r.clone());
        } else if let Some(p) = host.pending.get_mut(&id) {
            // Same id again: one execution, every asker gets the answer.
            p.watchers.retain(|w| !w.is_closed());
            if p.watchers.len() >= MAX_WATCHERS {
                answer_now(&wtx, too_many_watchers(&id));
            } else {
                p.watchers.push(wtx);
            }
        } else if host.pending.len() >= MAX_PENDING_PER_HOST {
            answer_now(&wtx, too_many_pending(&id, uuid, host.pending.len()));
        } else {
            if let Some(c) = &host.conn {
                if c.tx
                    .try_send(Ok(plane(pb::plane_message::Msg::Command(cmd.clone()))))
                    .is_err()
                {
                    // Kept in pending: sent again when the host re-registers.
                    tracing::warn!(host = %uuid, command_id = %id, "queue to the agent is full; command kept for resend");
                }
            }
            host.pending.insert(
                id.clone(),
                Pending {
                    cmd,
                    watchers: vec![wtx],
                    progress: 0,
                },
            );
        }
        (id, wrx)
    }

    /// Sends a Cancel for a command, if the host is connected.
    pub fn cancel(&self, uuid: &str, command_id: &str) {
        let hosts = self.lock();
        if let Some(c) = hosts.get(uuid).and_then(|h| h.conn.as_ref()) {
            let msg = pb::Cancel {
                command_id: command_id.to_string(),
            };
            let _ =
                c.tx.try_send(Ok(plane(pb::plane_message::Msg::Cancel(msg))));
        }
    }

    /// Ends a host's live stream with `status` (e.g. on revocation); true if
    /// it had one. Its pending commands stay queued.
    pub fn close(&self, uuid: &str, status: tonic::Status) -> bool {
        let mut hosts = self.lock();
        let Some(conn) = hosts.get_mut(uuid).and_then(|h| h.conn.take()) else {
            return false;
        };
        // Ending the response stream with an error is what the agent sees;
        // the queue is huge, so a full one means a stuck agent: dropping our
        // sender ends the stream all the same.
        let _ = conn.tx.try_send(Err(status));
        tracing::info!(host = %uuid, conn = conn.id, "host stream closed by the plane");
        true
    }

    /// Sends one message to every connected host; returns how many got it.
    pub fn broadcast(&self, msg: &pb::PlaneMessage) -> u32 {
        let hosts = self.lock();
        let mut n = 0;
        for c in hosts.values().filter_map(|h| h.conn.as_ref()) {
            if c.tx.try_send(Ok(msg.clone())).is_ok() {
                n += 1;
            }
        }
        n
    }

    /// Stops tracking a command nobody waits for any more.
    pub fn forget(&self, uuid: &str, command_id: &str) {
        if let Some(h) = self.lock().get_mut(uuid) {
            h.pending.remove(command_id);
        }
    }

    /// Recomputes every host's state from its heartbeat age.
    pub fn tick(&self) {
        let mut hosts = self.lock();
        let uuids: Vec<String> = hosts.keys().cloned().collect();
        for uuid in uuids {
            let Some(host) = hosts.get_mut(&uuid) else {
                continue;
            };
            let Some(last) = host.last_heartbeat else {
                continue;
            };
            if host.ha_hold {
                continue;
            }
            let age = last.elapsed();
            let state = if age > self.liveness.down_after && !self.ha {
                pb::HostState::Down
            } else if age > self.liveness.alert_after {
                pb::HostState::Alert
            } else if host.conn.is_none() {
                pb::HostState::Disconnected
            } else {
                pb::HostState::Up
            };
            if state != host.state {
                self.set_state(&uuid, host, state);
            }
        }
    }

    fn set_state(&self, uuid: &str, host: &mut Host, state: pb::HostState) {
        if host.state == state {
            return;
        }
        match state {
            pb::HostState::Up => tracing::info!(host = %uuid, "host is Up"),
            pb::HostState::Disconnected => {
                tracing::info!(host = %uuid, "host is Disconnected: its stream ended")
            }
            pb::HostState::Alert => {
                tracing::warn!(host = %uuid, "host is in Alert: heartbeats missed")
            }
            pb::HostState::Investigating => {
                tracing::warn!(host = %uuid, "host is Investigating: asking its neighbours whether it lives")
            }
            _ if host.ha_hold => {
                tracing::error!(host = %uuid, "host is Down: {}", host.state_reason)
            }
            _ => {
                tracing::error!(host = %uuid, "host is Down: no heartbeat for {} ms", self.liveness.down_after.as_millis())
            }
        }
        host.state = state;
        let _ = self.events.send(pb::PlaneEvent {
            host_uuid: uuid.to_string(),
            at_unix_ms: unix_ms(),
            event: Some(pb::plane_event::Event::HostState(state as i32)),
        });
    }

    /// First fit over connected, Up hosts that have sent a report, in UUID
    /// order (stable, so tests and operators can predict it).
    pub fn place(
        &self,
        req: &csagent_host::Request,
        exclude: &[String],
    ) -> Result<String, csagent_host::placement::PlacementError> {
        let hosts = self.lock();
        let mut candidates: Vec<_> = hosts
            .iter()
            .filter(|(_, h)| h.conn.is_some() && h.state == pb::HostState::Up)
            .filter(|(_, h)| h.maintenance == pb::MaintenanceState::Off)
            .filter(|(uuid, _)| !exclude.iter().any(|e| e.eq_ignore_ascii_case(uuid)))
            .filter_map(|(uuid, h)| {
                h.last_report
                    .as_ref()
                    .map(|r| crate::convert::summary_from_proto(uuid, r))
            })
            .collect();
        candidates.sort_by(|a, b| a.host.cmp(&b.host));
        csagent_host::placement::first_fit(&candidates, req).map(|i| candidates[i].host.clone())
    }

    /// Hosts gone silent (Alert) that HA has not taken up yet.
    pub fn silent_hosts(&self) -> Vec<String> {
        self.hosts_where(|_, h| h.state == pb::HostState::Alert && !h.ha_hold)
    }

    /// The UUIDs of the hosts `keep` accepts, sorted.
    fn hosts_where(&self, keep: impl Fn(&str, &Host) -> bool) -> Vec<String> {
        let hosts = self.lock();
        let mut out: Vec<String> = hosts
            .iter()
            .filter(|(u, h)| keep(u, h))
            .map(|(u, _)| u.clone())
            .collect();
        out.sort();
        out
    }

    /// Hosts HA holds in `state` (e.g. Disconnected by a partition verdict).
    pub fn held_in(&self, state: pb::HostState) -> Vec<String> {
        self.hosts_where(|_, h| h.ha_hold && h.state == state)
    }

    /// HA's decision about a host: applied only while the host is still in
    /// one of `from` and not heard from since, so a host that came back
    /// during an investigation is never fenced. True when applied.
    pub fn decide(
        &self,
        uuid: &str,
        from: &[pb::HostState],
        to: pb::HostState,
        reason: &str,
    ) -> bool {
        let mut hosts = self.lock();
        let Some(h) = hosts.get_mut(uuid) else {
            return false;
        };
        let silent = h.state == pb::HostState::Alert || h.ha_hold;
        if !silent || !from.contains(&h.state) {
            return false;
        }
        h.ha_hold = true;
        h.state_reason = reason.to_string();
        if h.state == to {
            tracing::info!(host = %uuid, state = to.as_str_name(), "{reason}");
        }
        self.set_state(uuid, h, to);
        true
    }

    /// Connected, Up hosts other than `uuid`: who can be asked about it.
    pub fn neighbours(&self, uuid: &str) -> Vec<String> {
        self.hosts_where(|u, h| u != uuid && h.conn.is_some() && h.state == pb::HostState::Up)
    }

    /// The VMs the host's last heartbeat listed running or paused.
    pub fn live_vms_of(&self, uuid: &str) -> Vec<String> {
        let hosts = self.lock();
        hosts
            .get(uuid)
            .map(|h| {
                live_vms(&h.vms)
                    .into_iter()
                    .map(str::to_ascii_lowercase)
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn state_of(&self, uuid: &str) -> Option<pb::HostState> {
        self.lock().get(uuid).map(|h| h.state)
    }

    /// Sets a host's maintenance state; false when the plane does not know
    /// the host.
    pub fn set_maintenance(
        &self,
        uuid: &str,
        state: pb::MaintenanceState,
        errors: Vec<String>,
    ) -> bool {
        let mut hosts = self.lock();
        let Some(h) = hosts.get_mut(uuid) else {
            return false;
        };
        tracing::info!(host = %uuid, state = state.as_str_name(), errors = errors.len(), "maintenance");
        h.maintenance = state;
        h.maintenance_errors = errors;
        true
    }

    pub fn list(&self) -> Vec<pb::HostSummary> {
        let hosts = self.lock();
        let mut out: Vec<_> = hosts
            .iter()
            .filter(|(_, h)| h.last_heartbeat.is_some())
            .map(|(uuid, h)| summary(uuid, h))
            .collect();
        out.sort_by(|a, b| a.host_uuid.cmp(&b.host_uuid));
        out
    }
}

fn summary(uuid: &str, h: &Host) -> pb::HostSummary {
    pb::HostSummary {
        host_uuid: uuid.to_string(),
        state: h.state as i32,
        connected: h.conn.is_some(),
        peer_address: h.conn.as_ref().map(|c| c.peer.clone()).unwrap_or_default(),
        agent_version: h.register.agent_version.clone(),
        last_heartbeat_unix_ms: h.last_heartbeat_unix_ms,
        heartbeat_seq: h.heartbeat_seq,
        hypervisor_available: h.hypervisor_available,
        vms: h.vms.clone(),
        facts: h.register.facts.clone(),
        last_report: h.last_report.clone(),
        health: h.health.clone(),
        zone: h.register.zone.clone(),
        pod: h.register.pod.clone(),
        cluster: h.register.cluster.clone(),
        clock_skew_ms: h.skew_ms,
        pending_commands: u32::try_from(h.pending.len()).unwrap_or(u32::MAX),
        late_results: u32::try_from(h.late.len()).unwrap_or(u32::MAX),
        revoked: false,
        cert_not_after_unix_ms: h.cert_not_after_unix_ms,
        maintenance: h.maintenance as i32,
        maintenance_errors: h.maintenance_errors.clone(),
        storage_heartbeats: h.storage_heartbeats.clone(),
        state_reason: h.state_reason.clone(),
        isolation_actions: h.register.isolation_actions.clone(),
        local_pool: h.register.local_pool.clone(),
    }
}

/// A caller's only update: the result the plane gives without the agent.
fn answer_now(watcher: &mpsc::UnboundedSender<pb::CommandUpdate>, r: pb::CommandResult) {
    let _ = watcher.send(pb::CommandUpdate {
        update: Some(pb::command_update::Update::Result(r)),
    });
}

/// A command the plane answers itself, with `code`, never sending it.
fn refused(id: &str, code: pb::ErrorCode, message: String) -> pb::CommandResult {
    pb::CommandResult {
        command_id: id.to_string(),
        status: pb::CommandStatus::Error as i32,
        error_code: code as i32,
        message,
        ..Default::default()
    }
}

fn too_many_watchers(id: &str) -> pb::CommandResult {
    refused(
        id,
        pb::ErrorCode::ResourceExhausted,
        format!(
            "{MAX_WATCHERS} callers already wait for command {id}; its result is not lost, \
             ask again once it is answered"
        ),
    )
}

fn too_many_pending(id: &str, host: &str, n: usize) -> pb::CommandResult {
    refused(
        id,
        pb::ErrorCode::ResourceExhausted,
        format!(
            "host {host} has {n} commands waiting for results (the plane keeps at most \
             {MAX_PENDING_PER_HOST}); not sent, resend when it answers"
        ),
    )
}

/// A host in maintenance takes no new VM: StartVm is answered at once.
fn refuse_in_maintenance(h: &Host, cmd: &pb::Command) -> Option<pb::CommandResult> {
    let starts = matches!(cmd.body, Some(pb::command::Body::StartVm(_)));
    (starts && h.maintenance != pb::MaintenanceState::Off).then(|| {
        refused(
            &cmd.id,
            pb::ErrorCode::Unavailable,
            format!(
                "the host is in maintenance ({}): it takes no new VMs; place the VM elsewhere",
                h.maintenance.as_str_name()
            ),
        )
    })
}

/// The VMs a host's report lists running or paused: what a restart
/// elsewhere must not duplicate.
pub fn live_vms(vms: &[pb::VmPower]) -> Vec<&str> {
    vms.iter()
        .filter(|v| is_live(v))
        .map(|v| v.vm_uuid.as_str())
        .collect()
}

/// Running or paused: the VM holds its host's resources and its disks.
pub fn is_live(v: &pb::VmPower) -> bool {
    v.state == pb::VmPowerState::Running as i32 || v.state == pb::VmPowerState::Paused as i32
}

fn ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

fn plane(m: pb::plane_message::Msg) -> pb::PlaneMessage {
    pb::PlaneMessage { msg: Some(m) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat(sent_at_unix_ms: i64) -> pb::AgentMessage {
        pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Heartbeat(pb::Heartbeat {
                seq: 7,
                sent_at_unix_ms,
                ..Default::default()
            })),
        }
    }

    #[test]
    fn an_upper_case_uuid_registers_under_the_name_lookups_use_and_odd_clocks_do_not_overflow() {
        let r = Registry::new(Liveness::default(), "p".into());
        let (tx, _rx) = mpsc::channel(8);
        let upper = "4F1A0C3E-0000-4000-8000-00000000000A";
        let reg = pb::Register {
            host_uuid: upper.into(),
            sent_at_unix_ms: i64::MIN,
            ..Default::default()
        };
        r.connect(reg, tx, "peer".into());
        let lower = upper.to_ascii_lowercase();
        r.on_message(&lower, heartbeat(i64::MIN));
        let hosts = r.list();
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].host_uuid, lower);
        assert_eq!(hosts[0].heartbeat_seq, 7, "the heartbeat reached the host");
        assert_eq!(hosts[0].clock_skew_ms, i64::MAX);
    }

    #[test]
    fn a_host_that_never_answers_cannot_grow_the_pending_commands() {
        let r = Registry::new(Liveness::default(), "t".into());
        let host = uuid::Uuid::new_v4().to_string();
        let noop = || pb::Command {
            id: String::new(),
            deadline_ms: 0,
            body: Some(pb::command::Body::Noop(pb::Noop {})),
        };
        let mut kept = Vec::new();
        for _ in 0..MAX_PENDING_PER_HOST {
            kept.push(r.send(&host, noop()).1);
        }
        let (_, mut rx) = r.send(&host, noop());
        match rx.try_recv().map(|u| u.update) {
            Ok(Some(pb::command_update::Update::Result(res))) => {
                assert_eq!(res.error_code, pb::ErrorCode::ResourceExhausted as i32);
                assert!(res.message.contains("4096"), "{}", res.message);
            }
            other => panic!("the command past the limit was not answered at once: {other:?}"),
        }
        assert!(
            kept[0].try_recv().is_err(),
            "a command within the limit was answered"
        );
    }

    #[test]
    fn watchers_and_progress_of_one_command_are_bounded() {
        let r = Registry::new(Liveness::default(), "t".into());
        let host = uuid::Uuid::new_v4().to_string();
        let echo = || pb::Command {
            id: "one".into(),
            deadline_ms: 0,
            body: Some(pb::command::Body::Noop(pb::Noop {})),
        };
        let mut watchers: Vec<_> = (0..MAX_WATCHERS).map(|_| r.send(&host, echo()).1).collect();
        let (_, mut late) = r.send(&host, echo());
        match late.try_recv().map(|u| u.update) {
            Ok(Some(pb::command_update::Update::Result(res))) => {
                assert_eq!(res.error_code, pb::ErrorCode::ResourceExhausted as i32)
            }
            other => panic!("the caller past the limit was not answered: {other:?}"),
        }
        for _ in 0..MAX_PROGRESS + 10 {
            r.on_message(
                &host,
                pb::AgentMessage {
                    msg: Some(pb::agent_message::Msg::Progress(pb::CommandProgress {
                        command_id: "one".into(),
                        ..Default::default()
                    })),
                },
            );
        }
        let mut got = 0;
        while watchers[0].try_recv().is_ok() {
            got += 1;
        }
        assert_eq!(got, MAX_PROGRESS as usize);
    }
}
