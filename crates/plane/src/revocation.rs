//! Revoked host identities, persisted in the plane's state directory.
//!
//! Owns the list only: the server refuses a revoked identity's streams and
//! enrollments, the admin service closes its live stream. A revocation is
//! by host UUID, so it covers every certificate ever issued to that host.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::statefile::{self, StateError};
use csagent_core::time::unix_ms;

#[derive(Default, Serialize, Deserialize)]
#[serde(default)]
struct RevokedFile {
    /// Host UUID (lower case) -> revocation time, Unix ms.
    hosts: BTreeMap<String, i64>,
}

pub struct Revocations {
    path: PathBuf,
    file: Mutex<RevokedFile>,
}

impl Revocations {
    pub fn open(path: PathBuf) -> Result<Revocations, StateError> {
        let file = statefile::load(&path)?;
        Ok(Revocations {
            path,
            file: Mutex::new(file),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RevokedFile> {
        // Written to disk before the lock is released: a poisoned lock still
        // holds what the file holds.
        csagent_core::sync::lock(&self.file)
    }

    pub fn is_revoked(&self, host: &str) -> bool {
        self.lock().hosts.contains_key(&host.to_ascii_lowercase())
    }

    /// Revokes a host; false if it already was. Persisted before it returns.
    pub fn revoke(&self, host: &uuid::Uuid) -> Result<bool, StateError> {
        let key = host.to_string();
        let mut file = self.lock();
        if file.hosts.contains_key(&key) {
            return Ok(false);
        }
        file.hosts.insert(key.clone(), unix_ms());
        if let Err(e) = statefile::save(&self.path, &*file) {
            file.hosts.remove(&key);
            return Err(e);
        }
        Ok(true)
    }

    /// Every revoked host UUID.
    pub fn list(&self) -> Vec<String> {
        self.lock().hosts.keys().cloned().collect()
    }
}
