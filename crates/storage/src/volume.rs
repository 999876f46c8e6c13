//! Volumes in file-based pools: create blank, create from a template as a
//! linked clone or a full copy, resize, delete, info.
//!
//! Owns: the order of checks and side effects of each volume operation:
//! validate, lock, check capacity, write into a temp file, publish. Must
//! not: run qemu-img itself (qemu_img.rs does) or talk to libvirt beyond
//! resolving the pool's directory.

use std::path::{Path, PathBuf};

use super::error::StorageError;
use super::lock::{temp_path, TempFile};
use super::names::{ensure_inside, volume_path, PoolName, VolumeName};
use super::probe::{probe, Header};
use super::qemu_img::RunCtl;
use super::{Bytes, CallOpts, ImageFormat, Op, ProgressSink, Storage};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateVolume {
    pub pool: PoolName,
    pub name: VolumeName,
    pub format: ImageFormat,
    pub size: Bytes,
}

/// How a volume is made from a template, chosen per command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloneMode {
    /// qcow2 overlay whose backing file is the template: instant, shares
    /// the template's blocks.
    Linked,
    /// Independent copy (`qemu-img convert`) in `format`.
    Full { format: ImageFormat },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateFromTemplate {
    pub pool: PoolName,
    pub name: VolumeName,
    /// Template volume in the same pool (copied there by copy_template).
    pub template: VolumeName,
    /// None: the host's default (`StorageConfig::default_clone`).
    pub mode: Option<CloneMode>,
    /// Virtual size of the new volume; None keeps the template's. Smaller
    /// than the template is refused.
    pub size: Option<Bytes>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResizeVolume {
    pub pool: PoolName,
    pub name: VolumeName,
    pub size: Bytes,
    /// Shrinking loses the data past `size`: only when the command says so.
    pub allow_shrink: bool,
}

/// One image of a backing chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingFile {
    pub path: String,
    pub format: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    pub pool: String,
    pub name: String,
    pub path: PathBuf,
    pub format: String,
    pub virtual_size: Bytes,
    /// Bytes allocated on disk.
    pub actual_size: Bytes,
    /// Backing files, nearest first; empty for a standalone volume.
    pub backing_chain: Vec<BackingFile>,
    /// A template copied without a checksum, at the caller's word.
    pub unverified: bool,
}

pub(crate) fn check_size(size: Bytes) -> Result<(), StorageError> {
    if size.0 == 0 {
        return Err(StorageError::invalid(
            "volume size",
            "must be greater than zero",
        ));
    }
    Ok(())
}

/// Free bytes of the filesystem holding `dir`.
pub(crate) async fn fs_available(dir: &Path, ctl: &RunCtl) -> Result<Bytes, StorageError> {
    fs_space(dir, ctl).await.map(|(available, _)| available)
}

/// (available, total) bytes of the filesystem holding `dir`, off the async
/// workers: a statvfs on a dead NFS mount blocks.
pub(crate) async fn fs_space(dir: &Path, ctl: &RunCtl) -> Result<(Bytes, Bytes), StorageError> {
    let d = dir.to_path_buf();
    let st = crate::pool_fs::run("read free space", dir, ctl, ctl.fs_timeout, move || {
        nix::sys::statvfs::statvfs(&d)
            .map_err(|e| StorageError::io("read free space", &d, e.into()))
    })
    .await?;
    let frag = st.fragment_size() as u64;
    Ok((
        Bytes(st.blocks_available() as u64 * frag),
        Bytes(st.blocks() as u64 * frag),
    ))
}

async fn ensure_capacity(
    pool: &PoolName,
    dir: &Path,
    needed: Bytes,
    ctl: &RunCtl,
) -> Result<(), StorageError> {
    let available = fs_available(dir, ctl).await?;
    if needed > available {
        return Err(StorageError::InsufficientCapacity {
            pool: pool.to_string(),
            needed: needed.0,
            available: available.0,
        });
    }
    Ok(())
}

fn ensure_absent(path: &Path) -> Result<(), StorageError> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Err(StorageError::AlreadyExists {
            what: format!("volume {}", path.display()),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::io("check volume", path, e)),
    }
}

/// An existing volume file, proven to be a regular file inside the pool.
fn existing(root: &Path, name: &VolumeName) -> Result<PathBuf, StorageError> {
    let p = volume_path(root, name);
    match std::fs::symlink_metadata(&p) {
        Ok(m) if m.is_file() => ensure_inside(root, &p).map(|_| p),
        Ok(_) => Err(StorageError::invalid(
            format!("volume {}", p.display()),
            "is not a regular file",
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StorageError::NotFound {
            what: format!("volume {name} in pool {}", root.display()),
        }),
        Err(e) => Err(StorageError::io("look up volume", &p, e)),
    }
}

/// A qcow2 backing file must be inside the pool: otherwise a crafted image
/// makes the VM read any host file.
fn check_backing_inside(root: &Path, image: &Path, h: &Header) -> Result<(), StorageError> {
    if h.external_data_file {
        return Err(StorageError::BadImage {
            object: image.display().to_string(),
            reason: "qcow2 with an external data file is not accepted".into(),
        });
    }
    let Some(b) = &h.backing_file else {
        return Ok(());
    };
    let bp = Path::new(b);
    let resolved = if bp.is_absolute() {
        bp.to_path_buf()
    } else {
        image.parent().unwrap_or(root).join(bp)
    };
    if b.contains(':') && !bp.is_absolute() {
        // "nbd:..."/"json:{...}" protocol names would reach the network.
        return Err(StorageError::BadImage {
            object: image.display().to_string(),
            reason: format!("backing file {b:?} is a protocol URL, not a file in the pool"),
        });
    }
    ensure_inside(root, &resolved)
        .map(drop)
        .map_err(|_| StorageError::BadImage {
            object: image.display().to_string(),
            reason: format!("backing file {b:?} is outside the pool {}", root.display()),
        })
}

impl Storage {
    pub async fn create_volume(
        &self,
        req: CreateVolume,
        opts: CallOpts,
    ) -> Result<VolumeInfo, StorageError> {
        check_size(req.size)?;
        let ctl = self.ctl(Op::CreateVolume, &opts);
        let root = self.pool_dir(&req.pool, &ctl).await?;
        let dst = volume_path(&root, &req.name);
        let _guard = self.locks.lock(&dst, &ctl).await?;
        let d = dst.clone();
        self.fs("check volume", &dst, &ctl, move || ensure_absent(&d))
            .await?;
        ensure_capacity(&req.pool, &root, req.size, &ctl).await?;
        let tmp = TempFile::new(temp_path(&root, &req.name));
        self.qemu_img
            .create(tmp.path(), req.format, Some(req.size), None, &ctl)
            .await
            .map_err(|e| relabel(e, &req.pool, &dst))?;
        self.publish(tmp, &req.pool, &req.name, dst, &ctl).await
    }

    /// Puts a made volume in place and reads what it became.
    async fn publish(
        &self,
        tmp: TempFile,
        pool: &PoolName,
        name: &VolumeName,
        dst: PathBuf,
        ctl: &RunCtl,
    ) -> Result<VolumeInfo, StorageError> {
        let (p, n, d) = (pool.clone(), name.clone(), dst.clone());
        self.fs("publish volume", &dst, ctl, move || {
            tmp.publish(&d)?;
            built_info(&p, &n, &d)
        })
        .await
    }

    /// A volume that must exist in the pool, proven to be a regular file in it.
    async fn existing(
        &self,
        root: &Path,
        name: &VolumeName,
        ctl: &RunCtl,
    ) -> Result<PathBuf, StorageError> {
        let (r, n) = (root.to_path_buf(), name.clone());
        self.fs("look up volume", &volume_path(root, name), ctl, move || {
            existing(&r, &n)
        })
        .await
    }

    /// A template's header, and whether its backing file stays inside the
    /// pool (how to refuse it is the caller's).
    pub(crate) async fn template_header(
        &self,
        root: &Path,
        path: &Path,
        ctl: &RunCtl,
    ) -> Result<(Header, Result<(), StorageError>), StorageError> {
        let (r, p) = (root.to_path_buf(), path.to_path_buf());
        self.fs("read template header", path, ctl, move || {
            let h = probe(&p)?;
            let inside = check_backing_inside(&r, &p, &h);
            Ok((h, inside))
        })
        .await
    }

    /// The header of a volume file.
    async fn probe(&self, path: &Path, ctl: &RunCtl) -> Result<Header, StorageError> {
        let p = path.to_path_buf();
        self.fs("read volume header", path, ctl, move || probe(&p))
            .await
    }

    /// Makes a VM volume from a template in the same pool. `progress` gets
    /// byte counts during a full copy.
    pub async fn create_volume_from_template(
        &self,
        req: CreateFromTemplate,
        opts: CallOpts,
        progress: Option<ProgressSink>,
    ) -> Result<VolumeInfo, StorageError> {
        if let Some(s) = req.size {
            check_size(s)?;
        }
        let mode = req.mode.unwrap_or(self.cfg.default_clone);
        let op = match mode {
            CloneMode::Linked => Op::CloneVolume,
            CloneMode::Full { .. } => Op::FullCopy,
        };
        let ctl = self.ctl(op, &opts);
        let root = self.pool_dir(&req.pool, &ctl).await?;
        let tpl = self.existing(&root, &req.template, &ctl).await?;
        let (th, inside) = self.template_header(&root, &tpl, &ctl).await?;
        inside?;
        let size = req.size.unwrap_or(th.virtual_size);
        if size < th.virtual_size {
            return Err(StorageError::invalid(
                format!("size of volume {}", req.name),
                format!(
                    "{size} is smaller than template {} ({})",
                    req.template, th.virtual_size
                ),
            ));
        }
        let dst = volume_path(&root, &req.name);
        let _guard = self.locks.lock(&dst, &ctl).await?;
        let d = dst.clone();
        self.fs("check volume", &dst, &ctl, move || ensure_absent(&d))
            .await?;
        let tmp = TempFile::new(temp_path(&root, &req.name));
        match mode {
            CloneMode::Linked => {
                ensure_capacity(&req.pool, &root, size, &ctl)
                    .await
                    .map_err(|e| relabel(e, &req.pool, &dst))?;
                let grow = (size > th.virtual_size).then_some(size);
                self.qemu_img
                    .create(
                        tmp.path(),
                        ImageFormat::Qcow2,
                        grow,
                        Some((&tpl, th.format)),
                        &ctl,
                    )
                    .await
                    .map_err(|e| relabel(e, &req.pool, &dst))?;
            }
            CloneMode::Full { format } => {
                let needed = self
                    .qemu_img
                    .measure(&tpl, th.format, format, &ctl)
                    .await
                    .map_err(|e| relabel(e, &req.pool, &dst))?;
                ensure_capacity(&req.pool, &root, needed, &ctl)
                    .await
                    .map_err(|e| relabel(e, &req.pool, &dst))?;
                let sink = progress.as_deref();
                self.qemu_img
                    .convert(
                        (&tpl, th.format),
                        (tmp.path(), format),
                        th.virtual_size,
                        sink,
                        &ctl,
                    )
                    .await
                    .map_err(|e| relabel(e, &req.pool, &dst))?;
                if size > th.virtual_size {
                    self.qemu_img
                        .resize(tmp.path(), format, size, false, &ctl)
                        .await
                        .map_err(|e| relabel(e, &req.pool, &dst))?;
                }
            }
        }
        self.publish(tmp, &req.pool, &req.name, dst, &ctl).await
    }

    pub async fn resize_volume(
        &self,
        req: ResizeVolume,
        opts: CallOpts,
    ) -> Result<VolumeInfo, StorageError> {
        check_size(req.size)?;
        let ctl = self.ctl(Op::Resize, &opts);
        let root = self.pool_dir(&req.pool, &ctl).await?;
        let path = self.existing(&root, &req.name, &ctl).await?;
        let _guard = self.locks.lock(&path, &ctl).await?;
        let h = self.probe(&path, &ctl).await?;
        if req.size < h.virtual_size && !req.allow_shrink {
            return Err(StorageError::invalid(
                format!("resize of volume {}", req.name),
                format!(
                    "{} is smaller than the current {}; shrinking loses data, set allow_shrink to do it",
                    req.size, h.virtual_size
                ),
            ));
        }
        if req.size > h.virtual_size {
            let grow = Bytes(req.size.0 - h.virtual_size.0);
            ensure_capacity(&req.pool, &root, grow, &ctl).await?;
        }
        if req.size != h.virtual_size {
            let shrink = req.size < h.virtual_size;
            self.qemu_img
                .resize(&path, h.format, req.size, shrink, &ctl)
                .await?;
        }
        self.volume_info_at(&req.pool, &req.name, &path, &ctl).await
    }

    /// Deletes a volume. Refused while another volume of the pool uses it
    /// as its backing file (deleting a template under its clones corrupts
    /// every one of them) and while a running VM has it open.
    pub async fn delete_volume(
        &self,
        pool: &PoolName,
        name: &VolumeName,
        opts: CallOpts,
    ) -> Result<(), StorageError> {
        let ctl = self.ctl(Op::Delete, &opts);
        let root = self.pool_dir(pool, &ctl).await?;
        let path = self.existing(&root, name, &ctl).await?;
        let _guard = self.locks.lock(&path, &ctl).await?;
        let (r, p) = (root.clone(), path.clone());
        let user = self
            .fs("scan pool", &root, &ctl, move || backing_user(&r, &p))
            .await?;
        if let Some(user) = user {
            return Err(StorageError::invalid(
                format!("delete of volume {name}"),
                format!("volume {user} uses it as backing file; delete or flatten {user} first"),
            ));
        }
        let h = self.probe(&path, &ctl).await?;
        self.qemu_img.ensure_unused(&path, h.format, &ctl).await?;
        let p = path.clone();
        self.fs("delete volume", &path, &ctl, move || {
            std::fs::remove_file(&p).map_err(|e| StorageError::io("delete volume", &p, e))
        })
        .await
    }

    /// Removes temp files a crashed agent left in the pool. Call it at
    /// startup, before commands run: an in-flight create owns its temp file.
    pub async fn sweep_partial_files(
        &self,
        pool: &PoolName,
        opts: CallOpts,
    ) -> Result<Vec<PathBuf>, StorageError> {
        let ctl = self.ctl(Op::Delete, &opts);
        let root = self.pool_dir(pool, &ctl).await?;
        let r = root.clone();
        self.fs("remove partial files", &root, &ctl, move || sweep(&r))
            .await
    }

    pub async fn volume_info(
        &self,
        pool: &PoolName,
        name: &VolumeName,
        opts: CallOpts,
    ) -> Result<VolumeInfo, StorageError> {
        let ctl = self.ctl(Op::Info, &opts);
        let root = self.pool_dir(pool, &ctl).await?;
        let path = self.existing(&root, name, &ctl).await?;
        self.volume_info_at(pool, name, &path, &ctl).await
    }

    async fn volume_info_at(
        &self,
        pool: &PoolName,
        name: &VolumeName,
        path: &Path,
        ctl: &RunCtl,
    ) -> Result<VolumeInfo, StorageError> {
        let h = self.probe(path, ctl).await?;
        let chain = self.qemu_img.info(path, Some(h.format), true, ctl).await?;
        let Some(top) = chain.first() else {
            return Err(StorageError::Internal {
                step: "info",
                reason: format!("qemu-img info returned no image for {}", path.display()),
            });
        };
        Ok(VolumeInfo {
            pool: pool.to_string(),
            name: name.to_string(),
            path: path.to_path_buf(),
            format: top.format.clone(),
            virtual_size: Bytes(top.virtual_size),
            actual_size: Bytes(top.actual_size.unwrap_or(0)),
            backing_chain: chain
                .iter()
                .skip(1)
                .map(|i| BackingFile {
                    path: i.filename.clone(),
                    format: i.format.clone(),
                })
                .collect(),
            unverified: false,
        })
    }
}

/// Removes the temp files of `root` (see `Storage::sweep_partial_files`).
fn sweep(root: &Path) -> Result<Vec<PathBuf>, StorageError> {
    let rd = std::fs::read_dir(root).map_err(|e| StorageError::io("scan pool", root, e))?;
    let mut removed = Vec::new();
    for entry in rd.flatten() {
        let name = entry.file_name();
        if !name.to_str().is_some_and(super::lock::is_temp_name) {
            continue;
        }
        let p = entry.path();
        match std::fs::remove_file(&p) {
            Ok(()) => removed.push(p),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io("remove partial file", &p, e)),
        }
    }
    Ok(removed)
}

/// qemu-img knows only the temp file; the operator needs the pool and the
/// volume's name.
fn relabel(e: StorageError, pool: &PoolName, dst: &Path) -> StorageError {
    match e {
        StorageError::DiskFull { step, .. } => StorageError::DiskFull {
            pool: pool.to_string(),
            step,
            path: dst.to_path_buf(),
        },
        other => other,
    }
}

/// Info of a volume this module just made, from its header (no child
/// process: keeps a linked clone within a few ms of bare qemu-img).
fn built_info(pool: &PoolName, name: &VolumeName, path: &Path) -> Result<VolumeInfo, StorageError> {
    use std::os::unix::fs::MetadataExt;
    let h = probe(path)?;
    let meta = std::fs::metadata(path).map_err(|e| StorageError::io("stat volume", path, e))?;
    let mut chain = Vec::new();
    let mut next = h.backing_file.clone();
    // Templates are checked to have no backing file of their own, so this
    // walks at most a couple of steps; the bound guards against a loop.
    for _ in 0..16 {
        let Some(b) = next.take() else { break };
        let bh = probe(Path::new(&b)).ok();
        chain.push(BackingFile {
            path: b,
            format: bh
                .as_ref()
                .map(|x| x.format.as_str().to_string())
                .unwrap_or_default(),
        });
        next = bh.and_then(|x| x.backing_file);
    }
    Ok(VolumeInfo {
        pool: pool.to_string(),
        name: name.to_string(),
        path: path.to_path_buf(),
        format: h.format.as_str().to_string(),
        virtual_size: h.virtual_size,
        actual_size: Bytes(meta.blocks() * 512),
        backing_chain: chain,
        unverified: false,
    })
}

/// First volume in `root` whose backing file is `target`.
fn backing_user(root: &Path, target: &Path) -> Result<Option<String>, StorageError> {
    let rd = std::fs::read_dir(root).map_err(|e| StorageError::io("scan pool", root, e))?;
    let target_c = target
        .canonicalize()
        .unwrap_or_else(|_| target.to_path_buf());
    for entry in rd.flatten() {
        let p = entry.path();
        if p == target || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let Ok(h) = probe(&p) else { continue };
        let Some(b) = h.backing_file else { continue };
        let bp = root.join(&b);
        if bp.canonicalize().ok().as_deref() == Some(target_c.as_path()) {
            return Ok(Some(entry.file_name().to_string_lossy().into_owned()));
        }
    }
    Ok(None)
}
