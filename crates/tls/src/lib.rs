//! TLS configuration for both ends of the link, and peer identity.
//!
//! Owns the rustls policy: TLS 1.3 only, ALPN h2, mutual authentication
//! against one configured CA bundle, ring as the crypto provider. The agent
//! verifies the plane's certificate against the name it dialled; the plane
//! requires a client certificate and reads the host identity from it. Nothing
//! here opens sockets. `pki` makes the CA and certificates the plane issues
//! and the tests use.

pub mod pki;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {reason}")]
    Read {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "{path}: private key is readable by group or others (mode {mode:o}); run: chmod 600 {path}"
    )]
    LooseKey { path: PathBuf, mode: u32 },
    #[error("{path}: no certificate found in the file")]
    NoCertificate { path: PathBuf },
    #[error("invalid TLS configuration: {0}")]
    Config(String),
}

/// Paths of the PEM files one end of the link needs.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// CA bundle the peer's certificate must chain to.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Read {
            what,
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Reads a private key, refusing one that others can read: a leaked host key
/// lets anyone impersonate the host to the plane.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let meta = std::fs::metadata(path).map_err(|e| TlsError::Read {
        what: "private key",
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TlsError::LooseKey {
            path: path.to_path_buf(),
            mode,
        });
    }
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Read {
        what: "private key",
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in read_certs("CA bundle", path)? {
        store
            .add(cert)
            .map_err(|e| TlsError::Config(format!("CA bundle {}: {e}", path.display())))?;
    }
    Ok(Arc::new(store))
}

/// Client side (the agent): TLS 1.3 only, presents its certificate, verifies
/// the plane against the CA bundle and the dialled name.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = roots(&files.ca)?;
    let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(
            read_certs("certificate", &files.cert)?,
            read_key(&files.key)?,
        )
        .map_err(|e| TlsError::Config(format!("{}: {e}", files.cert.display())))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// Server side (the plane): TLS 1.3 only, a client certificate chaining to
/// the CA bundle is required.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with(files, false)
}

/// Server side for a plane that also enrolls hosts: a client may come
/// without a certificate (it can reach only the Enrollment service; AgentLink
/// refuses a stream without a verified identity), but a certificate it does
/// present must chain to the CA bundle.
pub fn server_config_enrolling(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with(files, true)
}

fn server_config_with(
    files: &TlsFiles,
    anonymous_allowed: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    let roots = roots(&files.ca)?;
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots, provider());
    if anonymous_allowed {
        builder = builder.allow_unauthenticated();
    }
    let verifier = builder
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            read_certs("certificate", &files.cert)?,
            read_key(&files.key)?,
        )
        .map_err(|e| TlsError::Config(format!("{}: {e}", files.cert.display())))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// Client side without a client certificate, trusting only `roots` (the
/// CA an operator pinned): what enrollment uses before the host has a
/// certificate.
pub fn anonymous_client_config(
    roots: Vec<CertificateDer<'static>>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in roots {
        store
            .add(cert)
            .map_err(|e| TlsError::Config(format!("pinned CA: {e}")))?;
    }
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(store)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// The host identity a verified client certificate carries: the `urn:uuid:`
/// URI SAN if present, else the subject CN.
pub fn peer_identity(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                if let Some(id) = uri.strip_prefix("urn:uuid:") {
                    return Some(id.to_ascii_lowercase());
                }
            }
        }
    }
    let cn = x509
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_ascii_lowercase);
    cn
}

/// What `csagent check` needs to know of a certificate file.
pub struct CertInfo {
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// The host identity it carries (see `peer_identity`).
    pub identity: Option<String>,
}

/// Validity and identity of the first certificate in a PEM file.
pub fn cert_info(path: &Path) -> Result<CertInfo, TlsError> {
    let certs = read_certs("certificate", path)?;
    let (_, x509) = x509_parser::parse_x509_certificate(certs[0].as_ref())
        .map_err(|e| TlsError::Config(format!("{}: {e}", path.display())))?;
    Ok(CertInfo {
        not_before: x509.validity().not_before.timestamp(),
        not_after: x509.validity().not_after.timestamp(),
        identity: peer_identity(&certs[0]),
    })
}
