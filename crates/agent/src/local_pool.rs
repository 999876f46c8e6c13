//! The host's local primary storage pool (`[storage] local_path` and
//! `local_uuid`, CloudStack's local.storage.*): registered with libvirt at
//! start so VMs can have disks on the host's own disk, and named in every
//! Register so the plane knows which pool is local.
//!
//! Owns the rule: a libvirt pool already at `local_path` is adopted under
//! its own name (libvirt refuses a second pool on the same directory, and
//! renaming an operator's pool is not ours to do); otherwise a dir pool
//! named `local_uuid` is defined, built, started and autostarted. A pool
//! that cannot be registered is logged with the reason and retried, never
//! fatal: the host still runs VMs on its other pools. Must not: delete or
//! change any pool or file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use csagent_storage::{CallOpts, PoolDef, PoolKind, PoolName, Storage, StorageError};
use tokio_util::sync::CancellationToken;

/// How long the first attempt may hold up the agent's start.
const FIRST_ATTEMPT: Duration = Duration::from_secs(20);
/// Between attempts after a failure.
const RETRY: Duration = Duration::from_secs(30);

/// What to register: the pool's name when csagent defines it, and where.
#[derive(Clone, Debug)]
pub struct LocalPool {
    pub uuid: String,
    pub path: PathBuf,
}

impl LocalPool {
    /// None when `local_uuid` is empty: the host has no local pool.
    pub fn from_config(uuid: &str, path: &Path) -> Option<LocalPool> {
        (!uuid.is_empty()).then(|| LocalPool {
            uuid: uuid.to_string(),
            path: path.to_path_buf(),
        })
    }

    /// Registers the pool, waiting at most FIRST_ATTEMPT; on failure keeps
    /// trying in the background until `stop`. The name Register carries:
    /// the adopted pool's, or `local_uuid` (what it will be called).
    pub async fn at_start(self, storage: Arc<Storage>, stop: CancellationToken) -> String {
        let first = tokio::time::timeout(FIRST_ATTEMPT, self.register(&storage, &stop)).await;
        match first {
            Ok(Ok(name)) => return name,
            Ok(Err(e)) => self.failed(&e.to_string()),
            Err(_) => self.failed("libvirt did not answer in time"),
        }
        let name = self.uuid.clone();
        tokio::spawn(self.keep_trying(storage, stop));
        name
    }

    async fn keep_trying(self, storage: Arc<Storage>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(RETRY) => {}
            }
            match self.register(&storage, &stop).await {
                Ok(_) => return,
                Err(e) => self.failed(&e.to_string()),
            }
        }
    }

    fn failed(&self, why: &str) {
        tracing::error!(
            pool = %self.uuid,
            path = %self.path.display(),
            error = %why,
            "cannot register the local storage pool ([storage] local_path/local_uuid); retrying every {} s",
            RETRY.as_secs()
        );
    }

    /// One attempt: adopt the pool at `path`, or define ours.
    pub async fn register(
        &self,
        storage: &Storage,
        stop: &CancellationToken,
    ) -> Result<String, StorageError> {
        let opts = || CallOpts::new(stop.clone());
        let pools = storage.list_pools(opts()).await?;
        if let Some(p) = pools
            .iter()
            .find(|p| p.path.as_deref() == Some(self.path.as_path()))
        {
            tracing::info!(pool = %p.name, path = %self.path.display(), "local storage: adopted the pool already at local_path");
            return Ok(p.name.clone());
        }
        let def = PoolDef {
            name: PoolName::new(&self.uuid)?,
            kind: PoolKind::Dir {
                path: self.path.clone(),
            },
        };
        let status = storage.add_pool(def, opts()).await?;
        tracing::info!(pool = %status.name, path = %self.path.display(), "local storage pool registered");
        Ok(status.name)
    }
}
