//! Live migration of a csagent VM: the source's move and the target's
//! preparation.
//!
//! Owns the order of a move and its truth toward the plane. The source
//! runs libvirt's peer-to-peer migration while it watches the job: progress
//! as it goes, the downtime limit once the job exists, the switch to
//! post-copy when pre-copy does not converge, and an abort on cancel or
//! timeout, after which the VM keeps running on the source. After success
//! it reads the completed job's figures and undefines the source's copy, so
//! the VM is reported by exactly one host. It never chooses the target:
//! the plane does, and the target's preparation says where to send it.

use std::time::Duration;

use crate::ctx::{Ctx, Progress};
use csagent_core::error::{CommandError, ErrorKind};
use csagent_libvirt::migrate::{self as lv, JobProgress, MigrateOptions};
use csagent_libvirt::{lifecycle, Hypervisor, PowerState};

/// How often the running job is read.
const POLL: Duration = Duration::from_millis(500);
/// Time beyond the completion timeout for the abort to take effect.
const ABORT_GRACE: Duration = Duration::from_secs(30);

/// Longest a migration may run when no timeout is configured at all.
const NO_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Clone, Debug, PartialEq)]
pub struct MigrateRequest {
    pub vm: uuid::Uuid,
    pub options: MigrateOptions,
    /// 0: QEMU's default.
    pub max_downtime_ms: u64,
    /// Switch to post-copy after this many iterations; 0: never.
    pub post_copy_after: u64,
    /// Abort after this long; None: never.
    pub timeout: Option<Duration>,
    /// Pause the VM after this long so the migration converges; None: never.
    pub pause_after: Option<Duration>,
}

/// This host's defaults for what a MigrateVm leaves unset (`[migration]`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Defaults {
    pub bandwidth_mib_s: u64,
    pub max_downtime_ms: u64,
    pub auto_converge: bool,
    pub post_copy_after: u64,
    pub parallel_connections: u32,
    pub timeout: Option<Duration>,
    pub pause_after: Option<Duration>,
}

impl MigrateRequest {
    /// Fills what the request left unset (0, false, None) from `d`.
    pub fn or_defaults(mut self, d: &Defaults) -> MigrateRequest {
        let o = &mut self.options;
        if o.bandwidth_mib_s == 0 {
            o.bandwidth_mib_s = d.bandwidth_mib_s;
        }
        o.auto_converge |= d.auto_converge;
        if o.parallel_connections == 0 {
            o.parallel_connections = d.parallel_connections;
        }
        if self.max_downtime_ms == 0 {
            self.max_downtime_ms = d.max_downtime_ms;
        }
        if self.post_copy_after == 0 {
            self.post_copy_after = d.post_copy_after;
        }
        self.options.post_copy = self.post_copy_after > 0;
        self.timeout = self.timeout.or(d.timeout);
        self.pause_after = self.pause_after.or(d.pause_after);
        self
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Migrated {
    pub vm: uuid::Uuid,
    pub total: Duration,
    pub downtime_ms: u64,
    pub data_total: u64,
    pub post_copy: bool,
}

/// Moves the running VM `req.vm` to the target named in `req.options`.
pub async fn migrate(
    h: &Hypervisor,
    req: MigrateRequest,
    ctx: &Ctx,
) -> Result<Migrated, CommandError> {
    let uuid = req.vm;
    if ctx.cancel.is_cancelled() {
        return Err(stopped_error(Stop::Cancelled, uuid));
    }
    super::managed(h, uuid).await?;
    let info = h.vm(uuid).await.map_err(CommandError::from)?;
    if !matches!(info.state, PowerState::Running | PowerState::Paused) {
        return Err(CommandError::new(
            ErrorKind::Conflict,
            format!(
                "VM {uuid} is {:?}, not running: only a running VM migrates live",
                info.state
            ),
        ));
    }
    let started = tokio::time::Instant::now();
    let opts = req.options.clone();
    let budget = req.timeout.unwrap_or(NO_TIMEOUT) + ABORT_GRACE;
    let mut job = Box::pin(h.call_within("migrate", budget, move |c| lv::migrate(c, &uuid, &opts)));
    let mut watch = Watch::new(&req);
    let outcome = loop {
        tokio::select! {
            r = &mut job => break r,
            _ = tokio::time::sleep(POLL) => {}
        }
        if let Some(why) = watch.step(h, ctx, started.elapsed()).await {
            abort(h, uuid, why).await;
            // The migration call returns once the abort took effect.
            let _ = (&mut job).await;
            if watch.paused {
                resume(h, uuid).await;
            }
            return Err(stopped_error(why, uuid));
        }
    };
    outcome.map_err(|e| {
        CommandError::new(
            e.kind(),
            format!("migration of {uuid} failed; it keeps running on this host: {e}"),
        )
    })?;
    let done = finish(h, uuid).await;
    Ok(Migrated {
        vm: uuid,
        total: started.elapsed(),
        downtime_ms: done.downtime_ms,
        data_total: done.data_total,
        post_copy: watch.post_copy,
    })
}

/// Why a running migration is aborted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Cancelled,
    TimedOut,
}

fn stopped_error(why: Stop, uuid: uuid::Uuid) -> CommandError {
    match why {
        Stop::Cancelled => CommandError::new(
            ErrorKind::Cancelled,
            format!("migration of {uuid} cancelled; it keeps running on this host"),
        ),
        Stop::TimedOut => CommandError::new(
            ErrorKind::DeadlineExceeded,
            format!("migration of {uuid} did not complete in time and was aborted; it keeps running on this host"),
        ),
    }
}

/// What the source does while the migration call runs.
struct Watch {
    vm: uuid::Uuid,
    max_downtime_ms: u64,
    downtime_set: bool,
    post_copy_after: u64,
    post_copy: bool,
    timeout: Duration,
    pause_after: Option<Duration>,
    paused: bool,
}

impl Watch {
    fn new(req: &MigrateRequest) -> Watch {
        Watch {
            vm: req.vm,
            max_downtime_ms: req.max_downtime_ms,
            downtime_set: req.max_downtime_ms == 0,
            post_copy_after: if req.options.post_copy {
                req.post_copy_after
            } else {
                0
            },
            post_copy: false,
            timeout: req.timeout.unwrap_or(NO_TIMEOUT),
            pause_after: req.pause_after,
            paused: false,
        }
    }

    /// One look at the job: reports progress and applies the options that
    /// need a running job. Some(why) when the migration must stop.
    async fn step(&mut self, h: &Hypervisor, ctx: &Ctx, elapsed: Duration) -> Option<Stop> {
        if ctx.cancel.is_cancelled() {
            return Some(Stop::Cancelled);
        }
        if elapsed >= self.timeout || std::time::Instant::now() >= ctx.deadline {
            return Some(Stop::TimedOut);
        }
        let uuid = self.vm;
        let Ok(Some(p)) = h.call("job_stats", move |c| lv::job(c, &uuid)).await else {
            return None;
        };
        // A job still in setup has no figures yet: nothing to report.
        if p.data_total > 0 {
            (ctx.progress)("migrate", Progress::Migration(p.clone()));
        }
        if !self.downtime_set {
            let ms = self.max_downtime_ms;
            match h
                .call("set_max_downtime", move |c| {
                    lv::set_max_downtime(c, &uuid, ms)
                })
                .await
            {
                Ok(()) => self.downtime_set = true,
                Err(e) => {
                    tracing::warn!(vm = %uuid, error = %e, "cannot set the migration's downtime limit yet")
                }
            }
        }
        if self.post_copy_after > 0 && !self.post_copy && p.iteration >= self.post_copy_after {
            self.switch_to_post_copy(h, &p).await;
        }
        if self.pause_after.is_some_and(|t| elapsed >= t) && !self.paused && !self.post_copy {
            self.pause_to_converge(h).await;
        }
        None
    }

    /// CloudStack's vm.migrate.pauseafter: a guest dirtying memory faster
    /// than the link carries it is paused so the copy can finish; the
    /// target resumes it.
    async fn pause_to_converge(&mut self, h: &Hypervisor) {
        let uuid = self.vm;
        self.paused = true;
        match h.call("suspend", move |c| lifecycle::pause(c, &uuid)).await {
            Ok(()) => {
                tracing::warn!(vm = %uuid, "migration not converging: VM paused until it completes")
            }
            Err(e) => {
                tracing::warn!(vm = %uuid, error = %e, "could not pause the VM to let the migration converge")
            }
        }
    }

    async fn switch_to_post_copy(&mut self, h: &Hypervisor, p: &JobProgress) {
        let uuid = self.vm;
        match h
            .call("start_post_copy", move |c| lv::start_post_copy(c, &uuid))
            .await
        {
            Ok(()) => {
                tracing::info!(vm = %uuid, iteration = p.iteration, remaining = p.data_remaining, "pre-copy did not converge: switched to post-copy");
                self.post_copy = true;
            }
            Err(e) => tracing::warn!(vm = %uuid, error = %e, "switch to post-copy refused"),
        }
    }
}

async fn abort(h: &Hypervisor, uuid: uuid::Uuid, why: Stop) {
    tracing::warn!(vm = %uuid, reason = ?why, "aborting the migration; the VM stays on this host");
    if let Err(e) = h.call("abort_job", move |c| lv::abort(c, &uuid)).await {
        tracing::error!(vm = %uuid, error = %e, "abort of the migration failed; libvirt's job continues");
    }
}

/// A VM paused to let its migration converge runs again when the
/// migration did not happen.
async fn resume(h: &Hypervisor, uuid: uuid::Uuid) {
    if let Err(e) = h.call("resume", move |c| lifecycle::resume(c, &uuid)).await {
        tracing::error!(vm = %uuid, error = %e, "the VM stays paused after the aborted migration");
    }
}

/// After a successful move: the completed job's figures, then the source's
/// (now stopped) definition goes, so only the target reports the VM.
async fn finish(h: &Hypervisor, uuid: uuid::Uuid) -> JobProgress {
    let figures = h
        .call("completed_job_stats", move |c| lv::completed_job(c, &uuid))
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    if let Err(e) = h
        .call("undefine", move |c| lifecycle::undefine(c, &uuid))
        .await
    {
        tracing::error!(vm = %uuid, error = %e, "the VM moved but its stopped definition stays on this host");
    }
    h.forget_facts(&uuid);
    figures
}

/// The target's side, before the VM arrives: what the VM needs here.
#[derive(Clone, Debug, PartialEq)]
pub struct PrepareRequest {
    pub vm: uuid::Uuid,
    pub vcpus: u32,
    pub memory_kib: u64,
    pub disk_paths: Vec<std::path::PathBuf>,
}

/// Refuses, changing nothing, when a disk the VM uses is not reachable
/// here: a shared-storage migration would start QEMU without it.
pub async fn check_disks(paths: &[std::path::PathBuf]) -> Result<(), CommandError> {
    let paths = paths.to_vec();
    let missing = tokio::task::spawn_blocking(move || {
        paths
            .into_iter()
            .filter(|p| !p.exists())
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| CommandError::new(ErrorKind::Internal, format!("disk check did not run: {e}")))?;
    if missing.is_empty() {
        return Ok(());
    }
    Err(CommandError::new(
        ErrorKind::NotFound,
        format!(
            "refusing the migration: disks not reachable on this host: {}",
            missing.join(", ")
        ),
    ))
}
