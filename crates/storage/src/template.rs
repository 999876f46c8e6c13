//! Copies a template from secondary storage (a local path or NFS mount, or
//! an HTTP(S) URL) into a pool: streamed into a temp file, checksummed,
//! checked as an image, then published under its name.
//!
//! Owns: the download/copy loop, checksum, and the rules a template must
//! pass (is an image of the declared format, no backing file or data file
//! outside the pool, `qemu-img check` clean). Must not: leave a partial or
//! refused file behind, or let qemu-img open an unvetted backing file.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256, Sha512};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::error::{is_disk_full, StorageError};
use super::lock::{temp_path, TempFile};
use super::names::{volume_path, PoolName, VolumeName};
use super::qemu_img::RunCtl;
use super::volume::{fs_available, fs_space, VolumeInfo};
use super::{Bytes, CallOpts, ImageFormat, Op, Progress, ProgressSink, Storage};

const CHUNK: usize = 1 << 20;
/// Progress is reported at most every this many bytes (and at the end).
const PROGRESS_STEP: u64 = 8 << 20;
/// With no announced length, free space is rechecked this often so a
/// download stops before it fills a pool that running VMs write to.
const SPACE_CHECK_STEP: u64 = 64 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateSource {
    /// A file on this host, e.g. on a mounted secondary-storage NFS export.
    Path(PathBuf),
    /// An http:// or https:// URL.
    Url(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumAlgo {
    Sha256,
    Sha512,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    pub algo: ChecksumAlgo,
    /// Lower- or upper-case hex.
    pub hex: String,
}

impl Checksum {
    fn validate(&self) -> Result<(), StorageError> {
        let want = match self.algo {
            ChecksumAlgo::Sha256 => 64,
            ChecksumAlgo::Sha512 => 128,
        };
        if self.hex.len() != want || !self.hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(StorageError::invalid(
                format!("checksum {:?}", self.hex),
                format!("{:?} needs {want} hex digits", self.algo),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyTemplate {
    pub pool: PoolName,
    pub name: VolumeName,
    pub source: TemplateSource,
    /// Format the template must have; a mismatch is refused.
    pub format: ImageFormat,
    pub checksum: Option<Checksum>,
    /// Copy without a checksum; only when the caller says so, and the
    /// result is marked unverified.
    pub unverified: bool,
}

enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
    None,
}

impl Hasher {
    fn new(c: Option<&Checksum>) -> Self {
        match c.map(|c| c.algo) {
            Some(ChecksumAlgo::Sha256) => Hasher::Sha256(Sha256::new()),
            Some(ChecksumAlgo::Sha512) => Hasher::Sha512(Sha512::new()),
            None => Hasher::None,
        }
    }
    fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(b),
            Hasher::Sha512(h) => h.update(b),
            Hasher::None => {}
        }
    }
    fn hex(self) -> String {
        match self {
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Sha512(h) => hex::encode(h.finalize()),
            Hasher::None => String::new(),
        }
    }
}

/// Where bytes come from: a local file or an HTTP response body.
enum Source {
    File(tokio::fs::File),
    Http(reqwest::Response),
}

impl Source {
    async fn next(&mut self, buf: &mut Vec<u8>, what: &str) -> Result<usize, StorageError> {
        match self {
            Source::File(f) => {
                buf.resize(CHUNK, 0);
                let n = f
                    .read(buf)
                    .await
                    .map_err(|e| StorageError::io("read template", what, e))?;
                buf.truncate(n);
                Ok(n)
            }
            Source::Http(r) => {
                let chunk = r.chunk().await.map_err(|e| StorageError::Http {
                    url: what.to_string(),
                    reason: e.to_string(),
                })?;
                buf.clear();
                if let Some(c) = chunk {
                    buf.extend_from_slice(&c);
                }
                Ok(buf.len())
            }
        }
    }
}

impl Storage {
    /// Copies a template into a pool. On any failure, timeout or cancel
    /// nothing is left in the pool.
    pub async fn copy_template(
        &self,
        req: CopyTemplate,
        opts: CallOpts,
        progress: Option<ProgressSink>,
    ) -> Result<VolumeInfo, StorageError> {
        match (&req.checksum, req.unverified) {
            (Some(c), _) => c.validate()?,
            (None, true) => {}
            (None, false) => {
                return Err(StorageError::invalid(
                    format!("template {}", req.name),
                    "a template needs a SHA-256 or SHA-512 checksum; set unverified to copy one \
                     without (the result then says it is unverified)",
                ))
            }
        }
        let ctl = self.ctl(Op::CopyTemplate, &opts);
        let root = self.pool_dir(&req.pool, &ctl).await?;
        let dst = volume_path(&root, &req.name);
        let _guard = self.locks.lock(&dst, &ctl).await?;
        let d = dst.clone();
        self.fs("check template", &dst, &ctl, move || {
            if d.symlink_metadata().is_ok() {
                return Err(StorageError::AlreadyExists {
                    what: format!("template {}", d.display()),
                });
            }
            Ok(())
        })
        .await?;
        let (mut src, total, what) = open_source(&req.source, self.config(), &ctl).await?;
        if let Some(t) = total {
            let available = fs_available(&root, &ctl).await?;
            if t > available {
                return Err(StorageError::InsufficientCapacity {
                    pool: req.pool.to_string(),
                    needed: t.0,
                    available: available.0,
                });
            }
        }
        let tmp = TempFile::new(temp_path(&root, &req.name));
        let digest = stream_to(
            &mut src,
            &tmp,
            &req,
            total,
            progress.as_deref(),
            &ctl,
            &what,
        )
        .await?;
        if let Some(c) = &req.checksum {
            if !digest.eq_ignore_ascii_case(&c.hex) {
                return Err(StorageError::ChecksumMismatch {
                    object: what,
                    expected: c.hex.to_lowercase(),
                    actual: digest,
                });
            }
        }
        self.vet_image(&root, tmp.path(), req.format, &what, &ctl)
            .await?;
        let d = dst.clone();
        self.fs("publish template", &dst, &ctl, move || tmp.publish(&d))
            .await?;
        let mut info = self.volume_info(&req.pool, &req.name, opts).await?;
        info.unverified = req.checksum.is_none();
        Ok(info)
    }

    /// Refuses anything that is not a sound image of `format` whose backing
    /// and data files stay inside the pool. Header checks come first so
    /// qemu-img never opens a backing file we have not vetted.
    async fn vet_image(
        &self,
        root: &Path,
        path: &Path,
        format: ImageFormat,
        what: &str,
        ctl: &RunCtl,
    ) -> Result<(), StorageError> {
        let refuse = |reason: String| StorageError::BadImage {
            object: what.to_string(),
            reason,
        };
        let (h, inside) = self.template_header(root, path, ctl).await?;
        if h.format != format {
            return Err(refuse(format!(
                "it is {}, not a {} image",
                if h.format == ImageFormat::Raw {
                    "not qcow2 (raw data)"
                } else {
                    "qcow2"
                },
                format.as_str()
            )));
        }
        if format == ImageFormat::Raw && (h.virtual_size.0 == 0 || h.virtual_size.0 % 512 != 0) {
            return Err(refuse(format!(
                "{} bytes is not a whole number of 512-byte sectors: not a disk image",
                h.virtual_size.0
            )));
        }
        if h.encrypted {
            return Err(refuse("encrypted qcow2 images are not accepted".into()));
        }
        inside.map_err(|e| refuse(e.to_string()))?;
        // Recognised by content: qemu-img probes the format itself, so a
        // VMDK, VHDX, LUKS or other image declared raw is refused.
        let info = self.qemu_img.info(path, None, false, ctl).await?;
        if let Some(seen) = info.first().map(|i| i.format.as_str()) {
            if seen != format.as_str() {
                return Err(refuse(format!(
                    "qemu-img reads it as a {seen} image, not {}",
                    format.as_str()
                )));
            }
        }
        if info.iter().any(|i| i.external_data_file().is_some()) {
            return Err(refuse(
                "qcow2 with an external data file is not accepted".into(),
            ));
        }
        if format == ImageFormat::Qcow2 {
            let rep = self.qemu_img.check(path, format, ctl).await?;
            if rep.corruptions > 0 || rep.check_errors > 0 {
                return Err(refuse(format!(
                    "qemu-img check found {} corruptions and {} errors",
                    rep.corruptions, rep.check_errors
                )));
            }
        }
        Ok(())
    }
}

async fn open_source(
    src: &TemplateSource,
    cfg: &crate::StorageConfig,
    ctl: &RunCtl,
) -> Result<(Source, Option<Bytes>, String), StorageError> {
    let roots = &cfg.template_roots;
    match src {
        TemplateSource::Path(p) => {
            if !p.is_absolute() {
                return Err(StorageError::invalid(
                    format!("template path {}", p.display()),
                    "must be absolute",
                ));
            }
            let (pp, rr) = (p.clone(), roots.to_vec());
            crate::pool_fs::run("open template", p, ctl, ctl.fs_timeout, move || {
                check_template_root(&pp, &rr)
            })
            .await?;
            let f = tokio::fs::File::open(p)
                .await
                .map_err(|e| StorageError::io("open template", p, e))?;
            let m = f
                .metadata()
                .await
                .map_err(|e| StorageError::io("stat template", p, e))?;
            if !m.is_file() {
                return Err(StorageError::invalid(
                    format!("template {}", p.display()),
                    "is not a regular file",
                ));
            }
            Ok((
                Source::File(f),
                Some(Bytes(m.len())),
                p.display().to_string(),
            ))
        }
        TemplateSource::Url(u) => {
            let url = reqwest::Url::parse(u)
                .map_err(|e| StorageError::invalid(format!("template URL {u:?}"), e.to_string()))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(StorageError::invalid(
                    format!("template URL {u:?}"),
                    "only http and https are supported",
                ));
            }
            let http = |reason: String| StorageError::Http {
                url: u.clone(),
                reason,
            };
            let mut client = reqwest::Client::builder().redirect(same_host_https_only(&url));
            for ca in extra_roots(cfg.template_ca_file.as_deref()).await? {
                client = client.add_root_certificate(ca);
            }
            let client = client.build().map_err(|e| http(e.to_string()))?;
            let resp = tokio::select! {
                r = client.get(url).send() => r.map_err(|e| http(with_causes(&e)))?,
                _ = tokio::time::sleep_until(ctl.deadline) => return Err(StorageError::Timeout {
                    step: "connect to template URL", object: u.clone(), after: ctl.budget }),
                _ = ctl.cancel.cancelled() => return Err(StorageError::Cancelled {
                    step: "connect to template URL", object: u.clone() }),
            };
            if !resp.status().is_success() {
                let s = resp.status();
                return Err(if s == reqwest::StatusCode::NOT_FOUND {
                    StorageError::NotFound {
                        what: format!("template URL {u}"),
                    }
                } else {
                    http(format!("server answered {s}"))
                });
            }
            let total = resp.content_length().map(Bytes);
            Ok((Source::Http(resp), total, u.clone()))
        }
    }
}

/// The CAs an operator trusts for template servers besides the public web
/// roots (`[storage] template_ca_file`), read at each download so a new
/// bundle needs no restart. A bundle that cannot be read or holds no
/// certificate fails the download, naming the file.
async fn extra_roots(file: Option<&Path>) -> Result<Vec<reqwest::Certificate>, StorageError> {
    let Some(file) = file else {
        return Ok(Vec::new());
    };
    let bad = |reason: String| StorageError::Unavailable {
        what: format!("template CA bundle {}", file.display()),
        reason,
    };
    // Not pool storage: a small file under /etc, read off the workers.
    let pem = tokio::fs::read(file)
        .await
        .map_err(|e| bad(e.to_string()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("it holds no PEM certificate".into()));
    }
    Ok(certs)
}

/// Fails once the pool's free space drops under its reserve (2 % of the
/// filesystem, at most 1 GiB): VM disks in the pool need that room.
async fn keep_reserve(
    tmp: &Path,
    pool: &PoolName,
    done: u64,
    ctl: &RunCtl,
) -> Result<(), StorageError> {
    let dir = tmp.parent().unwrap_or(Path::new("/"));
    let (available, total) = fs_space(dir, ctl).await?;
    let reserve = (total.0 / 50).min(1 << 30);
    if available.0 < reserve {
        return Err(StorageError::InsufficientCapacity {
            pool: pool.to_string(),
            needed: done + reserve,
            available: available.0 + done,
        });
    }
    Ok(())
}

/// An error and its causes: reqwest's own text leaves out why a redirect
/// or a TLS handshake failed.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// Redirects are followed only from https to https on the same host: a
/// template server must not be able to send the agent to another machine
/// (an internal address, say) or down to plain http.
fn same_host_https_only(start: &reqwest::Url) -> reqwest::redirect::Policy {
    let host = start.host_str().unwrap_or_default().to_string();
    let https = start.scheme() == "https";
    reqwest::redirect::Policy::custom(move |attempt| {
        let to = attempt.url();
        let ok = https && to.scheme() == "https" && to.host_str() == Some(host.as_str());
        if !ok {
            let why =
                format!("redirect to {to} refused: only https to https on {host} is followed");
            return attempt.error(why);
        }
        if attempt.previous().len() >= 5 {
            return attempt.error("more than 5 redirects");
        }
        attempt.follow()
    })
}

/// The template path, symlinks resolved, must lie under one of `roots`.
fn check_template_root(p: &Path, roots: &[PathBuf]) -> Result<(), StorageError> {
    let real = p
        .canonicalize()
        .map_err(|e| StorageError::io("open template", p, e))?;
    let inside = roots
        .iter()
        .filter_map(|r| r.canonicalize().ok())
        .any(|r| real.starts_with(r));
    if inside {
        return Ok(());
    }
    Err(StorageError::invalid(
        format!("template path {}", p.display()),
        format!("is outside the secondary-storage roots {roots:?} (storage config template_roots)"),
    ))
}

/// Streams `src` into the temp file, hashing as it goes, and returns the
/// hex digest. ENOSPC becomes DiskFull; the TempFile guard removes the file.
async fn stream_to(
    src: &mut Source,
    tmp: &TempFile,
    req: &CopyTemplate,
    total: Option<Bytes>,
    progress: Option<&(dyn Fn(Progress) + Send + Sync)>,
    ctl: &RunCtl,
    what: &str,
) -> Result<String, StorageError> {
    let write_err = |e: std::io::Error| {
        if is_disk_full(&e) {
            StorageError::DiskFull {
                pool: req.pool.to_string(),
                step: "copy template",
                path: volume_path(tmp.path().parent().unwrap_or(Path::new("/")), &req.name),
            }
        } else {
            StorageError::io("write template", tmp.path(), e)
        }
    };
    let mut out = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp.path())
        .await
        .map_err(write_err)?;
    let mut hasher = Hasher::new(req.checksum.as_ref());
    let mut buf = Vec::with_capacity(CHUNK);
    let (mut done, mut reported) = (0u64, 0u64);
    let total_v = total.unwrap_or_default();
    loop {
        let n = tokio::select! {
            r = src.next(&mut buf, what) => r?,
            _ = tokio::time::sleep_until(ctl.deadline) => return Err(StorageError::Timeout {
                step: "copy template", object: what.to_string(), after: ctl.budget }),
            _ = ctl.cancel.cancelled() => return Err(StorageError::Cancelled {
                step: "copy template", object: what.to_string() }),
        };
        if n == 0 {
            break;
        }
        hasher.update(&buf);
        out.write_all(&buf).await.map_err(write_err)?;
        let before = done;
        done += n as u64;
        if total.is_none() && before / SPACE_CHECK_STEP != done / SPACE_CHECK_STEP {
            keep_reserve(tmp.path(), &req.pool, done, ctl).await?;
        }
        if let Some(p) = progress {
            if done - reported >= PROGRESS_STEP {
                reported = done;
                p(Progress {
                    done: Bytes(done),
                    total: total_v,
                });
            }
        }
    }
    out.flush().await.map_err(write_err)?;
    out.sync_all().await.map_err(write_err)?;
    if let Some(t) = total {
        if done != t.0 {
            return Err(StorageError::Http {
                url: what.to_string(),
                reason: format!("got {done} bytes, expected {}", t.0),
            });
        }
    }
    if let Some(p) = progress {
        p(Progress {
            done: Bytes(done),
            total: Bytes(total.map_or(done, |t| t.0)),
        });
    }
    Ok(hasher.hex())
}
