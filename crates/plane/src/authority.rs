//! The plane's certificate authority at run time: signs enrollment and
//! renewal CSRs, rotates its CA, and owns the TLS configuration the accept
//! loop uses (swapped in place when the CA rotates, so connections already
//! up are untouched and new ones see the new chain).
//!
//! Files, all in the plane's TLS directory (from `csagent-mgmt pki init`):
//! ca.pem is the CA bundle, the signing CA first and any older CA still
//! trusted after it; ca.key is the signing CA's key; server.pem is the
//! plane's certificate, followed during a rotation's overlap by the new CA
//! cross-signed by the old one, so hosts that do not yet have the new bundle
//! still verify the plane. Tokens and revocations live in the state
//! directory. It never talks to agents itself.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;

use crate::revocation::Revocations;
use crate::statefile::StateError;
use crate::tokens::{TokenError, TokenStore};
use csagent_tls::pki::{self as pki, Ca, PkiError, Validity};
use csagent_tls::{self as tls, TlsError, TlsFiles};

/// The TLS configuration new connections are accepted with; replaced as a
/// whole when the CA rotates.
pub type ServerTls = Arc<RwLock<Arc<ServerConfig>>>;

/// Default lifetime of agent certificates: short, so renewal is routine.
pub const DEFAULT_LEAF_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{path}: {reason}")]
    Files { path: PathBuf, reason: String },
    #[error("host {0} is revoked; its identity is refused")]
    Revoked(String),
}

/// Where the plane's identity material lives and how long it issues for.
#[derive(Clone, Debug)]
pub struct IdentityConfig {
    /// ca.pem, ca.key, server.pem, server.key.
    pub tls_dir: PathBuf,
    /// tokens.json and revoked.json.
    pub state_dir: PathBuf,
    /// Lifetime of the agent certificates it signs.
    pub leaf_lifetime: Duration,
}

pub struct Authority {
    cfg: IdentityConfig,
    ca: RwLock<Ca>,
    server: ServerTls,
    pub tokens: TokenStore,
    pub revoked: Revocations,
}

impl Authority {
    pub fn open(cfg: IdentityConfig) -> Result<Authority, IdentityError> {
        recover_rotation(&cfg.tls_dir)?;
        let ca = load_ca(&cfg.tls_dir)?;
        let server = tls::server_config_enrolling(&files(&cfg.tls_dir))?;
        Ok(Authority {
            tokens: TokenStore::open(cfg.state_dir.join("tokens.json"))?,
            revoked: Revocations::open(cfg.state_dir.join("revoked.json"))?,
            ca: RwLock::new(ca),
            server: Arc::new(RwLock::new(server)),
            cfg,
        })
    }

    fn ca(&self) -> std::sync::RwLockReadGuard<'_, Ca> {
        // Replaced whole under the write lock; never left half-updated.
        csagent_core::sync::read(&self.ca)
    }

    pub fn server_tls(&self) -> ServerTls {
        Arc::clone(&self.server)
    }

    /// Every trusted CA, PEM, the signing one first.
    pub fn bundle_pem(&self) -> String {
        self.ca().pem.cert.clone()
    }

    /// The signing CA's fingerprint, what hosts pin.
    pub fn fingerprint(&self) -> Result<String, IdentityError> {
        Ok(self.ca().fingerprint()?)
    }

    /// Signs an agent CSR for `host` with the current CA; refuses a revoked
    /// host and a CSR naming anyone else. Returns the certificate PEM and
    /// its expiry (Unix ms).
    pub fn sign(&self, csr_pem: &str, host: &uuid::Uuid) -> Result<(String, i64), IdentityError> {
        if self.revoked.is_revoked(&host.to_string()) {
            return Err(IdentityError::Revoked(host.to_string()));
        }
        let validity = Validity::for_lifetime(self.cfg.leaf_lifetime);
        let cert = self.ca().sign_agent_csr(csr_pem, host, validity)?;
        let not_after = validity.not_after.unix_timestamp() * 1000;
        Ok((cert, not_after))
    }

    /// Enrollment: token checked and consumed atomically with the signing.
    pub fn enroll(
        &self,
        token: &str,
        csr_pem: &str,
        host: &uuid::Uuid,
    ) -> Result<(String, i64), IdentityError> {
        self.tokens
            .consume(token, host, || self.sign(csr_pem, host))
    }

    /// A new CA signs from now on; the old ones stay trusted (the overlap).
    /// The plane's server certificate is reissued by the new CA and served
    /// with the new CA cross-signed by the old, so hosts that have not yet
    /// received the new bundle keep verifying the plane. Returns the new
    /// fingerprint.
    pub fn rotate(&self) -> Result<String, IdentityError> {
        let mut ca = csagent_core::sync::write(&self.ca);
        let name = format!(
            "csagent CA {}",
            time::OffsetDateTime::now_utc().unix_timestamp()
        );
        let (next, cross) = ca.successor(&name, Validity::for_lifetime(pki::CA_LIFETIME))?;
        let bundle = format!("{}{}", next.pem.cert, ca.pem.cert);
        let dir = &self.cfg.tls_dir;
        let server_names = server_names(&dir.join("server.pem"))?;
        let server = next.issue_server(
            &server_names,
            Validity::for_lifetime(server_lifetime(&dir.join("server.pem"))),
        )?;
        let chain = format!("{}{}", server.cert, cross);
        stage_rotation(
            dir,
            [
                (next.pem.key.as_bytes(), 0o600),
                (bundle.as_bytes(), 0o644),
                (server.key.as_bytes(), 0o600),
                (chain.as_bytes(), 0o644),
            ],
        )?;
        finish_rotation(dir)?;
        let config = tls::server_config_enrolling(&files(dir))?;
        *csagent_core::sync::write(&self.server) = config;
        *ca = Ca::from_pem(&bundle, &next.pem.key)?;
        let fp = ca.fingerprint()?;
        tracing::info!(fingerprint = %fp, "CA rotated; old CA still trusted during the overlap");
        Ok(fp)
    }
}

/// The files a rotation replaces, in `stage_rotation`'s order.
const ROTATED: [&str; 4] = ["ca.key", "ca.pem", "server.key", "server.pem"];
/// Written once every new file is on disk: from then on the rotation is
/// done, whatever happens (a restart finishes it).
const COMMIT: &str = "rotation.commit";

fn next_of(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.next"))
}

/// Crash-atomic rotation, first half: every new file beside the old one as
/// `NAME.next` (each written whole and synced), then the commit marker. A
/// crash before the marker leaves the old set in force; after it, the new.
fn stage_rotation(dir: &Path, contents: [(&[u8], u32); 4]) -> Result<(), IdentityError> {
    for (name, (bytes, mode)) in ROTATED.iter().zip(contents) {
        pki::write_file(&next_of(dir, name), bytes, mode)?;
    }
    pki::write_file(
        &dir.join(COMMIT),
        b"rotation staged; finished at the next start\n",
        0o600,
    )?;
    Ok(())
}

/// Second half: puts every staged file in place, then drops the marker.
/// Idempotent: a file already moved is skipped, so a restart can redo it.
fn finish_rotation(dir: &Path) -> Result<(), IdentityError> {
    for name in ROTATED {
        let next = next_of(dir, name);
        if next.exists() {
            rename(&next, &dir.join(name))?;
        }
    }
    remove(&dir.join(COMMIT))?;
    sync_dir(dir)
}

/// At start: a committed rotation is finished, an uncommitted one undone.
fn recover_rotation(dir: &Path) -> Result<(), IdentityError> {
    if dir.join(COMMIT).exists() {
        tracing::warn!(dir = %dir.display(), "finishing a CA rotation a crash interrupted");
        return finish_rotation(dir);
    }
    for name in ROTATED {
        let next = next_of(dir, name);
        if next.exists() {
            tracing::warn!(file = %next.display(), "removing a CA rotation file a crash left before its commit");
            remove(&next)?;
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), IdentityError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(files_err(dir))
}

fn remove(path: &Path) -> Result<(), IdentityError> {
    std::fs::remove_file(path).map_err(files_err(path))
}

/// An I/O failure on one of the plane's identity files.
fn files_err(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |e| IdentityError::Files {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn files(dir: &Path) -> TlsFiles {
    TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    }
}

fn load_ca(dir: &Path) -> Result<Ca, IdentityError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|e| IdentityError::Files {
            reason: format!(
                "{e}; the plane signs host certificates with its CA (csagent-mgmt pki init)"
            ),
            path,
        })
    };
    Ok(Ca::from_pem(&read("ca.pem")?, &read("ca.key")?)?)
}

fn rename(from: &Path, to: &Path) -> Result<(), IdentityError> {
    std::fs::rename(from, to).map_err(files_err(to))
}

/// DNS names and IPs of the current server certificate, so a reissued one
/// answers to the same names.
fn server_names(path: &Path) -> Result<Vec<String>, IdentityError> {
    use x509_parser::extensions::GeneralName;
    let bad = |reason: String| IdentityError::Files {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let first = pki::first_cert_pem(&text)?;
    let der = pem_der(&first).ok_or_else(|| bad("no certificate".into()))?;
    let (_, x509) = x509_parser::parse_x509_certificate(&der).map_err(|e| bad(e.to_string()))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push(d.to_string()),
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => names.push(
                        std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).unwrap_or_default())
                            .to_string(),
                    ),
                    16 => names.push(
                        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).unwrap_or_default())
                            .to_string(),
                    ),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    if names.is_empty() {
        return Err(bad("the server certificate names no DNS name or IP".into()));
    }
    Ok(names)
}

/// The current server certificate's lifetime, kept for its successor.
fn server_lifetime(path: &Path) -> Duration {
    tls::cert_info(path)
        .ok()
        .and_then(|i| u64::try_from(i.not_after - i.not_before).ok())
        .map(Duration::from_secs)
        .unwrap_or(pki::LEAF_LIFETIME)
}

fn pem_der(pem: &str) -> Option<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()?
        .ok()
        .map(|d| d.as_ref().to_vec())
}
