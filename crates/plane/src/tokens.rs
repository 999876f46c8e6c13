//! One-time enrollment tokens: created for one host UUID with a lifetime,
//! stored only as SHA-256 hashes in the plane's state directory, consumed
//! exactly once.
//!
//! Owns the token rules (exists, unused, unexpired, for this host) and their
//! persistence. Consuming is atomic: the check, the caller's work (signing)
//! and the write that marks the token used happen under one lock, so two
//! concurrent enrollments with one token cannot both succeed. It never signs
//! anything itself.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::statefile::{self, StateError};
use csagent_core::time::unix_ms;

/// Default lifetime of a token whose creator gave none.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// Used and expired tokens are kept this long (for the refusal message),
/// then dropped on the next write.
const KEEP_SPENT_MS: i64 = 7 * 24 * 3600 * 1000;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("enrollment token unknown to this plane; create one with csagent-mgmt token create --host UUID")]
    Unknown,
    #[error("enrollment token was already used; create a new one with csagent-mgmt token create")]
    Used,
    #[error("enrollment token expired {0} s ago; create a new one with csagent-mgmt token create")]
    Expired(i64),
    #[error("enrollment token is for host {token_host}, not {asked}")]
    WrongHost { token_host: String, asked: String },
    #[error(transparent)]
    State(#[from] StateError),
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct Record {
    sha256: String,
    host_uuid: String,
    created_unix_ms: i64,
    expires_unix_ms: i64,
    /// 0 until used.
    used_unix_ms: i64,
}

#[derive(Default, Serialize, Deserialize)]
#[serde(default)]
struct TokenFile {
    tokens: Vec<Record>,
}

/// A freshly created token; the clear text exists only here.
pub struct Issued {
    pub token: String,
    pub expires_unix_ms: i64,
}

pub struct TokenStore {
    path: PathBuf,
    file: Mutex<TokenFile>,
}

fn hash(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.trim().as_bytes()))
}

impl TokenStore {
    pub fn open(path: PathBuf) -> Result<TokenStore, StateError> {
        let file = statefile::load(&path)?;
        Ok(TokenStore {
            path,
            file: Mutex::new(file),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TokenFile> {
        // Every update is written to disk before the lock is released, so a
        // poisoned lock still holds what the file holds.
        csagent_core::sync::lock(&self.file)
    }

    /// A new random token (256 bits) for `host`, valid for `ttl`.
    pub fn create(&self, host: &uuid::Uuid, ttl: Duration) -> Result<Issued, TokenError> {
        let bytes: [u8; 32] = rand::random();
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let now = unix_ms();
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
        let rec = Record {
            sha256: hash(&token),
            host_uuid: host.to_string(),
            created_unix_ms: now,
            expires_unix_ms: now.saturating_add(ttl_ms),
            used_unix_ms: 0,
        };
        let expires_unix_ms = rec.expires_unix_ms;
        let mut file = self.lock();
        file.tokens
            .retain(|r| now - r.expires_unix_ms.max(r.used_unix_ms) < KEEP_SPENT_MS);
        file.tokens.push(rec);
        if let Err(e) = statefile::save(&self.path, &*file) {
            file.tokens.pop();
            return Err(e.into());
        }
        Ok(Issued {
            token,
            expires_unix_ms,
        })
    }

    /// Checks `token` for `host`, runs `work` (e.g. signing) and, if it
    /// succeeded, marks the token used on disk before returning its value.
    /// A refused token or failed work leaves the token as it was.
    pub fn consume<T, E: From<TokenError>>(
        &self,
        token: &str,
        host: &uuid::Uuid,
        work: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let h = hash(token);
        let now = unix_ms();
        let mut file = self.lock();
        let idx = file
            .tokens
            .iter()
            .position(|r| r.sha256 == h)
            .ok_or(TokenError::Unknown)?;
        let rec = &file.tokens[idx];
        if rec.used_unix_ms != 0 {
            return Err(TokenError::Used.into());
        }
        if now >= rec.expires_unix_ms {
            return Err(TokenError::Expired((now - rec.expires_unix_ms) / 1000).into());
        }
        if !rec.host_uuid.eq_ignore_ascii_case(&host.to_string()) {
            return Err(TokenError::WrongHost {
                token_host: rec.host_uuid.clone(),
                asked: host.to_string(),
            }
            .into());
        }
        let out = work()?;
        file.tokens[idx].used_unix_ms = now;
        if let Err(e) = statefile::save(&self.path, &*file) {
            file.tokens[idx].used_unix_ms = 0;
            return Err(TokenError::from(e).into());
        }
        Ok(out)
    }
}
