//! Disk leases: what a host answers when another one holds a VM's disk.
//!
//! Owns the reading of a failed start as "the disk is held elsewhere": the
//! last line against one VM running twice is libvirt's lock manager
//! (virtlockd, its lockspace on the shared storage) and QEMU's own image
//! lock, and both speak only in libvirt error text. This module turns that
//! text into a CONFLICT naming the disk, so the plane and the operator see a
//! refused second copy and not an agent failure. It never takes, breaks or
//! inspects a lock itself.

use csagent_core::error::{CommandError, ErrorKind};
use csagent_domain::VmSpec;
use sha2::{Digest, Sha256};

/// virtlockd's refusal: "resource busy: Lockspace resource '<name>' is
/// locked". For automatic disk leases the name is the SHA-256 of the path.
const LOCKSPACE: &str = "Lockspace resource '";
/// QEMU's image lock: 'Failed to get "write" lock ... Is another process
/// using the image [<path>]?'.
const QEMU_LOCK: &str = "Failed to get \"write\" lock";
const QEMU_IMAGE: &str = "using the image [";

/// The CONFLICT for a start refused because a disk's lease is held, or None
/// when `message` is some other failure.
pub fn refusal(spec: &VmSpec, message: &str) -> Option<CommandError> {
    let disk = if let Some(resource) = between(message, LOCKSPACE, "'") {
        held_disk(spec, resource).unwrap_or_else(|| format!("lease {resource}"))
    } else if message.contains(QEMU_LOCK) {
        between(message, QEMU_IMAGE, "]")
            .map(str::to_string)
            .unwrap_or_else(|| "one of its disks".into())
    } else {
        return None;
    };
    Some(CommandError::new(
        ErrorKind::Conflict,
        format!(
            "VM {} was not started here: disk {disk} is in use by another host or process \
             (its lease is held; libvirt: {message}). A VM runs in one place at a time; if its \
             host is dead, fence it before starting the VM elsewhere. Nothing was left defined \
             on this host.",
            spec.uuid
        ),
    ))
}

/// The disk of `spec` whose automatic lease is `resource`.
fn held_disk(spec: &VmSpec, resource: &str) -> Option<String> {
    spec.devices.disks.iter().find_map(|d| {
        let path = d.source.host_path()?;
        let hash = hex::encode(Sha256::digest(path.as_bytes()));
        hash.eq_ignore_ascii_case(resource)
            .then(|| path.to_string())
    })
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = s.find(start)? + start.len();
    let len = s[from..].find(end)?;
    Some(&s[from..from + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with(path: &str) -> VmSpec {
        use csagent_domain::{Disk, DiskBus, DiskDevice, DiskFormat, DiskSource};
        let json = include_str!("../../tests/golden/domain/kernel-boot.json");
        let p: csagent_proto::v1::VmSpec = serde_json::from_str(json).unwrap();
        let mut s = crate::convert::domain::spec_from_proto(&p).unwrap();
        s.devices.disks = vec![Disk::new(
            DiskDevice::Disk,
            DiskSource::File { path: path.into() },
            DiskFormat::Qcow2,
            "vda",
            DiskBus::Virtio,
        )];
        s
    }

    #[test]
    fn virtlockd_refusal_names_the_disk_whose_lease_it_is() {
        let path = "/var/lib/cslab/shared/csat-ha/ha-1.qcow2";
        let hash = hex::encode(Sha256::digest(path.as_bytes()));
        let msg = format!("resource busy: Lockspace resource '{hash}' is locked");
        let e = refusal(&spec_with(path), &msg).expect("a lease refusal");
        assert_eq!(e.kind, ErrorKind::Conflict);
        assert!(
            e.message.contains(&format!("disk {path} is in use")),
            "{}",
            e.message
        );
    }

    #[test]
    fn qemu_image_lock_names_the_image() {
        let msg = "internal error: qemu unexpectedly closed the monitor: \
                   qemu-system-x86_64: -blockdev {...}: Failed to get \"write\" lock\n\
                   Is another process using the image [/srv/a.qcow2]?";
        let e = refusal(&spec_with("/srv/a.qcow2"), msg).expect("a lease refusal");
        assert_eq!(e.kind, ErrorKind::Conflict);
        assert!(
            e.message.contains("disk /srv/a.qcow2 is in use"),
            "{}",
            e.message
        );
    }

    #[test]
    fn other_failures_are_not_leases() {
        assert!(refusal(&spec_with("/srv/a.qcow2"), "internal error: no space left").is_none());
    }
}
