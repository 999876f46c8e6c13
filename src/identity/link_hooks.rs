//! What the live stream (link/session.rs) asks of the host's identity:
//! which TLS configuration to dial with, how the attempt went, renewal
//! requests at heartbeat time, and the plane's certificate and bundle
//! messages. An agent without credentials (tests that hand the link a fixed
//! TLS configuration) dials with that and never renews.

use std::sync::Arc;

use rustls::ClientConfig;

use super::credentials::Generation;
use super::{convert, IdentityError};
use crate::link::LinkCtx;
use crate::proto::v1 as pb;

impl LinkCtx {
    pub fn dial_tls(&self) -> (Arc<ClientConfig>, Generation) {
        match &self.credentials {
            Some(c) => c.client_config(),
            None => (Arc::clone(&self.tls), Generation::Current),
        }
    }

    pub fn dial_outcome(&self, gen: Generation, registered: bool) {
        if let Some(c) = &self.credentials {
            if registered {
                c.connected(gen);
            } else {
                c.failed(gen);
            }
        }
    }

    /// A RenewCertificate to send now, if renewal is due.
    pub fn renewal_request(&self) -> Option<pb::AgentMessage> {
        let csr = self.credentials.as_ref()?.renewal_csr()?;
        Some(convert::renew_request(csr))
    }

    pub fn cert_not_after_unix_ms(&self) -> i64 {
        self.credentials
            .as_ref()
            .map_or(0, |c| c.not_after_unix_ms())
    }

    pub fn on_certificate(&self, m: pb::CertificateIssued) {
        let Some(c) = &self.credentials else {
            tracing::warn!(
                "certificate from the plane ignored: this agent does not manage its certificate"
            );
            return;
        };
        match c.on_issued(convert::issued(m)) {
            Ok(()) => {}
            Err(e @ IdentityError::Refused(_)) => {
                tracing::warn!(error = %e, "certificate not renewed; asked again later")
            }
            Err(e) => {
                tracing::error!(error = %e, "renewed certificate not installed; the current one stays in use")
            }
        }
    }

    pub fn on_trust_bundle(&self, m: pb::TrustBundle) {
        let Some(c) = &self.credentials else {
            return;
        };
        if let Err(e) = c.on_bundle(&m.ca_bundle_pem, m.renew_now) {
            tracing::error!(error = %e, "CA bundle from the plane not stored; the current one stays in use");
        }
    }
}
