//! The plane's Enrollment service (enroll.proto): hands out the public CA
//! bundle, and signs a host's CSR against a one-time token.
//!
//! Owns the mapping of identity errors to gRPC statuses, with messages an
//! operator can act on. Token rules live in tokens.rs, signing in
//! authority.rs. It serves hosts without a certificate, so it reveals
//! nothing but the public bundle until a valid token is shown.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::authority::{Authority, IdentityError};
use crate::tokens::TokenError;
use csagent_proto::v1 as pb;
use csagent_proto::v1::enrollment_server::{Enrollment, EnrollmentServer};

pub struct EnrollService {
    pub authority: Arc<Authority>,
}

pub fn server(authority: Arc<Authority>) -> EnrollmentServer<EnrollService> {
    EnrollmentServer::new(EnrollService { authority })
}

#[tonic::async_trait]
impl Enrollment for EnrollService {
    async fn ca_bundle(
        &self,
        _: Request<pb::CaBundleRequest>,
    ) -> Result<Response<pb::CaBundleResponse>, Status> {
        Ok(Response::new(pb::CaBundleResponse {
            ca_bundle_pem: self.authority.bundle_pem(),
        }))
    }

    async fn enroll(
        &self,
        req: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let peer = req.remote_addr();
        let req = req.into_inner();
        let host = uuid::Uuid::parse_str(&req.host_uuid).map_err(|_| {
            Status::invalid_argument(format!("host_uuid {:?} is not a UUID", req.host_uuid))
        })?;
        let authority = Arc::clone(&self.authority);
        // Signing and the token file write block briefly; keep them off the
        // async workers.
        let outcome =
            tokio::task::spawn_blocking(move || authority.enroll(&req.token, &req.csr_pem, &host))
                .await
                .map_err(|e| Status::internal(format!("enrollment task failed: {e}")))?;
        match outcome {
            Ok((cert, not_after)) => {
                tracing::info!(host = %host, ?peer, "host enrolled");
                Ok(Response::new(pb::EnrollResponse {
                    cert_chain_pem: cert,
                    ca_bundle_pem: self.authority.bundle_pem(),
                    not_after_unix_ms: not_after,
                }))
            }
            Err(e) => {
                tracing::warn!(host = %host, ?peer, error = %e, "enrollment refused");
                Err(status(e))
            }
        }
    }
}

/// Refusals say why; only the plane's own failures are INTERNAL.
pub fn status(e: IdentityError) -> Status {
    match e {
        IdentityError::Token(TokenError::State(_)) | IdentityError::State(_) => {
            Status::internal(e.to_string())
        }
        IdentityError::Token(_) | IdentityError::Revoked(_) => {
            Status::permission_denied(e.to_string())
        }
        IdentityError::Pki(csagent_tls::pki::PkiError::Csr(_)) => {
            Status::invalid_argument(e.to_string())
        }
        _ => Status::internal(e.to_string()),
    }
}
