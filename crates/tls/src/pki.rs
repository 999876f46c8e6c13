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
    #[error("certificate signing request refused: {0}")]
    Csr(String),
    #[error("no certificate in the PEM text")]
    NoCertificate,
    #[error("CA bundle refused, nothing written: {0}")]
    BadBundle(String),
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
    /// Very short lifetimes (tests) are backdated by a tenth of it instead,
    /// so the renewal point stays inside the lifetime asked for.
    pub fn for_lifetime(lifetime: Duration) -> Self {
        let now = OffsetDateTime::now_utc();
        let back = Duration::from_secs(60).min(lifetime / 10);
        Validity {
            not_before: now - back,
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
        let params = ca_params(name, validity)?;
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

    /// Loads a CA from its PEM certificate and key. `cert` may be a bundle:
    /// the first certificate is the one that signs (the newest CA during a
    /// rotation), the others are only trusted.
    pub fn from_pem(cert: &str, key: &str) -> Result<Ca, PkiError> {
        let signing = KeyPair::from_pem(key)?;
        let first = first_cert_pem(cert)?;
        let issuer = Issuer::from_ca_cert_pem(&first, signing)?;
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
        self.sign(agent_params(host_uuid)?, validity)
    }

    /// The certificate this CA signs with (the first of its PEM), PEM.
    pub fn signing_cert_pem(&self) -> Result<String, PkiError> {
        first_cert_pem(&self.pem.cert)
    }

    /// SHA-256 of the signing certificate (DER), lowercase hex: what a host
    /// pins at enrollment.
    pub fn fingerprint(&self) -> Result<String, PkiError> {
        Ok(fingerprints(&self.pem.cert)?
            .into_iter()
            .next()
            .unwrap_or_default())
    }

    /// Signs an agent's CSR for `host_uuid`. Only the CSR's public key is
    /// taken: usages, lifetime and identity are the CA's decision, and a CSR
    /// naming any other identity (CN or URI SAN) is refused.
    pub fn sign_agent_csr(
        &self,
        csr_pem: &str,
        host_uuid: &uuid::Uuid,
        validity: Validity,
    ) -> Result<String, PkiError> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::Csr(format!("cannot parse or verify the CSR: {e}")))?;
        check_csr_identity(&csr.params, host_uuid)?;
        let mut params = agent_params(host_uuid)?;
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        Ok(cert.pem())
    }

    /// A successor CA, plus the successor's certificate cross-signed by this
    /// one: served in the plane's chain during the overlap, it lets hosts that
    /// still trust only this CA verify a server certificate from the new one.
    pub fn successor(&self, name: &str, validity: Validity) -> Result<(Ca, String), PkiError> {
        let key = KeyPair::generate()?;
        let params = ca_params(name, validity)?;
        let cert = params.self_signed(&key)?;
        let cross = params.signed_by(&key, &self.issuer)?;
        let pem = Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        };
        Ok((
            Ca {
                pem,
                issuer: Issuer::new(params, key),
            },
            cross.pem(),
        ))
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

fn ca_params(name: &str, validity: Validity) -> Result<CertificateParams, PkiError> {
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
    Ok(params)
}

/// An agent certificate's identity: the host UUID as CN and `urn:uuid:` SAN.
fn agent_params(host_uuid: &uuid::Uuid) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = dn(&host_uuid.to_string());
    let urn = format!("urn:uuid:{host_uuid}");
    let urn = rcgen::string::Ia5String::try_from(urn.as_str())
        .map_err(|e| PkiError::Subject(urn.clone(), e.to_string()))?;
    params.subject_alt_names.push(SanType::URI(urn));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    Ok(params)
}

/// A CSR for a fresh key pair whose identity is the host UUID; returns the
/// CSR and the private key, both PEM. Runs on the host: the key stays there.
pub fn agent_csr(host_uuid: &uuid::Uuid) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let csr = agent_params(host_uuid)?.serialize_request(&key)?;
    Ok((csr.pem()?, key.serialize_pem()))
}

/// Every name the CSR asks for must be the host UUID, and it must ask for it.
fn check_csr_identity(params: &CertificateParams, host: &uuid::Uuid) -> Result<(), PkiError> {
    let want = host.to_string();
    let mut named = false;
    for (ty, value) in params.distinguished_name.iter() {
        if *ty == DnType::CommonName {
            let cn = dn_text(value);
            if !cn.eq_ignore_ascii_case(&want) {
                return Err(PkiError::Csr(format!(
                    "it asks for identity {cn:?}, the token is for host {want}"
                )));
            }
            named = true;
        }
    }
    for san in &params.subject_alt_names {
        match san {
            SanType::URI(uri)
                if uri
                    .as_str()
                    .strip_prefix("urn:uuid:")
                    .is_some_and(|u| u.eq_ignore_ascii_case(&want)) =>
            {
                named = true
            }
            other => {
                return Err(PkiError::Csr(format!(
                    "it asks for name {other:?}, only urn:uuid:{want} is allowed"
                )))
            }
        }
    }
    if named {
        Ok(())
    } else {
        Err(PkiError::Csr(format!(
            "it does not name host {want} (CN or urn:uuid: SAN)"
        )))
    }
}

fn dn_text(v: &rcgen::DnValue) -> String {
    match v {
        rcgen::DnValue::Utf8String(s) => s.clone(),
        rcgen::DnValue::PrintableString(s) => s.as_str().to_string(),
        rcgen::DnValue::Ia5String(s) => s.as_str().to_string(),
        other => format!("{other:?}"),
    }
}

/// The first certificate of a PEM text, as PEM.
pub fn first_cert_pem(pem: &str) -> Result<String, PkiError> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or(PkiError::NoCertificate)?
        .map_err(|_| PkiError::NoCertificate)?;
    Ok(der_to_pem(der.as_ref()))
}

/// PEM text of one DER certificate.
pub fn der_to_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// SHA-256 fingerprints (lowercase hex) of every certificate in a PEM text,
/// in order.
pub fn fingerprints(pem: &str) -> Result<Vec<String>, PkiError> {
    use rustls_pki_types::pem::PemObject;
    use sha2::Digest;
    let mut out = Vec::new();
    for der in rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let der = der.map_err(|_| PkiError::NoCertificate)?;
        out.push(hex::encode(sha2::Sha256::digest(der.as_ref())));
    }
    if out.is_empty() {
        return Err(PkiError::NoCertificate);
    }
    Ok(out)
}

/// Checks a CA bundle before it replaces `current` (the bundle this host
/// trusts now): every PEM block is an X.509 certificate, each is a CA,
/// rustls takes each as a root, and at least one of them is in `current`.
/// The last rule is what keeps a host reachable: the plane that sent the
/// bundle was verified against `current`, and during a rotation the bundle
/// is (new, old), so a bundle without any current CA could only lock the
/// host out at its next connection.
pub fn check_ca_bundle(bundle_pem: &str, current_pem: &str) -> Result<(), PkiError> {
    use rustls_pki_types::pem::PemObject;
    let bad = |m: String| PkiError::BadBundle(m);
    let mut roots = rustls::RootCertStore::empty();
    let mut n = 0;
    for der in rustls_pki_types::CertificateDer::pem_slice_iter(bundle_pem.as_bytes()) {
        n += 1;
        let der = der.map_err(|e| bad(format!("certificate {n}: not PEM: {e:?}")))?;
        let (_, x509) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| bad(format!("certificate {n}: not an X.509 certificate: {e}")))?;
        let is_ca = x509
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|b| b.value.ca);
        if !is_ca {
            return Err(bad(format!(
                "certificate {n} ({}) is not a CA certificate",
                x509.subject()
            )));
        }
        roots
            .add(der.clone())
            .map_err(|e| bad(format!("certificate {n}: not usable as a root: {e}")))?;
    }
    if n == 0 {
        return Err(bad("no certificate in it".into()));
    }
    let new = fingerprints(bundle_pem)?;
    let now = fingerprints(current_pem).unwrap_or_default();
    if !new.iter().any(|f| now.contains(f)) {
        return Err(bad(
            "it shares no certificate with the CA bundle this host trusts now, so the host could not verify its plane with it"
                .into(),
        ));
    }
    Ok(())
}

/// A fingerprint as an operator may type it ("AB:CD:..", upper case) in the
/// form `fingerprints` returns.
pub fn normalize_fingerprint(text: &str) -> String {
    text.chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase()
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

/// Writes a file atomically: a fresh temporary file in the same directory
/// (O_CREAT|O_EXCL|O_NOFOLLOW, its final mode from the start, so neither a
/// leftover file with a looser mode nor a planted symlink is ever written
/// through), fsync, rename over `path`, fsync of the directory so the
/// rename survives a crash. On failure the temporary file is removed and
/// `path` is as it was.
pub fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let (tmp, mut f) = create_unique(path, mode).map_err(io)?;
    let written = f
        .write_all(data)
        .and_then(|()| f.sync_all())
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io(e));
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

/// `<path>.<pid>.<n>.tmp`, created new; a name already taken (a leftover,
/// a planted link) is skipped, never opened.
fn create_unique(path: &Path, mode: u32) -> std::io::Result<(PathBuf, fs::File)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut last = None;
    for _ in 0..16 {
        // Appended, not replacing the extension: agent.pem and agent.key
        // must not share a temporary name.
        let mut tmp = path.as_os_str().to_owned();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        tmp.push(format!(".{}.{n}.tmp", std::process::id()));
        let tmp = PathBuf::from(tmp);
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(mode)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free temporary name")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca(name: &str) -> String {
        Ca::generate(name, Validity::for_lifetime(Duration::from_secs(3600)))
            .unwrap()
            .signing_cert_pem()
            .unwrap()
    }

    #[test]
    fn a_bundle_is_refused_with_its_reason_unless_whole_and_continuous() {
        let current = ca("csat-current");
        let next = ca("csat-next");
        check_ca_bundle(&format!("{next}{current}"), &current).unwrap();
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAAAAAA\n-----END CERTIFICATE-----\n";
        for (bundle, says) in [
            (
                format!("{current}{garbage}"),
                "certificate 2: not an X.509 certificate",
            ),
            (next.clone(), "shares no certificate"),
            (String::new(), "no certificate"),
        ] {
            let e = check_ca_bundle(&bundle, &current).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains("nothing written"), "{e}");
        }
    }
}
