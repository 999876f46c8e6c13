//! Hands the heap a burst of work freed back to the kernel.
//!
//! glibc's malloc keeps freed memory in its per-thread arenas for reuse and
//! returns it to the kernel only when the top of an arena is free. After a
//! burst (a thousand queued commands, a fleet-wide resend after failover)
//! the agent would keep tens of MiB it no longer uses, on every host, until
//! it restarts. So when the dispatcher runs dry, the free pages are handed
//! back with `malloc_trim`, on a blocking thread because one call after a
//! large burst takes milliseconds. Trims are kept a second apart; an idle
//! moment inside that second gets a trim at its end, so the last moment of
//! a burst is never the one skipped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The least time between two trims.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// When the last trim ran and whether the next one is waiting.
struct Schedule {
    /// `now_ms()` at the last trim, plus one (0: never).
    last: AtomicU64,
    pending: AtomicBool,
}

impl Schedule {
    const fn new() -> Schedule {
        Schedule {
            last: AtomicU64::new(0),
            pending: AtomicBool::new(false),
        }
    }

    /// How long until the next trim may run; None when one is already
    /// waiting (it will see this idle moment's garbage too).
    fn book(&self, now_ms: u64) -> Option<Duration> {
        if self.pending.swap(true, Ordering::AcqRel) {
            return None;
        }
        let at = match self.last.load(Ordering::Acquire) {
            0 => 0,
            last => last - 1 + MIN_INTERVAL.as_millis() as u64,
        };
        Some(Duration::from_millis(at.saturating_sub(now_ms)))
    }

    /// The booked trim runs now (or was dropped with its runtime).
    fn done(&self, now_ms: u64) {
        self.last.store(now_ms + 1, Ordering::Release);
        self.pending.store(false, Ordering::Release);
    }
}

fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

static SCHEDULE: Schedule = Schedule::new();

/// Ends the booking even when the runtime drops the waiting task.
struct Booked;

impl Drop for Booked {
    fn drop(&mut self) {
        SCHEDULE.done(now_ms());
    }
}

/// Called when the agent has just gone idle. Needs a tokio runtime.
pub fn trim_when_idle() {
    let Some(wait) = SCHEDULE.book(now_ms()) else {
        return;
    };
    let booked = Booked;
    tokio::spawn(async move {
        tokio::time::sleep(wait).await;
        drop(booked);
        let _ = tokio::task::spawn_blocking(trim).await;
    });
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    let started = Instant::now();
    // SAFETY: malloc_trim takes no pointers and is thread-safe; it only
    // releases pages malloc already considers free.
    let released = unsafe { libc::malloc_trim(0) } == 1;
    tracing::trace!(
        released,
        took_us = started.elapsed().as_micros() as u64,
        "heap trimmed"
    );
}

/// Other allocators return memory on their own terms.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_at_most_once_an_interval_and_never_skips_the_last() {
        let s = Schedule::new();
        let step = MIN_INTERVAL.as_millis() as u64;
        assert_eq!(
            s.book(5),
            Some(Duration::ZERO),
            "the first trim is due at once"
        );
        assert_eq!(s.book(6), None, "one is waiting already");
        s.done(5);
        let wait = s.book(5 + 10).expect("booked after the last ran");
        assert_eq!(
            wait,
            Duration::from_millis(step - 10),
            "runs when the interval is over"
        );
        s.done(5 + step);
        assert_eq!(s.book(5 + 3 * step), Some(Duration::ZERO));
    }
}
