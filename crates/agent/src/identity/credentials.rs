//! The certificate the agent dials with, its renewal, and the switch to a
//! renewed one.
//!
//! Files: the configured ca_file, cert_file and key_file hold the pair in
//! use. A renewed pair is written next to them as `<cert_file>.next` and
//! `<key_file>.next` (each atomically, key first) and tried on the next
//! connection; only when that connection registered is it promoted by
//! renaming (key, then certificate). A crash part-way is finished or undone
//! at the next start: a lone `.next` certificate means the key was already
//! promoted, a lone `.next` key means the pair was never completed. If the
//! renewed pair fails to connect, the old one is used for the next attempt;
//! if the old one then connects, the renewed pair is dropped and renewal
//! asked for again. The current stream is never touched by any of this.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::ClientConfig;

use super::IdentityError;
use csagent_core::time::unix_ms;
use csagent_tls::{self as tls, TlsFiles};

/// A renewal asked for and not answered is asked again after this long.
const RENEW_RETRY: Duration = Duration::from_secs(30);

/// Which pair a connection was dialled with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generation {
    Current,
    Next,
}

/// A loaded pair: its TLS configuration and validity (Unix s).
struct Pair {
    config: Arc<ClientConfig>,
    not_before: i64,
    not_after: i64,
}

struct State {
    current: Pair,
    next: Option<Pair>,
    /// Dial the next pair on the next attempt.
    try_next: bool,
    /// The next pair failed a connection at least once.
    next_failed: bool,
    /// Key of the CSR in flight, PEM, and when it was asked for.
    pending: Option<(String, Instant)>,
    /// Renew at the next opportunity regardless of age (CA rotation).
    forced: bool,
}

pub struct Credentials {
    files: TlsFiles,
    host: uuid::Uuid,
    renew_at: f64,
    state: Mutex<State>,
}

/// A certificate the plane sent in answer to a renewal.
pub struct IssuedCert {
    pub chain_pem: String,
    pub ca_bundle_pem: String,
    /// Why the plane refused; empty on success.
    pub refused: String,
}

pub fn next_path(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".next");
    PathBuf::from(s)
}

fn files_err(path: &Path, e: impl std::fmt::Display) -> IdentityError {
    IdentityError::Files {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn load_pair(files: &TlsFiles) -> Result<Pair, IdentityError> {
    let config = tls::client_config(files)?;
    let info = tls::cert_info(&files.cert)?;
    Ok(Pair {
        config,
        not_before: info.not_before,
        not_after: info.not_after,
    })
}

impl Credentials {
    /// Loads the pair in use (refusing a key others can read), finishing or
    /// undoing an interrupted switch, and a renewed pair waiting to be tried.
    pub fn load(
        files: TlsFiles,
        host: uuid::Uuid,
        renew_at: f64,
    ) -> Result<Arc<Credentials>, IdentityError> {
        let next_files = TlsFiles {
            ca: files.ca.clone(),
            cert: next_path(&files.cert),
            key: next_path(&files.key),
        };
        match (next_files.cert.exists(), next_files.key.exists()) {
            (true, false) => std::fs::rename(&next_files.cert, &files.cert)
                .map_err(|e| files_err(&files.cert, e))?,
            (false, true) => {
                std::fs::remove_file(&next_files.key).map_err(|e| files_err(&next_files.key, e))?
            }
            _ => {}
        }
        let current = load_pair(&files)?;
        let next = if next_files.cert.exists() {
            match load_pair(&next_files) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(error = %e, "renewed certificate unusable; dropped, renewal asked again");
                    remove_next(&files);
                    None
                }
            }
        } else {
            None
        };
        let try_next = next.is_some();
        Ok(Arc::new(Credentials {
            files,
            host,
            renew_at,
            state: Mutex::new(State {
                current,
                next,
                try_next,
                next_failed: false,
                pending: None,
                forced: false,
            }),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every change is a few field writes after the files are done; a
        // poisoned lock still holds a usable state.
        csagent_core::sync::lock(&self.state)
    }

    /// The configuration for the next dial, and which pair it is.
    pub fn client_config(&self) -> (Arc<ClientConfig>, Generation) {
        let st = self.lock();
        match &st.next {
            Some(n) if st.try_next => (Arc::clone(&n.config), Generation::Next),
            _ => (Arc::clone(&st.current.config), Generation::Current),
        }
    }

    /// A connection with `gen` registered.
    pub fn connected(&self, gen: Generation) {
        let mut st = self.lock();
        match gen {
            Generation::Next => {
                if let Err(e) = self.promote() {
                    tracing::error!(error = %e, "renewed certificate works but could not replace the old one; retried at next start");
                    return;
                }
                if let Some(n) = st.next.take() {
                    st.current = n;
                }
                st.try_next = false;
                st.next_failed = false;
                tracing::info!(
                    not_after = st.current.not_after,
                    "renewed certificate confirmed by the plane; old one removed"
                );
            }
            Generation::Current if st.next.is_some() && st.next_failed => {
                tracing::warn!(
                    "renewed certificate was refused but the old one works; renewing again"
                );
                remove_next(&self.files);
                st.next = None;
                st.next_failed = false;
            }
            Generation::Current => {}
        }
    }

    /// A connection with `gen` failed before registering: alternate, so a
    /// renewed pair the plane refuses never locks the host out.
    pub fn failed(&self, gen: Generation) {
        let mut st = self.lock();
        if st.next.is_none() {
            return;
        }
        match gen {
            Generation::Next => {
                st.next_failed = true;
                st.try_next = false;
                tracing::warn!("connection with the renewed certificate failed; the old one is used for the next attempt");
            }
            Generation::Current => st.try_next = true,
        }
    }

    fn promote(&self) -> Result<(), IdentityError> {
        let key = next_path(&self.files.key);
        let cert = next_path(&self.files.cert);
        std::fs::rename(&key, &self.files.key).map_err(|e| files_err(&self.files.key, e))?;
        std::fs::rename(&cert, &self.files.cert).map_err(|e| files_err(&self.files.cert, e))
    }

    /// Expiry (Unix ms) of the newest certificate this host holds, for
    /// heartbeats.
    pub fn not_after_unix_ms(&self) -> i64 {
        let st = self.lock();
        let s = st
            .next
            .as_ref()
            .map_or(st.current.not_after, |n| n.not_after);
        s.saturating_mul(1000)
    }

    /// Start of validity (Unix s) of the certificate in use.
    pub fn not_before_unix_s(&self) -> i64 {
        self.lock().current.not_before
    }

    /// Renew at the next heartbeat, whatever the certificate's age.
    pub fn force_renewal(&self) {
        self.lock().forced = true;
    }

    /// A CSR to send if renewal is due: past `renew_at` of the lifetime (or
    /// forced), no renewed pair waiting, none asked for recently. The key is
    /// made here and kept in memory until the certificate arrives.
    pub fn renewal_csr(&self) -> Option<String> {
        let mut st = self.lock();
        if st.next.is_some() {
            return None;
        }
        if st
            .pending
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() < RENEW_RETRY)
        {
            return None;
        }
        let (not_before, not_after) = (st.current.not_before, st.current.not_after);
        let due_at = not_before as f64 + self.renew_at * (not_after - not_before) as f64;
        let now = unix_ms() as f64 / 1000.0;
        if !st.forced && now < due_at {
            return None;
        }
        match csagent_tls::pki::agent_csr(&self.host) {
            Ok((csr, key)) => {
                st.pending = Some((key, Instant::now()));
                st.forced = false;
                tracing::info!(
                    not_after,
                    "asking the plane to renew this host's certificate"
                );
                Some(csr)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot make a key for renewal");
                None
            }
        }
    }

    /// Installs a renewed certificate as the next pair (files written, the
    /// current pair untouched). The identity must be this host's, and the
    /// certificate must match the key this agent made for it.
    pub fn on_issued(&self, issued: IssuedCert) -> Result<(), IdentityError> {
        let mut st = self.lock();
        if !issued.refused.is_empty() {
            // Asked again after RENEW_RETRY.
            return Err(IdentityError::Refused(issued.refused));
        }
        let Some((key, _)) = st.pending.take() else {
            return Err(IdentityError::Unsolicited);
        };
        check_identity(&issued.chain_pem, &self.host)?;
        if !issued.ca_bundle_pem.is_empty() {
            self.store_bundle(&mut st, &issued.ca_bundle_pem)?;
        }
        let next = TlsFiles {
            ca: self.files.ca.clone(),
            cert: next_path(&self.files.cert),
            key: next_path(&self.files.key),
        };
        csagent_tls::pki::write_file(&next.key, key.as_bytes(), 0o600)?;
        csagent_tls::pki::write_file(&next.cert, issued.chain_pem.as_bytes(), 0o644)?;
        let pair = match load_pair(&next) {
            Ok(p) => p,
            Err(e) => {
                remove_next(&self.files);
                return Err(e);
            }
        };
        warn_if_not_yet_valid(pair.not_before);
        tracing::info!(
            not_after = pair.not_after,
            "renewed certificate stored; used from the next connection"
        );
        st.next = Some(pair);
        st.try_next = true;
        st.next_failed = false;
        Ok(())
    }

    /// Stores a CA bundle from the plane (if it changed) and reloads both
    /// pairs with it; used from the next connection on.
    pub fn on_bundle(&self, bundle_pem: &str, renew_now: bool) -> Result<bool, IdentityError> {
        let mut st = self.lock();
        let stored = self.store_bundle(&mut st, bundle_pem)?;
        if renew_now {
            st.forced = true;
        }
        Ok(stored)
    }

    fn store_bundle(&self, st: &mut State, bundle_pem: &str) -> Result<bool, IdentityError> {
        let old = std::fs::read_to_string(&self.files.ca).unwrap_or_default();
        if old == bundle_pem {
            return Ok(false);
        }
        // Checked whole before anything is written: a bundle this host
        // could not connect with must never reach ca_file.
        csagent_tls::pki::check_ca_bundle(bundle_pem, &old)?;
        csagent_tls::pki::write_file(&self.files.ca, bundle_pem.as_bytes(), 0o644)?;
        st.current = load_pair(&self.files)?;
        if st.next.is_some() {
            let next = TlsFiles {
                ca: self.files.ca.clone(),
                cert: next_path(&self.files.cert),
                key: next_path(&self.files.key),
            };
            st.next = load_pair(&next).ok();
        }
        tracing::info!(path = %self.files.ca.display(), "new CA bundle from the plane stored; used from the next connection");
        Ok(true)
    }
}

fn remove_next(files: &TlsFiles) {
    let _ = std::fs::remove_file(next_path(&files.key));
    let _ = std::fs::remove_file(next_path(&files.cert));
}

/// The identity a PEM chain's first certificate carries must be `host`.
pub fn check_identity(chain_pem: &str, host: &uuid::Uuid) -> Result<(), IdentityError> {
    use rustls_pki_types::pem::PemObject;
    let first = rustls_pki_types::CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .and_then(Result::ok);
    let got = first.as_ref().and_then(csagent_tls::peer_identity);
    if got.as_deref() != Some(host.to_string().as_str()) {
        return Err(IdentityError::WrongIdentity {
            got,
            want: host.to_string(),
        });
    }
    Ok(())
}

/// A certificate the plane just issued that is not yet valid here means
/// this host's clock is behind: the same finding as clock skew, said where
/// it bites.
pub fn warn_if_not_yet_valid(not_before: i64) {
    let now = unix_ms() / 1000;
    if not_before > now {
        tracing::warn!(
            behind_s = not_before - now,
            "certificate from the plane is not valid yet on this host's clock: the clock is behind by at least {} s; synchronise it (chrony / systemd-timesyncd) or the next connection fails",
            not_before - now
        );
    }
}
