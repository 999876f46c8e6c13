//! A whole message plaintext, as carried by the frames of one message: the 40-byte header, then
//! the JSON body, gzip'd when it is large. This module owns how those pieces combine (size,
//! COMPRESSED flag, body length checks); it must not frame, encrypt or interpret commands.

use crate::compress::{self, CompressError};
use crate::envelope::{Envelope, EnvelopeError};
use crate::header::{Flags, Header, HeaderError, HEADER_LEN};

/// Largest JSON body accepted, checked against the header's size before inflating so a small
/// gzip'd body cannot claim gigabytes. CloudStack sets no limit; real bodies are far smaller.
pub const MAX_BODY_LEN: usize = 64 * 1024 * 1024;

/// What can be wrong with a message.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error(transparent)]
    Compress(#[from] CompressError),
    #[error(transparent)]
    Body(#[from] EnvelopeError),
    #[error("header announces a {0}-byte body, above the limit of {MAX_BODY_LEN}")]
    BodyTooLarge(usize),
    #[error("uncompressed body is {actual} bytes but the header announced {expected}")]
    BodyLength { expected: usize, actual: usize },
}

/// A decoded message: its header and its class-keyed body.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub header: Header,
    pub body: Envelope,
}

impl Message {
    pub fn new(header: Header, body: Envelope) -> Self {
        Message { header, body }
    }

    /// Decodes a message plaintext (all its frames' plaintext joined).
    pub fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        let (header, json) = decode_raw(bytes)?;
        let body = Envelope::parse(&json)?;
        Ok(Message { header, body })
    }

    /// Encodes to a message plaintext. The header's `size` and COMPRESSED flag are derived from
    /// the body here, whatever they held before; every other field is written as given.
    pub fn encode(&self) -> Result<Vec<u8>, MessageError> {
        let json = self.body.to_json()?;
        encode_raw(self.header, &json)
    }
}

/// Splits a message plaintext into its header and its JSON bytes, inflating a gzip'd body and
/// checking that the JSON is exactly as long as the header says.
pub fn decode_raw(bytes: &[u8]) -> Result<(Header, Vec<u8>), MessageError> {
    let header = Header::decode(bytes)?;
    let body = &bytes[HEADER_LEN..];
    let expected = header.size as usize;
    if expected > MAX_BODY_LEN {
        return Err(MessageError::BodyTooLarge(expected));
    }
    if header.is_compressed() {
        return Ok((header, compress::gunzip(body, expected)?));
    }
    if body.len() != expected {
        return Err(MessageError::BodyLength {
            expected,
            actual: body.len(),
        });
    }
    Ok((header, body.to_vec()))
}

/// Builds a message plaintext from a header and JSON bytes, setting `size` to the JSON length
/// and gzipping (with the COMPRESSED flag) at the threshold, as CloudStack does.
pub fn encode_raw(mut header: Header, json: &[u8]) -> Result<Vec<u8>, MessageError> {
    header.set_size(json.len())?;
    let compressed = compress::should_compress(json.len());
    header.flags.set(Flags::COMPRESSED, compressed);
    let gz;
    let body = if compressed {
        gz = compress::gzip(json)?;
        &gz[..]
    } else {
        json
    };
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(body);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::{HostId, MgmtId, Sequence, Version};

    fn header() -> Header {
        Header {
            version: Version::V1,
            reserved: 0,
            flags: Flags::REQUEST,
            seq: Sequence(1),
            size: 0,
            mgmt_id: MgmtId::UNKNOWN,
            agent_id: HostId::UNKNOWN,
            via: HostId::UNKNOWN,
        }
    }

    #[test]
    fn small_body_is_plain_and_sized() {
        let bytes = encode_raw(header(), b"[]").unwrap();
        let decoded = Header::decode(&bytes).unwrap();
        assert_eq!(decoded.size, 2);
        assert!(!decoded.is_compressed());
        assert_eq!(&bytes[HEADER_LEN..], b"[]");
    }

    #[test]
    fn large_body_is_gzipped_and_round_trips() {
        let filler = "x".repeat(8192);
        let json = format!(r#"[{{"a.B":{{"s":"{filler}"}}}}]"#);
        let bytes = encode_raw(header(), json.as_bytes()).unwrap();
        let decoded = Header::decode(&bytes).unwrap();
        assert!(decoded.is_compressed());
        assert_eq!(decoded.size as usize, json.len());
        let message = Message::decode(&bytes).unwrap();
        assert_eq!(message.encode().unwrap(), bytes);
    }

    #[test]
    fn length_mismatch_is_an_error() {
        let mut bytes = encode_raw(header(), b"[]").unwrap();
        bytes.push(b' ');
        assert!(matches!(
            decode_raw(&bytes),
            Err(MessageError::BodyLength {
                expected: 2,
                actual: 3
            })
        ));
        assert!(matches!(
            Message::decode(&bytes[..30]),
            Err(MessageError::Header(HeaderError::Short(30)))
        ));
    }

    #[test]
    fn bad_bodies_are_errors() {
        let not_array = encode_raw(header(), b"{}").unwrap();
        assert!(matches!(
            Message::decode(&not_array),
            Err(MessageError::Body(EnvelopeError::NotAnArray(_)))
        ));
        let invalid = encode_raw(header(), b"[{").unwrap();
        assert!(matches!(
            Message::decode(&invalid),
            Err(MessageError::Body(EnvelopeError::Json(_)))
        ));
        let mut huge = encode_raw(header(), b"[]").unwrap();
        huge[12..16].copy_from_slice(&0x7fff_ffffu32.to_be_bytes());
        huge[3] |= 0x80;
        assert!(matches!(
            decode_raw(&huge),
            Err(MessageError::BodyTooLarge(0x7fff_ffff))
        ));
        let mut corrupt = encode_raw(header(), b"[]").unwrap();
        corrupt[3] |= 0x80; // claims gzip, is not
        assert!(matches!(
            Message::decode(&corrupt),
            Err(MessageError::Compress(_))
        ));
    }
}
