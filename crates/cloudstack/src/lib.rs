//! Transport codec of Apache CloudStack's native agent protocol (TCP 8250), as spoken between a
//! management server and its KVM agent: frames around TLS records ([`frame`]), the 40-byte
//! message header ([`header`]), gzip of large bodies ([`compress`]), Gson-compatible ASCII JSON
//! ([`json`]), class-keyed command arrays ([`envelope`]) and whole messages ([`message`]).
//! It is pure functions over bytes: it must not open sockets, run TLS or act on commands.
//!
//! Receiving: frame bytes → [`frame::FrameDecoder`] → TLS decrypt (caller) →
//! [`frame::Reassembler`] → [`Message::decode`]. Sending: [`Message::encode`] →
//! [`frame::split_plaintext`] → TLS encrypt each chunk (caller) → [`frame::frame_tls_records`].
//! With the `codec` feature, `codec::FrameCodec` does the frame step for a tokio stream.

#[cfg(feature = "codec")]
pub mod codec;
pub mod compress;
pub mod envelope;
pub mod frame;
pub mod header;
pub mod json;
pub mod message;

pub use compress::CompressError;
pub use envelope::{ClassName, Envelope, EnvelopeError, Fields, Typed};
pub use frame::{Frame, FrameDecoder, FrameError, FrameHeader, Reassembler};
pub use header::{Flags, Header, HeaderError, HostId, MgmtId, Sequence, Version, HEADER_LEN};
pub use json::JsonError;
pub use message::{Message, MessageError};

/// Any error of this crate, for callers that do not care which layer failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Message(#[from] MessageError),
}
