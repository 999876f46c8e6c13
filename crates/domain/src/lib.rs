//! Typed libvirt domain model: validate a VM spec, render it as domain XML,
//! and read any domain XML (ours or `virsh dumpxml`'s) back into the model.
//!
//! This crate owns the XML format and nothing else: it never talks to
//! libvirt (csagent-libvirt does) and never sees the wire protocol (the
//! agent's convert/domain.rs turns a proto `VmSpec` into the model).
//!
//! Flow: model -> `validate` -> `render`; XML -> `parse` -> model (+ what it
//! could not understand).

pub mod error;
pub mod model;
mod parse;
mod parse_attr;
mod parse_io;
mod parse_reader;
mod render;
pub mod validate;

pub use csagent_core::{KiB, MacAddr, VmUuid};
pub use error::{DomainError, FieldError};
pub use model::*;
pub use validate::{validate, validate_device};

/// XML namespace of csagent's `<metadata>` element; its presence marks the
/// domains csagent manages.
pub const NAMESPACE: &str = "https://csagent.dev/xmlns/domain/1";

/// The virtio-serial channel name qemu-guest-agent listens on.
pub const GUEST_AGENT_CHANNEL: &str = "org.qemu.guest_agent.0";

/// Validates `spec` and appends its domain XML to `buf` (reuse `buf` across
/// calls to avoid allocating). On error nothing is appended.
pub fn render_into(spec: &VmSpec, buf: &mut Vec<u8>) -> Result<(), DomainError> {
    validate(spec)?;
    let start = buf.len();
    if let Err(e) = render::render_into(spec, buf) {
        buf.truncate(start);
        return Err(e.into());
    }
    Ok(())
}

/// Validates `spec` and returns its domain XML.
pub fn render(spec: &VmSpec) -> Result<String, DomainError> {
    let mut buf = Vec::with_capacity(4096);
    render_into(spec, &mut buf)?;
    // quick-xml writes only the &str pieces we give it, so this is UTF-8.
    String::from_utf8(buf).map_err(|e| DomainError::Render(std::io::Error::other(e)))
}

/// Validates one device (see `validate_device`) and returns its XML
/// fragment, e.g. `<disk ...>...</disk>`, for attach/detach/update.
pub fn render_device(dev: &Device, machine: Option<&str>) -> Result<String, DomainError> {
    validate_device(dev, machine)?;
    let mut buf = Vec::with_capacity(512);
    render::render_device_into(dev, &mut buf)?;
    String::from_utf8(buf).map_err(|e| DomainError::Render(std::io::Error::other(e)))
}

/// Reads domain XML into the model; elements the model does not know are
/// skipped, and devices it cannot represent are listed in `not_understood`.
pub fn parse(xml: &str) -> Result<Parsed, DomainError> {
    parse::parse(xml)
}

/// The csagent metadata of a domain, if it has ours (cheap: stops at
/// `<metadata>` or `<devices>`).
pub fn metadata(xml: &str) -> Result<Option<CsagentMeta>, DomainError> {
    parse::metadata_only(xml)
}

/// True when the domain carries csagent's metadata, i.e. csagent defined it.
/// Unreadable XML is not ours.
pub fn is_managed(xml: &str) -> bool {
    matches!(metadata(xml), Ok(Some(_)))
}
