//! The migration commands on this host: preparing to receive a VM
//! (PrepareMigration, the target) and sending one (MigrateVm, the source).
//!
//! Owns the host's side of a move beyond libvirt's: admission and disk
//! checks before a VM arrives, the `[migration]` defaults and TLS policy
//! before one leaves, and releasing the source's network state once it is
//! gone. The move itself is vm::migrate's.

use std::time::Duration;

use super::{Handlers, Reply};
use crate::ctx::Ctx;
use crate::vm::migrate::{self, Defaults, MigrateRequest, PrepareRequest};
use csagent_core::error::{CommandError, ErrorKind};

impl Handlers {
    pub(super) async fn prepare_migration(
        &self,
        req: PrepareRequest,
    ) -> Result<Reply, CommandError> {
        let vms = self
            .hypervisor
            .list_vms()
            .await
            .map_err(CommandError::from)?;
        let id = req.vm.to_string();
        if vms.iter().any(|v| v.uuid == id) {
            return Err(CommandError::new(
                ErrorKind::AlreadyExists,
                format!("VM {id} already exists on this host: refusing to receive it"),
            ));
        }
        self.admit(&vms, req.vcpus, req.memory_kib).await?;
        migrate::check_disks(&req.disk_paths).await?;
        let address = self.migration_address()?;
        tracing::info!(vm = %id, address = %address, tls = self.migration.tls, "ready to receive a migration");
        Ok(Reply::MigrationPrepared(
            req.vm,
            address,
            self.migration.tls,
        ))
    }

    pub(super) async fn migrate_vm(
        &self,
        req: MigrateRequest,
        ctx: &Ctx,
    ) -> Result<Reply, CommandError> {
        if self.migration.tls && !req.options.tls {
            return Err(CommandError::invalid(
                "refusing a plain-TCP migration: this host migrates only over TLS ([migration] tls = true)",
            ));
        }
        let vm = req.vm;
        let req = req.or_defaults(&self.migration_defaults());
        let moved = migrate::migrate(&self.hypervisor, req, ctx).await?;
        // The VM runs elsewhere now: its security group and bridges here go
        // with it, as after a destroy.
        self.release_networks(vm, ctx).await;
        Ok(Reply::Migrated(moved))
    }

    /// This host's address on the migration network.
    fn migration_address(&self) -> Result<String, CommandError> {
        if !self.migration.address.is_empty() {
            return Ok(self.migration.address.clone());
        }
        self.monitor.address().ok_or_else(|| {
            CommandError::new(
                ErrorKind::Unavailable,
                "this host has no routable address to receive a migration on: set [migration] address",
            )
        })
    }

    fn migration_defaults(&self) -> Defaults {
        let m = &self.migration;
        let after = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
        Defaults {
            bandwidth_mib_s: m.speed_mibps,
            max_downtime_ms: m.downtime_ms,
            auto_converge: m.auto_converge,
            post_copy_after: m.post_copy_after_iterations,
            parallel_connections: m.parallel_connections,
            timeout: (m.wait_secs > 0).then(|| Duration::from_secs(m.wait_secs)),
            pause_after: after(m.pause_after_ms),
        }
    }
}
