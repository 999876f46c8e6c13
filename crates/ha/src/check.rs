//! The neighbour's answer to "is that host alive?": its heartbeat records
//! and its VMs' disks, watched over a window.
//!
//! Owns gathering the evidence and the verdict drawn from it. ALIVE needs
//! one sign of life (a record that moved, a disk written); DEAD needs every
//! shared pool readable here with the host's record standing still on each;
//! anything less is UNKNOWN, because a wrong DEAD is what restarts a VM that
//! still runs. All file access is off the async workers, under a timeout.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use uuid::Uuid;

use crate::record::{self, Record};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Alive,
    Dead,
    Unknown,
}

/// What one source showed over the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sign {
    /// It moved: the host (or its VM) is alive.
    Life,
    /// It was readable and did not move.
    Still,
    /// It could not be read, or there was nothing to read.
    Unreadable,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evidence {
    /// "heartbeat <pool>" or "disk <path>".
    pub source: String,
    pub sign: Sign,
    pub detail: String,
}

#[derive(Clone, Debug)]
pub struct Finding {
    pub verdict: Verdict,
    pub evidence: Vec<Evidence>,
}

/// What the neighbour is asked to look at.
#[derive(Clone, Debug)]
pub struct Question {
    pub host: Uuid,
    pub pools: Vec<PathBuf>,
    /// The suspect's VM disks on shared storage.
    pub disks: Vec<PathBuf>,
    /// Long enough for the suspect to write at least twice.
    pub window: Duration,
    /// Per file access.
    pub timeout: Duration,
}

/// Watches the suspect's records and disks for `window` and judges.
pub async fn check(q: &Question) -> Finding {
    let before = snapshot(q).await;
    tokio::time::sleep(q.window).await;
    let after = snapshot(q).await;
    let mut evidence = Vec::new();
    for (pool, (a, b)) in q
        .pools
        .iter()
        .zip(before.records.iter().zip(&after.records))
    {
        evidence.push(record_evidence(pool, a, b));
    }
    for (disk, (a, b)) in q.disks.iter().zip(before.disks.iter().zip(&after.disks)) {
        evidence.push(disk_evidence(disk, a, b));
    }
    Finding {
        verdict: judge(q.pools.len(), &evidence),
        evidence,
    }
}

fn judge(pools: usize, evidence: &[Evidence]) -> Verdict {
    if evidence.iter().any(|e| e.sign == Sign::Life) {
        return Verdict::Alive;
    }
    let still_pools = evidence
        .iter()
        .filter(|e| e.source.starts_with("heartbeat ") && e.sign == Sign::Still)
        .count();
    if pools > 0 && still_pools == pools {
        Verdict::Dead
    } else {
        Verdict::Unknown
    }
}

type Read<T> = Result<T, String>;

struct Snapshot {
    records: Vec<Read<Option<Record>>>,
    disks: Vec<Read<(SystemTime, u64)>>,
}

async fn snapshot(q: &Question) -> Snapshot {
    let records = q.pools.iter().map(|p| {
        let (p, host) = (p.clone(), q.host);
        blocking(q.timeout, move || {
            record::read(&p, &host).map_err(|e| e.to_string())
        })
    });
    let disks = q.disks.iter().map(|d| {
        let d = d.clone();
        blocking(q.timeout, move || {
            let m = std::fs::metadata(&d).map_err(|e| format!("{}: {e}", d.display()))?;
            let mtime = m.modified().map_err(|e| e.to_string())?;
            Ok((mtime, m.len()))
        })
    });
    let (records, disks) = tokio::join!(
        futures::future::join_all(records),
        futures::future::join_all(disks)
    );
    Snapshot { records, disks }
}

/// Runs a file access on a blocking thread; a hung one reads as an error.
async fn blocking<T: Send + 'static>(
    timeout: Duration,
    f: impl FnOnce() -> Read<T> + Send + 'static,
) -> Read<T> {
    match tokio::time::timeout(timeout, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(format!("the read task failed: {e}")),
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

fn record_evidence(pool: &Path, a: &Read<Option<Record>>, b: &Read<Option<Record>>) -> Evidence {
    let (sign, detail) = match (a, b) {
        (Err(e), _) | (_, Err(e)) => (Sign::Unreadable, e.clone()),
        (_, Ok(None)) => (Sign::Unreadable, "the host has no record here".into()),
        (Ok(None), Ok(Some(r))) => (
            Sign::Life,
            format!("first record written (counter {})", r.counter),
        ),
        (Ok(Some(x)), Ok(Some(y))) if y.counter != x.counter => (
            Sign::Life,
            format!("counter {} -> {}", x.counter, y.counter),
        ),
        (Ok(Some(x)), Ok(Some(_))) => (
            Sign::Still,
            format!(
                "counter stays at {}, last written at {} (its clock)",
                x.counter, x.written_unix_ms
            ),
        ),
    };
    Evidence {
        source: format!("heartbeat {}", pool.display()),
        sign,
        detail,
    }
}

fn disk_evidence(
    disk: &Path,
    a: &Read<(SystemTime, u64)>,
    b: &Read<(SystemTime, u64)>,
) -> Evidence {
    let (sign, detail) = match (a, b) {
        (Err(e), _) | (_, Err(e)) => (Sign::Unreadable, e.clone()),
        (Ok(x), Ok(y)) if x != y => (Sign::Life, "written during the window".into()),
        // A quiet disk is no proof of death (an idle guest writes nothing),
        // so it counts as neither.
        (Ok(_), Ok(_)) => (Sign::Still, "not written during the window".into()),
    };
    Evidence {
        source: format!("disk {}", disk.display()),
        sign,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(source: &str, sign: Sign) -> Evidence {
        Evidence {
            source: source.into(),
            sign,
            detail: String::new(),
        }
    }

    #[test]
    fn one_sign_of_life_is_alive() {
        let e = [ev("heartbeat /a", Sign::Still), ev("disk /a/x", Sign::Life)];
        assert_eq!(judge(1, &e), Verdict::Alive);
    }

    #[test]
    fn dead_needs_every_pool_still() {
        let all = [
            ev("heartbeat /a", Sign::Still),
            ev("heartbeat /b", Sign::Still),
        ];
        assert_eq!(judge(2, &all), Verdict::Dead);
        let one_unread = [
            ev("heartbeat /a", Sign::Still),
            ev("heartbeat /b", Sign::Unreadable),
        ];
        assert_eq!(judge(2, &one_unread), Verdict::Unknown);
        // Still disks do not stand in for a pool.
        let disks = [
            ev("heartbeat /a", Sign::Still),
            ev("disk /b/x", Sign::Still),
        ];
        assert_eq!(judge(2, &disks), Verdict::Unknown);
        assert_eq!(judge(0, &[]), Verdict::Unknown);
    }
}
