//! The one error type of the network boundary (netlink links, nftables rules,
//! kernel counters).
//!
//! Each variant says what failed, on which object, and what the operator can
//! do. `kind()` classifies errors so dispatch maps them to wire codes in one
//! place; this file must not know about the wire codes themselves.

use std::io;

pub use csagent_core::ErrorKind;

/// Errors of the network module.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("invalid network request: {0}")]
    InvalidArgument(String),

    #[error("interface {name} already exists and is not managed by csagent ({detail}); rename or remove it, or choose another VLAN/VNI")]
    Foreign { name: String, detail: String },

    #[error("interface {name} is managed by csagent but configured differently (have {have}, want {want}); release the VMs that use it first")]
    Mismatch {
        name: String,
        have: String,
        want: String,
    },

    #[error("interface {0} not found")]
    NoSuchLink(String),

    #[error("the kernel cannot {what}: {detail}; load the module (e.g. modprobe {module}) or use a host that has it")]
    Unavailable {
        what: String,
        module: &'static str,
        detail: String,
    },

    #[error("netlink request '{op}' on {object} failed: {source}")]
    Netlink {
        op: &'static str,
        object: String,
        #[source]
        source: io::Error,
    },

    #[error("nft failed to {op}: {detail}")]
    Nft { op: &'static str, detail: String },

    #[error("network state file: {detail}; fix or remove the file (the agent then rebuilds it from the next commands)")]
    State { detail: String },

    #[error("{op} failed: {source}")]
    Io {
        op: String,
        #[source]
        source: io::Error,
    },
}

impl NetworkError {
    /// Classifies the error for the wire (see [`ErrorKind`]).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Self::Foreign { .. } | Self::Mismatch { .. } => ErrorKind::Conflict,
            Self::Unavailable { .. } => ErrorKind::Unavailable,
            Self::NoSuchLink(_)
            | Self::Netlink { .. }
            | Self::Nft { .. }
            | Self::Io { .. }
            | Self::State { .. } => ErrorKind::Internal,
        }
    }

    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::InvalidArgument(msg.into())
    }
}

/// Result alias of the network module.
pub type Result<T, E = NetworkError> = std::result::Result<T, E>;

/// What a command answers when this failure ends it: its kind, and the
/// message as the operator should read it.
impl From<NetworkError> for csagent_core::CommandError {
    fn from(e: NetworkError) -> Self {
        csagent_core::CommandError::new(e.kind(), e.to_string())
    }
}
