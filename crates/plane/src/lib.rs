//! csagent-mgmt's server side: the reference management plane.
//!
//! Owns serving agents (server.rs), the host registry with liveness and
//! command bookkeeping (registry.rs), and the local operator interface
//! (admin.rs). It is both a test fixture and a readable model of how a
//! management server speaks the protocol.

pub mod admin;
pub mod authority;
pub mod convert;
pub mod enroll;
pub mod ha;
pub mod ha_book;
pub mod identity_admin;
pub mod identity_link;
pub mod maintenance;
pub mod migrate;
pub mod registry;
pub mod revocation;
pub mod server;
pub mod show;
pub mod statefile;
pub mod tokens;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use authority::{Authority, IdentityConfig};
use csagent_tls::{self as tls, TlsFiles};
pub use registry::{Liveness, Registry};

#[derive(Debug, thiserror::Error)]
pub enum PlaneError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("admin socket {path}: {source}")]
    Admin {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Serve(String),
    #[error("host identity: {0}")]
    Identity(#[from] authority::IdentityError),
    #[error("HA book: {0}")]
    HaBook(#[from] statefile::StateError),
}

pub struct PlaneConfig {
    pub listen: SocketAddr,
    pub tls: TlsFiles,
    pub admin_socket: Option<PathBuf>,
    pub liveness: Liveness,
    pub plane_id: String,
    pub max_message_bytes: usize,
    /// High availability: investigate silent hosts, fence, restart HA VMs.
    /// None: hosts go Down by heartbeat age and nothing is restarted.
    pub ha: Option<ha::HaConfig>,
}

/// A running plane.
pub struct Plane {
    pub registry: Arc<Registry>,
    /// Enrollment, renewal, revocation and CA rotation, when enabled.
    pub authority: Option<Arc<Authority>>,
    pub addr: SocketAddr,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Plane {
    /// Binds and starts serving; returns once the port is open.
    pub async fn start(cfg: PlaneConfig) -> Result<Plane, PlaneError> {
        Plane::start_with(cfg, None).await
    }

    /// As `start`, and with `identity` the plane also enrolls hosts (on the
    /// same port: a client without a certificate reaches only Enrollment),
    /// renews their certificates, revokes and rotates its CA.
    pub async fn start_with(
        cfg: PlaneConfig,
        identity: Option<IdentityConfig>,
    ) -> Result<Plane, PlaneError> {
        let authority = identity.map(Authority::open).transpose()?.map(Arc::new);
        let tls = match &authority {
            Some(a) => a.server_tls(),
            None => Arc::new(std::sync::RwLock::new(tls::server_config(&cfg.tls)?)),
        };
        let listener =
            TcpListener::bind(cfg.listen)
                .await
                .map_err(|source| PlaneError::Listen {
                    addr: cfg.listen.to_string(),
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| PlaneError::Listen {
            addr: cfg.listen.to_string(),
            source,
        })?;
        let mut registry = Registry::new(cfg.liveness.clone(), cfg.plane_id.clone());
        if let Some(ha) = &cfg.ha {
            registry = registry.with_ha();
            if let Some(file) = &ha.book_file {
                registry = registry.with_book(ha_book::Book::open(file)?);
            }
        }
        let registry = Arc::new(registry);
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        if let Some(ha) = cfg.ha.clone() {
            tasks.push(ha::spawn(Arc::clone(&registry), ha, stop.clone()));
        }
        let incoming = server::accept_loop(listener, tls, stop.clone());
        let link = server::LinkService {
            registry: Arc::clone(&registry),
            authority: authority.clone(),
        }
        .into_server(cfg.max_message_bytes);
        let enrollment = authority.clone().map(enroll::server);
        let s = stop.clone();
        tasks.push(tokio::spawn(async move {
            let res = tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(5)))
                .http2_keepalive_timeout(Some(Duration::from_secs(5)))
                .add_service(link)
                .add_optional_service(enrollment)
                .serve_with_incoming_shutdown(incoming, s.cancelled())
                .await;
            if let Err(e) = res {
                tracing::error!(error = %e, "agent server stopped");
            }
        }));
        if let Some(path) = &cfg.admin_socket {
            let incoming = admin::bind(path).map_err(|source| PlaneError::Admin {
                path: path.clone(),
                source,
            })?;
            let svc = admin::server(Arc::clone(&registry), authority.clone());
            let s = stop.clone();
            tasks.push(tokio::spawn(async move {
                let res = tonic::transport::Server::builder()
                    .add_service(svc)
                    .serve_with_incoming_shutdown(incoming, s.cancelled())
                    .await;
                if let Err(e) = res {
                    tracing::error!(error = %e, "admin server stopped");
                }
            }));
        }
        let r = Arc::clone(&registry);
        let s = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    _ = s.cancelled() => return,
                    _ = tick.tick() => r.tick(),
                }
            }
        }));
        tracing::info!(%addr, plane = %cfg.plane_id, "management plane listening");
        Ok(Plane {
            registry,
            authority,
            addr,
            stop,
            tasks,
        })
    }

    /// Stops accepting and ends every agent stream at once, as the plane
    /// process dying would; `stop` also waits for the servers to end.
    pub fn halt(&self) {
        self.stop.cancel();
        self.registry.close_all();
    }

    /// Stops accepting, ends every agent stream and the servers.
    pub async fn stop(self) {
        self.halt();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(3), t).await;
        }
    }
}
