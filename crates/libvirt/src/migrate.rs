//! Live migration calls, run on the connection thread.
//!
//! Owns the libvirt side of moving a domain: the peer-to-peer migration
//! itself (the source's libvirtd talks to the target's, so the agent needs
//! no connection to the target), its job statistics while it runs and once
//! it completed, aborting it, and the switch to post-copy. It decides
//! nothing: when to abort or switch is the caller's.

use virt::connect::Connect;
use virt::domain::MigrateParameters;
use virt::sys;

use super::ffi;
use super::lifecycle::lookup;
use super::HvError;

/// How to migrate, as libvirt is told.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MigrateOptions {
    /// The target's libvirtd, e.g. qemu+tls://10.0.0.2/system.
    pub libvirt_uri: String,
    /// Where QEMU sends the memory stream, e.g. tcp://10.0.0.2.
    pub migrate_uri: Option<String>,
    pub tls: bool,
    /// MiB/s; 0: unlimited.
    pub bandwidth_mib_s: u64,
    pub auto_converge: bool,
    /// Allow a later switch to post-copy.
    pub post_copy: bool,
    /// 0 or 1: one connection.
    pub parallel_connections: u32,
    /// Copy non-shared disks over NBD.
    pub copy_storage: bool,
}

impl MigrateOptions {
    fn flags(&self) -> u32 {
        // Peer to peer and live always; the target keeps the definition, the
        // source's is undefined by the caller after reading the completed
        // job's statistics.
        let mut f =
            sys::VIR_MIGRATE_LIVE | sys::VIR_MIGRATE_PEER2PEER | sys::VIR_MIGRATE_PERSIST_DEST;
        let optional = [
            (self.tls, sys::VIR_MIGRATE_TLS),
            (self.auto_converge, sys::VIR_MIGRATE_AUTO_CONVERGE),
            (self.post_copy, sys::VIR_MIGRATE_POSTCOPY),
            (self.parallel_connections > 1, sys::VIR_MIGRATE_PARALLEL),
            (self.copy_storage, sys::VIR_MIGRATE_NON_SHARED_DISK),
        ];
        for (on, flag) in optional {
            if on {
                f |= flag;
            }
        }
        f
    }

    fn parameters(&self) -> MigrateParameters {
        MigrateParameters {
            uri: self.migrate_uri.clone(),
            bandwidth: (self.bandwidth_mib_s > 0).then_some(self.bandwidth_mib_s),
            parallel_connections: (self.parallel_connections > 1)
                .then(|| i32::try_from(self.parallel_connections).unwrap_or(i32::MAX)),
            ..MigrateParameters::default()
        }
    }
}

/// A migration job's figures, running or completed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobProgress {
    pub data_total: u64,
    pub data_remaining: u64,
    pub data_processed: u64,
    pub dirty_rate_pages_s: u64,
    pub iteration: u64,
    pub bytes_per_second: u64,
    /// The switch-over pause (completed jobs only).
    pub downtime_ms: u64,
    pub elapsed_ms: u64,
}

/// Migrates the domain; returns when libvirt says it is done, failed or was
/// aborted. Blocks the calling thread for the whole migration.
pub fn migrate(c: &Connect, uuid: &uuid::Uuid, opts: &MigrateOptions) -> Result<(), HvError> {
    let d = lookup(c, uuid)?;
    d.migrate_to_uri3(Some(&opts.libvirt_uri), opts.parameters(), opts.flags())
        .map_err(|e| HvError::libvirt("virDomainMigrateToURI3", e))
}

/// The running job's figures, or None when the domain has no job (not
/// started yet, or finished).
pub fn job(c: &Connect, uuid: &uuid::Uuid) -> Result<Option<JobProgress>, HvError> {
    let d = lookup(c, uuid)?;
    let s = d
        .job_stats(0)
        .map_err(|e| HvError::libvirt("virDomainGetJobStats", e))?;
    Ok((s.r#type != sys::VIR_DOMAIN_JOB_NONE as i32).then(|| progress(&s)))
}

/// The figures of the last completed job (after a migration: its downtime).
pub fn completed_job(c: &Connect, uuid: &uuid::Uuid) -> Result<Option<JobProgress>, HvError> {
    let d = lookup(c, uuid)?;
    let s = d
        .job_stats(sys::VIR_DOMAIN_JOB_STATS_COMPLETED)
        .map_err(|e| HvError::libvirt("virDomainGetJobStats", e))?;
    Ok((s.r#type != sys::VIR_DOMAIN_JOB_NONE as i32).then(|| progress(&s)))
}

fn progress(s: &virt::domain::JobStats) -> JobProgress {
    JobProgress {
        data_total: s.data_total.unwrap_or_default(),
        data_remaining: s.data_remaining.unwrap_or_default(),
        data_processed: s.data_processed.unwrap_or_default(),
        dirty_rate_pages_s: s.mem_dirty_rate.unwrap_or_default(),
        iteration: s.mem_iteration.unwrap_or_default(),
        bytes_per_second: s.mem_bps.unwrap_or_default(),
        downtime_ms: s.downtime.unwrap_or_default(),
        elapsed_ms: s.time_elapsed.unwrap_or_default(),
    }
}

/// Sets the longest switch-over pause of the running migration.
pub fn set_max_downtime(c: &Connect, uuid: &uuid::Uuid, ms: u64) -> Result<(), HvError> {
    lookup(c, uuid)?
        .migrate_set_max_downtime(ms, 0)
        .map_err(|e| HvError::libvirt("virDomainMigrateSetMaxDowntime", e))
}

/// Aborts the running migration; the domain keeps running here.
pub fn abort(c: &Connect, uuid: &uuid::Uuid) -> Result<(), HvError> {
    ffi::abort_job(&lookup(c, uuid)?).map_err(|e| HvError::libvirt("virDomainAbortJob", e))
}

/// Switches the running migration to post-copy.
pub fn start_post_copy(c: &Connect, uuid: &uuid::Uuid) -> Result<(), HvError> {
    ffi::start_post_copy(&lookup(c, uuid)?)
        .map_err(|e| HvError::libvirt("virDomainMigrateStartPostCopy", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_become_flags_and_parameters() {
        let o = MigrateOptions {
            libvirt_uri: "qemu+tcp://10.0.0.2/system".into(),
            migrate_uri: Some("tcp://10.0.0.2".into()),
            bandwidth_mib_s: 100,
            parallel_connections: 4,
            auto_converge: true,
            ..MigrateOptions::default()
        };
        let f = o.flags();
        assert_ne!(f & sys::VIR_MIGRATE_LIVE, 0);
        assert_ne!(f & sys::VIR_MIGRATE_PEER2PEER, 0);
        assert_ne!(f & sys::VIR_MIGRATE_AUTO_CONVERGE, 0);
        assert_ne!(f & sys::VIR_MIGRATE_PARALLEL, 0);
        assert_eq!(f & sys::VIR_MIGRATE_TLS, 0, "TLS only when asked");
        assert_eq!(f & sys::VIR_MIGRATE_UNDEFINE_SOURCE, 0);
        let p = o.parameters();
        assert_eq!(p.bandwidth, Some(100));
        assert_eq!(p.parallel_connections, Some(4));
        assert_eq!(p.uri.as_deref(), Some("tcp://10.0.0.2"));
        assert_eq!(MigrateOptions::default().parameters().bandwidth, None);
    }
}
