//! The operator's side of host identity on the admin socket: tokens,
//! revocation, CA rotation, and the revoked mark in the host list.
//!
//! Owns validating the operator's input and choosing statuses; the rules
//! themselves are authority.rs, tokens.rs and revocation.rs.

use std::sync::Arc;
use std::time::Duration;

use tonic::Status;

use crate::authority::Authority;
use crate::registry::Registry;
use crate::tokens::DEFAULT_TTL;
use csagent_proto::v1 as pb;

pub fn enabled(a: &Option<Arc<Authority>>) -> Result<&Arc<Authority>, Status> {
    a.as_ref().ok_or_else(|| {
        Status::failed_precondition(
            "this plane does not manage host identity: start it with its CA key (ca.key) in --tls-dir",
        )
    })
}

fn host_uuid(text: &str) -> Result<uuid::Uuid, Status> {
    uuid::Uuid::parse_str(text)
        .map_err(|_| Status::invalid_argument(format!("host_uuid {text:?} is not a UUID")))
}

pub fn create_token(
    a: &Authority,
    req: pb::CreateTokenRequest,
) -> Result<pb::CreateTokenResponse, Status> {
    let host = host_uuid(&req.host_uuid)?;
    if a.revoked.is_revoked(&host.to_string()) {
        return Err(Status::failed_precondition(format!(
            "host {host} is revoked; enroll the machine under a new host UUID"
        )));
    }
    let ttl = match req.ttl_secs {
        0 => DEFAULT_TTL,
        s => Duration::from_secs(s),
    };
    let issued = a
        .tokens
        .create(&host, ttl)
        .map_err(|e| Status::internal(e.to_string()))?;
    let ca_fingerprint = a
        .fingerprint()
        .map_err(|e| Status::internal(e.to_string()))?;
    tracing::info!(host = %host, expires_unix_ms = issued.expires_unix_ms, "enrollment token created");
    Ok(pb::CreateTokenResponse {
        token: issued.token,
        expires_unix_ms: issued.expires_unix_ms,
        ca_fingerprint,
    })
}

/// Persists the revocation, then closes the live stream: a reconnect in
/// between is already refused.
pub fn revoke(
    a: &Authority,
    registry: &Registry,
    req: pb::RevokeHostRequest,
) -> Result<pb::RevokeHostResponse, Status> {
    let host = host_uuid(&req.host_uuid)?;
    let newly_revoked = a
        .revoked
        .revoke(&host)
        .map_err(|e| Status::internal(e.to_string()))?;
    let disconnected = registry.close(
        &host.to_string(),
        Status::permission_denied(format!("host {host} was revoked by the plane")),
    );
    tracing::warn!(host = %host, disconnected, "host revoked");
    Ok(pb::RevokeHostResponse {
        newly_revoked,
        disconnected,
    })
}

pub async fn rotate_ca(
    a: &Arc<Authority>,
    registry: &Registry,
) -> Result<pb::RotateCaResponse, Status> {
    let auth = Arc::clone(a);
    let ca_fingerprint = tokio::task::spawn_blocking(move || auth.rotate())
        .await
        .map_err(|e| Status::internal(format!("CA rotation task failed: {e}")))?
        .map_err(|e| Status::internal(e.to_string()))?;
    let notified_hosts = registry.broadcast(&crate::identity_link::bundle_message(a, true));
    Ok(pb::RotateCaResponse {
        ca_fingerprint,
        notified_hosts,
    })
}

/// Marks revoked hosts, and lists revoked ones that never connected here.
pub fn mark_revoked(a: &Authority, hosts: &mut Vec<pb::HostSummary>) {
    let revoked = a.revoked.list();
    for h in hosts.iter_mut() {
        h.revoked = revoked.contains(&h.host_uuid);
    }
    for r in revoked {
        if !hosts.iter().any(|h| h.host_uuid == r) {
            hosts.push(pb::HostSummary {
                host_uuid: r,
                revoked: true,
                ..Default::default()
            });
        }
    }
}
