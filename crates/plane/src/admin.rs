//! The plane's operator interface on a local Unix socket.
//!
//! Owns the PlaneAdmin service (list hosts, send a command and follow it,
//! watch events) and the client side used by `csagent-mgmt hosts|send|events`.
//! The socket is created mode 0600 (bound under a umask that never lets it
//! exist wider) in a directory made 0700, and a client that is neither root
//! nor the plane's own user is dropped on its credentials: whoever can use
//! it controls every host.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::{BroadcastStream, UnboundedReceiverStream, UnixListenerStream};
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::authority::Authority;
use crate::registry::Registry;
use csagent_proto::v1 as pb;
use csagent_proto::v1::plane_admin_client::PlaneAdminClient;
use csagent_proto::v1::plane_admin_server::{PlaneAdmin, PlaneAdminServer};

pub struct AdminService {
    pub registry: Arc<Registry>,
    pub authority: Option<Arc<Authority>>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl PlaneAdmin for AdminService {
    async fn list_hosts(
        &self,
        _: Request<pb::ListHostsRequest>,
    ) -> Result<Response<pb::ListHostsResponse>, Status> {
        let mut hosts = self.registry.list();
        if let Some(a) = &self.authority {
            crate::identity_admin::mark_revoked(a, &mut hosts);
        }
        Ok(Response::new(pb::ListHostsResponse { hosts }))
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let a = crate::identity_admin::enabled(&self.authority)?;
        crate::identity_admin::create_token(a, req.into_inner()).map(Response::new)
    }

    async fn revoke_host(
        &self,
        req: Request<pb::RevokeHostRequest>,
    ) -> Result<Response<pb::RevokeHostResponse>, Status> {
        let a = crate::identity_admin::enabled(&self.authority)?;
        crate::identity_admin::revoke(a, &self.registry, req.into_inner()).map(Response::new)
    }

    async fn rotate_ca(
        &self,
        _: Request<pb::RotateCaRequest>,
    ) -> Result<Response<pb::RotateCaResponse>, Status> {
        let a = crate::identity_admin::enabled(&self.authority)?;
        crate::identity_admin::rotate_ca(a, &self.registry)
            .await
            .map(Response::new)
    }

    async fn set_maintenance(
        &self,
        req: Request<pb::SetMaintenanceRequest>,
    ) -> Result<Response<pb::SetMaintenanceResponse>, Status> {
        let req = req.into_inner();
        let state = pb::MaintenanceState::try_from(req.state).map_err(|_| {
            Status::invalid_argument(format!("maintenance state {} is unknown", req.state))
        })?;
        let host = req.host_uuid.to_ascii_lowercase();
        if !self.registry.set_maintenance(&host, state, req.errors) {
            return Err(Status::not_found(format!(
                "host {host} is not known to this plane"
            )));
        }
        Ok(Response::new(pb::SetMaintenanceResponse {}))
    }

    type SendCommandStream = BoxStream<pb::CommandUpdate>;

    async fn send_command(
        &self,
        req: Request<pb::SendCommandRequest>,
    ) -> Result<Response<Self::SendCommandStream>, Status> {
        let req = req.into_inner();
        if uuid::Uuid::parse_str(&req.host_uuid).is_err() {
            return Err(Status::invalid_argument(format!(
                "host_uuid {:?} is not a UUID",
                req.host_uuid
            )));
        }
        let cmd = req
            .command
            .ok_or_else(|| Status::invalid_argument("command is required"))?;
        let (id, updates) = self.registry.send(&req.host_uuid.to_ascii_lowercase(), cmd);
        let first = pb::CommandUpdate {
            update: Some(pb::command_update::Update::AcceptedId(id)),
        };
        let stream = tokio_stream::once(first)
            .chain(UnboundedReceiverStream::new(updates))
            .map(Ok);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn place_vm(
        &self,
        req: Request<pb::PlaceVmRequest>,
    ) -> Result<Response<pb::PlaceVmResponse>, Status> {
        use csagent_host::placement::PlacementError;
        let req = req.into_inner();
        let want = csagent_host::Request {
            vcpus: req.vcpus,
            memory: csagent_host::MiB(req.memory_mib),
        };
        match self.registry.place(&want, &req.exclude_hosts) {
            Ok(host_uuid) => Ok(Response::new(pb::PlaceVmResponse { host_uuid })),
            Err(e @ PlacementError::InvalidRequest(_)) => {
                Err(Status::invalid_argument(e.to_string()))
            }
            Err(e) => Err(Status::resource_exhausted(e.to_string())),
        }
    }

    type WatchEventsStream = BoxStream<pb::PlaneEvent>;

    async fn watch_events(
        &self,
        _: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let stream = BroadcastStream::new(self.registry.subscribe())
            .filter_map(|e| e.ok())
            .map(Ok);
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Admin clients that passed the credentials check.
pub type AdminIncoming = Pin<Box<dyn Stream<Item = std::io::Result<UnixStream>> + Send>>;

/// Binds the admin socket (replacing a stale one) with mode 0600; only
/// root and the plane's own user get through.
pub fn bind(path: &Path) -> std::io::Result<AdminIncoming> {
    if let Some(dir) = path.parent().filter(|d| !d.exists()) {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    // The umask is the process's: only ever made stricter, for one bind(2),
    // so the socket never exists with a wider mode than 0600.
    let before = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(before);
    let listener = bound?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let allowed = UnixListenerStream::new(listener).filter(|c| match c {
        Ok(s) => peer_allowed(s),
        Err(_) => true,
    });
    Ok(Box::pin(allowed))
}

/// Root or the plane's own user; anyone else is dropped and logged.
fn peer_allowed(s: &UnixStream) -> bool {
    let own = nix::unistd::geteuid().as_raw();
    let uid = s.peer_cred().map(|c| c.uid());
    let ok = matches!(uid, Ok(u) if u == 0 || u == own);
    if !ok {
        tracing::warn!(peer_uid = ?uid.ok(), "admin socket: refused a client that is neither root nor the plane's user");
    }
    ok
}

pub fn server(
    registry: Arc<Registry>,
    authority: Option<Arc<Authority>>,
) -> PlaneAdminServer<AdminService> {
    PlaneAdminServer::new(AdminService {
        registry,
        authority,
    })
}

/// Connects to a plane's admin socket.
pub async fn connect(path: &Path) -> Result<PlaneAdminClient<Channel>, tonic::transport::Error> {
    let path: PathBuf = path.to_path_buf();
    let channel = Endpoint::from_static("http://admin.local")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await?;
    Ok(PlaneAdminClient::new(channel))
}
