//! The crate-wide classification of command failures.
//!
//! Each boundary (libvirt, qemu-img, netlink, ...) has its own error enum;
//! each says which `ErrorKind` it is, and dispatch maps kinds to the wire's
//! error codes in exactly one place. `CommandError` is what a handler returns:
//! a kind plus a message written for the operator who greps the log.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    Conflict,
    DeadlineExceeded,
    Cancelled,
    Unimplemented,
    Unavailable,
    InsufficientCapacity,
    HostUnhealthy,
    ShuttingDown,
    PermissionDenied,
    FailedPrecondition,
    /// The answer does not fit the link's message limit.
    ResourceExhausted,
    Internal,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandError {
    pub kind: ErrorKind,
    pub message: String,
}

impl CommandError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> CommandError {
        CommandError {
            kind,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> CommandError {
        CommandError::new(ErrorKind::InvalidArgument, message)
    }
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for CommandError {}
