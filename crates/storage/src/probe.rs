//! Reads a volume's header in-process: qcow2 or raw, virtual size, backing
//! file, external data file.
//!
//! Why not always `qemu-img info`: a child process costs ~10 ms, which would
//! blow the linked-clone budget, and a header read needs no privileges on
//! the image. qemu-img stays the authority for templates (info + check).
//! Must not: write to images or follow backing files.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::error::StorageError;
use super::{Bytes, ImageFormat};

const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";
/// Incompatible feature bit 2: guest data lives in an external file.
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// Longest backing file name qemu accepts (1023 bytes).
const MAX_BACKING_LEN: u32 = 1023;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub format: ImageFormat,
    pub virtual_size: Bytes,
    pub backing_file: Option<String>,
    pub external_data_file: bool,
    pub encrypted: bool,
}

fn be_u32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_be_bytes(a)
}

fn be_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_be_bytes(a)
}

/// Probes `path`. A file that is not qcow2 is raw (as qemu would see it).
pub fn probe(path: &Path) -> Result<Header, StorageError> {
    let io = |e| StorageError::io("read image header", path, e);
    let mut f = std::fs::File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    let mut h = [0u8; 104];
    let n = read_up_to(&mut f, &mut h).map_err(io)?;
    if n < 4 || h[..4] != QCOW2_MAGIC {
        return Ok(Header {
            format: ImageFormat::Raw,
            virtual_size: Bytes(len),
            backing_file: None,
            external_data_file: false,
            encrypted: false,
        });
    }
    if n < 72 {
        return Err(StorageError::BadImage {
            object: path.display().to_string(),
            reason: "truncated qcow2 header".into(),
        });
    }
    let version = be_u32(&h, 4);
    let backing_off = be_u64(&h, 8);
    let backing_len = be_u32(&h, 16);
    let incompat = if version >= 3 && n >= 80 {
        be_u64(&h, 72)
    } else {
        0
    };
    let backing_file = if backing_off != 0 && backing_len != 0 {
        if backing_len > MAX_BACKING_LEN {
            return Err(StorageError::BadImage {
                object: path.display().to_string(),
                reason: "backing file name longer than 1023 bytes".into(),
            });
        }
        let mut name = vec![0u8; backing_len as usize];
        f.seek(SeekFrom::Start(backing_off)).map_err(io)?;
        f.read_exact(&mut name).map_err(io)?;
        Some(String::from_utf8_lossy(&name).into_owned())
    } else {
        None
    };
    Ok(Header {
        format: ImageFormat::Qcow2,
        virtual_size: Bytes(be_u64(&h, 24)),
        backing_file,
        external_data_file: incompat & INCOMPAT_DATA_FILE != 0,
        encrypted: be_u32(&h, 32) != 0,
    })
}

fn read_up_to(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}
