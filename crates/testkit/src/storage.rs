//! Shared fixtures of the storage tests: a real libvirt dir pool on
//! qemu:///system in a temp dir, a small tmpfs, random-data images, and a
//! tiny HTTP server. Every object is named csat-sto-* and removed in Drop.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use csagent_storage::{
    CallOpts, PoolDef, PoolKind, PoolName, PoolStatus, Progress, ProgressSink, Storage,
    StorageConfig, VolumeName,
};

pub const URI: &str = "qemu:///system";

pub fn unique(tag: &str) -> String {
    format!("csat-sto-{tag}-{:08x}", rand::random::<u32>())
}

/// A volume name the test knows to be valid.
pub fn vol(s: &str) -> VolumeName {
    VolumeName::new(s).unwrap()
}

/// A progress sink and what it has been told, in order.
pub fn progress_sink() -> (ProgressSink, Arc<Mutex<Vec<Progress>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    (Arc::new(move |p| s2.lock().unwrap().push(p)), seen)
}

pub fn storage() -> Arc<Storage> {
    Arc::new(Storage::new(
        StorageConfig {
            template_roots: vec![std::env::temp_dir()],
            ..StorageConfig::default()
        },
        csagent_libvirt::Hypervisor::start(URI, std::time::Duration::from_secs(30)),
    ))
}

/// Removes a libvirt pool by name on drop (stop + undefine), ignoring
/// "not found": the test may have removed it already.
pub struct PoolGuard {
    pub uri: String,
    pub name: String,
}

impl Drop for PoolGuard {
    fn drop(&mut self) {
        if let Ok(c) = virt::connect::Connect::open(Some(&self.uri)) {
            if let Ok(p) = c.lookup_storage_pool_by_name(&self.name) {
                let _ = p.destroy();
                let _ = p.undefine();
            }
        }
    }
}

/// A running dir pool on qemu:///system in a fresh temp dir.
pub struct TestPool {
    pub storage: Arc<Storage>,
    pub name: PoolName,
    pub dir: PathBuf,
    _guard: PoolGuard,
    _tmp: tempfile::TempDir,
}

impl TestPool {
    pub async fn new(tag: &str) -> TestPool {
        let tmp = tempfile::Builder::new()
            .prefix("csat-sto-")
            .tempdir()
            .unwrap();
        Self::at(tag, tmp, None).await
    }

    pub async fn at(tag: &str, tmp: tempfile::TempDir, dir: Option<PathBuf>) -> TestPool {
        let storage = storage();
        let name = unique(tag);
        let guard = PoolGuard {
            uri: URI.into(),
            name: name.clone(),
        };
        let dir = dir.unwrap_or_else(|| tmp.path().to_path_buf());
        let def = PoolDef {
            name: PoolName::new(&name).unwrap(),
            kind: PoolKind::Dir { path: dir.clone() },
        };
        storage.add_pool(def, CallOpts::default()).await.unwrap();
        TestPool {
            storage,
            name: PoolName::new(name).unwrap(),
            dir,
            _guard: guard,
            _tmp: tmp,
        }
    }

    /// Names of files in the pool dir, temp files included, sorted.
    pub fn files(&self) -> Vec<String> {
        list(&self.dir)
    }
}

pub fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A tmpfs of `mib` MiB mounted on a temp dir; unmounted in Drop.
pub struct Tmpfs {
    pub dir: tempfile::TempDir,
    mounted: std::cell::Cell<bool>,
}

impl Tmpfs {
    pub fn new(mib: u32) -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix("csat-sto-tmpfs-")
            .tempdir()
            .unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={mib}m"))
            .arg("csat-sto-tmpfs")
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs failed");
        Tmpfs {
            dir,
            mounted: std::cell::Cell::new(true),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn unmount(&self) {
        if self.mounted.replace(false) {
            let _ = Command::new("umount").arg(self.dir.path()).status();
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// A shared-mount-point pool on a fresh tmpfs of `mib` MiB, added through
/// `storage`. Dropped, it removes the pool, then unmounts the tmpfs (fields
/// drop in this order).
pub struct MountPool {
    pub name: PoolName,
    /// What adding the pool returned.
    pub added: PoolStatus,
    _guard: PoolGuard,
    pub fs: Tmpfs,
}

impl MountPool {
    pub async fn add(storage: &Storage, tag: &str, mib: u32) -> MountPool {
        let fs = Tmpfs::new(mib);
        let name = unique(tag);
        let guard = PoolGuard {
            uri: URI.into(),
            name: name.clone(),
        };
        let def = PoolDef {
            name: PoolName::new(&name).unwrap(),
            kind: PoolKind::SharedMountPoint {
                path: fs.path().to_path_buf(),
            },
        };
        let added = storage.add_pool(def, CallOpts::default()).await.unwrap();
        MountPool {
            name: PoolName::new(name).unwrap(),
            added,
            _guard: guard,
            fs,
        }
    }
}

/// Writes `len` bytes of pseudo-random data (xorshift; not compressible,
/// not sparse) to `path`.
pub fn random_file(path: &Path, len: u64, seed: u64) {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut x = seed | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = x.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
}

/// Runs qemu-img (test-side, to set up fixtures) and asserts success.
pub fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn info_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&qemu_img(&[
        "info",
        "-U",
        "--output=json",
        path.to_str().unwrap(),
    ]))
    .unwrap()
}

/// Pids of running qemu-img processes whose command line mentions `needle`.
pub fn qemu_img_pids(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.starts_with("qemu-img") && cmd.contains(needle) {
            out.push(pid);
        }
    }
    out
}

/// What a test HTTP server answers to `GET /csat-sto-template.img`.
#[derive(Clone)]
pub enum Answer {
    /// The file; with `chunked` its length is not announced (so no
    /// capacity pre-check).
    File { body: Arc<Vec<u8>>, chunked: bool },
    /// 302 to this location.
    Redirect(String),
}

/// A one-file HTTP/1.1 server on 127.0.0.1 for template downloads, plain
/// or over TLS; counts the requests it was sent.
pub struct HttpServer {
    pub url: String,
    pub hits: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    pub async fn serve(body: Arc<Vec<u8>>, chunked: bool) -> HttpServer {
        Self::start(Answer::File { body, chunked }, None).await
    }

    /// Serves `answer`, over TLS with `tls` (see `https_config`).
    pub async fn start(
        answer: Answer,
        tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    ) -> HttpServer {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!(
            "{scheme}://{}/csat-sto-template.img",
            l.local_addr().unwrap()
        );
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = Arc::clone(&hits);
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (answer, acceptor) = (answer.clone(), acceptor.clone());
                tokio::spawn(async move {
                    match acceptor {
                        None => respond(s, &answer).await,
                        Some(a) => {
                            if let Ok(s) = a.accept(s).await {
                                respond(s, &answer).await;
                            }
                        }
                    }
                });
            }
        });
        HttpServer { url, hits, task }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A TLS server config for 127.0.0.1 and localhost, its certificate
/// issued by `ca`.
pub fn https_config(ca: &csagent_tls::pki::Ca) -> Arc<tokio_rustls::rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject;
    use tokio_rustls::rustls;
    let names = ["127.0.0.1".to_string(), "localhost".to_string()];
    let pem = ca
        .issue_server(
            &names,
            csagent_tls::pki::Validity::for_lifetime(std::time::Duration::from_secs(3600)),
        )
        .unwrap();
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(pem.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(pem.key.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    Arc::new(cfg)
}

async fn respond<S>(mut s: S, answer: &Answer)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    if !req.starts_with(b"GET /csat-sto-template.img ") {
        let _ = s
            .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await;
        return;
    }
    let _ = match answer {
        Answer::Redirect(to) => {
            let head = format!("HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            s.write_all(head.as_bytes()).await
        }
        Answer::File {
            body,
            chunked: true,
        } => send_chunked(&mut s, body).await,
        Answer::File {
            body,
            chunked: false,
        } => {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            match s.write_all(head.as_bytes()).await {
                Ok(()) => s.write_all(body).await,
                Err(e) => Err(e),
            }
        }
    };
    let _ = s.shutdown().await;
}

async fn send_chunked<S>(s: &mut S, body: &[u8]) -> std::io::Result<()>
where
    S: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n")
        .await?;
    for c in body.chunks(64 * 1024) {
        s.write_all(format!("{:x}\r\n", c.len()).as_bytes()).await?;
        s.write_all(c).await?;
        s.write_all(b"\r\n").await?;
    }
    s.write_all(b"0\r\n\r\n").await
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
