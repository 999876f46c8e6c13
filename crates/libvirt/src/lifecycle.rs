//! Domain lifecycle calls, run on the connection thread.
//!
//! Owns the libvirt side of start, stop, reboot, pause, resume and destroy.
//! Each function is one step a handler composes; a failed define-and-start
//! undefines what it defined, so a bad image path leaves nothing behind.

use virt::connect::Connect;
use virt::domain::Domain;
use virt::sys;

use super::HvError;

/// The domain with this UUID, or NotFound: every domain call of the crate
/// starts here.
pub(crate) fn lookup(c: &Connect, uuid: &uuid::Uuid) -> Result<Domain, HvError> {
    c.lookup_domain_by_uuid_string(&uuid.to_string())
        .map_err(|_| HvError::NotFound(uuid.to_string()))
}

/// The domain's XML (persistent definition when `inactive`), or None if no
/// domain has this UUID.
pub fn xml(c: &Connect, uuid: &uuid::Uuid, inactive: bool) -> Result<Option<String>, HvError> {
    let Ok(d) = c.lookup_domain_by_uuid_string(&uuid.to_string()) else {
        return Ok(None);
    };
    let flags = if inactive {
        sys::VIR_DOMAIN_XML_INACTIVE
    } else {
        0
    };
    d.xml_desc(flags)
        .map(Some)
        .map_err(|e| HvError::libvirt("get_xml_desc", e))
}

/// Defines and starts; on a failed start the definition is removed again.
pub fn define_and_start(c: &Connect, xml: &str) -> Result<(), HvError> {
    let d = c
        .define_domain_xml(xml)
        .map_err(|e| HvError::libvirt("define", e))?;
    if let Err(e) = d.create() {
        if d.undefine_flags(undefine_flags()).is_err() {
            let _ = d.undefine();
        }
        return Err(HvError::libvirt("start", e));
    }
    Ok(())
}

/// Starts a defined, stopped domain.
pub fn start(c: &Connect, uuid: &uuid::Uuid) -> Result<(), HvError> {
    lookup(c, uuid)?
        .create()
        .map_err(|e| HvError::libvirt("start", e))
}

/// Asks the guest to shut down: through the guest agent when it has one,
/// else (or also) the ACPI power button.
pub fn shutdown(c: &Connect, uuid: &uuid::Uuid, guest_agent: bool) -> Result<(), HvError> {
    let mut flags = sys::VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN;
    if guest_agent {
        flags |= sys::VIR_DOMAIN_SHUTDOWN_GUEST_AGENT;
    }
    lookup(c, uuid)?
        .shutdown_flags(flags)
        .map_err(|e| HvError::libvirt("shutdown", e))
}

pub fn power_off(c: &Connect, uuid: &uuid::Uuid) -> Result<(), HvError> {
    let d = lookup(c, uuid)?;
    if d.is_active().unwrap_or(false) {
        d.destroy().map_err(|e| HvError::libvirt("destroy", e))?;
    }
    Ok(())
}

/// Removes the definition with its NVRAM, managed save and snapshot metadata.
/// Drivers without NVRAM support (libvirt's test driver) refuse the flags;
/// a domain there cannot have NVRAM, so a plain undefine is then complete.
pub fn undefine(c: &Connect, uuid: &uuid::Uuid) -> Result<(), HvError> {
    let d = lookup(c, uuid)?;
    match d.undefine_flags(undefine_flags()) {
        Ok(()) => Ok(()),
        Err(first) => d
            .undefine()
            .map_err(|_| HvError::libvirt("undefine", first)),
    }
}

fn undefine_flags() -> sys::virDomainUndefineFlagsValues {
    sys::VIR_DOMAIN_UNDEFINE_NVRAM
        | sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
        | sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
}

pub fn reboot(c: &Connect, uuid: &uuid::Uuid) -> Result<(), HvError> {
    lookup(c, uuid)?
        .reboot(0)
        .map_err(|e| HvError::libvirt("reboot", e))
}

pub fn pause(c: &Connect, uuid: &uuid::Uuid) -> Result<(), HvError> {
    lookup(c, uuid)?
        .suspend()
        .map_err(|e| HvError::libvirt("suspend", e))
}

pub fn resume(c: &Connect, uuid: &uuid::Uuid) -> Result<(), HvError> {
    lookup(c, uuid)?
        .resume()
        .map_err(|e| HvError::libvirt("resume", e))
}
