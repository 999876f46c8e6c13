//! The one boundary that runs `qemu-img`: builds argument lists, runs the
//! child with a timeout and a cancellation token, parses `--output=json`.
//!
//! Owns: the qemu-img child process, its kill on timeout/cancel, removal of
//! partial output, parsing of its JSON and progress output. Must not: decide
//! where volumes live, take locks, or run anything through a shell.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::error::StorageError;
use super::{Bytes, ImageFormat, Progress};

/// Stderr kept for error messages; qemu-img's useful line is the last one.
const STDERR_KEEP: usize = 4096;

/// Deadline and cancellation of one storage operation; every qemu-img call
/// of the operation shares them, so the timeout bounds the whole operation.
#[derive(Clone, Debug)]
pub struct RunCtl {
    pub deadline: Instant,
    /// The timeout the deadline came from, for error messages.
    pub budget: Duration,
    pub cancel: CancellationToken,
    /// Time limit of one filesystem call on pool or template storage
    /// (pool_fs.rs); the budget unless the storage's config says less.
    pub fs_timeout: Duration,
}

impl RunCtl {
    pub fn new(budget: Duration, cancel: CancellationToken) -> Self {
        Self {
            deadline: Instant::now() + budget,
            budget,
            cancel,
            fs_timeout: budget,
        }
    }

    /// The same control with filesystem calls limited to `t`.
    pub fn with_fs_timeout(mut self, t: Duration) -> Self {
        self.fs_timeout = t;
        self
    }

    /// Error for `step` when the deadline passed or the token fired, so
    /// steps that are not qemu-img (downloads, libvirt) end the same way.
    pub fn check(&self, step: &'static str, object: &str) -> Result<(), StorageError> {
        if self.cancel.is_cancelled() {
            return Err(StorageError::Cancelled {
                step,
                object: object.to_string(),
            });
        }
        if Instant::now() >= self.deadline {
            return Err(StorageError::Timeout {
                step,
                object: object.to_string(),
                after: self.budget,
            });
        }
        Ok(())
    }
}

/// How to run qemu-img: which binary (tests/packaging may override).
#[derive(Clone, Debug)]
pub struct QemuImg {
    program: PathBuf,
}

impl Default for QemuImg {
    fn default() -> Self {
        Self {
            program: PathBuf::from("qemu-img"),
        }
    }
}

/// One image of `qemu-img info --output=json`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct ImageInfo {
    pub filename: String,
    pub format: String,
    pub virtual_size: u64,
    #[serde(default)]
    pub actual_size: Option<u64>,
    #[serde(default)]
    pub backing_filename: Option<String>,
    #[serde(default)]
    pub full_backing_filename: Option<String>,
    #[serde(default)]
    pub backing_filename_format: Option<String>,
    #[serde(default)]
    pub snapshots: Vec<InternalSnapshot>,
    #[serde(default)]
    pub format_specific: Option<serde_json::Value>,
}

impl ImageInfo {
    /// qcow2 may keep guest data in an external "data-file": like a backing
    /// file, it could point anywhere on the host.
    pub fn external_data_file(&self) -> Option<String> {
        let data = self.format_specific.as_ref()?.get("data")?;
        data.get("data-file")?.as_str().map(str::to_string)
    }
}

/// One qcow2 internal snapshot as `qemu-img info` lists it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct InternalSnapshot {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub vm_state_size: u64,
    #[serde(default)]
    pub date_sec: i64,
}

/// `qemu-img check --output=json`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "kebab-case", default)]
pub struct CheckReport {
    pub check_errors: u64,
    pub corruptions: u64,
    pub leaks: u64,
    pub image_end_offset: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Measure {
    required: u64,
}

/// Output file of a call: removed if the call does not succeed.
struct Partial<'a>(Option<&'a Path>);

impl Partial<'_> {
    async fn remove(&self) {
        if let Some(p) = self.0 {
            if let Err(e) = tokio::fs::remove_file(p).await {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %p.display(), error = %e, "could not remove partial qemu-img output");
                }
            }
        }
    }
}

struct Call<'a> {
    step: &'static str,
    object: String,
    args: Vec<OsString>,
    output: Partial<'a>,
    /// Exit codes that still mean "stdout holds the answer" (check uses 2/3).
    ok_codes: &'static [i32],
    progress: Option<(&'a (dyn Fn(Progress) + Send + Sync), u64)>,
}

impl QemuImg {
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
        }
    }

    /// `qemu-img info`; with `chain` the whole backing chain, top first.
    /// `format` pins the driver so a raw file is never probed as qcow2.
    pub async fn info(
        &self,
        path: &Path,
        format: Option<ImageFormat>,
        chain: bool,
        ctl: &RunCtl,
    ) -> Result<Vec<ImageInfo>, StorageError> {
        // -U: read metadata even while a running VM holds the image lock.
        let mut args = vec![os("info"), os("--output=json"), os("-U")];
        if chain {
            args.push(os("--backing-chain"));
        }
        push_format(&mut args, "-f", format);
        args.push(path.into());
        let out = self.run(call("info", path, args), ctl).await?;
        let parsed = if chain {
            serde_json::from_slice::<Vec<ImageInfo>>(&out)
        } else {
            serde_json::from_slice::<ImageInfo>(&out).map(|i| vec![i])
        };
        parsed.map_err(|e| bad_json("info", path, e))
    }

    /// Fails with Unavailable when a running VM holds the image: unlike
    /// `info` this asks for qemu's image locks (no -U), which a VM's write
    /// lock refuses.
    pub async fn ensure_unused(
        &self,
        path: &Path,
        format: ImageFormat,
        ctl: &RunCtl,
    ) -> Result<(), StorageError> {
        let args = vec![
            os("info"),
            os("--output=json"),
            os("-f"),
            os(format.as_str()),
            path.into(),
        ];
        self.run(call("in-use check", path, args), ctl)
            .await
            .map(drop)
    }

    pub async fn check(
        &self,
        path: &Path,
        format: ImageFormat,
        ctl: &RunCtl,
    ) -> Result<CheckReport, StorageError> {
        let args = vec![
            os("check"),
            os("--output=json"),
            os("-f"),
            os(format.as_str()),
            path.into(),
        ];
        let mut c = call("check", path, args);
        c.ok_codes = &[0, 2, 3];
        let out = self.run(c, ctl).await?;
        serde_json::from_slice(&out).map_err(|e| bad_json("check", path, e))
    }

    /// Bytes a conversion of `src` to `out_format` will need on disk.
    pub async fn measure(
        &self,
        src: &Path,
        src_format: ImageFormat,
        out_format: ImageFormat,
        ctl: &RunCtl,
    ) -> Result<Bytes, StorageError> {
        let args = vec![
            os("measure"),
            os("--output=json"),
            os("-f"),
            os(src_format.as_str()),
            os("-O"),
            os(out_format.as_str()),
            src.into(),
        ];
        let out = self.run(call("measure", src, args), ctl).await?;
        let m: Measure = serde_json::from_slice(&out).map_err(|e| bad_json("measure", src, e))?;
        Ok(Bytes(m.required))
    }

    /// Creates `path`; with `backing` a linked clone whose backing format is
    /// stated explicitly (never probed). Removes `path` on failure.
    pub async fn create(
        &self,
        path: &Path,
        format: ImageFormat,
        size: Option<Bytes>,
        backing: Option<(&Path, ImageFormat)>,
        ctl: &RunCtl,
    ) -> Result<(), StorageError> {
        let mut args = vec![os("create"), os("-q"), os("-f"), os(format.as_str())];
        if let Some((b, bf)) = backing {
            args.extend([os("-b"), b.into(), os("-F"), os(bf.as_str())]);
        }
        args.push(path.into());
        if let Some(s) = size {
            args.push(os(&s.0.to_string()));
        }
        let mut c = call("create", path, args);
        c.output = Partial(Some(path));
        self.run(c, ctl).await.map(drop)
    }

    /// Full copy with `qemu-img convert`, reporting progress as bytes of
    /// `total`. Removes `dst` on any failure, timeout or cancel.
    pub async fn convert(
        &self,
        src: (&Path, ImageFormat),
        dst: (&Path, ImageFormat),
        total: Bytes,
        progress: Option<&(dyn Fn(Progress) + Send + Sync)>,
        ctl: &RunCtl,
    ) -> Result<(), StorageError> {
        let mut args = vec![os("convert")];
        if progress.is_some() {
            args.push(os("-p"));
        }
        args.extend([os("-f"), os(src.1.as_str()), os("-O"), os(dst.1.as_str())]);
        args.extend([src.0.into(), dst.0.into()]);
        let mut c = call("convert", dst.0, args);
        c.output = Partial(Some(dst.0));
        c.progress = progress.map(|p| (p, total.0));
        self.run(c, ctl).await.map(drop)
    }

    pub async fn resize(
        &self,
        path: &Path,
        format: ImageFormat,
        size: Bytes,
        allow_shrink: bool,
        ctl: &RunCtl,
    ) -> Result<(), StorageError> {
        let mut args = vec![os("resize"), os("-q"), os("-f"), os(format.as_str())];
        if allow_shrink {
            args.push(os("--shrink"));
        }
        args.extend([path.into(), os(&size.0.to_string())]);
        self.run(call("resize", path, args), ctl).await.map(drop)
    }

    /// `qemu-img snapshot -c|-a|-d NAME` on a qcow2 image not in use.
    pub async fn snapshot(
        &self,
        op: SnapshotOp,
        path: &Path,
        name: &str,
        ctl: &RunCtl,
    ) -> Result<(), StorageError> {
        let (flag, step) = match op {
            SnapshotOp::Create => ("-c", "snapshot create"),
            SnapshotOp::Apply => ("-a", "snapshot revert"),
            SnapshotOp::Delete => ("-d", "snapshot delete"),
        };
        // `qemu-img snapshot` has no -f: the format is probed. Callers have
        // checked the qcow2 magic first, so probing cannot mistake a raw
        // guest-written image for qcow2.
        let args = vec![os("snapshot"), os("-q"), os(flag), os(name), path.into()];
        self.run(call(step, path, args), ctl).await.map(drop)
    }

    // Every qemu-img run of the storage crate goes through here, without a
    // shell (clippy.toml bans Command::new elsewhere).
    #[allow(clippy::disallowed_methods)]
    async fn run(&self, c: Call<'_>, ctl: &RunCtl) -> Result<Vec<u8>, StorageError> {
        let mut child = Command::new(&self.program)
            .args(&c.args)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| StorageError::Unavailable {
                what: format!("qemu-img ({})", self.program.display()),
                reason: format!(
                    "cannot start it for {} on {}: {e}; install qemu-utils",
                    c.step, c.object
                ),
            })?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let outcome = tokio::select! {
            r = async {
                let (out, err, status) = tokio::join!(
                    read_stdout(stdout, c.progress),
                    read_tail(stderr),
                    child.wait()
                );
                (out, err, status)
            } => Outcome::Exited(r.0, r.1, r.2),
            _ = tokio::time::sleep_until(ctl.deadline) => Outcome::TimedOut,
            _ = ctl.cancel.cancelled() => Outcome::Cancelled,
        };
        match outcome {
            Outcome::Exited(out, err, status) => {
                let status = status.map_err(|e| StorageError::io(c.step, &c.object, e))?;
                let ok = status.code().is_some_and(|code| c.ok_codes.contains(&code));
                if ok {
                    return Ok(out);
                }
                c.output.remove().await;
                Err(exit_error(&c, status, &err))
            }
            Outcome::TimedOut | Outcome::Cancelled => {
                // kill() also reaps, so no zombie and no writer left when we
                // remove the partial file below.
                if let Err(e) = child.kill().await {
                    tracing::warn!(step = c.step, error = %e, "could not kill qemu-img");
                }
                c.output.remove().await;
                Err(match outcome {
                    Outcome::TimedOut => StorageError::Timeout {
                        step: c.step,
                        object: c.object,
                        after: ctl.budget,
                    },
                    _ => StorageError::Cancelled {
                        step: c.step,
                        object: c.object,
                    },
                })
            }
        }
    }
}

/// Which `qemu-img snapshot` action to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotOp {
    Create,
    Apply,
    Delete,
}

enum Outcome {
    Exited(Vec<u8>, String, std::io::Result<std::process::ExitStatus>),
    TimedOut,
    Cancelled,
}

fn call<'a>(step: &'static str, object: &Path, args: Vec<OsString>) -> Call<'a> {
    Call {
        step,
        object: object.display().to_string(),
        args,
        output: Partial(None),
        ok_codes: &[0],
        progress: None,
    }
}

fn os(s: &str) -> OsString {
    OsString::from(s)
}

fn push_format(args: &mut Vec<OsString>, flag: &str, f: Option<ImageFormat>) {
    if let Some(f) = f {
        args.extend([os(flag), os(f.as_str())]);
    }
}

fn bad_json(step: &'static str, path: &Path, e: serde_json::Error) -> StorageError {
    StorageError::Internal {
        step,
        reason: format!("unexpected qemu-img JSON for {}: {e}", path.display()),
    }
}

fn exit_error(c: &Call<'_>, status: std::process::ExitStatus, stderr: &str) -> StorageError {
    let stderr = stderr.trim().to_string();
    if stderr.contains("No space left on device") {
        if let Some(p) = c.output.0 {
            return StorageError::DiskFull {
                pool: p
                    .parent()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default(),
                step: c.step,
                path: p.to_path_buf(),
            };
        }
    }
    if stderr.contains("Failed to get") && stderr.contains("lock") {
        // qemu's image locking: a running VM has the image open.
        return StorageError::Unavailable {
            what: format!("image {}", c.object),
            reason: format!(
                "it is in use by a running VM ({stderr}); stop the VM or use a VM snapshot"
            ),
        };
    }
    if stderr.contains("No such file or directory") && c.output.0.is_none() {
        return StorageError::NotFound {
            what: format!("image {} ({stderr})", c.object),
        };
    }
    StorageError::QemuImg {
        step: c.step,
        object: c.object.clone(),
        status: status.to_string(),
        stderr,
    }
}

/// Collects stdout; with a progress sink, parses `-p` lines "(12.50/100%)"
/// separated by '\r' into byte counts of `total`.
async fn read_stdout(
    pipe: Option<impl AsyncRead + Unpin>,
    progress: Option<(&(dyn Fn(Progress) + Send + Sync), u64)>,
) -> Vec<u8> {
    let Some(mut pipe) = pipe else {
        return Vec::new();
    };
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    let mut line = Vec::new();
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        match progress {
            None => all.extend_from_slice(&buf[..n]),
            Some((sink, total)) => {
                for &b in &buf[..n] {
                    if b == b'\r' || b == b'\n' {
                        if let Some(pct) = parse_percent(&line) {
                            sink(Progress {
                                done: Bytes((pct / 100.0 * total as f64) as u64),
                                total: Bytes(total),
                            });
                        }
                        line.clear();
                    } else {
                        line.push(b);
                    }
                }
            }
        }
    }
    all
}

/// "    (42.03/100%)" -> 42.03
pub(crate) fn parse_percent(line: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(line).ok()?.trim();
    let inner = s.strip_prefix('(')?.strip_suffix("/100%)")?;
    inner
        .parse::<f64>()
        .ok()
        .filter(|p| (0.0..=100.0).contains(p))
}

async fn read_tail(pipe: Option<impl AsyncRead + Unpin>) -> String {
    let Some(mut pipe) = pipe else {
        return String::new();
    };
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buf[..n]);
        if all.len() > 2 * STDERR_KEEP {
            all.drain(..all.len() - STDERR_KEEP);
        }
    }
    String::from_utf8_lossy(&all).into_owned()
}

#[cfg(test)]
mod tests {
    use super::parse_percent;

    #[test]
    fn parses_progress() {
        assert_eq!(parse_percent(b"    (42.03/100%)"), Some(42.03));
        assert_eq!(parse_percent(b"(100.00/100%)"), Some(100.0));
        assert_eq!(parse_percent(b"garbage"), None);
    }
}
