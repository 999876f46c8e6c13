//! Validated names of pools, volumes and snapshots, and resolution of a
//! volume name to a path that is provably inside its pool.
//!
//! Owns: the rules for what a name may contain. Must not: touch the disk
//! beyond the canonicalisation needed to prove containment.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use super::error::StorageError;

/// Longest name accepted; ext4/xfs limit a file name to 255 bytes and we
/// keep room for the temp prefix/suffix used while creating.
pub const MAX_NAME_LEN: usize = 200;

fn validate(kind: &str, s: &str) -> Result<(), StorageError> {
    let bad = |reason: &str| Err(StorageError::invalid(format!("{kind} name {s:?}"), reason));
    if s.is_empty() {
        return bad("must not be empty");
    }
    if s.len() > MAX_NAME_LEN {
        return bad("is longer than 200 bytes");
    }
    if s.contains('\0') {
        return bad("must not contain NUL");
    }
    if s.contains('/') {
        return bad("must not contain '/'");
    }
    if s == "." || s == ".." || s.contains("..") {
        return bad("must not contain '..'");
    }
    if s.starts_with('.') || s.starts_with('-') {
        // '.' would hide it among our temp files; '-' reads as an option.
        return bad("must not start with '.' or '-'");
    }
    if s.chars().any(|c| c.is_control()) {
        return bad("must not contain control characters");
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$m:meta])* $ty:ident, $kind:literal) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $ty(String);

        impl $ty {
            pub fn new(s: impl Into<String>) -> Result<Self, StorageError> {
                let s = s.into();
                validate($kind, &s)?;
                Ok(Self(s))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// A libvirt storage pool name.
    PoolName,
    "pool"
);
name_type!(
    /// A volume's file name inside its pool.
    VolumeName,
    "volume"
);
name_type!(
    /// A qcow2 internal or libvirt snapshot name.
    SnapshotName,
    "snapshot"
);

/// Path of `name` inside `root`. Because names cannot hold '/' or '..' the
/// join cannot leave the pool; a symlink planted at the name is caught by
/// `ensure_inside` where the file must already exist.
pub fn volume_path(root: &Path, name: &VolumeName) -> PathBuf {
    root.join(name.as_str())
}

/// Proves that `path` (which must exist) resolves inside `root`, following
/// symlinks, so a crafted link or backing path cannot reach host files.
pub fn ensure_inside(root: &Path, path: &Path) -> Result<PathBuf, StorageError> {
    let root_c = root
        .canonicalize()
        .map_err(|e| StorageError::io("resolve pool path", root, e))?;
    let real = path
        .canonicalize()
        .map_err(|e| StorageError::io("resolve path", path, e))?;
    if real.starts_with(&root_c) && real != root_c {
        Ok(real)
    } else {
        Err(StorageError::invalid(
            format!("path {}", path.display()),
            format!(
                "resolves to {} outside pool {}",
                real.display(),
                root.display()
            ),
        ))
    }
}

/// A pool target path must be absolute and free of '..' so the pool we
/// define is the directory the operator named.
pub fn validate_pool_path(p: &Path) -> Result<(), StorageError> {
    let ok = p.is_absolute()
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && !p.as_os_str().as_encoded_bytes().contains(&0);
    if ok {
        Ok(())
    } else {
        Err(StorageError::invalid(
            format!("pool path {}", p.display()),
            "must be absolute, without '..' or NUL",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_names() {
        for bad in ["", "a/b", "..", "a..b", "x\0y", ".hidden", "-f", "a\nb"] {
            assert!(VolumeName::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(VolumeName::new("x".repeat(MAX_NAME_LEN + 1)).is_err());
        assert!(VolumeName::new("root-disk_1.qcow2").is_ok());
    }

    #[test]
    fn pool_paths() {
        assert!(validate_pool_path(Path::new("/var/lib/pool")).is_ok());
        assert!(validate_pool_path(Path::new("relative")).is_err());
        assert!(validate_pool_path(Path::new("/a/../etc")).is_err());
    }
}
