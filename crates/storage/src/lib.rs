//! Primary storage: libvirt storage pools, volumes made with qemu-img
//! (blank, linked clone, full copy), templates copied in from secondary
//! storage, and snapshots.
//!
//! Owns: `Storage`, the façade dispatch calls, and the plain types its
//! methods take and return. Every operation validates its input before any
//! side effect, runs under a timeout and a cancellation token, and removes
//! what it half-made on failure. Must not: see proto types (the agent's
//! edge converts), render domain XML, or open a libvirt connection of its
//! own: every libvirt call runs on the hypervisor's one bounded connection.

pub mod ceph_secret;
pub mod error;
pub mod lock;
pub mod names;
pub mod pool;
pub mod pool_def;
pub mod pool_fs;
pub mod probe;
pub mod qemu_img;
pub mod snapshot;
mod snapshot_revert;
pub mod template;
pub mod volume;
pub mod xml;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use csagent_libvirt::Hypervisor;
use tokio_util::sync::CancellationToken;

pub use ceph_secret::{CephKey, CephSecret};
pub use error::{ErrorKind, StorageError};
pub use names::{PoolName, SnapshotName, VolumeName};
pub use pool::{Monitor, PoolDef, PoolKind, PoolState, PoolStatus};
pub use qemu_img::QemuImg;
pub use snapshot::{SnapshotInfo, SnapshotTarget};
pub use template::{Checksum, ChecksumAlgo, CopyTemplate, TemplateSource};
pub use volume::{
    BackingFile, CloneMode, CreateFromTemplate, CreateVolume, ResizeVolume, VolumeInfo,
};

pub use csagent_core::units::Bytes;

/// Progress of a long copy, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub done: Bytes,
    pub total: Bytes,
}

/// Callback receiving progress; dispatch turns it into CommandProgress.
pub type ProgressSink = Arc<dyn Fn(Progress) + Send + Sync>;

/// Disk image formats the agent creates and accepts as templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    Qcow2,
    Raw,
}

impl ImageFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Raw => "raw",
        }
    }

    pub fn parse(s: &str) -> Result<Self, StorageError> {
        match s {
            "qcow2" => Ok(ImageFormat::Qcow2),
            "raw" => Ok(ImageFormat::Raw),
            other => Err(StorageError::invalid(
                format!("image format {other:?}"),
                "supported formats are qcow2 and raw",
            )),
        }
    }
}

/// Storage operations, each with its own configurable timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    CreateVolume,
    CloneVolume,
    FullCopy,
    Resize,
    Delete,
    Info,
    CopyTemplate,
    Snapshot,
    Pool,
}

/// Configuration of the storage module (from the agent's config file).
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// qemu-img binary.
    pub qemu_img: PathBuf,
    /// Timeout of any operation not in `op_timeouts` (the seed's 120 s).
    pub default_timeout: Duration,
    pub op_timeouts: HashMap<Op, Duration>,
    /// Directories a template may be copied from by path (secondary
    /// storage mounts). A path elsewhere is refused, so a command cannot
    /// copy host files such as /etc/shadow into a VM-visible volume.
    pub template_roots: Vec<PathBuf>,
    /// Time limit of one filesystem call on pool storage (pool_fs.rs).
    pub fs_timeout: Duration,
    /// How a volume is made from a template when the command does not say
    /// (`[guest] create_full_clone`).
    pub default_clone: CloneMode,
    /// PEM bundle of CAs trusted for https template servers besides the
    /// public web roots (a private image server, CloudStack's SSVM).
    pub template_ca_file: Option<PathBuf>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            qemu_img: PathBuf::from("qemu-img"),
            default_timeout: Duration::from_secs(120),
            op_timeouts: HashMap::new(),
            // CloudStack mounts secondary storage under /mnt.
            template_roots: vec![PathBuf::from("/mnt")],
            fs_timeout: Duration::from_secs(30),
            default_clone: CloneMode::Linked,
            template_ca_file: None,
        }
    }
}

impl StorageConfig {
    fn timeout(&self, op: Op) -> Duration {
        self.op_timeouts
            .get(&op)
            .copied()
            .unwrap_or(self.default_timeout)
    }
}

/// Per-call controls: the command's cancellation token and, when the
/// command carries one, its own timeout (overrides the configured one).
#[derive(Debug, Clone, Default)]
pub struct CallOpts {
    pub cancel: CancellationToken,
    pub timeout: Option<Duration>,
}

impl CallOpts {
    pub fn new(cancel: CancellationToken) -> Self {
        Self {
            cancel,
            timeout: None,
        }
    }

    pub fn with_timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }
}

/// The storage module's façade: one per agent, shared behind an `Arc`.
pub struct Storage {
    cfg: StorageConfig,
    qemu_img: QemuImg,
    hv: Hypervisor,
    locks: lock::VolumeLocks,
    pools: pool::PoolCache,
}

impl Storage {
    /// Pools, volumes and snapshots of the libvirt behind `hv`.
    pub fn new(cfg: StorageConfig, hv: Hypervisor) -> Self {
        Self {
            qemu_img: QemuImg::new(cfg.qemu_img.clone()),
            hv,
            locks: lock::VolumeLocks::default(),
            pools: pool::PoolCache::default(),
            cfg,
        }
    }

    pub fn config(&self) -> &StorageConfig {
        &self.cfg
    }

    /// Runs `f` on the hypervisor's connection (a blocking thread, bounded
    /// like every libvirt call) within what is left of the operation's
    /// budget; a cancelled operation stops waiting at once. A libvirt call
    /// cannot be interrupted: on timeout or cancel it finishes unseen.
    async fn libvirt<T, F>(
        &self,
        step: &'static str,
        object: &str,
        ctl: &qemu_img::RunCtl,
        f: F,
    ) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&virt::connect::Connect) -> Result<T, StorageError> + Send + 'static,
    {
        let left = ctl
            .deadline
            .saturating_duration_since(tokio::time::Instant::now());
        let call = self.hv.call_within(step, left, move |c| Ok(f(c)));
        tokio::select! {
            r = call => r.map_err(|e| error::from_hv(e, step, object, ctl.budget))?,
            _ = ctl.cancel.cancelled() => Err(StorageError::Cancelled {
                step,
                object: object.to_string(),
            }),
        }
    }

    /// Runs filesystem work on pool storage off the workers, bounded
    /// (pool_fs.rs).
    async fn fs<T, F>(
        &self,
        step: &'static str,
        object: &std::path::Path,
        ctl: &qemu_img::RunCtl,
        f: F,
    ) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, StorageError> + Send + 'static,
    {
        pool_fs::run(step, object, ctl, ctl.fs_timeout, f).await
    }

    /// Deadline and cancellation of one qemu-img call of operation `op`.
    fn ctl(&self, op: Op, opts: &CallOpts) -> qemu_img::RunCtl {
        qemu_img::RunCtl::new(
            opts.timeout.unwrap_or_else(|| self.cfg.timeout(op)),
            opts.cancel.clone(),
        )
        .with_fs_timeout(self.cfg.fs_timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send<T: Send>(_: &T) {}

    /// Dispatch runs every operation on a spawned task: their futures must
    /// be Send. Never polled; this only has to compile.
    #[test]
    fn operation_futures_are_send() {
        let s = Storage::new(
            StorageConfig::default(),
            Hypervisor::start("test:///default", Duration::from_secs(1)),
        );
        let pool = PoolName::new("p").unwrap();
        let vol = VolumeName::new("v").unwrap();
        let o = CallOpts::default;
        send(&s.create_volume(
            CreateVolume {
                pool: pool.clone(),
                name: vol.clone(),
                format: ImageFormat::Raw,
                size: Bytes(1),
            },
            o(),
        ));
        send(&s.create_volume_from_template(
            CreateFromTemplate {
                pool: pool.clone(),
                name: vol.clone(),
                template: vol.clone(),
                mode: Some(CloneMode::Linked),
                size: None,
            },
            o(),
            None,
        ));
        send(&s.copy_template(
            CopyTemplate {
                pool: pool.clone(),
                name: vol.clone(),
                source: TemplateSource::Url("http://h/".into()),
                format: ImageFormat::Raw,
                checksum: None,
                unverified: true,
            },
            o(),
            None,
        ));
        send(&s.list_pools(o()));
        send(&s.delete_volume(&pool, &vol, o()));
        let t = SnapshotTarget::Domain { domain: "d".into() };
        send(&s.create_snapshot(t.clone(), SnapshotName::new("s").unwrap(), o()));
        send(&s.revert_snapshot(t.clone(), SnapshotName::new("s").unwrap(), o()));
        send(&s.list_snapshots(t, o()));
    }
}
