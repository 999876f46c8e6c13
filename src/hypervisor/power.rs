//! Domain power states as the agent reports them.
//!
//! Owns the mapping from libvirt's states and reasons to csagent's
//! `PowerState`, and the listing of domains. Runs on the connection thread.

use virt::connect::Connect;
use virt::domain::{Domain, DomainState};
use virt::enumutil::Enum;

use super::HvError;

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

pub(super) fn list_all(conn: &Connect) -> Result<Vec<VmInfo>, HvError> {
    let domains = conn
        .list_all_domains(0)
        .map_err(|e| HvError::libvirt("list_all_domains", e))?;
    // A domain can vanish between the list and the info call; skip it.
    Ok(domains.iter().filter_map(|d| info(d).ok()).collect())
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
        Some(crate::domain::NAMESPACE),
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
