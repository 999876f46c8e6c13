//! GetConsole: where a viewer reaches a VM's VNC console, and its password.
//!
//! Owns the choice of address: QEMU's listen address, unless it listens on
//! every address (0.0.0.0, ::), in which case the host's own address, taken
//! by the caller from the host facts, is what a viewer can reach. Read-only:
//! works on every domain, csagent's or not. The XML is read with
//! VIR_DOMAIN_XML_SECURE because libvirt hides passwords otherwise.

use csagent_core::error::{CommandError, ErrorKind};
use csagent_domain::GraphicsKind;
use csagent_libvirt::devices;
use csagent_libvirt::Hypervisor;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Console {
    pub host: String,
    pub port: u16,
    pub password: Option<String>,
    /// The listen address exactly as libvirt has it (empty: libvirt default,
    /// normally 127.0.0.1).
    pub listen: String,
}

/// `host_address`: the address to report when QEMU listens on every
/// address (None: report the listen address as it is).
pub async fn console(
    h: &Hypervisor,
    uuid: uuid::Uuid,
    host_address: Option<String>,
) -> Result<Console, CommandError> {
    let xml = h
        .call("get_xml_desc", move |c| devices::secure_xml(c, &uuid))
        .await
        .map_err(CommandError::from)?;
    let spec = super::spec_of(uuid, &xml)?;
    let g = spec
        .devices
        .graphics
        .iter()
        .find(|g| g.kind == GraphicsKind::Vnc)
        .ok_or_else(|| {
            CommandError::new(ErrorKind::NotFound, format!("VM {uuid} has no VNC console"))
        })?;
    // libvirt writes port -1 (absent here) until QEMU runs with autoport.
    let port = g.port.filter(|p| *p > 0).ok_or_else(|| {
        CommandError::new(
            ErrorKind::Conflict,
            format!("VM {uuid} is not running, so its VNC console has no port yet; start it first"),
        )
    })?;
    let listen = g.listen.clone().unwrap_or_default();
    Ok(Console {
        host: reachable(&listen, host_address),
        port,
        password: g.passwd.clone(),
        listen,
    })
}

/// The address a viewer should use for a console listening on `listen`.
pub fn reachable(listen: &str, host_address: Option<String>) -> String {
    let wildcard = matches!(listen, "0.0.0.0" | "::" | "[::]");
    match (wildcard, host_address) {
        (true, Some(a)) => a,
        (false, _) if !listen.is_empty() => listen.to_string(),
        // libvirt's default listen address (vnc_listen in qemu.conf).
        (false, _) => "127.0.0.1".to_string(),
        (true, None) => listen.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listen_reports_the_host_address() {
        assert_eq!(reachable("0.0.0.0", Some("192.0.2.7".into())), "192.0.2.7");
        assert_eq!(reachable("::", Some("2001:db8::7".into())), "2001:db8::7");
        assert_eq!(reachable("0.0.0.0", None), "0.0.0.0");
        assert_eq!(reachable("10.1.1.1", Some("192.0.2.7".into())), "10.1.1.1");
        assert_eq!(reachable("", None), "127.0.0.1");
    }
}
