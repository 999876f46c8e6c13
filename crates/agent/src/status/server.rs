//! The status socket: a unix stream socket, mode 0600, that writes the
//! status document as JSON to whoever connects and closes.
//!
//! Owns the socket file: a stale one (no agent answers) is replaced, a live
//! one (another agent answers) is left alone and this agent serves no
//! status, and the file is removed on shutdown. Only root and the agent's
//! own user are answered (checked on the peer's credentials, on top of the
//! file mode). It never takes a request: connecting is the whole protocol,
//! so nothing a client sends can change the agent.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use super::{Sources, StatusDoc};

/// A slow or stuck client is dropped after this.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// The document is small; a larger answer means something else answered.
const MAX_DOC_BYTES: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("another csagent already answers on status socket {0}; stop it or set status.socket")]
    InUse(PathBuf),
    #[error("cannot create status socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot reach the agent's status socket {path}: {source} (is csagent running? root only)"
    )]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("status socket {path} answered, but not with a status document: {reason}")]
    BadAnswer { path: PathBuf, reason: String },
}

/// A bound status socket, removed when dropped.
pub struct StatusSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for StatusSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds `path` (creating its directory, mode 0700, if missing), mode 0600.
pub async fn bind(path: &Path) -> Result<StatusSocket, StatusError> {
    let bind_err = |source| StatusError::Bind {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.exists()) {
        std::fs::create_dir_all(dir).map_err(bind_err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(bind_err)?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(StatusError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    let socket = StatusSocket {
        listener,
        path: path.to_path_buf(),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    Ok(socket)
}

/// Answers clients until `stop` fires, then removes the socket.
pub async fn serve(socket: StatusSocket, sources: Arc<Sources>, stop: CancellationToken) {
    loop {
        let conn = tokio::select! {
            _ = stop.cancelled() => return,
            c = socket.listener.accept() => c,
        };
        match conn {
            Ok((stream, _)) => {
                let sources = Arc::clone(&sources);
                tokio::spawn(answer(stream, sources));
            }
            Err(e) => {
                tracing::warn!(error = %e, path = %socket.path.display(), "status socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(mut stream: UnixStream, sources: Arc<Sources>) {
    if !peer_allowed(&stream) {
        tracing::warn!("status socket: refused a client that is neither root nor the agent's user");
        return;
    }
    let body = match serde_json::to_vec(&sources.collect()) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "status document could not be serialised");
            return;
        }
    };
    let write = async {
        stream.write_all(&body).await?;
        stream.shutdown().await
    };
    if let Err(e) = tokio::time::timeout(CLIENT_TIMEOUT, write)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    {
        tracing::debug!(error = %e, "status client went away");
    }
}

fn peer_allowed(stream: &UnixStream) -> bool {
    let own = nix::unistd::geteuid().as_raw();
    match stream.peer_cred() {
        Ok(c) => c.uid() == 0 || c.uid() == own,
        Err(_) => false,
    }
}

/// The client side: reads the document from a running agent.
pub async fn fetch(path: &Path) -> Result<(StatusDoc, Vec<u8>), StatusError> {
    let conn_err = |source| StatusError::Connect {
        path: path.to_path_buf(),
        source,
    };
    let bad = |reason: String| StatusError::BadAnswer {
        path: path.to_path_buf(),
        reason,
    };
    let read = async {
        let stream = UnixStream::connect(path).await?;
        let mut buf = Vec::new();
        stream.take(MAX_DOC_BYTES).read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let raw = tokio::time::timeout(CLIENT_TIMEOUT, read)
        .await
        .map_err(|_| conn_err(std::io::ErrorKind::TimedOut.into()))?
        .map_err(conn_err)?;
    if raw.is_empty() {
        return Err(bad("empty answer (refused: run as root)".into()));
    }
    let doc = serde_json::from_slice(&raw).map_err(|e| bad(e.to_string()))?;
    Ok((doc, raw))
}
