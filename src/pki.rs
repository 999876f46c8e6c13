//! Certificate authority and certificates for the link's mutual TLS.
//!
//! Used by `csagent-mgmt pki init|issue` so a newcomer sets up mTLS in one
//! command, and by the tests, which need the same certificates (and broken
//! ones: expired, from a foreign CA, for the wrong name). It owns key and
//! certificate generation only; loading PEM files for a TLS session is tls.rs.
//!
//! Identity is the host UUID, never an IP address: an agent certificate
//! carries it as CN and as a `urn:uuid:` URI SAN, so a host keeps working when
//! its address changes.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid subject {0:?}: {1}")]
    Subject(String, String),
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// Validity window of a certificate to issue.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// Valid from a minute ago (tolerates small clock skew) for `lifetime`.
    pub fn for_lifetime(lifetime: Duration) -> Self {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - time::Duration::minutes(1),
            not_after: now + lifetime,
        }
    }
}

/// Default lifetimes. Agent and server certificates are short-lived on
/// purpose (issue 8 adds rotation); the CA lives long.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
pub const LEAF_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// A loaded certificate authority able to sign leaves.
pub struct Ca {
    pub pem: Pem,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// Makes a new self-signed CA.
    pub fn generate(name: &str, validity: Validity) -> Result<Ca, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let cert = params.self_signed(&key)?;
        let pem = Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        };
        Ok(Ca {
            pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its PEM certificate and key.
    pub fn from_pem(cert: &str, key: &str) -> Result<Ca, PkiError> {
        let signing = KeyPair::from_pem(key)?;
        let issuer = Issuer::from_ca_cert_pem(cert, signing)?;
        let pem = Pem {
            cert: cert.to_string(),
            key: key.to_string(),
        };
        Ok(Ca { pem, issuer })
    }

    /// Issues a server certificate for the management plane, valid for the
    /// given DNS names and IP addresses.
    pub fn issue_server(&self, names: &[String], validity: Validity) -> Result<Pem, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        for name in names {
            params.subject_alt_names.push(san_for(name)?);
        }
        let cn = names.first().map(String::as_str).unwrap_or("csagent-mgmt");
        params.distinguished_name = dn(cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params, validity)
    }

    /// Issues an agent (client) certificate whose identity is the host UUID.
    pub fn issue_agent(&self, host_uuid: &uuid::Uuid, validity: Validity) -> Result<Pem, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(&host_uuid.to_string());
        let urn = format!("urn:uuid:{host_uuid}");
        let urn = rcgen::string::Ia5String::try_from(urn.as_str())
            .map_err(|e| PkiError::Subject(urn.clone(), e.to_string()))?;
        params.subject_alt_names.push(SanType::URI(urn));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, validity)
    }

    fn sign(&self, mut params: CertificateParams, validity: Validity) -> Result<Pem, PkiError> {
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, "csagent");
    dn
}

fn san_for(name: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = name.parse::<std::net::IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let dns = rcgen::string::Ia5String::try_from(name)
        .map_err(|e| PkiError::Subject(name.to_string(), e.to_string()))?;
    Ok(SanType::DnsName(dns))
}

/// Writes a PEM pair as `<stem>.pem` (0644) and `<stem>.key` (0600), creating
/// the directory. The key is created with its final mode, never readable by
/// others even for an instant.
pub fn write_pair(dir: &Path, stem: &str, pem: &Pem) -> Result<(PathBuf, PathBuf), PkiError> {
    fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let cert_path = dir.join(format!("{stem}.pem"));
    let key_path = dir.join(format!("{stem}.key"));
    write_file(&cert_path, pem.cert.as_bytes(), 0o644)?;
    write_file(&key_path, pem.key.as_bytes(), 0o600)?;
    Ok((cert_path, key_path))
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}
