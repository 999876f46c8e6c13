//! The command envelope at the edge: a Command's body decoded into the
//! crate's `Request` (with the VM it serialises on), a `Reply` or error
//! encoded into a CommandResult, and the one mapping of error kinds to
//! wire codes. Must not: run, queue or time anything (dispatch does).

use std::time::{Duration, Instant};

use crate::handlers::{Reply, Request};
use csagent_core::error::{CommandError, ErrorKind};
use csagent_proto::v1 as pb;

/// Wire body -> the crate's request, plus the VM it serialises on.
pub(crate) fn decode(
    body: Option<pb::command::Body>,
) -> Result<(Request, Option<String>), CommandError> {
    use pb::command::Body;
    let body = body.ok_or_else(|| {
        CommandError::new(
            ErrorKind::Unimplemented,
            "unknown command: this agent does not implement it (upgrade csagent?)",
        )
    })?;
    if let Some(r) = crate::convert::storage_wire::decode(&body) {
        let (op, key) = r?;
        return Ok((Request::Storage(op), key));
    }
    if let Some(r) = crate::convert::network_wire::decode(&body) {
        let (op, key) = r?;
        return Ok((Request::Network(op), key));
    }
    Ok(match body {
        Body::Noop(_) => (Request::Noop, None),
        Body::Echo(e) => {
            let vm = optional_vm(&e.vm_uuid)?;
            let req = Request::Echo {
                payload: e.payload,
                delay: Duration::from_millis(u64::from(e.delay_ms)),
            };
            (req, vm)
        }
        Body::GetVmState(g) => {
            let uuid = parse_vm(&g.vm_uuid)?;
            (Request::GetVmState(uuid), Some(uuid.to_string()))
        }
        Body::ListVms(l) => {
            let after = match l.page_token.as_str() {
                "" => None,
                t => Some(uuid::Uuid::parse_str(t).map_err(|_| {
                    CommandError::invalid(format!(
                        "page_token {t:?} is not a token this agent gave (a VM UUID)"
                    ))
                })?),
            };
            let page_size = usize::try_from(l.page_size).unwrap_or(usize::MAX);
            (Request::ListVms { page_size, after }, None)
        }
        Body::StartVm(m) => {
            let req = crate::convert::vm_start::start_request(&m)?;
            let key = req.spec.uuid.0.to_string();
            (Request::StartVm(Box::new(req)), Some(key))
        }
        Body::StopVm(m) => {
            let vm = parse_vm(&m.vm_uuid)?;
            let timeout = match m.timeout_ms {
                0 => DEFAULT_STOP_TIMEOUT,
                ms => Duration::from_millis(u64::from(ms)),
            };
            (
                Request::StopVm {
                    vm,
                    force: m.force,
                    timeout,
                },
                Some(vm.to_string()),
            )
        }
        Body::RebootVm(m) => lifecycle(&m.vm_uuid, crate::vm::Simple::Reboot)?,
        Body::PauseVm(m) => lifecycle(&m.vm_uuid, crate::vm::Simple::Pause)?,
        Body::ResumeVm(m) => lifecycle(&m.vm_uuid, crate::vm::Simple::Resume)?,
        Body::DestroyVm(m) => {
            let vm = parse_vm(&m.vm_uuid)?;
            (Request::DestroyVm(vm), Some(vm.to_string()))
        }
        Body::GetHostFacts(_) => (Request::GetHostFacts, None),
        Body::ScaleVm(m) => {
            let r = crate::convert::vm_ops::scale_from_proto(&m)?;
            let key = r.vm.to_string();
            (Request::ScaleVm(r), Some(key))
        }
        Body::AttachDevice(m) => {
            let (vm, a) = crate::convert::vm_ops::attach_from_proto(&m)?;
            (Request::AttachDevice(vm, a), Some(vm.to_string()))
        }
        Body::DetachDevice(m) => {
            let (vm, d) = crate::convert::vm_ops::detach_from_proto(&m)?;
            (Request::DetachDevice(vm, d), Some(vm.to_string()))
        }
        // Read-only and one bulk call for many VMs: not serialised per VM.
        Body::GetVmStats(m) => {
            let (collector, vms) = crate::convert::vm_ops::stats_from_proto(&m)?;
            (Request::GetVmStats { collector, vms }, None)
        }
        Body::PrepareMigration(m) => {
            let r = crate::convert::migrate::prepare_from_proto(&m)?;
            let key = r.vm.to_string();
            (Request::PrepareMigration(r), Some(key))
        }
        Body::MigrateVm(m) => {
            let r = crate::convert::migrate::migrate_from_proto(&m)?;
            let key = r.vm.to_string();
            (Request::MigrateVm(Box::new(r)), Some(key))
        }
        // About another host; reads only: not serialised.
        Body::CheckHost(m) => (
            Request::CheckHost(crate::convert::ha::check_from_proto(&m)?),
            None,
        ),
        Body::GetConsole(m) => {
            let vm = crate::convert::vm_ops::vm_uuid(&m.vm_uuid)?;
            (Request::GetConsole(vm), Some(vm.to_string()))
        }
        // Storage and network bodies were taken above; this arm is only
        // reached if a body was added to the proto without a decoder.
        _ => {
            return Err(CommandError::new(
                ErrorKind::Unimplemented,
                "this agent has no handler for the command",
            ))
        }
    })
}

/// StopVm without its own timeout waits this long for the guest.
const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(120);

fn lifecycle(vm: &str, op: crate::vm::Simple) -> Result<(Request, Option<String>), CommandError> {
    let vm = parse_vm(vm)?;
    Ok((Request::Lifecycle(vm, op), Some(vm.to_string())))
}

fn parse_vm(s: &str) -> Result<uuid::Uuid, CommandError> {
    uuid::Uuid::parse_str(s)
        .map_err(|_| CommandError::invalid(format!("vm_uuid {s:?} is not a UUID")))
}

fn optional_vm(s: &str) -> Result<Option<String>, CommandError> {
    if s.is_empty() {
        Ok(None)
    } else {
        parse_vm(s).map(|u| Some(u.to_string()))
    }
}

/// The crate's reply -> wire result.
pub(crate) fn encode(reply: Reply) -> Result<pb::command_result::Result, CommandError> {
    use pb::command_result::Result as R;
    let reply = match crate::convert::storage_wire::encode(reply)
        .or_else(|r| crate::convert::network_wire::encode(*r))
    {
        Ok(r) => return Ok(r),
        Err(reply) => *reply,
    };
    Ok(match reply {
        Reply::Noop => R::Noop(pb::NoopResult {}),
        Reply::Echo(payload) => R::Echo(pb::EchoResult { payload }),
        Reply::VmStatus(vm) => R::VmStatus(crate::convert::link::vm_status(&vm)),
        Reply::VmList(vms, next) => R::VmList(pb::VmList {
            vms: vms.iter().map(crate::convert::link::vm_status).collect(),
            next_page_token: next.map(|u| u.to_string()).unwrap_or_default(),
        }),
        Reply::HostFacts(f) => R::HostFacts(crate::convert::host::facts_to_proto(
            &f,
            env!("CARGO_PKG_VERSION"),
        )),
        Reply::Started(vm, vnc, prepared) => {
            R::StartVm(crate::convert::vm_start::start_result(&vm, vnc, &prepared))
        }
        Reply::Destroyed => R::VmDestroyed(pb::VmDestroyed {}),
        Reply::Scaled(s) => R::ScaleVm(crate::convert::vm_ops::scaled_to_proto(&s)),
        Reply::Device(vm, d) => R::Device(crate::convert::vm_ops::device_to_proto(&vm, &d)),
        Reply::VmStats(v, at) => R::VmStats(crate::convert::vm_ops::stats_to_proto(&v, at)),
        Reply::Console(vm, c) => R::Console(crate::convert::vm_ops::console_to_proto(&vm, &c)),
        Reply::MigrationPrepared(vm, address, tls) => R::PrepareMigration(
            crate::convert::migrate::prepared_to_proto(&vm, &address, tls),
        ),
        Reply::Migrated(m) => R::MigrateVm(crate::convert::migrate::migrated_to_proto(&m)),
        Reply::HostChecked(host, f) => {
            R::CheckHost(crate::convert::ha::finding_to_proto(&host, &f))
        }
        // Taken by the storage and network encoders above.
        other => return Err(unencodable(other)),
    })
}

/// A reply no encoder took is a programming error. The command may well have
/// done its work, so the answer must not be OK with an empty body (the plane
/// would take it as done and learn nothing): it is INTERNAL, naming the reply.
fn unencodable(r: Reply) -> CommandError {
    tracing::error!(reply = ?r, "reply without an encoder");
    let debug = format!("{r:?}");
    let variant = debug.split(['(', ' ', '{']).next().unwrap_or("?");
    CommandError::new(
        ErrorKind::Internal,
        format!(
            "the agent has no wire encoding for its reply {variant}; the command ran, \
             check the target's state (this is an agent bug)"
        ),
    )
}

/// The one place error kinds become wire codes.
pub fn error_code(kind: ErrorKind) -> pb::ErrorCode {
    use pb::ErrorCode as C;
    match kind {
        ErrorKind::InvalidArgument => C::InvalidArgument,
        ErrorKind::NotFound => C::NotFound,
        ErrorKind::AlreadyExists => C::AlreadyExists,
        ErrorKind::Conflict => C::Conflict,
        ErrorKind::DeadlineExceeded => C::DeadlineExceeded,
        ErrorKind::Cancelled => C::Cancelled,
        ErrorKind::Unimplemented => C::Unimplemented,
        ErrorKind::Unavailable => C::Unavailable,
        ErrorKind::InsufficientCapacity => C::InsufficientCapacity,
        ErrorKind::HostUnhealthy => C::HostUnhealthy,
        ErrorKind::ShuttingDown => C::ShuttingDown,
        ErrorKind::PermissionDenied => C::PermissionDenied,
        ErrorKind::FailedPrecondition => C::FailedPrecondition,
        ErrorKind::ResourceExhausted => C::ResourceExhausted,
        ErrorKind::Internal => C::Internal,
    }
}

pub(crate) fn finish(
    id: &str,
    outcome: Result<Reply, CommandError>,
    received: Instant,
) -> pb::CommandResult {
    let elapsed_ms = u64::try_from(received.elapsed().as_millis()).unwrap_or(u64::MAX);
    match outcome.and_then(encode) {
        Ok(body) => pb::CommandResult {
            command_id: id.to_string(),
            status: pb::CommandStatus::Ok as i32,
            elapsed_ms,
            result: Some(body),
            ..Default::default()
        },
        Err(e) => error_result(id, e, elapsed_ms),
    }
}

pub(crate) fn error_result(id: &str, e: CommandError, elapsed_ms: u64) -> pb::CommandResult {
    pb::CommandResult {
        command_id: id.to_string(),
        status: pb::CommandStatus::Error as i32,
        error_code: error_code(e.kind) as i32,
        message: e.message,
        elapsed_ms,
        result: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_without_an_encoder_is_internal_not_ok() {
        let e = unencodable(Reply::Noop);
        assert_eq!(e.kind, ErrorKind::Internal);
        assert!(e.message.contains("Noop"), "{}", e.message);
    }
}
