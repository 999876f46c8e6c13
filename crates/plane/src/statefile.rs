//! The plane's small state files (tokens, revocations): JSON, read whole at
//! start, written whole and atomically (temporary file, fsync, rename) with
//! mode 0600 on every change.
//!
//! Owns file handling only; what the records mean is the caller's business.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("plane state file {path}: {reason}; fix or move it away (it is rewritten on the next change)")]
    Read { path: PathBuf, reason: String },
    #[error("cannot write plane state file {path}: {reason}; check the state directory's space and permissions")]
    Write { path: PathBuf, reason: String },
}

/// Reads a state file; a missing file is the empty state.
pub fn load<T: DeserializeOwned + Default>(path: &Path) -> Result<T, StateError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(T::default()),
        Err(e) => {
            return Err(StateError::Read {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
        }
    };
    serde_json::from_str(&text).map_err(|e| StateError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Replaces a state file atomically, creating its directory (mode 0700).
pub fn save<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let err = |reason: String| StateError::Write {
        path: path.to_path_buf(),
        reason,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    let text = serde_json::to_vec_pretty(value).map_err(|e| err(e.to_string()))?;
    csagent_tls::pki::write_file(path, &text, 0o600).map_err(|e| err(e.to_string()))
}
