//! VM lifecycle handlers: start, stop, reboot, pause, resume, destroy.
//!
//! Owns the order of a lifecycle change and its truth toward the plane:
//! validate, admit, render, then libvirt; Starting and Running (or Stopping
//! and Stopped) events as they happen. Start is idempotent by end state: the
//! same VM already running is success, defined but stopped is started, the
//! same UUID with another definition is CONFLICT. Domains csagent did not
//! define are never changed.

pub mod console;
pub mod defaults;
pub mod devices;
mod lease;
pub mod migrate;
pub mod paths;
pub mod prepare;
pub mod scale;
pub mod stats;

use std::time::Duration;

use crate::ctx::{Ctx, VmEvent, VmTransition};
use csagent_core::error::{CommandError, ErrorKind};
use csagent_domain::{self as domain, VmSpec};
use csagent_libvirt::{lifecycle, HvError, Hypervisor, PowerState, VmInfo};

/// How often a graceful shutdown is asked again: a guest still booting can
/// miss the first ACPI event.
const SHUTDOWN_RESEND: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(100);

pub struct Started {
    pub info: VmInfo,
    pub vnc_port: Option<u16>,
}

/// Starts `spec` (admission already passed). See the module doc for what an
/// existing domain with the same UUID means.
pub async fn start(h: &Hypervisor, mut spec: VmSpec, ctx: &Ctx) -> Result<Started, CommandError> {
    // The metadata element is how csagent knows its own domains later; a
    // spec without cloud ids gets one naming the VM by its UUID.
    let uuid = spec.uuid.0;
    let _own_events = ctx.outbox.claim(&uuid.to_string(), VmTransition::Running);
    spec.meta.get_or_insert_with(|| domain::CsagentMeta {
        instance_id: uuid.to_string(),
        ..Default::default()
    });
    let xml = domain::render(&spec).map_err(|e| CommandError::invalid(e.to_string()))?;
    let existing = h
        .call("get_xml_desc", move |c| lifecycle::xml(c, &uuid, true))
        .await
        .map_err(CommandError::from)?;
    match existing {
        Some(current) => {
            ensure_same(&spec, &current)?;
            let info = h.vm(uuid).await.map_err(CommandError::from)?;
            if info.state != PowerState::Running {
                event(ctx, &spec, VmTransition::Starting, "start");
                h.call("start", move |c| lifecycle::start(c, &uuid))
                    .await
                    .map_err(|e| start_failed(&spec, "start", e))?;
            }
        }
        None => {
            event(ctx, &spec, VmTransition::Starting, "define-and-start");
            h.call("define_and_start", move |c| {
                lifecycle::define_and_start(c, &xml)
            })
            .await
            .map_err(|e| start_failed(&spec, "define-and-start", e))?;
        }
    }
    let info = h.vm(uuid).await.map_err(CommandError::from)?;
    event(ctx, &spec, VmTransition::Running, "booted");
    let live = h
        .call("get_xml_desc", move |c| lifecycle::xml(c, &uuid, false))
        .await
        .map_err(CommandError::from)?;
    Ok(Started {
        vnc_port: live.as_deref().and_then(vnc_port),
        info,
    })
}

/// The existing definition must be the same VM: same name, memory, vCPUs,
/// disk targets and sources, and NIC MACs. Anything else is a CONFLICT, and
/// nothing is changed.
fn ensure_same(spec: &VmSpec, current_xml: &str) -> Result<(), CommandError> {
    // Ownership first, from the metadata alone: a foreign domain is never
    // read further (csagent may not even understand it).
    if !domain::is_managed(current_xml) {
        return Err(foreign(&spec.uuid.0));
    }
    let current = domain::parse(current_xml).map_err(|e| {
        CommandError::new(
            ErrorKind::Internal,
            format!("cannot read the existing domain: {e}"),
        )
    })?;
    let differs = summary(spec) != summary(&current.spec);
    if differs {
        return Err(CommandError::new(
            ErrorKind::Conflict,
            format!("VM {} already exists with a different definition (name, memory, vCPUs, disks or NICs); destroy it first or send the same spec", spec.uuid),
        ));
    }
    Ok(())
}

type Summary = (String, u64, u32, Vec<(String, String)>, Vec<String>);

fn summary(s: &VmSpec) -> Summary {
    let mut disks: Vec<_> = s
        .devices
        .disks
        .iter()
        .map(|d| (d.target.clone(), format!("{:?}", d.source)))
        .collect();
    disks.sort();
    let mut macs: Vec<_> = s
        .devices
        .interfaces
        .iter()
        .map(|i| i.mac.to_string())
        .collect();
    macs.sort();
    (s.name.clone(), s.memory.size.0, s.vcpu.max, disks, macs)
}

/// The model of a domain's XML as libvirt gave it; XML the parser cannot
/// read is an internal error (libvirt wrote it, or csagent did).
fn spec_of(uuid: uuid::Uuid, xml: &str) -> Result<VmSpec, CommandError> {
    domain::parse(xml).map(|p| p.spec).map_err(|e| {
        CommandError::new(
            ErrorKind::Internal,
            format!("VM {uuid}: cannot read its domain XML: {e}"),
        )
    })
}

fn foreign(uuid: &uuid::Uuid) -> CommandError {
    CommandError::new(
        ErrorKind::PermissionDenied,
        format!("VM {uuid} was not defined by csagent; it is reported but never changed"),
    )
}

/// A start that failed because another host holds a disk is a refused
/// second copy (CONFLICT, naming the disk), not an agent failure.
fn start_failed(spec: &VmSpec, name: &str, e: HvError) -> CommandError {
    match &e {
        HvError::Libvirt { message, .. } => {
            lease::refusal(spec, message).unwrap_or_else(|| step(name, e))
        }
        _ => step(name, e),
    }
}

fn step(name: &str, e: HvError) -> CommandError {
    CommandError::new(e.kind(), format!("step {name} failed and was undone: {e}"))
}

/// Refuses to touch a domain without csagent's metadata.
async fn managed(h: &Hypervisor, uuid: uuid::Uuid) -> Result<String, CommandError> {
    let xml = h
        .call("get_xml_desc", move |c| lifecycle::xml(c, &uuid, false))
        .await
        .map_err(CommandError::from)?
        .ok_or_else(|| {
            CommandError::new(
                ErrorKind::NotFound,
                format!("VM {uuid} not found on this host"),
            )
        })?;
    if domain::is_managed(&xml) {
        Ok(xml)
    } else {
        Err(foreign(&uuid))
    }
}

/// Graceful stop, re-asked every few seconds, up to `timeout`; then power
/// off when `force`. Stopping a stopped VM succeeds.
pub async fn stop(
    h: &Hypervisor,
    uuid: uuid::Uuid,
    force: bool,
    timeout: Duration,
    ctx: &Ctx,
) -> Result<VmInfo, CommandError> {
    let xml = managed(h, uuid).await?;
    let _own_events = ctx.outbox.claim(&uuid.to_string(), VmTransition::Stopped);
    let agent = xml.contains(domain::GUEST_AGENT_CHANNEL);
    let started = tokio::time::Instant::now();
    let mut last_ask: Option<tokio::time::Instant> = None;
    loop {
        let info = h.vm(uuid).await.map_err(CommandError::from)?;
        if info.state == PowerState::Stopped {
            push(ctx, &info, VmTransition::Stopped, "shutdown");
            return Ok(info);
        }
        if started.elapsed() >= timeout {
            return power_off_or_fail(h, uuid, force, timeout, ctx).await;
        }
        if last_ask.is_none_or(|t| t.elapsed() >= SHUTDOWN_RESEND) {
            if last_ask.is_none() {
                push(ctx, &info, VmTransition::Stopping, "shutdown requested");
            }
            // A guest that has not booted far enough refuses; keep asking.
            let _ = h
                .call("shutdown", move |c| lifecycle::shutdown(c, &uuid, agent))
                .await;
            last_ask = Some(tokio::time::Instant::now());
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = ctx.cancel.cancelled() => return Err(CommandError::new(ErrorKind::Cancelled, "stop cancelled")),
        }
    }
}

async fn power_off_or_fail(
    h: &Hypervisor,
    uuid: uuid::Uuid,
    force: bool,
    timeout: Duration,
    ctx: &Ctx,
) -> Result<VmInfo, CommandError> {
    if !force {
        return Err(CommandError::new(
            ErrorKind::DeadlineExceeded,
            format!(
                "VM {uuid} did not shut down within {} s; send StopVm with force to power it off",
                timeout.as_secs()
            ),
        ));
    }
    h.call("destroy", move |c| lifecycle::power_off(c, &uuid))
        .await
        .map_err(CommandError::from)?;
    let info = h.vm(uuid).await.map_err(CommandError::from)?;
    push(
        ctx,
        &info,
        VmTransition::Stopped,
        "powered off after timeout",
    );
    Ok(info)
}

/// Powers off and undefines (with NVRAM and snapshot metadata).
pub async fn destroy(h: &Hypervisor, uuid: uuid::Uuid, ctx: &Ctx) -> Result<(), CommandError> {
    managed(h, uuid).await?;
    let _own_events = ctx.outbox.claim(&uuid.to_string(), VmTransition::Stopped);
    let info = h.vm(uuid).await.map_err(CommandError::from)?;
    h.call("destroy", move |c| lifecycle::power_off(c, &uuid))
        .await
        .map_err(CommandError::from)?;
    h.call("undefine", move |c| lifecycle::undefine(c, &uuid))
        .await
        .map_err(CommandError::from)?;
    push(ctx, &info, VmTransition::Stopped, "destroyed");
    Ok(())
}

/// Reboot, pause or resume a csagent VM.
pub async fn simple(h: &Hypervisor, uuid: uuid::Uuid, op: Simple) -> Result<VmInfo, CommandError> {
    managed(h, uuid).await?;
    let r = match op {
        Simple::Reboot => h.call("reboot", move |c| lifecycle::reboot(c, &uuid)).await,
        Simple::Pause => h.call("suspend", move |c| lifecycle::pause(c, &uuid)).await,
        Simple::Resume => h.call("resume", move |c| lifecycle::resume(c, &uuid)).await,
    };
    r.map_err(CommandError::from)?;
    h.vm(uuid).await.map_err(CommandError::from)
}

#[derive(Clone, Copy, Debug)]
pub enum Simple {
    Reboot,
    Pause,
    Resume,
}

fn event(ctx: &Ctx, spec: &VmSpec, state: VmTransition, reason: &str) {
    emit(ctx, &spec.uuid.0.to_string(), &spec.name, state, reason);
}

fn push(ctx: &Ctx, info: &VmInfo, state: VmTransition, reason: &str) {
    emit(ctx, &info.uuid, &info.name, state, reason);
}

fn emit(ctx: &Ctx, uuid: &str, name: &str, state: VmTransition, reason: &str) {
    (ctx.events)(VmEvent {
        uuid: uuid.to_string(),
        name: name.to_string(),
        state,
        reason: reason.to_string(),
    });
}

/// The VNC port libvirt chose (autoport), from the live XML.
fn vnc_port(xml: &str) -> Option<u16> {
    use quick_xml::events::Event as X;
    let mut r = quick_xml::Reader::from_str(xml);
    loop {
        match r.read_event() {
            Ok(X::Start(e)) | Ok(X::Empty(e)) if e.name().as_ref() == b"graphics" => {
                let attr = |k: &[u8]| {
                    e.attributes()
                        .flatten()
                        .find(|a| a.key.as_ref() == k)
                        .map(|a| String::from_utf8_lossy(&a.value).into_owned())
                };
                if attr(b"type").as_deref() == Some("vnc") {
                    return attr(b"port")
                        .and_then(|p| p.parse::<i32>().ok())
                        .and_then(|p| u16::try_from(p).ok());
                }
            }
            Ok(X::Eof) | Err(_) => return None,
            _ => {}
        }
    }
}
