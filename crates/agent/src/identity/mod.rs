//! The host's identity on the agent side: enrolling for a first certificate
//! (enroll.rs), holding and renewing the certificate the link dials with
//! (credentials.rs), and publishing what to dial with (`DialTls`), which
//! the live stream reads and reports back to (link/identity.rs adapts the
//! plane's messages).
//!
//! The private key is made on the host, written with mode 0600 and never
//! sent anywhere; only CSRs leave. A new certificate is used from the next
//! connection on, and the old one is kept until that connection succeeded.
//! Nothing here touches VMs, and nothing here ends the current stream.

pub mod credentials;
pub mod enroll;
mod pin;

use std::path::PathBuf;

pub use credentials::{Credentials, Generation};
pub use enroll::{enroll, EnrollParams, Enrolled};

/// What the link dials with: a fixed TLS configuration (tests), or the
/// host's credentials, renewed and rotated here.
#[derive(Clone)]
pub enum DialTls {
    Fixed(std::sync::Arc<rustls::ClientConfig>),
    Managed(std::sync::Arc<Credentials>),
}

impl DialTls {
    /// The configuration for the next dial, and which certificate it is.
    pub fn config(&self) -> (std::sync::Arc<rustls::ClientConfig>, Generation) {
        match self {
            DialTls::Fixed(c) => (std::sync::Arc::clone(c), Generation::Current),
            DialTls::Managed(c) => c.client_config(),
        }
    }

    /// How a dial with certificate `gen` went: a new certificate is kept
    /// once a connection with it registered, dropped after it failed.
    pub fn outcome(&self, gen: Generation, registered: bool) {
        if let DialTls::Managed(c) = self {
            if registered {
                c.connected(gen);
            } else {
                c.failed(gen);
            }
        }
    }

    /// The credentials, when this host manages its certificate.
    pub fn credentials(&self) -> Option<&Credentials> {
        match self {
            DialTls::Fixed(_) => None,
            DialTls::Managed(c) => Some(c),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Tls(#[from] csagent_tls::TlsError),
    #[error(transparent)]
    Pki(#[from] csagent_tls::pki::PkiError),
    #[error("{path}: {reason}")]
    Files { path: PathBuf, reason: String },
    #[error(
        "refusing to enroll without the plane's CA fingerprint: pass --ca-fingerprint \
         (printed by csagent-mgmt token create) or set management.ca_fingerprint; \
         trusting whatever answers on first use would hand the token to anyone in between"
    )]
    NoPin,
    #[error(
        "the plane at {plane} does not hold the pinned CA {pinned} (it offers {offered}); \
         check the fingerprint, or something between this host and the plane is not the plane"
    )]
    PinMismatch {
        plane: String,
        pinned: String,
        offered: String,
    },
    #[error("enrollment with {plane} failed: {reason}")]
    Enroll { plane: String, reason: String },
    #[error("the plane issued a certificate for {got:?}, this host is {want}; not installed")]
    WrongIdentity { got: Option<String>, want: String },
    #[error("renewal refused by the plane: {0}")]
    Refused(String),
    #[error("a certificate arrived that this agent did not ask for; ignored")]
    Unsolicited,
}
