//! Makes concurrent creates of one volume safe: a per-path async lock inside
//! this agent, and publish-by-hard-link so that even another process racing
//! on the same directory can never see two files or a half-written one.
//!
//! Owns: temp names of files being made and their atomic publication (as a
//! new name, or replacing a file by rename). Must
//! not: run qemu-img or decide what a volume holds.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::OwnedMutexGuard;

use super::error::StorageError;
use super::names::VolumeName;
use super::qemu_img::RunCtl;

/// One async mutex per volume path, dropped when nobody holds it.
#[derive(Default)]
pub struct VolumeLocks {
    map: Mutex<HashMap<PathBuf, Weak<tokio::sync::Mutex<()>>>>,
}

impl VolumeLocks {
    /// Waits for the volume's lock, giving up at the operation's deadline or
    /// on cancellation.
    pub async fn lock(
        &self,
        path: &Path,
        ctl: &RunCtl,
    ) -> Result<OwnedMutexGuard<()>, StorageError> {
        let m = self.entry(path);
        tokio::select! {
            g = m.lock_owned() => Ok(g),
            _ = tokio::time::sleep_until(ctl.deadline) => Err(StorageError::Timeout {
                step: "wait for volume lock",
                object: path.display().to_string(),
                after: ctl.budget,
            }),
            _ = ctl.cancel.cancelled() => Err(StorageError::Cancelled {
                step: "wait for volume lock",
                object: path.display().to_string(),
            }),
        }
    }

    fn entry(&self, path: &Path) -> Arc<tokio::sync::Mutex<()>> {
        // A poisoned map only means another thread panicked mid-insert; the
        // map itself is still a valid cache of weak pointers.
        let mut map = csagent_core::sync::lock(&self.map);
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(m) = map.get(path).and_then(Weak::upgrade) {
            return m;
        }
        let m = Arc::new(tokio::sync::Mutex::new(()));
        map.insert(path.to_path_buf(), Arc::downgrade(&m));
        m
    }
}

/// Hidden temp name next to the final file (same filesystem, so the
/// hard link below is atomic). The random part keeps two agents apart.
pub fn temp_path(root: &Path, name: &VolumeName) -> PathBuf {
    hidden_temp(root, OsStr::new(name.as_str()))
}

/// Temp name beside an existing file, in `temp_path`'s form, for files
/// that replace it (same directory, so rename(2) is atomic).
pub fn temp_path_beside(path: &Path) -> Result<PathBuf, StorageError> {
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => Ok(hidden_temp(dir, name)),
        _ => Err(StorageError::invalid(
            format!("path {}", path.display()),
            "names no file in a directory",
        )),
    }
}

fn hidden_temp(dir: &Path, name: &OsStr) -> PathBuf {
    let tag: u64 = rand::random();
    let mut n = OsString::from(".");
    n.push(name);
    n.push(format!(".part-{tag:016x}"));
    dir.join(n)
}

/// True for names made by `temp_path`: ".<name>.part-<16 hex>".
pub fn is_temp_name(file_name: &str) -> bool {
    let Some(rest) = file_name.strip_prefix('.') else {
        return false;
    };
    match rest.rsplit_once(".part-") {
        Some((name, tag)) => {
            !name.is_empty() && tag.len() == 16 && tag.bytes().all(|b| b.is_ascii_hexdigit())
        }
        None => false,
    }
}

/// Removes a temp file when dropped unless it was published: every early
/// return and every `?` leaves no partial file behind.
pub struct TempFile {
    path: Option<PathBuf>,
}

impl TempFile {
    pub fn new(path: PathBuf) -> Self {
        Self { path: Some(path) }
    }

    pub fn path(&self) -> &Path {
        // Only None after publish(), which consumes self.
        self.path.as_deref().unwrap_or(Path::new(""))
    }

    /// Makes the temp file visible as `dst`, failing with AlreadyExists if
    /// `dst` exists: link(2) never replaces, unlike rename(2).
    pub fn publish(mut self, dst: &Path) -> Result<(), StorageError> {
        let Some(tmp) = self.path.take() else {
            return Err(StorageError::Internal {
                step: "publish volume",
                reason: "temp file already published".into(),
            });
        };
        let linked = std::fs::hard_link(&tmp, dst);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(StorageError::AlreadyExists {
                    what: format!("volume {}", dst.display()),
                })
            }
            Err(e) => Err(StorageError::io("publish volume", dst, e)),
        }
    }

    /// Puts the temp file in place of `dst` with one rename(2): a reader
    /// sees the old file or the new one, never neither. On failure the temp
    /// file is still removed on drop.
    pub fn replace(mut self, dst: &Path) -> Result<(), StorageError> {
        let Some(tmp) = self.path.take() else {
            return Err(StorageError::Internal {
                step: "replace file",
                reason: "temp file already published".into(),
            });
        };
        if let Err(e) = std::fs::rename(&tmp, dst) {
            self.path = Some(tmp);
            return Err(StorageError::io("replace file", dst, e));
        }
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let Some(p) = self.path.take() else { return };
        // Drop runs wherever the operation ended, often on an async worker;
        // an unlink on a hung mount must not stall it (pool_fs.rs). It runs
        // beside, and is waited for briefly so that, normally, the partial
        // file is gone when the failed operation returns.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return remove_temp(&p);
        };
        let (done, removed) = std::sync::mpsc::channel();
        drop(rt.spawn_blocking(move || {
            remove_temp(&p);
            let _ = done.send(());
        }));
        if removed.recv_timeout(TEMP_REMOVAL_WAIT).is_err() {
            tracing::warn!("removing a temp file is taking long (hung mount?); it goes on beside");
        }
    }
}

/// How long a dropped temp file's removal is waited for.
const TEMP_REMOVAL_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

fn remove_temp(p: &Path) {
    if let Err(e) = std::fs::remove_file(p) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %p.display(), error = %e, "could not remove temp file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_are_recognised() {
        let n = VolumeName::new("vm-root").unwrap();
        let p = temp_path(Path::new("/pool"), &n);
        let f = p.file_name().unwrap().to_str().unwrap();
        assert!(is_temp_name(f), "{f}");
        let b = temp_path_beside(Path::new("/pool/root.s1")).unwrap();
        assert_eq!(b.parent(), Some(Path::new("/pool")));
        let f = b.file_name().unwrap().to_str().unwrap();
        assert!(f.starts_with(".root.s1.part-") && is_temp_name(f), "{f}");
        assert!(temp_path_beside(Path::new("/")).is_err());
        for other in ["vm-root", ".hidden", ".x.part-zz", ".part-0123456789abcdef"] {
            assert!(!is_temp_name(other), "{other}");
        }
    }
}
