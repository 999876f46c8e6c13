//! Hardware sensors: hwmon (temperatures, fans, voltages, currents, power)
//! and thermal zones, read from a configurable sysfs root.
//!
//! Discovery walks `class/hwmon` and `class/thermal` once and caches the
//! attribute paths and hardware thresholds; each report then only reads the
//! input and alarm files. A sensor whose file is missing, unreadable, empty,
//! not a number or physically absurd is skipped and logged once (per sensor,
//! for the life of the process), never failing the report. A temperature
//! that jumps by more than MAX_TEMP_STEP_C between reads (a flaky i2c/SMBus
//! read returning 127 or 255 C) is held back once: if the next read confirms
//! it, it is accepted, so a real rise is reported one interval late while a
//! glitch never makes the host critical. Deciding ok /
//! warning / critical is health.rs's job, not this file's.

use super::sysfs::{self, ReadError};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Rediscover sensors every this many reads, to pick up hot-plugged devices
/// and changed power caps without paying for a directory walk every time.
const RESCAN_EVERY: u32 = 60;

/// A temperature step larger than this between two reads is confirmed by
/// one more read before it counts. Real parts do not heat 30 C in seconds
/// without the previous reads already rising.
const MAX_TEMP_STEP_C: f64 = 30.0;

/// What a sensor measures; the unit follows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SensorKind {
    /// Degrees Celsius (sysfs: millidegrees).
    Temperature,
    /// Revolutions per minute.
    Fan,
    /// Volts (sysfs: millivolts).
    Voltage,
    /// Amperes (sysfs: milliamperes).
    Current,
    /// Watts (sysfs: microwatts).
    Power,
}

impl SensorKind {
    /// hwmon attribute prefix (`temp1_input`, `in0_input`, ...).
    fn prefix(self) -> &'static str {
        match self {
            SensorKind::Temperature => "temp",
            SensorKind::Fan => "fan",
            SensorKind::Voltage => "in",
            SensorKind::Current => "curr",
            SensorKind::Power => "power",
        }
    }

    /// Divisor from the sysfs integer to the unit of `unit()`.
    fn divisor(self) -> f64 {
        match self {
            SensorKind::Temperature | SensorKind::Voltage | SensorKind::Current => 1_000.0,
            SensorKind::Fan => 1.0,
            SensorKind::Power => 1_000_000.0,
        }
    }

    /// Unit of `SensorReading::value` and of every threshold.
    pub fn unit(self) -> &'static str {
        match self {
            SensorKind::Temperature => "C",
            SensorKind::Fan => "RPM",
            SensorKind::Voltage => "V",
            SensorKind::Current => "A",
            SensorKind::Power => "W",
        }
    }

    /// Whether a value can be physical at all on a server. Anything outside
    /// is a broken driver or bus read (1000 C, -50 RPM), not an emergency.
    pub fn plausible(self, v: f64) -> bool {
        if !v.is_finite() {
            return false;
        }
        match self {
            SensorKind::Temperature => (-55.0..=200.0).contains(&v),
            SensorKind::Fan => (0.0..=100_000.0).contains(&v),
            SensorKind::Voltage => (-1_000.0..=1_000.0).contains(&v),
            SensorKind::Current => (-5_000.0..=5_000.0).contains(&v),
            SensorKind::Power => (0.0..=200_000.0).contains(&v),
        }
    }

    const ALL: [SensorKind; 5] = [
        SensorKind::Temperature,
        SensorKind::Fan,
        SensorKind::Voltage,
        SensorKind::Current,
        SensorKind::Power,
    ];
}

/// Limits in the sensor's unit. `high_*` trip at or above, `low_*` at or below.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Thresholds {
    pub low_critical: Option<f64>,
    pub low_warning: Option<f64>,
    pub high_warning: Option<f64>,
    pub high_critical: Option<f64>,
}

impl Thresholds {
    pub fn is_empty(&self) -> bool {
        *self == Thresholds::default()
    }
}

/// What the hardware's own alarm flags say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Alarm {
    #[default]
    None,
    /// A `*_alarm`, `*_max_alarm`, `*_min_alarm` or `*_cap_alarm` flag is set.
    Warning,
    /// A `*_crit_alarm`, `*_lcrit_alarm`, `*_emergency_alarm` or fan fault is set.
    Critical,
}

/// One sensor value from one read.
#[derive(Debug, Clone, PartialEq)]
pub struct SensorReading {
    /// Stable id: `<chip>@<device>/<attr>` for hwmon (`coretemp@coretemp.0/temp1`),
    /// `thermal/<zone>` for thermal zones. Config overrides name sensors by it.
    pub id: String,
    /// hwmon `name` (`coretemp`, `nvme`, `k10temp`) or `thermal`.
    pub chip: String,
    /// hwmon `*_label` or the thermal zone `type`; the attribute name if none.
    pub label: String,
    pub kind: SensorKind,
    /// In `kind.unit()`.
    pub value: f64,
    /// From the hardware here; health.rs replaces them with the effective ones.
    pub thresholds: Thresholds,
    pub alarm: Alarm,
}

/// One discovered sensor: where to read it, and its hardware limits.
#[derive(Debug, Clone)]
struct Source {
    id: String,
    chip: String,
    label: String,
    kind: SensorKind,
    input: PathBuf,
    thresholds: Thresholds,
    alarms: Vec<(PathBuf, Alarm)>,
    /// `*_fault` for sensors whose fault means "cannot measure" (a temperature
    /// diode); fan faults are alarms instead, since they mean a dead fan.
    fault: Option<PathBuf>,
}

/// The host's sensors, discovered once and read on every report.
#[derive(Debug)]
pub struct SensorSet {
    sys: PathBuf,
    sources: Vec<Source>,
    warned: HashSet<String>,
    /// Last accepted value and a jumped value awaiting confirmation, by
    /// sensor id (survives rediscovery).
    last: HashMap<String, (f64, Option<f64>)>,
    rescan: bool,
    reads_since_scan: u32,
}

impl SensorSet {
    /// Discovers sensors under `sys` (normally `/sys`). A missing `class/hwmon`
    /// (containers, many VMs) just means no sensors.
    pub fn new(sys: &Path) -> Self {
        let mut set = SensorSet {
            sys: sys.to_path_buf(),
            sources: Vec::new(),
            warned: HashSet::new(),
            last: HashMap::new(),
            rescan: false,
            reads_since_scan: 0,
        };
        set.discover();
        set
    }

    /// How many sensors discovery found (before read failures).
    pub fn len(&self) -> usize {
        self.sources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    fn discover(&mut self) {
        let mut sources = hwmon_sources(&self.sys);
        sources.extend(thermal_sources(&self.sys));
        self.sources = sources;
        self.rescan = false;
        self.reads_since_scan = 0;
    }

    /// Reads every sensor. Problems are logged once per sensor and the
    /// sensor is left out; a vanished file triggers rediscovery next time.
    pub fn read(&mut self) -> Vec<SensorReading> {
        if self.rescan || self.reads_since_scan >= RESCAN_EVERY {
            self.discover();
        }
        self.reads_since_scan += 1;
        let mut out = Vec::with_capacity(self.sources.len());
        for i in 0..self.sources.len() {
            let read = read_source(&self.sources[i]).and_then(|r| self.debounce(r));
            match read {
                Ok(r) => out.push(r),
                Err(problem) => {
                    if matches!(problem, Problem::Read(ReadError::Missing)) {
                        self.rescan = true;
                    }
                    let src = &self.sources[i];
                    warn_once(&mut self.warned, &src.id, &src.label, &problem);
                }
            }
        }
        out
    }

    /// Holds back a temperature jump until a second read confirms it.
    fn debounce(&mut self, r: SensorReading) -> Result<SensorReading, Problem> {
        let near = |a: f64, b: f64| (a - b).abs() <= MAX_TEMP_STEP_C;
        // get_mut first: no key allocation on the common path.
        let Some(entry) = self.last.get_mut(&r.id) else {
            self.last.insert(r.id.clone(), (r.value, None));
            return Ok(r);
        };
        let (accepted, pending) = *entry;
        let confirmed = pending.is_some_and(|p| near(p, r.value));
        if r.kind == SensorKind::Temperature && !near(accepted, r.value) && !confirmed {
            entry.1 = Some(r.value);
            return Err(Problem::Flapping {
                from: accepted,
                to: r.value,
            });
        }
        *entry = (r.value, None);
        Ok(r)
    }
}

/// Why a sensor was skipped.
#[derive(Debug)]
enum Problem {
    Read(ReadError),
    Implausible(f64, SensorKind),
    Fault,
    Flapping { from: f64, to: f64 },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Read(e) => write!(f, "{e}"),
            Problem::Implausible(v, k) => write!(f, "implausible value {v} {}", k.unit()),
            Problem::Fault => write!(f, "the hardware flags the sensor as faulty"),
            Problem::Flapping { from, to } => write!(
                f,
                "jumped from {from} C to {to} C in one interval; held back until a second read confirms it"
            ),
        }
    }
}

fn warn_once(warned: &mut HashSet<String>, id: &str, label: &str, problem: &Problem) {
    if warned.insert(id.to_string()) {
        tracing::warn!(
            sensor = id,
            label,
            "sensor skipped: {problem}; it is left out of host reports while this lasts, \
             and further problems with it are not logged again"
        );
    } else {
        tracing::debug!(sensor = id, "sensor skipped: {problem}");
    }
}

fn read_source(src: &Source) -> Result<SensorReading, Problem> {
    if let Some(fault) = &src.fault {
        if sysfs::read_i64_opt(fault).unwrap_or(0) != 0 {
            return Err(Problem::Fault);
        }
    }
    let raw = sysfs::read_i64(&src.input).map_err(Problem::Read)?;
    // Integer sysfs values up to 2^53 convert exactly; larger ones are absurd anyway.
    let value = raw as f64 / src.kind.divisor();
    if !src.kind.plausible(value) {
        return Err(Problem::Implausible(value, src.kind));
    }
    let alarm = src
        .alarms
        .iter()
        .filter(|(path, _)| sysfs::read_i64_opt(path).unwrap_or(0) != 0)
        .map(|(_, level)| *level)
        .max()
        .unwrap_or_default();
    Ok(SensorReading {
        id: src.id.clone(),
        chip: src.chip.clone(),
        label: src.label.clone(),
        kind: src.kind,
        value,
        thresholds: src.thresholds,
        alarm,
    })
}

// ---------------------------------------------------------------------------
// hwmon discovery
// ---------------------------------------------------------------------------

fn hwmon_sources(sys: &Path) -> Vec<Source> {
    let mut out = Vec::new();
    for dir in sysfs::entries_with_prefix(&sys.join("class/hwmon"), "hwmon") {
        // Old drivers keep their attributes in the device directory.
        let base = if dir.join("name").exists() {
            dir.clone()
        } else {
            dir.join("device")
        };
        let hwmon = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let chip = sysfs::read_opt(&base.join("name")).unwrap_or_else(|| hwmon.clone());
        let device = sysfs::link_name(&dir.join("device")).unwrap_or(hwmon);
        out.extend(chip_sources(&base, &chip, &device));
    }
    out
}

/// Every (kind, index) of one hwmon chip with its input file name.
fn chip_inputs(base: &Path) -> BTreeMap<(SensorKind, u32), String> {
    let mut inputs = BTreeMap::new();
    let Ok(rd) = fs::read_dir(base) else {
        return inputs;
    };
    for entry in rd.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((kind, index, suffix)) = split_attr(&name) else {
            continue;
        };
        // Power meters (acpi power_meter) expose only an average.
        let better = match suffix {
            "input" => true,
            "average" => !inputs.contains_key(&(kind, index)),
            _ => false,
        };
        if better {
            inputs.insert((kind, index), name);
        }
    }
    inputs
}

/// "temp12_crit_alarm" -> (Temperature, 12, "crit_alarm").
fn split_attr(name: &str) -> Option<(SensorKind, u32, &str)> {
    SensorKind::ALL.iter().find_map(|&kind| {
        let rest = name.strip_prefix(kind.prefix())?;
        let (index, suffix) = rest.split_once('_')?;
        if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some((kind, index.parse().ok()?, suffix))
    })
}

fn chip_sources(base: &Path, chip: &str, device: &str) -> Vec<Source> {
    chip_inputs(base)
        .into_iter()
        .map(|((kind, index), input)| {
            let attr = format!("{}{index}", kind.prefix());
            let file = |suffix: &str| base.join(format!("{attr}_{suffix}"));
            let label = sysfs::read_opt(&file("label")).unwrap_or_else(|| attr.clone());
            let (mut alarms, fault) = alarm_files(kind, &file);
            let thresholds = hwmon_thresholds(kind, &file);
            if thresholds.is_empty() {
                // Limit alarms compare against limits nobody configured
                // (Super I/O chips boot with min = max = 0); only critical
                // and fault flags still mean something.
                alarms.retain(|(_, level)| *level == Alarm::Critical);
            }
            Source {
                id: format!("{chip}@{device}/{attr}"),
                chip: chip.to_string(),
                label,
                kind,
                input: base.join(input),
                thresholds,
                alarms,
                fault,
            }
        })
        .collect()
}

fn alarm_files(
    kind: SensorKind,
    file: &dyn Fn(&str) -> PathBuf,
) -> (Vec<(PathBuf, Alarm)>, Option<PathBuf>) {
    let levels = [
        ("alarm", Alarm::Warning),
        ("max_alarm", Alarm::Warning),
        ("min_alarm", Alarm::Warning),
        ("cap_alarm", Alarm::Warning),
        ("crit_alarm", Alarm::Critical),
        ("lcrit_alarm", Alarm::Critical),
        ("emergency_alarm", Alarm::Critical),
    ];
    let mut alarms: Vec<(PathBuf, Alarm)> = levels
        .iter()
        .map(|(suffix, level)| (file(suffix), *level))
        .filter(|(p, _)| p.exists())
        .collect();
    let fault = Some(file("fault")).filter(|p| p.exists());
    if kind == SensorKind::Fan {
        // A PSU or chassis fan "fault" is a failed fan: the hardware is at risk.
        alarms.extend(fault.map(|p| (p, Alarm::Critical)));
        return (alarms, None);
    }
    (alarms, fault)
}

fn hwmon_thresholds(kind: SensorKind, file: &dyn Fn(&str) -> PathBuf) -> Thresholds {
    let value = |suffix: &str| -> Option<f64> {
        let v = sysfs::read_i64_opt(&file(suffix))? as f64 / kind.divisor();
        plausible_threshold(kind, v).then_some(v)
    };
    let min_of = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    match kind {
        SensorKind::Temperature => unconfigured_limits_dropped(Thresholds {
            low_critical: value("lcrit"),
            low_warning: value("min"),
            high_warning: value("max"),
            high_critical: min_of(value("crit"), value("emergency")),
        }),
        SensorKind::Fan => {
            let min = value("min").filter(|m| *m > 0.0);
            Thresholds {
                // A fan that should turn (min > 0) and stands still is critical.
                low_critical: min.map(|_| 0.0),
                low_warning: min,
                high_warning: value("max").filter(|m| *m > 0.0),
                high_critical: None,
            }
        }
        SensorKind::Voltage | SensorKind::Current => {
            let mut t = unconfigured_limits_dropped(Thresholds {
                low_critical: value("lcrit"),
                low_warning: value("min"),
                high_warning: value("max"),
                high_critical: value("crit"),
            });
            // A lone upper limit of 0 is "unset" too (nothing reads below it).
            t.high_warning = t.high_warning.filter(|v| *v != 0.0);
            t.high_critical = t.high_critical.filter(|v| *v != 0.0);
            t
        }
        SensorKind::Power => Thresholds {
            low_critical: None,
            low_warning: None,
            high_warning: min_of(value("max"), value("cap")).filter(|v| *v > 0.0),
            high_critical: value("crit").filter(|v| *v > 0.0),
        },
    }
}

/// A min at or above its max means the limits were never set (chips power
/// up with both at 0 or at their register defaults), not a narrow window.
fn unconfigured_limits_dropped(mut t: Thresholds) -> Thresholds {
    if let (Some(lo), Some(hi)) = (t.low_warning, t.high_warning) {
        if lo >= hi {
            t.low_warning = None;
            t.high_warning = None;
        }
    }
    if let (Some(lo), Some(hi)) = (t.low_critical, t.high_critical) {
        if lo >= hi {
            t.low_critical = None;
            t.high_critical = None;
        }
    }
    t
}

/// Drivers publish placeholder limits: nvme's unset "Sensor N" max is
/// 65261.85 C, its min -273.15 C, some boards write 0 for "no limit".
fn plausible_threshold(kind: SensorKind, v: f64) -> bool {
    kind.plausible(v) && !(kind == SensorKind::Temperature && v == 0.0)
}

// ---------------------------------------------------------------------------
// thermal zones
// ---------------------------------------------------------------------------

fn thermal_sources(sys: &Path) -> Vec<Source> {
    let mut out = Vec::new();
    for zone in sysfs::entries_with_prefix(&sys.join("class/thermal"), "thermal_zone") {
        if sysfs::read_opt(&zone.join("mode")).as_deref() == Some("disabled") {
            continue;
        }
        let name = zone
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.push(Source {
            id: format!("thermal/{name}"),
            chip: "thermal".to_string(),
            label: sysfs::read_opt(&zone.join("type")).unwrap_or_else(|| name.clone()),
            kind: SensorKind::Temperature,
            input: zone.join("temp"),
            thresholds: trip_thresholds(&zone),
            alarms: Vec::new(),
            fault: None,
        });
    }
    out
}

/// critical trip -> critical; hot and passive (throttling starts) -> warning.
/// Active trips only switch fans and say nothing about danger.
fn trip_thresholds(zone: &Path) -> Thresholds {
    let mut t = Thresholds::default();
    for type_file in sysfs::entries_with_prefix(zone, "trip_point_") {
        let name = type_file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(stem) = name.strip_suffix("_type") else {
            continue;
        };
        let Some(kind) = sysfs::read_opt(&type_file) else {
            continue;
        };
        let Some(temp) = sysfs::read_i64_opt(&zone.join(format!("{stem}_temp")))
            .map(|v| v as f64 / 1000.0)
            .filter(|v| plausible_threshold(SensorKind::Temperature, *v) && *v > 0.0)
        else {
            continue;
        };
        let slot = match kind.as_str() {
            "critical" => &mut t.high_critical,
            "hot" | "passive" => &mut t.high_warning,
            _ => continue,
        };
        *slot = Some(slot.map_or(temp, |old: f64| old.min(temp)));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_names() {
        assert_eq!(
            split_attr("temp12_crit_alarm"),
            Some((SensorKind::Temperature, 12, "crit_alarm"))
        );
        assert_eq!(
            split_attr("in0_input"),
            Some((SensorKind::Voltage, 0, "input"))
        );
        assert_eq!(
            split_attr("power1_average_interval"),
            Some((SensorKind::Power, 1, "average_interval"))
        );
        assert_eq!(split_attr("intrusion0_alarm"), None);
        assert_eq!(split_attr("name"), None);
        assert_eq!(split_attr("temp_input"), None);
    }

    #[test]
    fn plausibility() {
        assert!(!SensorKind::Temperature.plausible(1000.0));
        assert!(!SensorKind::Fan.plausible(-50.0));
        assert!(!SensorKind::Power.plausible(f64::NAN));
        assert!(SensorKind::Voltage.plausible(230.0));
        assert!(!plausible_threshold(SensorKind::Temperature, 65261.85));
        assert!(!plausible_threshold(SensorKind::Temperature, -273.15));
    }
}
