//! High availability in the plane: what happens when a host goes silent.
//!
//! Owns the order Alert → Investigating → Disconnected or Down, and what
//! follows Down. A silent host's neighbours are asked (CheckHost) whether
//! its storage heartbeats or its VMs' disks still move. One sign of life
//! from any neighbour: Disconnected, a partition, and nothing is restarted.
//! Dead by every neighbour on every shared pool: the host is fenced, then
//! Down, and each of its HA VMs is started once on a host placement picks.
//! Anything else (no neighbour, an UNKNOWN, a failed fence) keeps it
//! Investigating and restarts nothing: a VM that stays down is a smaller
//! harm than one that runs twice. The disk leases on the hosts are the last
//! guard whatever is decided here. It never talks to a host but through the
//! registry.

pub mod fence;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::Registry;
use csagent_proto::v1 as pb;
pub use fence::Fence;
use pb::HostState as S;

/// How the plane handles silent hosts.
#[derive(Clone, Debug)]
pub struct HaConfig {
    /// How long a neighbour watches the silent host; zero: three of the
    /// neighbour's storage heartbeat intervals.
    pub check_window: Duration,
    /// A host judged alive (Disconnected) or undecided is asked about again
    /// after this long; a deferred restart is tried again after this long.
    pub recheck: Duration,
    /// Fence per host UUID (lower case); others get `default_fence`.
    pub fences: HashMap<String, Fence>,
    pub default_fence: Fence,
    pub fence_timeout: Duration,
    /// Where the book of HA VMs is kept (ha_book.rs); None: in memory only,
    /// forgotten when the plane restarts.
    pub book_file: Option<std::path::PathBuf>,
}

impl Default for HaConfig {
    fn default() -> Self {
        HaConfig {
            check_window: Duration::ZERO,
            recheck: Duration::from_secs(10),
            fences: HashMap::new(),
            default_fence: Fence::None,
            fence_timeout: Duration::from_secs(60),
            book_file: None,
        }
    }
}

/// Runs the engine until `stop`.
pub fn spawn(
    registry: Arc<Registry>,
    cfg: HaConfig,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let engine = Arc::new(Engine {
        registry,
        cfg,
        state: Mutex::default(),
    });
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => Arc::clone(&engine).round(),
            }
        }
    })
}

struct Engine {
    registry: Arc<Registry>,
    cfg: HaConfig,
    state: Mutex<Work>,
}

#[derive(Default)]
struct Work {
    /// Hosts being investigated now.
    investigating: HashSet<String>,
    /// When each host was last asked about.
    looked: HashMap<String, Instant>,
    /// HA VMs of Down hosts still to restart: vm → (dead host, not before).
    orphans: HashMap<String, (String, Instant)>,
    /// VMs with a restart under way.
    restarting: HashSet<String>,
}

impl Engine {
    fn work(&self) -> std::sync::MutexGuard<'_, Work> {
        csagent_core::sync::lock(&self.state)
    }

    /// One pass: new silent hosts, hosts due for another look, restarts due.
    fn round(self: Arc<Self>) {
        let mut due: Vec<String> = self.registry.silent_hosts();
        for held in [S::Disconnected, S::Investigating] {
            for h in self.registry.held_in(held) {
                let w = self.work();
                if w.looked
                    .get(&h)
                    .is_none_or(|t| t.elapsed() >= self.cfg.recheck)
                {
                    due.push(h);
                }
            }
        }
        for host in due {
            if self.work().investigating.insert(host.clone()) {
                let e = Arc::clone(&self);
                tokio::spawn(async move {
                    e.investigate(&host).await;
                    let mut w = e.work();
                    w.investigating.remove(&host);
                    w.looked.insert(host, Instant::now());
                });
            }
        }
        for (vm, from) in self.due_restarts() {
            let e = Arc::clone(&self);
            tokio::spawn(async move {
                e.restart(&vm, &from).await;
                e.work().restarting.remove(&vm);
            });
        }
    }

    fn due_restarts(&self) -> Vec<(String, String)> {
        let mut w = self.work();
        let now = Instant::now();
        let due: Vec<(String, String)> = w
            .orphans
            .iter()
            .filter(|(vm, (_, at))| *at <= now && !w.restarting.contains(*vm))
            .map(|(vm, (from, _))| (vm.clone(), from.clone()))
            .collect();
        for (vm, _) in &due {
            w.restarting.insert(vm.clone());
        }
        due
    }

    async fn investigate(&self, host: &str) {
        let from = [S::Alert, S::Investigating, S::Disconnected];
        let asking = "heartbeats missed: asking its neighbours whether it lives";
        if !self.registry.decide(host, &from, S::Investigating, asking) {
            return;
        }
        let neighbours = self.registry.neighbours(host);
        if neighbours.is_empty() {
            let why = "no other host is Up to check it: nothing is restarted";
            self.registry
                .decide(host, &[S::Investigating], S::Investigating, why);
            return;
        }
        let disks = self.registry.book().disk_paths_on(host);
        let asks = neighbours.iter().map(|n| self.ask(n, host, &disks));
        let answers = futures::future::join_all(asks).await;
        let views: Vec<View> = neighbours
            .iter()
            .zip(answers)
            .map(|(n, a)| View::of(n, a))
            .collect();
        match Judgement::of(&views) {
            Judgement::Alive(why) => {
                let reason = format!("alive ({why}): a partition, nothing is restarted");
                self.registry
                    .decide(host, &[S::Investigating], S::Disconnected, &reason);
            }
            Judgement::Dead(why) => self.fence_and_orphan(host, &why).await,
            Judgement::Undecided(why) => {
                let reason = format!("undecided ({why}): nothing is restarted");
                self.registry
                    .decide(host, &[S::Investigating], S::Investigating, &reason);
            }
        }
    }

    async fn ask(
        &self,
        neighbour: &str,
        host: &str,
        disks: &[String],
    ) -> Result<pb::CheckHostResult, String> {
        let window_ms = u32::try_from(self.cfg.check_window.as_millis()).unwrap_or(u32::MAX);
        let body = pb::command::Body::CheckHost(pb::CheckHost {
            host_uuid: host.to_string(),
            pools: Vec::new(),
            disk_paths: disks.to_vec(),
            window_ms,
        });
        match run(&self.registry, neighbour, body, 120_000).await? {
            pb::command_result::Result::CheckHost(r) => Ok(r),
            other => Err(format!("answered CheckHost with {other:?}")),
        }
    }

    fn fence_of(&self, host: &str) -> &Fence {
        self.cfg
            .fences
            .get(&host.to_ascii_lowercase())
            .unwrap_or(&self.cfg.default_fence)
    }

    /// Fences the host, marks it Down and queues its HA VMs, unless it was
    /// heard from meanwhile.
    async fn fence_and_orphan(&self, host: &str, why: &str) {
        if self.registry.state_of(host) != Some(S::Investigating) {
            return;
        }
        let fence = self.fence_of(host).clone();
        let fenced = match fence.run(self.cfg.fence_timeout).await {
            Ok(done) => done,
            Err(e) => {
                let reason =
                    format!("dead ({why}), but {e}: nothing is restarted until it is fenced");
                self.registry
                    .decide(host, &[S::Investigating], S::Investigating, &reason);
                return;
            }
        };
        let reason = format!("dead ({why}); {fenced}");
        if !self
            .registry
            .decide(host, &[S::Investigating], S::Down, &reason)
        {
            return;
        }
        self.registry
            .ha_event(host, "", pb::ha_action::Kind::Host, "", &reason);
        let live = self.registry.live_vms_of(host);
        let vms: Vec<String> = self
            .registry
            .book()
            .on_host(host)
            .into_iter()
            .map(|(vm, _)| vm)
            .filter(|vm| live.contains(vm))
            .collect();
        tracing::warn!(host = %host, ha_vms = vms.len(), "host is Down: restarting its HA VMs elsewhere");
        let mut w = self.work();
        for vm in vms {
            w.orphans.insert(vm, (host.to_string(), Instant::now()));
        }
    }

    /// One attempt to start an orphaned HA VM elsewhere.
    async fn restart(&self, vm: &str, from: &str) {
        if self.registry.state_of(from) != Some(S::Down) {
            // Heard from again: its Register says what runs there.
            self.work().orphans.remove(vm);
            return;
        }
        let Some(entry) = self
            .registry
            .book()
            .on_host(from)
            .into_iter()
            .find(|(v, _)| v == vm)
        else {
            self.work().orphans.remove(vm);
            return;
        };
        let start = entry.1.start;
        match self.place_and_start(vm, from, start).await {
            Ok(to) => {
                self.work().orphans.remove(vm);
                let msg = format!("restarted on {to} after {from} went down");
                tracing::warn!(vm = %vm, from = %from, to = %to, "HA: {msg}");
                self.registry
                    .ha_event(from, vm, pb::ha_action::Kind::Restarted, &to, &msg);
            }
            Err(why) => {
                tracing::error!(vm = %vm, from = %from, "HA restart deferred: {why}");
                self.registry
                    .ha_event(from, vm, pb::ha_action::Kind::Deferred, "", &why);
                if let Some(o) = self.work().orphans.get_mut(vm) {
                    o.1 = Instant::now() + self.cfg.recheck;
                }
            }
        }
    }

    async fn place_and_start(
        &self,
        vm: &str,
        from: &str,
        start: pb::StartVm,
    ) -> Result<String, String> {
        let spec = start.spec.clone().unwrap_or_default();
        let want = csagent_host::Request {
            vcpus: spec.cpu.as_ref().map_or(1, |c| c.vcpus),
            memory: csagent_host::MiB(spec.memory.as_ref().map_or(0, |m| m.size_kib / 1024)),
        };
        let to = self
            .registry
            .place(&want, &[from.to_string()])
            .map_err(|e| e.to_string())?;
        let id = self
            .registry
            .book()
            .attempt(vm)
            .ok_or_else(|| format!("VM {vm} left the HA book"))?;
        let cmd = pb::Command {
            id,
            deadline_ms: 120_000,
            body: Some(pb::command::Body::StartVm(start)),
        };
        match run_cmd(&self.registry, &to, cmd).await {
            Ok(_) => {
                self.registry.book().restarted(vm, from, &to);
                Ok(to)
            }
            Err(e) => Err(format!("{to} did not start it: {e}")),
        }
    }
}

/// One neighbour's answer, reduced to what the judgement needs.
struct View {
    neighbour: String,
    verdict: Result<pb::HostVerdict, String>,
    life: Vec<String>,
}

impl View {
    fn of(neighbour: &str, answer: Result<pb::CheckHostResult, String>) -> View {
        let verdict = answer
            .as_ref()
            .map(|r| pb::HostVerdict::try_from(r.verdict).unwrap_or_default())
            .map_err(Clone::clone);
        let life = answer
            .map(|r| {
                r.evidence
                    .into_iter()
                    .filter(|e| e.sign == pb::EvidenceSign::Life as i32)
                    .map(|e| format!("{}: {}", e.source, e.detail))
                    .collect()
            })
            .unwrap_or_default();
        View {
            neighbour: neighbour.to_string(),
            verdict,
            life,
        }
    }
}

#[derive(Debug, PartialEq)]
enum Judgement {
    Alive(String),
    Dead(String),
    Undecided(String),
}

impl Judgement {
    /// Alive on one sign of life; Dead only when every neighbour answered
    /// DEAD; otherwise undecided.
    fn of(views: &[View]) -> Judgement {
        let alive: Vec<String> = views
            .iter()
            .filter(|v| v.verdict == Ok(pb::HostVerdict::Alive))
            .map(|v| format!("{} sees {}", v.neighbour, v.life.join(", ")))
            .collect();
        if !alive.is_empty() {
            return Judgement::Alive(alive.join("; "));
        }
        let not_dead: Vec<String> = views
            .iter()
            .filter(|v| v.verdict != Ok(pb::HostVerdict::Dead))
            .map(|v| match &v.verdict {
                Ok(verdict) => format!("{} says {}", v.neighbour, verdict.as_str_name()),
                Err(e) => format!("{} could not check: {e}", v.neighbour),
            })
            .collect();
        if views.is_empty() || !not_dead.is_empty() {
            return Judgement::Undecided(not_dead.join("; "));
        }
        let names: Vec<&str> = views.iter().map(|v| v.neighbour.as_str()).collect();
        Judgement::Dead(format!(
            "its storage heartbeat stands still on every shared pool for {}",
            names.join(", ")
        ))
    }
}

async fn run(
    registry: &Registry,
    host: &str,
    body: pb::command::Body,
    deadline_ms: u64,
) -> Result<pb::command_result::Result, String> {
    let cmd = pb::Command {
        id: String::new(),
        deadline_ms,
        body: Some(body),
    };
    run_cmd(registry, host, cmd).await
}

/// Sends a command and waits for its result (a little past its deadline,
/// for the agent's own deadline error to arrive).
async fn run_cmd(
    registry: &Registry,
    host: &str,
    cmd: pb::Command,
) -> Result<pb::command_result::Result, String> {
    let wait = Duration::from_millis(cmd.deadline_ms) + Duration::from_secs(10);
    let (id, mut updates) = registry.send(host, cmd);
    let result = tokio::time::timeout(wait, async {
        while let Some(u) = updates.recv().await {
            if let Some(pb::command_update::Update::Result(r)) = u.update {
                return Some(r);
            }
        }
        None
    })
    .await;
    let r = match result {
        Ok(Some(r)) => r,
        Ok(None) => return Err(format!("command {id}: the plane lost track of it")),
        Err(_) => {
            registry.forget(host, &id);
            return Err(format!(
                "command {id}: no answer within {} s",
                wait.as_secs()
            ));
        }
    };
    if r.status != pb::CommandStatus::Ok as i32 {
        return Err(r.message);
    }
    r.result
        .ok_or_else(|| format!("command {id}: answered without a result"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(n: &str, v: Result<pb::HostVerdict, &str>) -> View {
        View {
            neighbour: n.into(),
            verdict: v.map_err(str::to_string),
            life: vec!["heartbeat /shared: counter moved".into()],
        }
    }

    #[test]
    fn one_sign_of_life_wins_and_death_needs_every_neighbour() {
        use pb::HostVerdict::*;
        let alive = Judgement::of(&[view("b", Ok(Dead)), view("c", Ok(Alive))]);
        assert!(matches!(alive, Judgement::Alive(ref w) if w.contains("c sees heartbeat /shared")));
        let dead = Judgement::of(&[view("b", Ok(Dead)), view("c", Ok(Dead))]);
        assert!(matches!(dead, Judgement::Dead(ref w) if w.contains("b, c")));
        let unknown = Judgement::of(&[view("b", Ok(Dead)), view("c", Ok(Unknown))]);
        assert!(
            matches!(unknown, Judgement::Undecided(ref w) if w.contains("c says HOST_VERDICT_UNKNOWN"))
        );
        let failed = Judgement::of(&[view("b", Ok(Dead)), view("c", Err("timed out"))]);
        assert!(
            matches!(failed, Judgement::Undecided(ref w) if w.contains("c could not check: timed out"))
        );
        assert!(matches!(Judgement::of(&[]), Judgement::Undecided(_)));
    }
}
