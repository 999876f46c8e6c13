//! The host's identity on the agent side: enrolling for a first certificate
//! (enroll.rs), holding and renewing the certificate the link dials with
//! (credentials.rs), and the hooks the live stream calls (link_hooks.rs).
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
