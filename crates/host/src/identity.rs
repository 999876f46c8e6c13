//! The host's stable UUID: the configured guid if any, else the one
//! persisted in the state directory, else a new v4 written there atomically.
//!
//! A host's identity must never change silently: a state file that exists
//! but does not hold a UUID is an error, never overwritten.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use thiserror::Error;
use uuid::Uuid;

/// File name under the state directory.
pub const HOST_UUID_FILE: &str = "host-uuid";

#[derive(Debug, Error)]
pub enum HostIdError {
    #[error("configured host guid {value:?} is not a UUID ({source}); fix `guid` in agent.toml")]
    BadConfigured { value: String, source: uuid::Error },
    #[error(
        "{path} holds {content:?}, not a UUID; restore the host's UUID into it (deleting it gives \
         the host a new identity and the plane will see a new host)"
    )]
    BadStateFile { path: PathBuf, content: String },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "cannot persist the host UUID to {path}: {source}; check the state directory is writable"
    )]
    Write { path: PathBuf, source: io::Error },
}

/// Returns the host's UUID (see module docs for the order).
pub fn host_uuid(state_dir: &Path, configured: Option<&str>) -> Result<Uuid, HostIdError> {
    if let Some(value) = configured.map(str::trim).filter(|v| !v.is_empty()) {
        return Uuid::parse_str(value).map_err(|source| HostIdError::BadConfigured {
            value: value.to_string(),
            source,
        });
    }
    let path = state_dir.join(HOST_UUID_FILE);
    match fs::read_to_string(&path) {
        Ok(content) => Uuid::parse_str(content.trim()).map_err(|_| HostIdError::BadStateFile {
            path,
            content: content.chars().take(80).collect(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let id = Uuid::new_v4();
            write_atomically(state_dir, &path, &format!("{id}\n"))
                .map_err(|source| HostIdError::Write { path, source })?;
            Ok(id)
        }
        Err(source) => Err(HostIdError::Read { path, source }),
    }
}

/// The host UUID if one is configured or already kept, without creating
/// one (for checks that must not change the host).
pub fn peek_host_uuid(state_dir: &Path, configured: Option<&str>) -> Option<Uuid> {
    if let Some(value) = configured.map(str::trim).filter(|v| !v.is_empty()) {
        return Uuid::parse_str(value).ok();
    }
    let content = fs::read_to_string(state_dir.join(HOST_UUID_FILE)).ok()?;
    Uuid::parse_str(content.trim()).ok()
}

/// temp file + fsync + rename + directory fsync: after a crash the file is
/// either absent or whole, never empty.
fn write_atomically(dir: &Path, path: &Path, content: &str) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{HOST_UUID_FILE}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(0o644))?;
        f.write_all(content.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
