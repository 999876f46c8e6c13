//! Frame codec: the 4-byte big-endian frame header that CloudStack's `Link` puts before every
//! `SSLEngine.wrap()` output after the TLS handshake, the split of a plaintext message into
//! record-sized chunks, and the reassembly of chunks into a message. It owns only byte layout and
//! size limits; it must not encrypt, decrypt, read sockets or look inside the message it carries.
//!
//! The layering on the wire is: message plaintext → chunks of at most [`MAX_RECORD_PLAINTEXT`]
//! bytes → one TLS record per chunk (done by the caller's TLS session) → one frame per record,
//! whose header holds the *record* length and the "more follows" bit. The receiver reads a frame,
//! hands its bytes to TLS, and feeds the plaintext to a [`Reassembler`] together with that bit.

use bytes::{Buf, Bytes, BytesMut};

/// Bit of the frame header meaning "more frames of the same message follow"
/// (`HEADER_FLAG_FOLLOWING` in CloudStack).
pub const FLAG_FOLLOWING: u32 = 0x1_0000;

/// Mask of the length bits of a frame header.
const LEN_MASK: u32 = 0xFFFF;

/// Size of a frame header on the wire.
pub const FRAME_HEADER_LEN: usize = 4;

/// Largest frame body CloudStack accepts; larger ones are refused by the peer.
pub const MAX_FRAME_LEN: u16 = 18_000;

/// Largest plaintext one TLS record carries; the sender puts one such chunk in each record.
pub const MAX_RECORD_PLAINTEXT: usize = 16_384;

/// Default cap on a reassembled message, so a peer that never clears the "more" bit cannot
/// make us buffer without bound. CloudStack sets none; 64 MiB is far above any real command.
pub const DEFAULT_MAX_MESSAGE_LEN: usize = 64 * 1024 * 1024;

/// What can be wrong with a frame or a sequence of frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame header needs {FRAME_HEADER_LEN} bytes, got {0}")]
    ShortHeader(usize),
    #[error("frame header {0:#010x} sets bits other than the length and 0x10000")]
    UnknownBits(u32),
    #[error("frame length {0} is negative when read as Java's (short)")]
    NegativeLength(u16),
    #[error("frame length {0} exceeds the maximum of {MAX_FRAME_LEN}")]
    Oversize(usize),
    #[error("frame announces {expected} bytes but only {available} follow the header")]
    Truncated { expected: usize, available: usize },
    #[error("TLS record at offset {offset} is cut short: needs {needed} bytes, {available} left")]
    PartialRecord {
        offset: usize,
        needed: usize,
        available: usize,
    },
    #[error("reassembled message would be {len} bytes, above the limit of {max}")]
    MessageTooLarge { len: usize, max: usize },
}

/// A decoded frame header: how many bytes of TLS records follow, and whether the message
/// continues in a later frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    len: u16,
    more: bool,
}

impl FrameHeader {
    /// A header for `len` bytes of records; fails above [`MAX_FRAME_LEN`].
    pub fn new(len: usize, more: bool) -> Result<Self, FrameError> {
        match u16::try_from(len) {
            Ok(len) if len <= MAX_FRAME_LEN => Ok(Self { len, more }),
            _ => Err(FrameError::Oversize(len)),
        }
    }

    /// Number of record bytes that follow the header.
    pub fn len(self) -> usize {
        usize::from(self.len)
    }

    /// True for an empty frame (legal, though CloudStack never sends one).
    pub fn is_empty(self) -> bool {
        self.len == 0
    }

    /// Whether more frames of the same message follow.
    pub fn more(self) -> bool {
        self.more
    }

    /// The 4 bytes that go on the wire.
    pub fn encode(self) -> [u8; FRAME_HEADER_LEN] {
        let more = if self.more { FLAG_FOLLOWING } else { 0 };
        (u32::from(self.len) | more).to_be_bytes()
    }

    /// Reads a header from the first 4 bytes of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, FrameError> {
        let raw: [u8; FRAME_HEADER_LEN] = bytes
            .get(..FRAME_HEADER_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(FrameError::ShortHeader(bytes.len()))?;
        Self::from_word(u32::from_be_bytes(raw))
    }

    fn from_word(word: u32) -> Result<Self, FrameError> {
        if word & !(LEN_MASK | FLAG_FOLLOWING) != 0 {
            return Err(FrameError::UnknownBits(word));
        }
        // Masked to 16 bits, so the cast keeps every bit.
        let len = (word & LEN_MASK) as u16;
        // Java reads the length as a (short): 0x8000.. is negative there, not large.
        if len & 0x8000 != 0 {
            return Err(FrameError::NegativeLength(len));
        }
        let header = Self::new(usize::from(len), word & FLAG_FOLLOWING != 0)?;
        Ok(header)
    }
}

/// One frame: its records and the "more follows" bit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Whole TLS records (or, without TLS, plaintext).
    pub data: Bytes,
    /// Whether more frames of the same message follow.
    pub more: bool,
}

impl Frame {
    /// Header followed by data, ready for the socket.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        encode_frame(&self.data, self.more)
    }
}

/// Prefixes `records` with a frame header.
pub fn encode_frame(records: &[u8], more: bool) -> Result<Vec<u8>, FrameError> {
    let header = FrameHeader::new(records.len(), more)?;
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + records.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(records);
    Ok(out)
}

/// Reads one whole frame from the start of `buf`, returning it and the bytes consumed.
/// A `buf` shorter than the frame is an error here; use [`FrameDecoder`] for a stream.
pub fn decode_frame(buf: &[u8]) -> Result<(Frame, usize), FrameError> {
    let header = FrameHeader::decode(buf)?;
    let end = FRAME_HEADER_LEN + header.len();
    let data = buf
        .get(FRAME_HEADER_LEN..end)
        .ok_or(FrameError::Truncated {
            expected: header.len(),
            available: buf.len() - FRAME_HEADER_LEN,
        })?;
    let frame = Frame {
        data: Bytes::copy_from_slice(data),
        more: header.more(),
    };
    Ok((frame, end))
}

/// Cuts a message plaintext into the chunks that each go into one TLS record (and so one
/// frame), paired with the "more follows" bit for that frame. An empty message is one empty chunk.
pub fn split_plaintext(message: &[u8]) -> Vec<(&[u8], bool)> {
    if message.is_empty() {
        return vec![(message, false)];
    }
    let mut chunks: Vec<(&[u8], bool)> = message
        .chunks(MAX_RECORD_PLAINTEXT)
        .map(|c| (c, true))
        .collect();
    if let Some(last) = chunks.last_mut() {
        last.1 = false;
    }
    chunks
}

/// Frames a message without TLS: each plaintext chunk is its own frame body. Useful for tests
/// and for a transport whose records are the identity.
pub fn frame_plaintext(message: &[u8]) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::with_capacity(message.len() + FRAME_HEADER_LEN);
    for (chunk, more) in split_plaintext(message) {
        out.extend_from_slice(&encode_frame(chunk, more)?);
    }
    Ok(out)
}

/// Size of a TLS record header: content type, version, 16-bit length.
pub const TLS_RECORD_HEADER_LEN: usize = 5;

/// Cuts a buffer of whole TLS records (what a TLS library writes out) into single records, so
/// each can go in its own frame: CloudStack unwraps a frame at once and needs whole records.
pub fn tls_records(mut tls: &[u8]) -> Result<Vec<&[u8]>, FrameError> {
    let mut records = Vec::new();
    let mut offset = 0;
    while !tls.is_empty() {
        let Some(&[_, _, _, hi, lo]) = tls.get(..TLS_RECORD_HEADER_LEN) else {
            return Err(FrameError::PartialRecord {
                offset,
                needed: TLS_RECORD_HEADER_LEN,
                available: tls.len(),
            });
        };
        let needed = TLS_RECORD_HEADER_LEN + usize::from(u16::from_be_bytes([hi, lo]));
        if tls.len() < needed {
            return Err(FrameError::PartialRecord {
                offset,
                needed,
                available: tls.len(),
            });
        }
        let (record, rest) = tls.split_at(needed);
        records.push(record);
        tls = rest;
        offset += needed;
    }
    Ok(records)
}

/// Frames the TLS records that carry (part of) one message, one record per frame as the Java
/// agent does. Every frame but the last gets "more follows"; the last gets it unless
/// `ends_message`. A record too big for one frame is an error.
pub fn frame_tls_records(tls: &[u8], ends_message: bool) -> Result<Vec<u8>, FrameError> {
    let records = tls_records(tls)?;
    let last = records.len().saturating_sub(1);
    let mut out = Vec::with_capacity(tls.len() + FRAME_HEADER_LEN * records.len());
    for (i, record) in records.into_iter().enumerate() {
        let more = i < last || !ends_message;
        out.extend_from_slice(&encode_frame(record, more)?);
    }
    Ok(out)
}

/// Incremental frame reader for a byte stream: push whatever the socket gave, pull frames out.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, `None` if more bytes are needed, or an error for a bad header
    /// (checked as soon as its 4 bytes arrive, so an oversize frame is refused early).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let header = FrameHeader::decode(&self.buf)?;
        if self.buf.len() < FRAME_HEADER_LEN + header.len() {
            return Ok(None);
        }
        self.buf.advance(FRAME_HEADER_LEN);
        let data = self.buf.split_to(header.len()).freeze();
        Ok(Some(Frame {
            data,
            more: header.more(),
        }))
    }
}

/// Joins the plaintext of consecutive frames into one message, up to the frame without the
/// "more follows" bit.
#[derive(Debug)]
pub struct Reassembler {
    buf: BytesMut,
    max: usize,
}

impl Default for Reassembler {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_MESSAGE_LEN)
    }
}

impl Reassembler {
    /// A reassembler refusing messages longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max,
        }
    }

    /// Adds one frame's plaintext; returns the whole message once `more` is false.
    /// After an error the partial message is dropped, so the next push starts a new one.
    pub fn push(&mut self, plaintext: &[u8], more: bool) -> Result<Option<Bytes>, FrameError> {
        let len = self.buf.len() + plaintext.len();
        if len > self.max {
            self.buf.clear();
            return Err(FrameError::MessageTooLarge { len, max: self.max });
        }
        self.buf.extend_from_slice(plaintext);
        if more {
            return Ok(None);
        }
        Ok(Some(self.buf.split().freeze()))
    }

    /// True while a message is partly received.
    pub fn in_progress(&self) -> bool {
        !self.buf.is_empty()
    }
}

/// Decodes a whole buffer of plaintext frames (no TLS) into messages; the inverse of
/// [`frame_plaintext`]. Trailing bytes that do not form a whole frame are an error.
pub fn unframe_plaintext(mut buf: &[u8]) -> Result<Vec<Bytes>, FrameError> {
    let mut messages = Vec::new();
    let mut reassembler = Reassembler::default();
    while !buf.is_empty() {
        let (frame, used) = decode_frame(buf)?;
        buf = &buf[used..];
        if let Some(message) = reassembler.push(&frame.data, frame.more)? {
            messages.push(message);
        }
    }
    if reassembler.in_progress() {
        return Err(FrameError::Truncated {
            expected: FRAME_HEADER_LEN,
            available: 0,
        });
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_with_more_bit() {
        let h = FrameHeader::new(0x401d, true).unwrap();
        assert_eq!(h.encode(), [0x00, 0x01, 0x40, 0x1d]);
        assert_eq!(FrameHeader::decode(&h.encode()).unwrap(), h);
    }

    #[test]
    fn header_rejects_bad_input() {
        assert_eq!(
            FrameHeader::decode(&[0, 1]),
            Err(FrameError::ShortHeader(2))
        );
        assert_eq!(
            FrameHeader::decode(&[0, 0, 0x46, 0x51]),
            Err(FrameError::Oversize(18001))
        );
        assert_eq!(
            FrameHeader::decode(&[0, 0, 0x80, 0x00]),
            Err(FrameError::NegativeLength(0x8000))
        );
        assert_eq!(
            FrameHeader::decode(&[0, 2, 0, 1]),
            Err(FrameError::UnknownBits(0x0002_0001))
        );
        assert_eq!(
            FrameHeader::new(18001, false),
            Err(FrameError::Oversize(18001))
        );
        assert!(encode_frame(&[0; 18001], false).is_err());
    }

    #[test]
    fn truncated_frame_is_an_error() {
        let mut bytes = encode_frame(b"hello", false).unwrap();
        bytes.pop();
        assert_eq!(
            decode_frame(&bytes),
            Err(FrameError::Truncated {
                expected: 5,
                available: 4
            })
        );
        let mut partial = bytes.clone();
        partial.truncate(6);
        assert!(unframe_plaintext(&partial).is_err());
    }

    #[test]
    fn split_and_reassemble_large_message() {
        let message: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let chunks = split_plaintext(&message);
        let sizes: Vec<(usize, bool)> = chunks.iter().map(|(c, m)| (c.len(), *m)).collect();
        assert_eq!(sizes, vec![(16384, true), (16384, true), (7232, false)]);
        let wire = frame_plaintext(&message).unwrap();
        let messages = unframe_plaintext(&wire).unwrap();
        assert_eq!(messages.len(), 1);
        assert_eq!(&messages[0][..], &message[..]);
    }

    #[test]
    fn empty_message_is_one_empty_frame() {
        assert_eq!(frame_plaintext(b"").unwrap(), vec![0, 0, 0, 0]);
        assert_eq!(
            unframe_plaintext(&[0, 0, 0, 0]).unwrap(),
            vec![Bytes::new()]
        );
    }

    #[test]
    fn stream_decoder_waits_for_whole_frames() {
        let wire = [
            encode_frame(b"ab", true).unwrap(),
            encode_frame(b"c", false).unwrap(),
        ]
        .concat();
        let mut decoder = FrameDecoder::new();
        let mut reassembler = Reassembler::default();
        let mut got = None;
        for byte in &wire {
            decoder.extend(std::slice::from_ref(byte));
            while let Some(frame) = decoder.next_frame().unwrap() {
                got = reassembler.push(&frame.data, frame.more).unwrap();
            }
        }
        assert_eq!(got.as_deref(), Some(&b"abc"[..]));
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn stream_decoder_refuses_oversize_header_early() {
        let mut decoder = FrameDecoder::new();
        decoder.extend(&[0, 0, 0xff, 0x7f]);
        assert!(decoder.next_frame().is_err());
    }

    /// A fake TLS 1.2 application-data record with `n` body bytes.
    fn record(n: usize) -> Vec<u8> {
        let len = u16::try_from(n).unwrap().to_be_bytes();
        [&[23, 3, 3, len[0], len[1]][..], &vec![0xaa; n]].concat()
    }

    #[test]
    fn tls_records_are_split_and_framed_one_per_frame() {
        let tls = [record(3), record(16413), record(0)].concat();
        let records = tls_records(&tls).unwrap();
        let lens: Vec<usize> = records.iter().map(|r| r.len()).collect();
        assert_eq!(lens, vec![8, 16418, 5]);
        let wire = frame_tls_records(&tls, true).unwrap();
        let mut decoder = FrameDecoder::new();
        decoder.extend(&wire);
        let mut mores = Vec::new();
        while let Some(frame) = decoder.next_frame().unwrap() {
            mores.push(frame.more);
        }
        assert_eq!(mores, vec![true, true, false]);
        let open = frame_tls_records(&record(1), false).unwrap();
        assert_eq!(&open[..4], &[0, 1, 0, 6]);
    }

    #[test]
    fn partial_or_oversize_records_are_errors() {
        let mut tls = record(10);
        tls.pop();
        assert_eq!(
            tls_records(&tls),
            Err(FrameError::PartialRecord {
                offset: 0,
                needed: 15,
                available: 14
            })
        );
        assert!(tls_records(&[23, 3]).is_err());
        assert_eq!(
            frame_tls_records(&record(18000), true),
            Err(FrameError::Oversize(18005))
        );
    }

    #[test]
    fn reassembler_enforces_limit() {
        let mut r = Reassembler::new(4);
        assert_eq!(r.push(b"abc", true), Ok(None));
        assert_eq!(
            r.push(b"de", false),
            Err(FrameError::MessageTooLarge { len: 5, max: 4 })
        );
        assert!(!r.in_progress());
    }
}
