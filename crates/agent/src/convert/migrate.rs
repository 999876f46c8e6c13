//! Wire conversions of live migration (PrepareMigration, MigrateVm) and of
//! command progress.
//!
//! Proto requests become the vm module's own types, every bad field an
//! INVALID_ARGUMENT before anything happens; results and progress become
//! proto messages. Nothing here talks to libvirt or fills in defaults.

use std::time::Duration;

use csagent_core::error::CommandError;
use csagent_libvirt::migrate::{JobProgress, MigrateOptions};
use csagent_proto::v1 as pb;

use crate::ctx::Progress;
use crate::vm::migrate::{MigrateRequest, Migrated, PrepareRequest};

use crate::convert::vm_ops::vm_uuid as vm;

/// A libvirt URI the source's libvirtd can dial: qemu+tcp or qemu+tls.
fn libvirt_uri(s: &str) -> Result<String, CommandError> {
    let ok = ["qemu+tcp://", "qemu+tls://", "qemu+ssh://"]
        .iter()
        .any(|p| s.starts_with(p))
        && s.ends_with("/system");
    if !ok {
        return Err(CommandError::invalid(format!(
            "destination_libvirt_uri {s:?} is not qemu+tcp://, qemu+tls:// or qemu+ssh://HOST/system"
        )));
    }
    Ok(s.to_string())
}

fn migrate_uri(s: &str) -> Result<Option<String>, CommandError> {
    if s.is_empty() {
        return Ok(None);
    }
    if !s.starts_with("tcp://") || s.len() == "tcp://".len() || s.chars().any(char::is_whitespace) {
        return Err(CommandError::invalid(format!(
            "destination_migrate_uri {s:?} is not tcp://HOST[:PORT]"
        )));
    }
    Ok(Some(s.to_string()))
}

pub fn migrate_from_proto(m: &pb::MigrateVm) -> Result<MigrateRequest, CommandError> {
    let vm = vm(&m.vm_uuid)?;
    let options = MigrateOptions {
        libvirt_uri: libvirt_uri(&m.destination_libvirt_uri)?,
        migrate_uri: migrate_uri(&m.destination_migrate_uri)?,
        tls: m.tls,
        bandwidth_mib_s: m.bandwidth_mib_s,
        auto_converge: m.auto_converge,
        post_copy: m.post_copy_after_iterations > 0,
        parallel_connections: m.parallel_connections,
        copy_storage: m.copy_storage,
    };
    Ok(MigrateRequest {
        vm,
        options,
        max_downtime_ms: m.max_downtime_ms,
        post_copy_after: u64::from(m.post_copy_after_iterations),
        timeout: (m.completion_timeout_ms > 0)
            .then(|| Duration::from_millis(m.completion_timeout_ms)),
        pause_after: None,
    })
}

pub fn prepare_from_proto(m: &pb::PrepareMigration) -> Result<PrepareRequest, CommandError> {
    let vm = vm(&m.vm_uuid)?;
    if m.vcpus == 0 || m.memory_kib == 0 {
        return Err(CommandError::invalid(
            "vcpus and memory_kib must be set: admission needs them",
        ));
    }
    let disk_paths = m
        .disk_paths
        .iter()
        .map(|p| {
            if p.starts_with('/') {
                Ok(std::path::PathBuf::from(p))
            } else {
                Err(CommandError::invalid(format!(
                    "disk path {p:?} is not absolute"
                )))
            }
        })
        .collect::<Result<_, _>>()?;
    Ok(PrepareRequest {
        vm,
        vcpus: m.vcpus,
        memory_kib: m.memory_kib,
        disk_paths,
    })
}

pub fn migrated_to_proto(m: &Migrated) -> pb::MigrateVmResult {
    pb::MigrateVmResult {
        vm_uuid: m.vm.to_string(),
        total_ms: u64::try_from(m.total.as_millis()).unwrap_or(u64::MAX),
        downtime_ms: m.downtime_ms,
        data_total_bytes: m.data_total,
        post_copy: m.post_copy,
    }
}

/// Where the source must send the VM, as the target's preparation says.
pub fn prepared_to_proto(vm: &uuid::Uuid, address: &str, tls: bool) -> pb::PrepareMigrationResult {
    let scheme = if tls { "qemu+tls" } else { "qemu+tcp" };
    let host = bracketed(address);
    pb::PrepareMigrationResult {
        vm_uuid: vm.to_string(),
        libvirt_uri: format!("{scheme}://{host}/system"),
        migrate_uri: format!("tcp://{host}"),
        tls,
    }
}

/// IPv6 literals go in brackets inside a URI.
fn bracketed(address: &str) -> String {
    if address.contains(':') && !address.starts_with('[') {
        format!("[{address}]")
    } else {
        address.to_string()
    }
}

/// A CommandProgress for a long step: a copy's bytes, or a migration's job.
pub fn progress(command_id: &str, stage: &str, p: Progress) -> pb::CommandProgress {
    match p {
        Progress::Copy(c) => crate::convert::storage::progress(command_id, stage, c),
        Progress::Migration(j) => pb::CommandProgress {
            command_id: command_id.to_string(),
            stage: stage.to_string(),
            done: j.data_processed,
            total: j.data_total,
            migration: Some(migration_progress(&j)),
        },
    }
}

fn migration_progress(j: &JobProgress) -> pb::MigrationProgress {
    pb::MigrationProgress {
        data_total_bytes: j.data_total,
        data_remaining_bytes: j.data_remaining,
        data_processed_bytes: j.data_processed,
        dirty_rate_pages_s: j.dirty_rate_pages_s,
        iteration: j.iteration,
        bytes_per_second: j.bytes_per_second,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask() -> pb::MigrateVm {
        pb::MigrateVm {
            vm_uuid: uuid::Uuid::new_v4().to_string(),
            destination_libvirt_uri: "qemu+tcp://10.0.0.2/system".into(),
            destination_migrate_uri: "tcp://10.0.0.2".into(),
            ..Default::default()
        }
    }

    #[test]
    fn bad_migrations_are_refused_naming_the_field() {
        let mut m = ask();
        m.destination_libvirt_uri = "qemu:///system".into();
        let e = migrate_from_proto(&m).unwrap_err();
        assert!(
            e.message.contains("destination_libvirt_uri"),
            "{}",
            e.message
        );
        let mut m = ask();
        m.destination_migrate_uri = "udp://x".into();
        assert!(migrate_from_proto(&m)
            .unwrap_err()
            .message
            .contains("destination_migrate_uri"));
        let mut m = ask();
        m.vm_uuid = "nope".into();
        assert!(migrate_from_proto(&m)
            .unwrap_err()
            .message
            .contains("vm_uuid"));
        let p = pb::PrepareMigration {
            vm_uuid: uuid::Uuid::new_v4().to_string(),
            vcpus: 1,
            memory_kib: 1024,
            disk_paths: vec!["relative.qcow2".into()],
        };
        assert!(prepare_from_proto(&p)
            .unwrap_err()
            .message
            .contains("not absolute"));
    }

    #[test]
    fn a_migration_asks_for_what_it_names() {
        let mut m = ask();
        m.post_copy_after_iterations = 3;
        m.completion_timeout_ms = 5000;
        let r = migrate_from_proto(&m).unwrap();
        assert!(r.options.post_copy);
        assert_eq!(r.timeout, Some(Duration::from_secs(5)));
        assert_eq!(r.options.migrate_uri.as_deref(), Some("tcp://10.0.0.2"));
        let p = prepared_to_proto(&r.vm, "fd00::2", true);
        assert_eq!(p.libvirt_uri, "qemu+tls://[fd00::2]/system");
        assert_eq!(p.migrate_uri, "tcp://[fd00::2]");
    }
}
