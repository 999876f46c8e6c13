//! Clock: the kernel's NTP synchronisation status (adjtimex, read-only) and
//! the skew between this host and the management plane, measured from the
//! heartbeat round trip the way NTP computes an offset.
//!
//! Skew breaks TLS (certificates "not yet valid" or "expired") and makes logs
//! across hosts disagree, so it is a health finding. This file never sets the
//! clock: it only reads it.

use super::health::{Finding, HealthConfig, HealthState};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClockError {
    #[error("reading the kernel clock status with adjtimex failed: {0}")]
    Adjtimex(std::io::Error),
    #[error(
        "clock skew sample rejected: the reply arrived ({received_ms} ms) before the \
         heartbeat was sent ({sent_ms} ms); the local clock was stepped in between"
    )]
    NegativeRoundTrip { sent_ms: i64, received_ms: i64 },
}

/// What the kernel's NTP discipline says (`adjtimex` with no modes set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NtpStatus {
    /// False when the kernel reports TIME_ERROR or STA_UNSYNC: no NTP/chrony
    /// daemon has disciplined the clock recently.
    pub synced: bool,
    /// Estimated error, microseconds (`esterror`).
    pub estimated_error_us: i64,
    /// Maximum error, microseconds (`maxerror`); grows by 500 ppm while unsynced.
    pub max_error_us: i64,
}

/// This host's clock against the plane's, from one heartbeat round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skew {
    /// Plane time minus agent time, ms. Positive: the agent is behind (a
    /// certificate the plane just issued is "not yet valid" here); negative:
    /// the agent is ahead.
    pub offset_ms: i64,
    /// Agent receive time minus send time, ms; the offset is exact to +-rtt/2.
    pub round_trip_ms: i64,
}

impl Skew {
    /// The smallest skew magnitude this sample proves: the network delay could
    /// hide up to half the round trip.
    pub fn certain_abs_ms(&self) -> u64 {
        self.offset_ms
            .unsigned_abs()
            .saturating_sub(self.round_trip_ms.unsigned_abs() / 2)
    }
}

/// Clock status as carried in a host report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClockStatus {
    /// None when adjtimex failed (logged once by the caller).
    pub ntp: Option<NtpStatus>,
    /// None until the first heartbeat ack with a plane time.
    pub skew: Option<Skew>,
}

/// Reads the kernel's clock discipline state. Cheap (one syscall, no I/O).
pub fn ntp_status() -> Result<NtpStatus, ClockError> {
    // SAFETY: timex is plain old data, valid when zeroed; modes = 0 makes
    // adjtimex read-only, and the pointer is to a live local.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    tx.modes = 0;
    // SAFETY: see above; adjtimex writes only into `tx`.
    let state = unsafe { libc::adjtimex(&mut tx) };
    if state < 0 {
        return Err(ClockError::Adjtimex(std::io::Error::last_os_error()));
    }
    Ok(NtpStatus {
        synced: state != libc::TIME_ERROR && tx.status & libc::STA_UNSYNC == 0,
        estimated_error_us: tx.esterror,
        max_error_us: tx.maxerror,
    })
}

/// NTP's offset with one server timestamp: the plane stamped its time
/// (`plane_ms`) between the agent's send (`sent_ms`) and receive
/// (`received_ms`), so offset = plane - (sent + received) / 2.
pub fn skew(sent_ms: i64, plane_ms: i64, received_ms: i64) -> Result<Skew, ClockError> {
    if received_ms < sent_ms {
        return Err(ClockError::NegativeRoundTrip {
            sent_ms,
            received_ms,
        });
    }
    // i128 so absurd timestamps cannot overflow; the result is clamped back.
    let mid2 = i128::from(sent_ms) + i128::from(received_ms);
    let offset2 = 2 * i128::from(plane_ms) - mid2;
    let offset = (offset2 / 2).clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
    Ok(Skew {
        offset_ms: offset,
        round_trip_ms: received_ms.saturating_sub(sent_ms),
    })
}

/// Health findings for the clock.
pub fn findings(clock: &ClockStatus, cfg: &HealthConfig) -> Vec<Finding> {
    let mut out = Vec::new();
    if let Some(s) = clock.skew {
        let certain = s.certain_abs_ms();
        let critical = cfg.clock_skew_critical_ms.is_some_and(|c| certain > c);
        if critical || certain > cfg.clock_skew_warning_ms {
            let (state, limit) = if critical {
                (
                    HealthState::Critical,
                    cfg.clock_skew_critical_ms.unwrap_or(0),
                )
            } else {
                (HealthState::Warning, cfg.clock_skew_warning_ms)
            };
            let side = if s.offset_ms > 0 {
                "behind"
            } else {
                "ahead of"
            };
            out.push(Finding {
                source: "clock".into(),
                state,
                message: format!(
                    "clock is {} ms {side} the management plane (round trip {} ms, limit {limit} ms); \
                     check chronyd/ntpd on this host, TLS fails when skew grows",
                    s.offset_ms.unsigned_abs(),
                    s.round_trip_ms
                ),
            });
        }
    }
    if cfg.warn_when_ntp_unsynced && clock.ntp.is_some_and(|n| !n.synced) {
        out.push(Finding {
            source: "clock".into(),
            state: HealthState::Warning,
            message: "kernel clock is not NTP-synchronised (adjtimex: unsynchronised); \
                      start chronyd or ntpd"
                .into(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_formula() {
        // Agent sends at 1000, plane says 1600, reply at 1200: mid 1100, plane 500 ahead.
        let s = skew(1000, 1600, 1200).unwrap();
        assert_eq!(s.offset_ms, 500);
        assert_eq!(s.round_trip_ms, 200);
        assert_eq!(s.certain_abs_ms(), 400);
        // Agent ahead of the plane: negative offset.
        assert_eq!(skew(10_000, 4_000, 10_000).unwrap().offset_ms, -6_000);
        assert!(skew(5, 5, 4).is_err());
        assert!(skew(i64::MIN, i64::MAX, i64::MAX).is_ok());
    }

    #[test]
    fn skew_findings() {
        let cfg = HealthConfig {
            clock_skew_critical_ms: Some(5_000),
            ..Default::default()
        };
        let st = |offset_ms| ClockStatus {
            ntp: None,
            skew: Some(Skew {
                offset_ms,
                round_trip_ms: 10,
            }),
        };
        assert!(findings(&st(900), &cfg).is_empty());
        let f = findings(&st(-2_000), &cfg);
        assert_eq!(f[0].state, HealthState::Warning);
        assert!(f[0].message.contains("ahead of"), "{}", f[0].message);
        assert_eq!(findings(&st(9_000), &cfg)[0].state, HealthState::Critical);
    }
}
