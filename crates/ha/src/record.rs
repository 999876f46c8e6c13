//! One host's heartbeat record on one shared pool: its format on disk, and
//! writing and reading it.
//!
//! Owns the bytes: a single fixed-size line, `csagent-ha 1 <host> <counter>
//! <unix ms>`, padded to `RECORD_LEN`, rewritten in place at offset 0 and
//! made durable with fdatasync, so a reader on another host sees either the
//! old record or the new one, never a torn mix. These functions block: the
//! caller runs them off the async workers, under a timeout.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use uuid::Uuid;

/// Directory of the records under a pool's mount point.
pub const DIR: &str = ".csagent-ha";
/// Every record is exactly this long (one sector at most, one write).
pub const RECORD_LEN: usize = 96;
const MAGIC: &str = "csagent-ha";
const VERSION: &str = "1";

/// What a host last wrote on a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub host: Uuid,
    /// Grows by one per write, across agent restarts.
    pub counter: u64,
    /// The writer's clock at the write: for people; liveness is judged by
    /// the counter moving, never by comparing two hosts' clocks.
    pub written_unix_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a csagent heartbeat record: {why}")]
    Malformed { path: PathBuf, why: String },
}

/// Where `host`'s record lives on the pool mounted at `pool`.
pub fn path(pool: &Path, host: &Uuid) -> PathBuf {
    pool.join(DIR).join(format!("{}.hb", host.hyphenated()))
}

impl Record {
    fn encode(&self) -> [u8; RECORD_LEN] {
        let line = format!(
            "{MAGIC} {VERSION} {} {} {}",
            self.host.hyphenated(),
            self.counter,
            self.written_unix_ms
        );
        let mut out = [b' '; RECORD_LEN];
        // The longest line (u64 and i64 at their maximum) is 88 bytes.
        let n = line.len().min(RECORD_LEN - 1);
        out[..n].copy_from_slice(&line.as_bytes()[..n]);
        out[RECORD_LEN - 1] = b'\n';
        out
    }

    fn decode(bytes: &[u8]) -> Result<Record, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
        let mut words = text.split_ascii_whitespace();
        let mut next = |what: &str| words.next().ok_or_else(|| format!("no {what}"));
        if next("magic")? != MAGIC {
            return Err("wrong magic".into());
        }
        let version = next("version")?;
        if version != VERSION {
            return Err(format!("version {version}, this agent reads {VERSION}"));
        }
        let host = Uuid::parse_str(next("host")?).map_err(|e| format!("host: {e}"))?;
        let counter = next("counter")?
            .parse()
            .map_err(|e| format!("counter: {e}"))?;
        let written_unix_ms = next("timestamp")?
            .parse()
            .map_err(|e| format!("timestamp: {e}"))?;
        Ok(Record {
            host,
            counter,
            written_unix_ms,
        })
    }
}

/// Rewrites the record in place and waits until it is on the storage.
pub fn write(pool: &Path, rec: &Record) -> Result<(), RecordError> {
    let dir = pool.join(DIR);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RecordError::Io { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let file_path = path(pool, &rec.host);
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .custom_flags(nofollow())
        .open(&file_path)
        .map_err(io(&file_path))?;
    f.write_all_at(&rec.encode(), 0).map_err(io(&file_path))?;
    f.sync_data().map_err(io(&file_path))
}

/// `host`'s record on the pool; None when it never wrote one there.
pub fn read(pool: &Path, host: &Uuid) -> Result<Option<Record>, RecordError> {
    let p = path(pool, host);
    let f = match File::open(&p) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(RecordError::Io { path: p, source }),
    };
    let mut buf = Vec::with_capacity(RECORD_LEN);
    f.take(RECORD_LEN as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|source| RecordError::Io {
            path: p.clone(),
            source,
        })?;
    if buf.len() != RECORD_LEN {
        return Err(RecordError::Malformed {
            path: p,
            why: format!("{} bytes, a record has {RECORD_LEN}", buf.len()),
        });
    }
    let rec = Record::decode(&buf).map_err(|why| RecordError::Malformed {
        path: p.clone(),
        why,
    })?;
    if rec.host != *host {
        return Err(RecordError::Malformed {
            path: p,
            why: format!("it names host {}", rec.host),
        });
    }
    Ok(Some(rec))
}

/// A planted symlink in a shared directory must not redirect our writes.
fn nofollow() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(counter: u64) -> Record {
        Record {
            host: Uuid::new_v4(),
            counter,
            written_unix_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn a_record_reads_back_as_written_and_has_a_fixed_size() {
        let pool = tempfile::tempdir().unwrap();
        let r = rec(7);
        write(pool.path(), &r).unwrap();
        assert_eq!(read(pool.path(), &r.host).unwrap(), Some(r));
        let len = std::fs::metadata(path(pool.path(), &r.host)).unwrap().len();
        assert_eq!(len, RECORD_LEN as u64);
        let newer = Record { counter: 8, ..r };
        write(pool.path(), &newer).unwrap();
        assert_eq!(read(pool.path(), &r.host).unwrap(), Some(newer));
    }

    #[test]
    fn the_largest_values_fit() {
        let r = Record {
            counter: u64::MAX,
            written_unix_ms: i64::MIN,
            ..rec(0)
        };
        assert_eq!(Record::decode(&r.encode()), Ok(r));
    }

    #[test]
    fn no_record_is_none_and_a_foreign_file_is_an_error() {
        let pool = tempfile::tempdir().unwrap();
        let host = Uuid::new_v4();
        assert_eq!(read(pool.path(), &host).unwrap(), None);
        std::fs::create_dir_all(pool.path().join(DIR)).unwrap();
        std::fs::write(path(pool.path(), &host), b"hello\n").unwrap();
        let e = read(pool.path(), &host).unwrap_err().to_string();
        assert!(e.contains("not a csagent heartbeat record"), "{e}");
        // Another host's record under this host's name is refused too.
        let other = rec(1);
        let mut bytes = other.encode().to_vec();
        bytes.truncate(RECORD_LEN);
        std::fs::write(path(pool.path(), &host), &bytes).unwrap();
        let e = read(pool.path(), &host).unwrap_err().to_string();
        assert!(e.contains("it names host"), "{e}");
    }

    #[test]
    fn a_symlink_planted_at_the_record_is_not_followed() {
        let pool = tempfile::tempdir().unwrap();
        let victim = pool.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let r = rec(1);
        std::fs::create_dir_all(pool.path().join(DIR)).unwrap();
        std::os::unix::fs::symlink(&victim, path(pool.path(), &r.host)).unwrap();
        assert!(write(pool.path(), &r).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    }
}
