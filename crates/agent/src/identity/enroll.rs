//! Enrollment on the agent side: from a one-time token and the plane's
//! pinned CA fingerprint to a certificate, key and CA bundle on disk.
//!
//! Two connections to the plane's agent port. The first fetches the public
//! CA bundle without verifying the plane (the host has no CA yet) and keeps
//! only the CA whose SHA-256 matches the pin; the second is verified against
//! that CA alone and carries the token and a CSR. The key is made here and
//! never leaves the host. Files are written only after the plane answered
//! with a certificate for this host matching the key.

use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use super::{pin, IdentityError};
use crate::dial::{dial, DialOptions};
use crate::endpoints::Endpoint;
use csagent_proto::v1 as pb;
use csagent_proto::v1::enrollment_client::EnrollmentClient;
use csagent_tls::{self as tls, TlsFiles};

pub struct EnrollParams<'a> {
    /// "host:port" of the plane's agent port.
    pub plane: &'a str,
    pub default_port: u16,
    pub token: &'a str,
    /// SHA-256 of the plane's CA certificate, hex (colons allowed).
    pub ca_fingerprint: &'a str,
    pub host: uuid::Uuid,
    /// Where the CA bundle, certificate and key go.
    pub files: &'a TlsFiles,
    pub connect_timeout: Duration,
}

pub struct Enrolled {
    pub not_after_unix_ms: i64,
}

pub async fn enroll(p: EnrollParams<'_>) -> Result<Enrolled, IdentityError> {
    let pinned = csagent_tls::pki::normalize_fingerprint(p.ca_fingerprint);
    if pinned.is_empty() {
        return Err(IdentityError::NoPin);
    }
    let failed = |reason: String| IdentityError::Enroll {
        plane: p.plane.to_string(),
        reason,
    };
    let ep = Endpoint::parse(p.plane, p.default_port).map_err(failed)?;
    let opts = DialOptions {
        connect_timeout: p.connect_timeout,
        keepalive_interval: Duration::from_secs(10),
        keepalive_timeout: Duration::from_secs(10),
    };
    let bundle = {
        let channel = dial(&ep, pin::bundle_fetch_config()?, &opts)
            .await
            .map_err(|e| failed(e.to_string()))?;
        EnrollmentClient::new(channel)
            .ca_bundle(pb::CaBundleRequest {})
            .await
            .map_err(|s| failed(status_text(&s)))?
            .into_inner()
            .ca_bundle_pem
    };
    let anchor = pinned_cert(&bundle, &pinned, p.plane)?;
    let (csr, key) = csagent_tls::pki::agent_csr(&p.host)?;
    let channel = dial(&ep, tls::anonymous_client_config(vec![anchor])?, &opts)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let answer = EnrollmentClient::new(channel)
        .enroll(pb::EnrollRequest {
            host_uuid: p.host.to_string(),
            token: p.token.trim().to_string(),
            csr_pem: csr,
        })
        .await
        .map_err(|s| failed(status_text(&s)))?
        .into_inner();
    super::credentials::check_identity(&answer.cert_chain_pem, &p.host)?;
    install(p.files, &key, &answer)?;
    Ok(Enrolled {
        not_after_unix_ms: answer.not_after_unix_ms,
    })
}

/// The certificate of `bundle` whose fingerprint is the pin.
fn pinned_cert(
    bundle: &str,
    pinned: &str,
    plane: &str,
) -> Result<CertificateDer<'static>, IdentityError> {
    let offered = csagent_tls::pki::fingerprints(bundle)?;
    let idx =
        offered
            .iter()
            .position(|f| f == pinned)
            .ok_or_else(|| IdentityError::PinMismatch {
                plane: plane.to_string(),
                pinned: pinned.to_string(),
                offered: offered.join(", "),
            })?;
    CertificateDer::pem_slice_iter(bundle.as_bytes())
        .nth(idx)
        .and_then(Result::ok)
        .ok_or(IdentityError::Pki(
            csagent_tls::pki::PkiError::NoCertificate,
        ))
}

/// Key first (0600), then certificate and bundle, each atomically; then the
/// whole is loaded as the link would, so a mismatch fails here, not later.
fn install(files: &TlsFiles, key: &str, answer: &pb::EnrollResponse) -> Result<(), IdentityError> {
    for path in [&files.ca, &files.cert, &files.key] {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| IdentityError::Files {
                path: dir.to_path_buf(),
                reason: e.to_string(),
            })?;
        }
    }
    csagent_tls::pki::write_file(&files.key, key.as_bytes(), 0o600)?;
    csagent_tls::pki::write_file(&files.cert, answer.cert_chain_pem.as_bytes(), 0o644)?;
    csagent_tls::pki::write_file(&files.ca, answer.ca_bundle_pem.as_bytes(), 0o644)?;
    tls::client_config(files)?;
    Ok(())
}

fn status_text(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// Enrollment at start (management.enroll_token_file): only when the host
/// has no certificate yet, against the first configured endpoint.
pub async fn at_start(
    m: &crate::config::ManagementSection,
    host: &uuid::Uuid,
    files: &TlsFiles,
) -> Result<(), IdentityError> {
    if m.enroll_token_file.as_os_str().is_empty() || files.cert.exists() {
        return Ok(());
    }
    let token =
        std::fs::read_to_string(&m.enroll_token_file).map_err(|e| IdentityError::Files {
            path: m.enroll_token_file.clone(),
            reason: e.to_string(),
        })?;
    let plane = m.hosts.first().map(String::as_str).unwrap_or_default();
    tracing::info!(plane, host = %host, "no certificate yet: enrolling with the configured token");
    let done = enroll(EnrollParams {
        plane,
        default_port: m.port,
        token: &token,
        ca_fingerprint: &m.ca_fingerprint,
        host: *host,
        files,
        connect_timeout: m.connect_timeout(),
    })
    .await?;
    tracing::info!(host = %host, not_after_unix_ms = done.not_after_unix_ms, "enrolled");
    Ok(())
}
