//! Domain power states as the agent reports them.
//!
//! Owns the mapping from libvirt's states and reasons to csagent's
//! `PowerState`, and the listing of domains: the whole host from one bulk
//! stats call, one domain by UUID. Runs on a blocking thread, never async.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use virt::connect::Connect;
use virt::domain::{Domain, DomainState, DomainStateEnum, DomainStateReasonEnum};
use virt::enumutil::Enum;
use virt::sys;

use super::{ffi, HvError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerState {
    Running,
    Paused,
    Stopping,
    Stopped,
    Crashed,
    Suspended,
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmInfo {
    pub uuid: String,
    pub name: String,
    pub state: PowerState,
    pub reason: String,
    pub managed: bool,
    pub vcpus: u32,
    pub memory_kib: u64,
    /// libvirt domain id while running.
    pub id: Option<u32>,
}

/// Facts about a domain cached between snapshots (see `Facts` in mod.rs).
#[derive(Clone, Copy, Debug)]
pub(super) struct Facts {
    managed: bool,
    vcpus: u32,
    memory_kib: u64,
}

/// Groups read in the one bulk call: the state only. It needs no QEMU job,
/// so a heartbeat never queries a monitor nor collides with a stats or
/// lifecycle call holding one; memory comes from the facts, which balloon
/// events and ScaleVm drop.
const GROUPS: u32 = sys::VIR_DOMAIN_STATS_STATE;

/// Every domain from one virConnectGetAllDomainStats call. NOWAIT: a domain
/// whose QEMU holds its job lock is reported from what libvirt has, instead
/// of holding up the whole host's report. Facts are fetched only for domains
/// not in the cache (new, or changed since: any event drops the entry).
pub(super) fn list_all(
    conn: &Connect,
    facts: &Mutex<HashMap<String, Facts>>,
) -> Result<Vec<VmInfo>, HvError> {
    let stats = ffi::all_domain_stats(conn, GROUPS, sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT)
        .map_err(|message| HvError::Libvirt {
            call: "get_all_domain_stats",
            message,
            kind: csagent_core::error::ErrorKind::Internal,
        })?;
    let known = csagent_core::sync::lock(facts).clone();
    let mut fetched = Vec::new();
    let mut out = Vec::with_capacity(stats.len());
    for s in stats {
        let f = match known.get(&s.uuid) {
            Some(f) => *f,
            // A domain can vanish between the two calls; skip it.
            None => match fetch_facts(conn, &s.uuid) {
                Some(f) => {
                    fetched.push((s.uuid.clone(), f));
                    f
                }
                None => continue,
            },
        };
        out.push(from_stats(s, &f));
    }
    // Entries dropped by events meanwhile stay dropped (refetched next time).
    let present: HashSet<&str> = out.iter().map(|v| v.uuid.as_str()).collect();
    let mut cache = csagent_core::sync::lock(facts);
    cache.retain(|k, _| present.contains(k.as_str()));
    cache.extend(fetched);
    Ok(out)
}

fn fetch_facts(conn: &Connect, uuid: &str) -> Option<Facts> {
    let d = conn.lookup_domain_by_uuid_string(uuid).ok()?;
    let i = d.info().ok()?;
    Some(Facts {
        managed: is_managed(&d),
        vcpus: i.nr_virt_cpu,
        memory_kib: i.memory,
    })
}

fn from_stats(s: ffi::StateRecord, f: &Facts) -> VmInfo {
    let raw_state = s.state.unwrap_or(sys::VIR_DOMAIN_NOSTATE as i32);
    let state = map_state(DomainStateEnum::from_raw(raw_state as u32));
    VmInfo {
        reason: s
            .reason
            .map(|r| reason_text(&raw_reason(raw_state, r)))
            .unwrap_or_default(),
        uuid: s.uuid,
        name: s.name,
        state,
        managed: f.managed,
        vcpus: f.vcpus,
        memory_kib: f.memory_kib,
        // virDomainGetID answers -1 (as unsigned) for an inactive domain.
        id: Some(s.id).filter(|&i| i != u32::MAX && i != 0),
    }
}

/// The reason enum for a raw (state, reason) pair, as virDomainGetState's
/// wrapper builds it.
fn raw_reason(state: i32, reason: i32) -> DomainStateReasonEnum {
    use virt::domain::{self as vd, DomainStateReason as R};
    let r = reason as u32;
    match DomainStateEnum::from_raw(state as u32) {
        Enum::Known(k) => Enum::Known(match k {
            DomainState::NoState => R::NoState(vd::DomainNoStateReasonEnum::from_raw(r)),
            DomainState::Running => R::Running(vd::DomainRunningReasonEnum::from_raw(r)),
            DomainState::Blocked => R::Blocked(vd::DomainBlockedReasonEnum::from_raw(r)),
            DomainState::Paused => R::Paused(vd::DomainPausedReasonEnum::from_raw(r)),
            DomainState::Shutdown => R::Shutdown(vd::DomainShutdownReasonEnum::from_raw(r)),
            DomainState::Shutoff => R::Shutoff(vd::DomainShutoffReasonEnum::from_raw(r)),
            DomainState::Crashed => R::Crashed(vd::DomainCrashedReasonEnum::from_raw(r)),
            DomainState::PMSuspended => {
                R::PMSuspended(vd::DomainPMSuspendedReasonEnum::from_raw(r))
            }
        }),
        Enum::Unknown(_) => Enum::Unknown(reason),
    }
}

pub(super) fn one(conn: &Connect, uuid: uuid::Uuid) -> Result<VmInfo, HvError> {
    let d = conn
        .lookup_domain_by_uuid_string(&uuid.to_string())
        .map_err(|_| HvError::NotFound(uuid.to_string()))?;
    info(&d)
}

fn info(d: &Domain) -> Result<VmInfo, HvError> {
    let uuid = d.uuid_string().map_err(|e| HvError::libvirt("uuid", e))?;
    let name = d.name().map_err(|e| HvError::libvirt("name", e))?;
    let i = d.info().map_err(|e| HvError::libvirt("get_info", e))?;
    let (state, reason) = match d.state() {
        Ok((s, r)) => (map_state(s), reason_text(&r)),
        Err(_) => (map_state(i.state), String::new()),
    };
    Ok(VmInfo {
        uuid,
        name,
        state,
        reason,
        managed: is_managed(d),
        vcpus: i.nr_virt_cpu,
        memory_kib: i.memory,
        id: d.id(),
    })
}

/// One metadata lookup, not a full XML dump: cheap enough for every domain.
fn is_managed(d: &Domain) -> bool {
    d.metadata(
        virt::sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
        // A domain carrying csagent's metadata element was defined by
        // csagent; every other domain is reported but never changed.
        Some(csagent_domain::NAMESPACE),
        0,
    )
    .is_ok()
}

fn map_state(s: Enum<DomainState, u32>) -> PowerState {
    match s {
        Enum::Known(DomainState::Running) | Enum::Known(DomainState::Blocked) => {
            PowerState::Running
        }
        Enum::Known(DomainState::Paused) => PowerState::Paused,
        Enum::Known(DomainState::Shutdown) => PowerState::Stopping,
        Enum::Known(DomainState::Shutoff) => PowerState::Stopped,
        Enum::Known(DomainState::Crashed) => PowerState::Crashed,
        Enum::Known(DomainState::PMSuspended) => PowerState::Suspended,
        _ => PowerState::Unknown,
    }
}

/// libvirt's state reason as a short word ("booted", "destroyed", "crashed").
fn reason_text(r: &virt::domain::DomainStateReasonEnum) -> String {
    use virt::domain::DomainStateReason as R;
    let inner = match r {
        Enum::Known(R::NoState(x)) => format!("{x:?}"),
        Enum::Known(R::Running(x)) => format!("{x:?}"),
        Enum::Known(R::Blocked(x)) => format!("{x:?}"),
        Enum::Known(R::Paused(x)) => format!("{x:?}"),
        Enum::Known(R::Shutdown(x)) => format!("{x:?}"),
        Enum::Known(R::Shutoff(x)) => format!("{x:?}"),
        Enum::Known(R::Crashed(x)) => format!("{x:?}"),
        Enum::Known(R::PMSuspended(x)) => format!("{x:?}"),
        Enum::Unknown(v) => format!("Unknown({v})"),
    };
    // "Known(Booted)" -> "booted"
    inner
        .trim_start_matches("Known(")
        .trim_end_matches(')')
        .to_ascii_lowercase()
}
