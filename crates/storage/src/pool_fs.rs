//! Filesystem calls on pool storage: off the async workers, bounded in time.
//!
//! Owns the rule that a hung mount (a dead NFS server, a wedged shared
//! filesystem, a FUSE server that stopped answering) costs the command that
//! touched it and nothing else. Every stat, open, readdir, link or unlink
//! under a pool runs on the blocking pool through `run`; the command waits
//! at most its own deadline and `fs_timeout`, then answers UNAVAILABLE
//! naming the call and the path, while the abandoned thread stays blocked in
//! the kernel until the mount answers or goes. Abandoned calls are counted:
//! past `MAX_ABANDONED` new calls are refused at once, so a hung mount
//! cannot drain the blocking pool either. Must not: decide what to do on
//! the filesystem; callers pass the work in.

use std::path::Path;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::StorageError;
use crate::qemu_img::RunCtl;

/// Calls given up on while still blocked in the kernel.
static ABANDONED: AtomicUsize = AtomicUsize::new(0);
/// More hung calls than this and the mount is plainly dead: refuse at once.
const MAX_ABANDONED: usize = 32;

const RUNNING: u8 = 0;
const DONE: u8 = 1;
const GIVEN_UP: u8 = 2;

/// Runs `f` off the workers; waits until `ctl`'s deadline or `fs_timeout`,
/// whichever is first, or until the operation is cancelled.
pub async fn run<T, F>(
    step: &'static str,
    object: &Path,
    ctl: &RunCtl,
    fs_timeout: Duration,
    f: F,
) -> Result<T, StorageError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StorageError> + Send + 'static,
{
    let hung = ABANDONED.load(Ordering::Relaxed);
    if hung >= MAX_ABANDONED {
        return Err(hung_mount(
            step,
            object,
            format!(
                "{hung} earlier filesystem calls on pool storage still hang; not starting another"
            ),
        ));
    }
    let state = Arc::new(AtomicU8::new(RUNNING));
    let mine = Arc::clone(&state);
    let job = tokio::task::spawn_blocking(move || {
        let r = f();
        if mine.swap(DONE, Ordering::AcqRel) == GIVEN_UP {
            ABANDONED.fetch_sub(1, Ordering::Relaxed);
        }
        r
    });
    let fs_limit = tokio::time::Instant::now() + fs_timeout;
    // The operation's own deadline, when first, is a plain timeout of the
    // operation; only a call that outlived fs_timeout says the mount hangs.
    let deadline_first = ctl.deadline <= fs_limit;
    let limit = ctl.deadline.min(fs_limit);
    let given_up = |why: String| {
        if state
            .compare_exchange(RUNNING, GIVEN_UP, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            ABANDONED.fetch_add(1, Ordering::Relaxed);
        }
        why
    };
    tokio::select! {
        // A finished call wins over a deadline passing at the same moment.
        biased;
        r = job => r.map_err(|e| StorageError::Internal { step, reason: e.to_string() })?,
        _ = tokio::time::sleep_until(limit) => {
            let why = given_up(format!(
                "it did not return within {:.1} s",
                fs_timeout.as_secs_f64()
            ));
            if deadline_first {
                return Err(StorageError::Timeout {
                    step,
                    object: object.display().to_string(),
                    after: ctl.budget,
                });
            }
            Err(hung_mount(step, object, why))
        }
        _ = ctl.cancel.cancelled() => {
            given_up(String::new());
            Err(StorageError::Cancelled { step, object: object.display().to_string() })
        }
    }
}

fn hung_mount(step: &'static str, object: &Path, why: String) -> StorageError {
    StorageError::Unavailable {
        what: format!("the filesystem holding {}", object.display()),
        reason: format!(
            "{step}: {why}; the mount is hung (a dead NFS server or shared filesystem?) \
             and the call was abandoned; nothing else was changed, retry once the mount answers"
        ),
    }
}

/// How many calls are still blocked after being given up on.
pub fn abandoned() -> usize {
    ABANDONED.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::sync::CancellationToken;

    #[tokio::test]
    async fn a_call_that_blocks_is_given_up_at_the_timeout_and_counted() {
        let ctl = RunCtl::new(Duration::from_secs(60), CancellationToken::new());
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let before = abandoned();
        let started = std::time::Instant::now();
        let e = run(
            "stat volume",
            Path::new("/pool/v"),
            &ctl,
            Duration::from_millis(100),
            move || {
                let _ = rx.recv();
                Ok(())
            },
        )
        .await
        .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(e.kind(), crate::ErrorKind::Unavailable);
        let text = e.to_string();
        assert!(
            text.contains("stat volume") && text.contains("/pool/v") && text.contains("hung"),
            "{text}"
        );
        assert_eq!(abandoned(), before + 1);
        drop(tx);
        for _ in 0..100 {
            if abandoned() == before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            abandoned(),
            before,
            "a call that returned late is still counted"
        );
    }

    #[tokio::test]
    async fn a_call_that_returns_gives_its_result() {
        let ctl = RunCtl::new(Duration::from_secs(5), CancellationToken::new());
        let v = run(
            "read",
            Path::new("/p"),
            &ctl,
            Duration::from_secs(5),
            || Ok(7),
        )
        .await;
        assert_eq!(v.unwrap(), 7);
    }

    #[tokio::test]
    async fn the_operations_own_deadline_first_is_a_timeout_not_a_hung_mount() {
        let ctl = RunCtl::new(Duration::from_millis(50), CancellationToken::new());
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let e = run(
            "stat volume",
            Path::new("/pool/v"),
            &ctl,
            Duration::from_secs(30),
            move || {
                let _ = rx.recv();
                Ok(())
            },
        )
        .await
        .unwrap_err();
        drop(tx);
        assert_eq!(e.kind(), crate::ErrorKind::DeadlineExceeded, "{e}");
    }
}
