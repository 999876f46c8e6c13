//! gzip of message bodies: CloudStack gzips a JSON body of [`GZIP_THRESHOLD`] bytes or more
//! and marks it with the header's COMPRESSED flag. This module owns the threshold and the
//! (de)compression with a bound on output size; it must not decide flags or parse JSON.
//!
//! The 10-byte gzip header matches Java's `GZIPOutputStream` (mtime 0, XFL 0, OS 255) and the
//! level is zlib's default 6, but the deflate stream itself differs from zlib's (flate2's
//! backend is not zlib). That is harmless: peers only inflate, and CloudStack checks nothing
//! but the inflated JSON.

use std::io::{Read, Write};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::{Compression, GzBuilder};

/// Bodies of this many bytes or more are gzip'd.
pub const GZIP_THRESHOLD: usize = 8192;

/// What can go wrong while (de)compressing.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    #[error("gzip compression failed: {0}")]
    Compress(#[source] std::io::Error),
    #[error("body is not valid gzip: {0}")]
    Corrupt(#[source] std::io::Error),
    #[error("gzip body inflates to more than the {expected} bytes the header announced")]
    LongerThanAnnounced { expected: usize },
    #[error("gzip body inflates to {actual} bytes but the header announced {expected}")]
    SizeMismatch { expected: usize, actual: usize },
}

/// Whether a JSON body of `len` bytes goes on the wire gzip'd.
pub fn should_compress(len: usize) -> bool {
    len >= GZIP_THRESHOLD
}

/// gzips `body` the way Java's `GZIPOutputStream` with default settings does.
pub fn gzip(body: &[u8]) -> Result<Vec<u8>, CompressError> {
    // Java's default Deflater level is zlib's default, 6; mtime 0 and OS 255 as Java writes them.
    let mut encoder: GzEncoder<Vec<u8>> = GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::with_capacity(body.len() / 2), Compression::new(6));
    encoder.write_all(body).map_err(CompressError::Compress)?;
    encoder.finish().map_err(CompressError::Compress)
}

/// Inflates `gz`, which must yield exactly `expected` bytes (the header's size). Reading stops
/// one byte past `expected`, so a gzip bomb costs no more memory than an honest body.
pub fn gunzip(gz: &[u8], expected: usize) -> Result<Vec<u8>, CompressError> {
    let limit = u64::try_from(expected).map_or(u64::MAX, |e| e.saturating_add(1));
    let mut out = Vec::with_capacity(expected.min(64 * 1024 * 1024));
    GzDecoder::new(gz)
        .take(limit)
        .read_to_end(&mut out)
        .map_err(CompressError::Corrupt)?;
    match out.len() {
        n if n > expected => Err(CompressError::LongerThanAnnounced { expected }),
        n if n < expected => Err(CompressError::SizeMismatch {
            expected,
            actual: n,
        }),
        _ => Ok(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_is_inclusive() {
        assert!(!should_compress(8191));
        assert!(should_compress(8192));
    }

    #[test]
    fn header_matches_java() {
        let gz = gzip(b"hello").unwrap();
        assert_eq!(&gz[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
    }

    #[test]
    fn round_trip_and_size_checks() {
        let body = vec![b'a'; 10_000];
        let gz = gzip(&body).unwrap();
        assert_eq!(gunzip(&gz, body.len()).unwrap(), body);
        assert!(matches!(
            gunzip(&gz, 9_999),
            Err(CompressError::LongerThanAnnounced { expected: 9_999 })
        ));
        assert!(matches!(
            gunzip(&gz, 10_001),
            Err(CompressError::SizeMismatch { .. })
        ));
    }

    #[test]
    fn corrupt_gzip_is_an_error() {
        assert!(matches!(
            gunzip(b"not gzip", 8),
            Err(CompressError::Corrupt(_))
        ));
        let gz = gzip(&[b'x'; 9000]).unwrap();
        assert!(matches!(
            gunzip(&gz[..gz.len() - 4], 9000),
            Err(CompressError::Corrupt(_))
        ));
    }
}
