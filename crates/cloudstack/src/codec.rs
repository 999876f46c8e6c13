//! A `tokio_util::codec` adapter over [`crate::frame`], for reading and writing frames on the
//! raw TCP stream after the TLS handshake. It owns only the adaptation to `BytesMut`; the frame
//! rules stay in [`crate::frame`], and it must not run TLS or reassemble messages.

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::frame::{Frame, FrameError, FrameHeader, FRAME_HEADER_LEN};

/// Error of [`FrameCodec`]: a bad frame, or the stream's own I/O error.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("frame stream I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Decodes and encodes [`Frame`]s on a byte stream.
#[derive(Debug, Default, Clone, Copy)]
pub struct FrameCodec;

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        if src.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        // Checked as soon as the header is in, so an oversize frame is refused before buffering.
        let header = FrameHeader::decode(src)?;
        let total = FRAME_HEADER_LEN + header.len();
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(FRAME_HEADER_LEN);
        let data = src.split_to(header.len()).freeze();
        Ok(Some(Frame {
            data,
            more: header.more(),
        }))
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        let header = FrameHeader::new(frame.data.len(), frame.more)?;
        dst.reserve(FRAME_HEADER_LEN + frame.data.len());
        dst.put_slice(&header.encode());
        dst.put_slice(&frame.data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn round_trips_frames_through_a_buffer() {
        let mut codec = FrameCodec;
        let mut buf = BytesMut::new();
        let frames = [
            Frame {
                data: Bytes::from_static(b"abc"),
                more: true,
            },
            Frame {
                data: Bytes::new(),
                more: false,
            },
        ];
        for frame in frames.clone() {
            codec.encode(frame, &mut buf).unwrap();
        }
        let mut partial = buf.split_to(5);
        assert!(codec.decode(&mut partial).unwrap().is_none());
        partial.unsplit(buf);
        assert_eq!(codec.decode(&mut partial).unwrap(), Some(frames[0].clone()));
        assert_eq!(codec.decode(&mut partial).unwrap(), Some(frames[1].clone()));
        assert!(codec.decode(&mut partial).unwrap().is_none());
    }

    #[test]
    fn refuses_oversize_frames() {
        let mut codec = FrameCodec;
        let mut buf = BytesMut::from(&[0u8, 0, 0x50, 0][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::Frame(FrameError::Oversize(0x5000)))
        ));
        let big = Frame {
            data: Bytes::from(vec![0; 18_001]),
            more: false,
        };
        assert!(codec.encode(big, &mut BytesMut::new()).is_err());
    }
}
