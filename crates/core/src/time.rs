//! Wall-clock time as the wire carries it: milliseconds since the Unix epoch.
//!
//! Owns the one reading of `SystemTime` that timestamps heartbeats, events
//! and records; intervals use `Instant` where they are measured, not this.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in ms since the epoch; 0 for a clock set before 1970, and
/// saturating rather than wrapping in the far future.
pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `later - earlier` in ms, saturating: both may come from a peer and be
/// anything, so the difference must not overflow.
pub fn elapsed_ms(later: i64, earlier: i64) -> i64 {
    later.saturating_sub(earlier)
}
