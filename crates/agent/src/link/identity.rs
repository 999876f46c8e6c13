//! The wire side of the host's identity on the live stream (link/session.rs):
//! renewal requests at heartbeat time, the certificate's expiry and clock
//! finding in heartbeats, and the plane's certificate and bundle messages,
//! handed to the credentials identity/ publishes (`DialTls`). An agent
//! without credentials (tests that hand the link a fixed TLS configuration)
//! never renews.

use super::LinkCtx;
use crate::identity::IdentityError;
use csagent_proto::v1 as pb;

/// What to tell the plane when the certificate (valid from `not_before`,
/// Unix s) is not valid yet at `now`: the host clock is behind.
fn not_yet_valid(not_before: i64, now: i64) -> Option<String> {
    let behind = not_before - now;
    (behind > 0).then(|| {
        format!(
            "certificate not valid for another {behind} s by this host's clock: the clock is behind; synchronise it (chrony / systemd-timesyncd)"
        )
    })
}

impl LinkCtx {
    /// A RenewCertificate to send now, if renewal is due.
    pub fn renewal_request(&self) -> Option<pb::AgentMessage> {
        let csr = self.tls.credentials()?.renewal_csr()?;
        Some(crate::convert::identity::renew_request(csr))
    }

    pub fn cert_not_after_unix_ms(&self) -> i64 {
        self.tls.credentials().map_or(0, |c| c.not_after_unix_ms())
    }

    /// The host's health for a heartbeat, with a clock finding when the
    /// certificate in use is not valid yet by this host's clock: the clock
    /// is behind, and the next connection would fail. Said in every
    /// heartbeat, like the skew measured against the plane.
    pub fn health_with_certificate(&self, mut health: pb::HostHealth) -> pb::HostHealth {
        let Some(c) = self.tls.credentials() else {
            return health;
        };
        let now = csagent_core::time::unix_ms() / 1000;
        if let Some(message) = not_yet_valid(c.not_before_unix_s(), now) {
            health.reasons.push(message.clone());
            health.findings.push(pb::HealthFinding {
                source: "clock".into(),
                state: pb::HealthState::Warning.into(),
                message,
            });
            if health.state < i32::from(pb::HealthState::Warning) {
                health.state = pb::HealthState::Warning.into();
            }
        }
        health
    }

    pub fn on_certificate(&self, m: pb::CertificateIssued) {
        let Some(c) = self.tls.credentials() else {
            tracing::warn!(
                "certificate from the plane ignored: this agent does not manage its certificate"
            );
            return;
        };
        match c.on_issued(crate::convert::identity::issued(m)) {
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
        let Some(c) = self.tls.credentials() else {
            return;
        };
        if let Err(e) = c.on_bundle(&m.ca_bundle_pem, m.renew_now) {
            tracing::error!(error = %e, "CA bundle from the plane not stored; the current one stays in use");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_certificate_from_the_future_means_the_clock_is_behind() {
        let m = super::not_yet_valid(1_000_090, 1_000_000).unwrap();
        assert!(m.contains("90 s") && m.contains("clock is behind"), "{m}");
        assert!(super::not_yet_valid(1_000_000, 1_000_000).is_none());
        assert!(super::not_yet_valid(999_000, 1_000_000).is_none());
    }
}
