//! A minimal HTTP/1.1 server for `GET /metrics` on 127.0.0.1 only.
//!
//! Owns reading one request head per connection (bounded in size and time),
//! answering it and closing. Anything that is not a well-formed GET or HEAD
//! gets a 4xx and the connection is closed; one bad client never affects
//! the next. It binds loopback only: exposing the port is a reverse proxy's
//! decision, not the agent's.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::CommandMetrics;
use crate::status::Sources;

const MAX_HEAD_BYTES: usize = 8 * 1024;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binds 127.0.0.1:`port` (0: any free port; the bound address is returned).
pub async fn bind(port: u16) -> std::io::Result<TcpListener> {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await
}

/// Serves scrapes until `stop` fires.
pub async fn serve(
    listener: TcpListener,
    sources: Arc<Sources>,
    commands: Arc<CommandMetrics>,
    stop: CancellationToken,
) {
    loop {
        let conn = tokio::select! {
            _ = stop.cancelled() => return,
            c = listener.accept() => c,
        };
        match conn {
            Ok((stream, _)) => {
                let sources = Arc::clone(&sources);
                let commands = Arc::clone(&commands);
                tokio::spawn(async move {
                    let answered = answer(stream, &sources, &commands);
                    let _ = tokio::time::timeout(CLIENT_TIMEOUT, answered).await;
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(
    mut stream: TcpStream,
    sources: &Sources,
    commands: &CommandMetrics,
) -> std::io::Result<()> {
    let reply = match read_head(&mut stream).await? {
        Some(head) => route(&head, sources, commands),
        None => Reply::error(431, "Request Header Fields Too Large"),
    };
    stream.write_all(&reply.bytes()).await?;
    stream.shutdown().await
}

/// Reads up to the blank line ending the head; `None` when it is too big.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            return Ok(Some(buf));
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Ok(None);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            // The client closed early: answer what we have (a 400 if partial).
            return Ok(Some(buf));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

struct Reply {
    code: u16,
    reason: &'static str,
    body: String,
    head_only: bool,
}

impl Reply {
    fn error(code: u16, reason: &'static str) -> Reply {
        Reply {
            code,
            reason,
            body: format!("{code} {reason}\n"),
            head_only: false,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out =
            format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.code,
            self.reason,
            if self.code == 200 { CONTENT_TYPE } else { "text/plain; charset=utf-8" },
            self.body.len()
        )
            .into_bytes();
        if !self.head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

fn route(head: &[u8], sources: &Sources, commands: &CommandMetrics) -> Reply {
    let Some((method, path)) = request_line(head) else {
        return Reply::error(400, "Bad Request");
    };
    if method != "GET" && method != "HEAD" {
        return Reply::error(405, "Method Not Allowed");
    }
    // Query strings (Prometheus never sends one) are ignored.
    let path = path.split('?').next().unwrap_or_default();
    if path != "/metrics" {
        return Reply::error(404, "Not Found");
    }
    Reply {
        code: 200,
        reason: "OK",
        body: super::render(commands, &sources.collect()),
        head_only: method == "HEAD",
    }
}

/// "METHOD /path HTTP/1.x" or `None` when the line is not that.
fn request_line(head: &[u8]) -> Option<(&str, &str)> {
    let text = std::str::from_utf8(head).ok()?;
    let line = text.lines().next()?;
    let mut parts = line.split(' ');
    let (method, path, version) = (parts.next()?, parts.next()?, parts.next()?);
    let ok = parts.next().is_none()
        && !method.is_empty()
        && method.bytes().all(|b| b.is_ascii_uppercase())
        && path.starts_with('/')
        && matches!(version.trim_end(), "HTTP/1.0" | "HTTP/1.1");
    ok.then_some((method, path))
}

#[cfg(test)]
mod tests {
    use super::request_line;

    #[test]
    fn request_lines() {
        assert_eq!(
            request_line(b"GET /metrics HTTP/1.1\r\n\r\n"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(
            request_line(b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Some(("HEAD", "/metrics?x=1"))
        );
        assert_eq!(request_line(b"GET metrics HTTP/1.1\r\n\r\n"), None);
        assert_eq!(request_line(b"hello\r\n\r\n"), None);
        assert_eq!(request_line(b"GET /metrics HTTP/2\r\n\r\n"), None);
        assert_eq!(request_line(b"GET /metrics HTTP/1.1 extra\r\n\r\n"), None);
        assert_eq!(request_line(b"\xff\xfe\r\n\r\n"), None);
        assert_eq!(request_line(b""), None);
    }
}
