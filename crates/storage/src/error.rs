//! The storage crate's one error type, `StorageError`, and its
//! classification by the shared `ErrorKind`, which the agent maps to wire codes.
//!
//! Owns: wording of storage failures (what failed, on which pool/volume, what
//! to do). Must not: know about proto types or log anything.

use std::path::PathBuf;
use std::time::Duration;

pub use csagent_core::ErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid {what}: {reason}")]
    InvalidArgument { what: String, reason: String },

    #[error("{what} not found")]
    NotFound { what: String },

    #[error("{what} already exists; delete it first or pick another name")]
    AlreadyExists { what: String },

    #[error("{what} refused: {reason}; nothing was changed")]
    Conflict { what: String, reason: String },

    #[error(
        "Insufficient capacity on pool {pool}: {needed} bytes needed, {available} bytes available"
    )]
    InsufficientCapacity {
        pool: String,
        needed: u64,
        available: u64,
    },

    #[error("No space left on pool {pool} while {step} wrote {path}; the partial file was removed, free space and retry")]
    DiskFull {
        pool: String,
        step: &'static str,
        path: PathBuf,
    },

    #[error("{what} is unavailable: {reason}")]
    Unavailable { what: String, reason: String },

    #[error("{step} on {object} timed out after {}s; the child was killed and partial output removed", after.as_secs_f64())]
    Timeout {
        step: &'static str,
        object: String,
        after: Duration,
    },

    #[error("{step} on {object} was cancelled; partial output removed")]
    Cancelled { step: &'static str, object: String },

    #[error("qemu-img {step} on {object} failed ({status}): {stderr}")]
    QemuImg {
        step: &'static str,
        object: String,
        status: String,
        stderr: String,
    },

    #[error("checksum mismatch on template {object}: expected {expected}, got {actual}; the copy was removed")]
    ChecksumMismatch {
        object: String,
        expected: String,
        actual: String,
    },

    #[error("template {object} refused: {reason}")]
    BadImage { object: String, reason: String },

    #[error("{step} on {path}: {source}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("libvirt {step} on {object} failed: {message}")]
    Libvirt {
        step: &'static str,
        object: String,
        message: String,
        kind: ErrorKind,
    },

    #[error("download of {url} failed: {reason}")]
    Http { url: String, reason: String },

    #[error("internal error in {step}: {reason}")]
    Internal { step: &'static str, reason: String },
}

impl StorageError {
    pub fn kind(&self) -> ErrorKind {
        use StorageError as E;
        match self {
            E::InvalidArgument { .. } | E::ChecksumMismatch { .. } | E::BadImage { .. } => {
                ErrorKind::InvalidArgument
            }
            E::NotFound { .. } => ErrorKind::NotFound,
            E::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            E::Conflict { .. } => ErrorKind::Conflict,
            E::InsufficientCapacity { .. } | E::DiskFull { .. } => ErrorKind::InsufficientCapacity,
            E::Unavailable { .. } | E::Http { .. } => ErrorKind::Unavailable,
            E::Timeout { .. } => ErrorKind::DeadlineExceeded,
            E::Cancelled { .. } => ErrorKind::Cancelled,
            E::Libvirt { kind, .. } => *kind,
            E::Io { source, .. } => io_kind(source),
            E::QemuImg { .. } | E::Internal { .. } => ErrorKind::Internal,
        }
    }

    pub fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        StorageError::InvalidArgument {
            what: what.into(),
            reason: reason.into(),
        }
    }

    pub fn conflict(what: impl Into<String>, reason: impl Into<String>) -> Self {
        StorageError::Conflict {
            what: what.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(step: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StorageError::Io {
            step,
            path: path.into(),
            source,
        }
    }

    /// Turns a libvirt error into ours, keeping "no such pool/domain" apart
    /// from "libvirt is down" so the plane knows whether to retry.
    pub(crate) fn libvirt(
        step: &'static str,
        object: impl Into<String>,
        e: virt::error::Error,
    ) -> Self {
        use virt::error::ErrorNumber as N;
        let kind = match e.code() {
            virt::error::ErrorNumberEnum::Known(code) => match code {
                N::NoStoragePool | N::NoStorageVolume | N::NoDomain | N::NoDomainSnapshot => {
                    ErrorKind::NotFound
                }
                // Unsupported requests (e.g. revert to an external snapshot
                // before libvirt 9.9) change nothing: the command is invalid
                // on this host, retrying will not help.
                N::InvalidArg
                | N::XmlError
                | N::XmlDetail
                | N::OperationInvalid
                | N::ConfigUnsupported
                | N::OperationUnsupported
                | N::NoSupport
                | N::ArgumentUnsupported => ErrorKind::InvalidArgument,
                N::OperationTimeout | N::AgentUnresponsive => ErrorKind::DeadlineExceeded,
                N::StorageVolExist => ErrorKind::AlreadyExists,
                N::SystemError | N::Rpc | N::NoConnect | N::InternalError => ErrorKind::Unavailable,
                _ => ErrorKind::Internal,
            },
            virt::error::ErrorNumberEnum::Unknown(_) => ErrorKind::Internal,
        };
        StorageError::Libvirt {
            step,
            object: object.into(),
            message: e.message().to_string(),
            kind,
        }
    }
}

fn io_kind(e: &std::io::Error) -> ErrorKind {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::NotFound => ErrorKind::NotFound,
        K::AlreadyExists => ErrorKind::AlreadyExists,
        K::StorageFull | K::QuotaExceeded => ErrorKind::InsufficientCapacity,
        K::InvalidInput => ErrorKind::InvalidArgument,
        _ => ErrorKind::Internal,
    }
}

/// True when an io error means "the filesystem is full".
pub(crate) fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// A failure of the hypervisor's libvirt boundary during storage step
/// `step` on `object`; `budget` is the operation's timeout, for the message.
pub fn from_hv(
    e: csagent_libvirt::HvError,
    step: &'static str,
    object: &str,
    budget: std::time::Duration,
) -> StorageError {
    use csagent_libvirt::HvError;
    match e {
        HvError::Timeout { .. } => StorageError::Timeout {
            step,
            object: object.to_string(),
            after: budget,
        },
        HvError::Unavailable { uri, reason } => StorageError::Unavailable {
            what: format!("libvirt at {uri}"),
            reason: format!("{reason}; is libvirtd running?"),
        },
        HvError::NotFound(what) => StorageError::NotFound { what },
        HvError::Libvirt { message, .. } => StorageError::Libvirt {
            step,
            object: object.to_string(),
            message,
            kind: ErrorKind::Internal,
        },
    }
}

/// What a command answers when this failure ends it: its kind, and the
/// message as the operator should read it.
impl From<StorageError> for csagent_core::CommandError {
    fn from(e: StorageError) -> Self {
        csagent_core::CommandError::new(e.kind(), e.to_string())
    }
}
