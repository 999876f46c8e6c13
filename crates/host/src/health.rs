//! Health: turns sensor readings and the clock status into ok / warning /
//! critical, per sensor and for the host, with a reason a person can act on.
//!
//! Thresholds come from the hardware (hwmon limits, thermal trip points),
//! then config overrides win; sensors without any limits use configured
//! fallbacks. This file decides states only: it reads no files and refuses
//! nothing (admission.rs does).
//!
//! Example agent.toml section (every key optional, defaults shown or noted):
//!
//! ```toml
//! [host.health]
//! refuse_when_critical = true
//! fallback_temp_warning_c = 85.0
//! fallback_temp_critical_c = 95.0
//! temp_warning_margin_c = 5.0
//! clock_skew_warning_ms = 1000
//! # clock_skew_critical_ms = 30000
//! warn_when_ntp_unsynced = true
//!
//! [[host.health.overrides]]
//! sensor = "nvme"            # every sensor of the nvme chip
//! high_warning = 70.0
//!
//! [[host.health.overrides]]
//! sensor = "thermal/thermal_zone3"
//! ignore = true              # a zone known to read garbage on this board
//! ```

use super::clock::ClockStatus;
use super::sensors::{Alarm, SensorKind, SensorReading, Thresholds};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Ordered: the host's state is the worst of its parts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HealthState {
    #[default]
    Ok,
    Warning,
    Critical,
}

impl fmt::Display for HealthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HealthState::Ok => "ok",
            HealthState::Warning => "warning",
            HealthState::Critical => "critical",
        })
    }
}

/// One reason the host is not ok.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// Sensor id (`coretemp@coretemp.0/temp1`), or `clock`.
    pub source: String,
    pub state: HealthState,
    /// For a person: "coretemp Package id 0 (coretemp@coretemp.0/temp1): 98.0 C >= critical 95.0 C".
    pub message: String,
}

/// The host's overall state and why.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostHealth {
    pub state: HealthState,
    /// Worst first.
    pub findings: Vec<Finding>,
}

impl HostHealth {
    /// The first critical finding, the one admission names.
    pub fn first_critical(&self) -> Option<&Finding> {
        self.findings
            .iter()
            .find(|f| f.state == HealthState::Critical)
    }
}

/// `[host.health]` in agent.toml. Every field is optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Refuse StartVm while the host is critical (default true). Set false
    /// to keep placing VMs on a host whose sensors you do not trust.
    pub refuse_when_critical: bool,
    /// Warning level (C) for temperature sensors that publish no limits of
    /// their own (e.g. AMD k10temp Tctl). Default 85. Unset to disable.
    pub fallback_temp_warning_c: Option<f64>,
    /// Critical level (C) for temperature sensors without limits. Default 95.
    pub fallback_temp_critical_c: Option<f64>,
    /// When the hardware gives a critical limit but no warning limit, warn
    /// this many C below critical. Default 5.
    pub temp_warning_margin_c: f64,
    /// Warn when the clock differs from the plane's by more than this (ms).
    /// Default 1000. TLS and token lifetimes break with skew.
    pub clock_skew_warning_ms: u64,
    /// Critical (refuses VMs) above this skew in ms. Default unset: skew
    /// alone never makes the host critical.
    pub clock_skew_critical_ms: Option<u64>,
    /// Warn while the kernel says the clock is not NTP-synchronised. Default true.
    pub warn_when_ntp_unsynced: bool,
    /// Per-sensor overrides, applied in order; the last match wins per field.
    pub overrides: Vec<SensorOverride>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            refuse_when_critical: true,
            fallback_temp_warning_c: Some(85.0),
            fallback_temp_critical_c: Some(95.0),
            temp_warning_margin_c: 5.0,
            clock_skew_warning_ms: 1000,
            clock_skew_critical_ms: None,
            warn_when_ntp_unsynced: true,
            overrides: Vec::new(),
        }
    }
}

/// `[[host.health.overrides]]`: replace limits of some sensors, or ignore them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SensorOverride {
    /// Which sensors: a sensor id (`nvme@nvme0/temp1`), a chip name (`nvme`,
    /// all its sensors), `<chip>/<label>` (`coretemp/Package id 0`), or a
    /// thermal zone id (`thermal/thermal_zone0`).
    pub sensor: String,
    /// Leave these sensors out of health entirely (still reported).
    pub ignore: bool,
    /// Limits in the sensor's unit (C, RPM, V, A, W); unset keeps the hardware's.
    pub low_critical: Option<f64>,
    pub low_warning: Option<f64>,
    pub high_warning: Option<f64>,
    pub high_critical: Option<f64>,
}

impl SensorOverride {
    fn matches(&self, r: &SensorReading) -> bool {
        let s = self.sensor.as_str();
        s == r.id || s == r.chip || s == format!("{}/{}", r.chip, r.label)
    }
}

/// A sensor's state and why, after config is applied.
#[derive(Debug, Clone, PartialEq)]
pub struct SensorHealth {
    pub state: HealthState,
    /// The limits actually used.
    pub thresholds: Thresholds,
    /// Set when state is not ok.
    pub reason: Option<String>,
    /// True when an override says to ignore the sensor.
    pub ignored: bool,
}

/// Effective limits: hardware, then fallback for bare temperature sensors,
/// then overrides.
pub fn effective_thresholds(r: &SensorReading, cfg: &HealthConfig) -> (Thresholds, bool) {
    let mut t = r.thresholds;
    if r.kind == SensorKind::Temperature {
        if t.high_critical.is_none() && t.high_warning.is_none() {
            t.high_warning = cfg.fallback_temp_warning_c;
            t.high_critical = cfg.fallback_temp_critical_c;
        } else if t.high_warning.is_none() {
            t.high_warning = t.high_critical.map(|c| c - cfg.temp_warning_margin_c);
        }
    }
    let mut ignored = false;
    for o in cfg.overrides.iter().filter(|o| o.matches(r)) {
        ignored |= o.ignore;
        t.low_critical = o.low_critical.or(t.low_critical);
        t.low_warning = o.low_warning.or(t.low_warning);
        t.high_warning = o.high_warning.or(t.high_warning);
        t.high_critical = o.high_critical.or(t.high_critical);
    }
    (t, ignored)
}

/// State of one sensor.
pub fn evaluate_sensor(r: &SensorReading, cfg: &HealthConfig) -> SensorHealth {
    let (t, ignored) = effective_thresholds(r, cfg);
    let (state, why) = if ignored {
        (HealthState::Ok, None)
    } else {
        classify(r, &t)
    };
    SensorHealth {
        state,
        thresholds: t,
        reason: why.map(|w| format!("{} {} ({}): {w}", r.chip, r.label, r.id)),
        ignored,
    }
}

fn classify(r: &SensorReading, t: &Thresholds) -> (HealthState, Option<String>) {
    let v = r.value;
    let u = r.kind.unit();
    let checks: [(Option<f64>, bool, HealthState, &str); 4] = [
        (t.high_critical, true, HealthState::Critical, ">= critical"),
        (
            t.low_critical,
            false,
            HealthState::Critical,
            "<= low critical",
        ),
        (t.high_warning, true, HealthState::Warning, ">= warning"),
        (t.low_warning, false, HealthState::Warning, "< low warning"),
    ];
    for (limit, high, state, words) in checks {
        let Some(l) = limit else { continue };
        let hit = if high {
            v >= l
        } else if state == HealthState::Critical {
            v <= l
        } else {
            v < l
        };
        if hit {
            return (state, Some(format!("{v:.1} {u} {words} {l:.1} {u}")));
        }
    }
    match r.alarm {
        Alarm::Critical => (
            HealthState::Critical,
            Some(format!("hardware critical alarm set at {v:.1} {u}")),
        ),
        Alarm::Warning => (
            HealthState::Warning,
            Some(format!("hardware alarm set at {v:.1} {u}")),
        ),
        Alarm::None => (HealthState::Ok, None),
    }
}

/// A reading with its evaluated health, as reported.
#[derive(Debug, Clone, PartialEq)]
pub struct Sensor {
    pub reading: SensorReading,
    pub health: SensorHealth,
}

/// Evaluates every reading.
pub fn evaluate_all(readings: Vec<SensorReading>, cfg: &HealthConfig) -> Vec<Sensor> {
    readings
        .into_iter()
        .map(|reading| {
            let health = evaluate_sensor(&reading, cfg);
            Sensor { reading, health }
        })
        .collect()
}

/// The host's state from its sensors and clock; findings worst first.
pub fn host_health(sensors: &[Sensor], clock: &ClockStatus, cfg: &HealthConfig) -> HostHealth {
    let mut findings: Vec<Finding> = sensors
        .iter()
        .filter_map(|s| {
            Some(Finding {
                source: s.reading.id.clone(),
                state: s.health.state,
                message: s.health.reason.clone()?,
            })
        })
        .filter(|f| f.state != HealthState::Ok)
        .collect();
    findings.extend(super::clock::findings(clock, cfg));
    // Stable sort keeps discovery order within a state.
    findings.sort_by_key(|f| std::cmp::Reverse(f.state));
    HostHealth {
        state: findings.first().map_or(HealthState::Ok, |f| f.state),
        findings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(value: f64, t: Thresholds) -> SensorReading {
        SensorReading {
            id: "k10temp@0000:00:18.3/temp1".into(),
            chip: "k10temp".into(),
            label: "Tctl".into(),
            kind: SensorKind::Temperature,
            value,
            thresholds: t,
            alarm: Alarm::None,
        }
    }

    #[test]
    fn fallback_margin_and_override() {
        let cfg = HealthConfig::default();
        let bare = temp(90.0, Thresholds::default());
        let h = evaluate_sensor(&bare, &cfg);
        assert_eq!(h.state, HealthState::Warning);
        assert_eq!(h.thresholds.high_critical, Some(95.0));

        let crit_only = temp(
            96.0,
            Thresholds {
                high_critical: Some(100.0),
                ..Default::default()
            },
        );
        let h = evaluate_sensor(&crit_only, &cfg);
        assert_eq!(h.state, HealthState::Warning, "{h:?}");

        let mut cfg2 = cfg.clone();
        cfg2.overrides.push(SensorOverride {
            sensor: "k10temp/Tctl".into(),
            high_critical: Some(90.0),
            ..Default::default()
        });
        let h = evaluate_sensor(&crit_only, &cfg2);
        assert_eq!(h.state, HealthState::Critical);
        assert!(h.reason.unwrap().contains("96.0 C >= critical 90.0 C"));

        cfg2.overrides.push(SensorOverride {
            sensor: "k10temp".into(),
            ignore: true,
            ..Default::default()
        });
        assert_eq!(evaluate_sensor(&crit_only, &cfg2).state, HealthState::Ok);
    }

    #[test]
    fn config_parses_from_toml_with_defaults() {
        let cfg: HealthConfig = toml::from_str(
            r#"
            clock_skew_warning_ms = 250
            [[overrides]]
            sensor = "nvme"
            high_warning = 70.0
            "#,
        )
        .unwrap();
        assert_eq!(cfg.clock_skew_warning_ms, 250);
        assert!(cfg.refuse_when_critical);
        assert_eq!(cfg.overrides[0].high_warning, Some(70.0));
        assert!(toml::from_str::<HealthConfig>("bogus = 1").is_err());
    }
}
