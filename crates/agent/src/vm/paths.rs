//! Host paths a VM may name: disks, block devices, ISOs, kernel, initrd,
//! firmware, NVRAM, console log and emulator.
//!
//! Owns the confinement rule. libvirt chowns what a domain names to the
//! QEMU user and QEMU opens it, so a spec naming `/etc/shadow` as a disk or
//! kernel would hand a host file to the guest. Every path must be absolute,
//! free of `..`, and (symlinks resolved) under one of the allowed roots: the
//! configured `[guest] path_roots` plus the directory of every libvirt
//! storage pool. A block device may be reached through a link under a root
//! (`/dev/disk/by-path/...`), but must then resolve to a block device. The
//! emulator must be a QEMU binary in a system directory. Refusals name the
//! field and the path. Must not: create, open or change anything.

use std::path::{Component, Path, PathBuf};

use csagent_core::error::{CommandError, ErrorKind};
use csagent_domain::{Disk, DiskSource, Firmware, VmSpec};

/// Directories an emulator may come from (Debian: /usr/bin, RHEL: /usr/libexec).
const EMULATOR_DIRS: [&str; 2] = ["/usr/bin", "/usr/libexec"];

/// What a path is for, which decides how it is checked.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Use {
    /// A file (image, kernel, firmware; NVRAM and console log libvirt may
    /// create): what exists of its path is resolved.
    File,
    /// A block device, possibly through a link: it must exist.
    Block,
}

/// One path a spec names, with the field it came from.
struct Named {
    field: String,
    path: String,
    kind: Use,
}

/// Every host path `spec` names, but the disks of `prepared` targets (the
/// agent makes those in a pool itself).
fn named(spec: &VmSpec, prepared: &[String]) -> Vec<Named> {
    let disks = spec.devices.disks.iter();
    let mut out: Vec<Named> = disks
        .filter(|d| !prepared.contains(&d.target))
        .filter_map(disk)
        .collect();
    let mut add = |field: String, path: &str, kind| {
        out.push(Named {
            field,
            path: path.to_string(),
            kind,
        })
    };
    if let Some(k) = &spec.os.kernel {
        add("kernel".into(), &k.kernel, Use::File);
        if let Some(i) = &k.initrd {
            add("initrd".into(), i, Use::File);
        }
    }
    if let Firmware::Uefi(u) = &spec.os.firmware {
        add("loader".into(), &u.loader, Use::File);
        if let Some(n) = &u.nvram {
            add("nvram".into(), n, Use::File);
        }
        if let Some(t) = &u.nvram_template {
            add("nvram template".into(), t, Use::File);
        }
    }
    if let Some(l) = &spec.devices.serial_console_log {
        add("serial console log".into(), l, Use::File);
    }
    out
}

/// A disk's host path, named as a refusal names it.
fn disk(d: &Disk) -> Option<Named> {
    let path = d.source.host_path()?.to_string();
    let (what, kind) = match d.source {
        DiskSource::Block { .. } => ("device", Use::Block),
        _ => ("source", Use::File),
    };
    Some(Named {
        field: format!("disk {} {what}", d.target),
        path,
        kind,
    })
}

/// Refuses `spec` when a path it names is outside `roots` (or its emulator
/// is not a system QEMU). Blocking: resolves symlinks on pool storage, so
/// callers run it off the async workers.
pub fn check_spec(
    spec: &VmSpec,
    prepared: &[String],
    roots: &[PathBuf],
) -> Result<(), CommandError> {
    if let Some(e) = &spec.devices.emulator {
        check_emulator(e)?;
    }
    for n in named(spec, prepared) {
        check(&n.field, &n.path, n.kind, roots)?;
    }
    Ok(())
}

/// The same rule for one disk being attached.
pub fn check_disk(d: &Disk, roots: &[PathBuf]) -> Result<(), CommandError> {
    match disk(d) {
        Some(n) => check(&n.field, &n.path, n.kind, roots),
        None => Ok(()),
    }
}

/// The same rule for one file (an ISO being inserted).
pub fn check_file(field: &str, path: &str, roots: &[PathBuf]) -> Result<(), CommandError> {
    check(field, path, Use::File, roots)
}

fn check(field: &str, path: &str, kind: Use, roots: &[PathBuf]) -> Result<(), CommandError> {
    let p = Path::new(path);
    if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
        return Err(refused(
            field,
            path,
            "must be an absolute path without '..'",
        ));
    }
    if !under_any(p, roots) {
        return Err(outside(field, path, roots));
    }
    let real = match kind {
        Use::File => resolve(p),
        Use::Block => p.canonicalize().map_err(|e| {
            CommandError::new(
                ErrorKind::NotFound,
                format!("{field} {path} cannot be used: {e}"),
            )
        })?,
    };
    if kind == Use::Block {
        use std::os::unix::fs::FileTypeExt;
        let is_block = std::fs::metadata(&real).is_ok_and(|m| m.file_type().is_block_device());
        if !is_block {
            return Err(refused(field, path, "is not a block device"));
        }
        return Ok(());
    }
    if under_any(&real, &canonical(roots)) {
        Ok(())
    } else {
        Err(refused(
            field,
            path,
            &format!("resolves to {}, outside the allowed roots", real.display()),
        ))
    }
}

/// `p` with the symlinks of its longest existing prefix resolved: a file not
/// made yet (NVRAM, a log) is judged by where it would be created.
fn resolve(p: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut at = p;
    loop {
        if let Ok(real) = at.canonicalize() {
            return rest.iter().rev().fold(real, |acc, c| acc.join(c));
        }
        match (at.parent(), at.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                at = parent;
            }
            _ => return p.to_path_buf(),
        }
    }
}

fn check_emulator(path: &str) -> Result<(), CommandError> {
    let p = Path::new(path);
    let in_system_dir = p
        .parent()
        .is_some_and(|d| EMULATOR_DIRS.iter().any(|s| d == Path::new(s)));
    let is_qemu = p
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("qemu-system-") || n == "qemu-kvm");
    if in_system_dir && is_qemu {
        Ok(())
    } else {
        Err(refused(
            "emulator",
            path,
            "must be a qemu-system-* or qemu-kvm binary in /usr/bin or /usr/libexec",
        ))
    }
}

fn under_any(p: &Path, roots: &[PathBuf]) -> bool {
    roots.iter().any(|r| p.starts_with(r) && p != r)
}

/// The roots with their symlinks resolved (a root that does not exist
/// allows nothing more than its own name).
fn canonical(roots: &[PathBuf]) -> Vec<PathBuf> {
    roots
        .iter()
        .map(|r| r.canonicalize().unwrap_or_else(|_| r.clone()))
        .collect()
}

fn refused(field: &str, path: &str, why: &str) -> CommandError {
    CommandError::new(
        ErrorKind::PermissionDenied,
        format!("{field} {path} refused: {why}; nothing was changed"),
    )
}

fn outside(field: &str, path: &str, roots: &[PathBuf]) -> CommandError {
    let list: Vec<_> = roots.iter().map(|r| r.display().to_string()).collect();
    refused(
        field,
        path,
        &format!(
            "it is outside the directories a VM may use ({}; [guest] path_roots and the storage pools)",
            list.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots(dir: &Path) -> Vec<PathBuf> {
        vec![dir.to_path_buf()]
    }

    #[test]
    fn a_file_under_a_root_is_allowed_and_host_files_are_not() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("a.qcow2");
        std::fs::write(&img, b"x").unwrap();
        let r = roots(d.path());
        assert!(check("disk vda source", img.to_str().unwrap(), Use::File, &r).is_ok());
        let e = check("disk vda source", "/etc/shadow", Use::File, &r).unwrap_err();
        assert_eq!(e.kind, ErrorKind::PermissionDenied);
        assert!(
            e.message.contains("disk vda source /etc/shadow refused"),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_symlink_out_of_a_root_and_dot_dot_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let link = d.path().join("evil");
        std::os::unix::fs::symlink("/etc/shadow", &link).unwrap();
        let r = roots(d.path());
        let e = check("kernel", link.to_str().unwrap(), Use::File, &r).unwrap_err();
        assert!(
            e.message.contains("resolves to /etc/shadow"),
            "{}",
            e.message
        );
        let sneaky = format!("{}/../../etc/shadow", d.path().display());
        let e = check("kernel", &sneaky, Use::File, &r).unwrap_err();
        assert!(e.message.contains("'..'"), "{}", e.message);
        assert!(check("kernel", "relative/k", Use::File, &r).is_err());
    }

    #[test]
    fn a_block_device_must_be_one() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("notdev");
        std::fs::write(&f, b"x").unwrap();
        let e = check(
            "disk vdb device",
            f.to_str().unwrap(),
            Use::Block,
            &roots(d.path()),
        )
        .unwrap_err();
        assert!(e.message.contains("not a block device"), "{}", e.message);
    }

    #[test]
    fn created_files_count_by_their_directory() {
        let d = tempfile::tempdir().unwrap();
        let nv = d.path().join("vm_VARS.fd");
        assert!(check("nvram", nv.to_str().unwrap(), Use::File, &roots(d.path())).is_ok());
    }

    #[test]
    fn only_system_qemu_is_an_emulator() {
        assert!(check_emulator("/usr/bin/qemu-system-x86_64").is_ok());
        assert!(check_emulator("/usr/libexec/qemu-kvm").is_ok());
        assert!(check_emulator("/tmp/qemu-system-x86_64").is_err());
        assert!(check_emulator("/usr/bin/bash").is_err());
    }
}
