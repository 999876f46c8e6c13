//! The plane's agent-facing server: TLS accept loop and the AgentLink service.
//!
//! Owns who may talk: every connection completes a TLS 1.3 handshake with a
//! client certificate from the plane's CA within a time limit (garbage bytes,
//! plaintext and foreign or expired certificates are dropped there, costing
//! other agents nothing), and a stream is served only if its Register names
//! the host its certificate names. With host identity enabled (issue 8) a
//! client without a certificate completes the handshake too, but it can only
//! reach the Enrollment service: a stream here still needs a verified
//! identity, which must not be revoked, and certificate renewals arriving on
//! the stream are signed for that identity only.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status, Streaming};

use crate::authority::{Authority, ServerTls};
use crate::registry::Registry;
use csagent_proto::v1 as pb;
use csagent_proto::v1::agent_link_server::{AgentLink, AgentLinkServer};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS handshakes in progress at once, in all and from one address. A
/// connection past either is closed at once: idle or slow clients (anyone
/// may connect while enrollment is open) cannot pile up tasks and sockets,
/// and established streams are not affected.
const MAX_HANDSHAKES: usize = 512;
const MAX_HANDSHAKES_PER_ADDRESS: usize = 64;
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-agent queue toward the agent. Deep enough for bursts of commands.
const TO_AGENT_QUEUE: usize = 16 * 1024;

/// Who is on the other end of a connection, from its verified certificate.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub identity: Option<String>,
    pub addr: Option<SocketAddr>,
}

/// A TLS connection carrying the peer's identity for tonic's handlers.
pub struct PeerStream {
    inner: TlsStream<TcpStream>,
    info: PeerInfo,
}

impl Connected for PeerStream {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Accepts TCP connections and completes TLS handshakes concurrently, each
/// under a time limit, handing verified connections to tonic.
pub fn accept_loop(
    listener: TcpListener,
    tls: ServerTls,
    stop: CancellationToken,
) -> ReceiverStream<std::io::Result<PeerStream>> {
    let (tx, rx) = mpsc::channel(128);
    let gate = Arc::new(HandshakeGate::default());
    tokio::spawn(async move {
        loop {
            let (tcp, addr) = tokio::select! {
                _ = stop.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Some(slot) = gate.enter(addr.ip()) else {
                // Dropping the socket closes it; logged once per burst.
                gate.note_refused(addr);
                continue;
            };
            // The configuration of the moment: a CA rotation swaps it.
            let config: Arc<ServerConfig> = Arc::clone(&csagent_core::sync::read(&tls));
            let acceptor = TlsAcceptor::from(config);
            let tx = tx.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let _ = tcp.set_nodelay(true);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let identity = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(csagent_tls::peer_identity);
                        let info = PeerInfo {
                            identity,
                            addr: Some(addr),
                        };
                        let _ = tx.send(Ok(PeerStream { inner: tls, info })).await;
                    }
                    Ok(Err(e)) => tracing::warn!(peer = %addr, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::warn!(peer = %addr, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Counts handshakes in progress, in all and per address.
#[derive(Default)]
struct HandshakeGate {
    by_addr: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    refused: std::sync::atomic::AtomicU64,
}

/// One handshake's place in the gate; leaving frees it.
struct Slot {
    gate: Arc<HandshakeGate>,
    ip: std::net::IpAddr,
}

impl HandshakeGate {
    fn enter(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<Slot> {
        let mut m = csagent_core::sync::lock(&self.by_addr);
        let total: usize = m.values().sum();
        let mine = m.get(&ip).copied().unwrap_or(0);
        if total >= MAX_HANDSHAKES || mine >= MAX_HANDSHAKES_PER_ADDRESS {
            return None;
        }
        *m.entry(ip).or_default() += 1;
        Some(Slot {
            gate: Arc::clone(self),
            ip,
        })
    }

    fn note_refused(&self, addr: SocketAddr) {
        use std::sync::atomic::Ordering;
        let n = self.refused.fetch_add(1, Ordering::Relaxed);
        // The first, then every 1000th: a flood must not flood the log too.
        if n.is_multiple_of(1000) {
            tracing::warn!(peer = %addr, refused_so_far = n + 1, max = MAX_HANDSHAKES,
                per_address = MAX_HANDSHAKES_PER_ADDRESS,
                "too many TLS handshakes in progress; connection closed");
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = csagent_core::sync::lock(&self.gate.by_addr);
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

pub struct LinkService {
    pub registry: Arc<Registry>,
    /// Set when the plane manages host identity (enrollment, renewal,
    /// revocation).
    pub authority: Option<Arc<Authority>>,
}

impl LinkService {
    pub fn into_server(self, max_message_bytes: usize) -> AgentLinkServer<LinkService> {
        AgentLinkServer::new(self)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes)
    }
}

#[tonic::async_trait]
impl AgentLink for LinkService {
    type SessionStream = ReceiverStream<Result<pb::PlaneMessage, Status>>;

    async fn session(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let info = req
            .extensions()
            .get::<PeerInfo>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("no verified client certificate"))?;
        let identity = info.identity.clone().ok_or_else(|| {
            Status::unauthenticated("client certificate carries no host identity")
        })?;
        let mut inbound = req.into_inner();
        let reg = first_register(&mut inbound).await?;
        if reg.host_uuid.to_ascii_lowercase() != identity {
            tracing::warn!(cert = %identity, claimed = %reg.host_uuid, "register refused: identity mismatch");
            return Err(Status::permission_denied(format!(
                "host_uuid {} does not match the certificate's identity {identity}",
                reg.host_uuid
            )));
        }
        let authority = self.authority.clone();
        if let Some(a) = &authority {
            if a.revoked.is_revoked(&identity) {
                tracing::warn!(host = %identity, "register refused: host is revoked");
                return Err(Status::permission_denied(format!(
                    "host {identity} is revoked; its certificate is refused"
                )));
            }
        }
        let (tx, rx) = mpsc::channel(TO_AGENT_QUEUE);
        let peer = info.addr.map(|a| a.to_string()).unwrap_or_default();
        let conn = self.registry.connect(reg, tx.clone(), peer);
        if let Some(a) = &authority {
            crate::identity_link::send_bundle(a, &tx, false);
        }
        let registry = Arc::clone(&self.registry);
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(msg)) => {
                        let Some(msg) = crate::identity_link::intercept(
                            authority.as_deref(),
                            &identity,
                            &tx,
                            msg,
                        ) else {
                            continue;
                        };
                        if authority
                            .as_ref()
                            .is_some_and(|a| a.revoked.is_revoked(&identity))
                        {
                            break;
                        }
                        registry.on_message(&identity, msg)
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(host = %identity, error = %e, "agent stream error");
                        break;
                    }
                }
            }
            registry.disconnect(&identity, conn);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

async fn first_register(inbound: &mut Streaming<pb::AgentMessage>) -> Result<pb::Register, Status> {
    let first = tokio::time::timeout(REGISTER_TIMEOUT, inbound.message())
        .await
        .map_err(|_| Status::deadline_exceeded("no Register within 10 s"))??;
    match first {
        Some(pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Register(r)),
        }) => Ok(r),
        _ => Err(Status::invalid_argument(
            "the first message must be Register",
        )),
    }
}
