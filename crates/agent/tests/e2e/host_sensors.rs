//! Sensors and health against sysfs trees laid out like real hardware:
//! Intel coretemp, AMD k10temp, NVMe, ACPI power meter, a PMBus power
//! supply, thermal zones with trip points, and a broken tree (empty,
//! non-numeric, absurd values, a sensor that disappears between reads).
//!
//! Layouts follow the kernel's hwmon sysfs ABI: millidegrees C, millivolts,
//! milliamperes, microwatts, RPM; /sys/class/hwmon/hwmonN is a symlink into
//! /sys/devices/..., and hwmonN/device points at the parent device.

use csagent_host::health::HealthState;
use csagent_host::sensors::{Alarm, SensorKind, SensorReading, SensorSet};
use csagent_host::{admission, Allocated, HostCollector, HostConfig, MiB, Request, SysRoots};
use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Writes `files` (path relative to root, content) and makes parents.
fn write_files(root: &Path, files: &[(&str, &str)]) {
    for (rel, content) in files {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, format!("{content}\n")).unwrap();
    }
}

/// A hwmon chip at `devices/<device_path>/hwmon/<hwmon>` with the class
/// symlink and `device` link, as the kernel lays it out.
fn hwmon(root: &Path, hwmon: &str, device_path: &str, attrs: &[(&str, &str)]) {
    let dir = root
        .join("sys/devices")
        .join(device_path)
        .join("hwmon")
        .join(hwmon);
    fs::create_dir_all(&dir).unwrap();
    for (name, value) in attrs {
        fs::write(dir.join(name), format!("{value}\n")).unwrap();
    }
    let device = device_path.rsplit('/').next().unwrap();
    std::os::unix::fs::symlink(format!("../../../{device}"), dir.join("device")).unwrap();
    let class = root.join("sys/class/hwmon");
    fs::create_dir_all(&class).unwrap();
    let depth = 2; // sys/class/hwmon -> sys
    let rel = format!("{}devices/{device_path}/hwmon/{hwmon}", "../".repeat(depth));
    std::os::unix::fs::symlink(rel, class.join(hwmon)).unwrap();
}

fn coretemp(root: &Path, package_milli_c: &str) {
    hwmon(
        root,
        "hwmon1",
        "platform/coretemp.0",
        &[
            ("name", "coretemp"),
            ("temp1_label", "Package id 0"),
            ("temp1_input", package_milli_c),
            ("temp1_max", "80000"),
            ("temp1_crit", "100000"),
            ("temp1_crit_alarm", "0"),
            ("temp2_label", "Core 0"),
            ("temp2_input", "44000"),
            ("temp2_max", "80000"),
            ("temp2_crit", "100000"),
            ("temp2_crit_alarm", "0"),
            ("temp6_label", "Core 4"),
            ("temp6_input", "46000"),
            ("temp6_max", "80000"),
            ("temp6_crit", "100000"),
            ("temp6_crit_alarm", "0"),
        ],
    );
}

fn k10temp(root: &Path) {
    hwmon(
        root,
        "hwmon2",
        "pci0000:00/0000:00:18.3",
        &[
            ("name", "k10temp"),
            ("temp1_label", "Tctl"),
            ("temp1_input", "52500"),
            ("temp3_label", "Tccd1"),
            ("temp3_input", "48250"),
            ("temp4_label", "Tccd2"),
            ("temp4_input", "47000"),
        ],
    );
}

fn nvme(root: &Path) {
    hwmon(
        root,
        "hwmon3",
        "pci0000:00/0000:00:01.2/0000:02:00.0/nvme/nvme0",
        &[
            ("name", "nvme"),
            ("temp1_label", "Composite"),
            ("temp1_input", "38850"),
            ("temp1_min", "-273150"),
            ("temp1_max", "81850"),
            ("temp1_crit", "84850"),
            ("temp1_alarm", "0"),
            ("temp2_label", "Sensor 1"),
            ("temp2_input", "38850"),
            ("temp2_min", "-273150"),
            ("temp2_max", "65261850"),
            ("temp3_label", "Sensor 2"),
            ("temp3_input", "43850"),
            ("temp3_min", "-273150"),
            ("temp3_max", "65261850"),
        ],
    );
}

fn power_meter(root: &Path) {
    hwmon(
        root,
        "hwmon4",
        "LNXSYSTM:00/LNXSYBUS:00/ACPI000D:00",
        &[
            ("name", "power_meter"),
            ("power1_average", "245000000"),
            ("power1_average_interval", "1000"),
            ("power1_average_interval_max", "300000"),
            ("power1_average_interval_min", "1000"),
            ("power1_cap", "400000000"),
            ("power1_accuracy", "95.0%"),
            ("power1_is_battery", "0"),
            ("power1_model_number", "Platform Power Meter"),
            ("power1_oem_info", "Vendor"),
            ("power1_serial_number", ""),
        ],
    );
}

/// A PSU on PMBus (i2c 7-0058), attributes as the generic pmbus driver makes them.
fn psu(root: &Path, vin_mv: &str, lcrit_alarm: &str, fan_fault: &str) {
    hwmon(
        root,
        "hwmon5",
        "platform/i2c_designware.0/i2c-7/7-0058",
        &[
            ("name", "pmbus"),
            ("in1_label", "vin"),
            ("in1_input", vin_mv),
            ("in1_min", "180000"),
            ("in1_max", "264000"),
            ("in1_lcrit", "90000"),
            ("in1_crit", "300000"),
            ("in1_min_alarm", "0"),
            ("in1_max_alarm", "0"),
            ("in1_lcrit_alarm", lcrit_alarm),
            ("in1_crit_alarm", "0"),
            ("in2_label", "vout1"),
            ("in2_input", "12100"),
            ("in2_lcrit", "10800"),
            ("in2_crit", "13200"),
            ("curr1_label", "iin"),
            ("curr1_input", "1230"),
            ("curr1_max", "10000"),
            ("curr1_max_alarm", "0"),
            ("curr2_label", "iout1"),
            ("curr2_input", "22500"),
            ("curr2_max", "66000"),
            ("curr2_crit", "80000"),
            ("curr2_crit_alarm", "0"),
            ("power1_label", "pin"),
            ("power1_input", "296000000"),
            ("power1_alarm", "0"),
            ("power2_label", "pout1"),
            ("power2_input", "272000000"),
            ("power2_cap", "800000000"),
            ("power2_crit", "960000000"),
            ("temp1_input", "34000"),
            ("temp1_max", "70000"),
            ("temp1_crit", "85000"),
            ("temp1_crit_alarm", "0"),
            ("temp2_input", "41000"),
            ("fan1_input", "8640"),
            ("fan1_target", "0"),
            ("fan1_alarm", "0"),
            ("fan1_fault", fan_fault),
        ],
    );
}

fn thermal_zones(root: &Path) {
    write_files(
        root,
        &[
            ("sys/class/thermal/thermal_zone0/type", "acpitz"),
            ("sys/class/thermal/thermal_zone0/temp", "27800"),
            ("sys/class/thermal/thermal_zone0/mode", "enabled"),
            (
                "sys/class/thermal/thermal_zone0/trip_point_0_type",
                "critical",
            ),
            (
                "sys/class/thermal/thermal_zone0/trip_point_0_temp",
                "119000",
            ),
            ("sys/class/thermal/thermal_zone0/trip_point_1_type", "hot"),
            (
                "sys/class/thermal/thermal_zone0/trip_point_1_temp",
                "105000",
            ),
            (
                "sys/class/thermal/thermal_zone0/trip_point_2_type",
                "active",
            ),
            ("sys/class/thermal/thermal_zone0/trip_point_2_temp", "60000"),
            ("sys/class/thermal/thermal_zone1/type", "x86_pkg_temp"),
            ("sys/class/thermal/thermal_zone1/temp", "45000"),
            (
                "sys/class/thermal/thermal_zone1/trip_point_0_type",
                "passive",
            ),
            ("sys/class/thermal/thermal_zone1/trip_point_0_temp", "0"),
            ("sys/class/thermal/thermal_zone2/type", "iwlwifi_1"),
            ("sys/class/thermal/thermal_zone2/temp", "40000"),
            ("sys/class/thermal/thermal_zone2/mode", "disabled"),
            // Cooling devices live next to zones and must be ignored.
            ("sys/class/thermal/cooling_device0/type", "Processor"),
            ("sys/class/thermal/cooling_device0/cur_state", "0"),
        ],
    );
}

/// Minimal procfs so a whole HostCollector runs against the fixture.
fn procfs(root: &Path) {
    write_files(
        root,
        &[
            ("proc/stat", "cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 50 0 50 350 50 0 0 0 0 0"),
            ("proc/meminfo", "MemTotal:       16384000 kB\nMemFree:         8000000 kB\nMemAvailable:   12000000 kB\nSwapTotal:       2097148 kB\nSwapFree:        2097148 kB"),
            ("proc/loadavg", "0.50 0.40 0.30 1/200 12345"),
            ("proc/net/dev", "Inter-|   Receive |  Transmit\n face |bytes packets errs drop fifo frame compressed multicast|bytes packets errs drop fifo colls carrier compressed\n  eth0: 1000 10 0 0 0 0 0 0 2000 20 0 0 0 0 0 0"),
            ("proc/cpuinfo", "processor\t: 0\nvendor_id\t: GenuineIntel\nphysical id\t: 0\ncore id\t\t: 0\n\nprocessor\t: 1\nvendor_id\t: GenuineIntel\nphysical id\t: 0\ncore id\t\t: 1\n\nprocessor\t: 2\nphysical id\t: 0\ncore id\t\t: 2\n\nprocessor\t: 3\nphysical id\t: 0\ncore id\t\t: 3\n"),
        ],
    );
}

fn find<'a>(readings: &'a [SensorReading], id: &str) -> &'a SensorReading {
    readings.iter().find(|r| r.id == id).unwrap_or_else(|| {
        panic!(
            "no sensor {id} in {:#?}",
            readings.iter().map(|r| &r.id).collect::<Vec<_>>()
        )
    })
}

#[test]
fn coretemp_package_and_cores_with_max_and_crit() {
    let dir = tempfile::tempdir().unwrap();
    coretemp(dir.path(), "45000");
    let mut set = SensorSet::new(&dir.path().join("sys"));
    let r = set.read();
    assert_eq!(r.len(), 3);
    let pkg = find(&r, "coretemp@coretemp.0/temp1");
    assert_eq!(pkg.label, "Package id 0");
    assert_eq!(pkg.kind, SensorKind::Temperature);
    assert_eq!(pkg.value, 45.0);
    assert_eq!(pkg.thresholds.high_warning, Some(80.0));
    assert_eq!(pkg.thresholds.high_critical, Some(100.0));
    assert_eq!(find(&r, "coretemp@coretemp.0/temp6").label, "Core 4");
}

#[test]
fn k10temp_without_limits_uses_config_fallbacks() {
    let dir = tempfile::tempdir().unwrap();
    k10temp(dir.path());
    let mut set = SensorSet::new(&dir.path().join("sys"));
    let r = set.read();
    let tctl = find(&r, "k10temp@0000:00:18.3/temp1");
    assert_eq!((tctl.label.as_str(), tctl.value), ("Tctl", 52.5));
    assert!(tctl.thresholds.is_empty());
    let cfg = csagent_host::HealthConfig::default();
    let h = csagent_host::health::evaluate_sensor(tctl, &cfg);
    assert_eq!(h.state, HealthState::Ok);
    assert_eq!(h.thresholds.high_critical, cfg.fallback_temp_critical_c);
}

#[test]
fn nvme_placeholder_limits_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    nvme(dir.path());
    let mut set = SensorSet::new(&dir.path().join("sys"));
    let r = set.read();
    let composite = find(&r, "nvme@nvme0/temp1");
    assert_eq!(composite.label, "Composite");
    assert_eq!(composite.thresholds.high_warning, Some(81.85));
    assert_eq!(composite.thresholds.high_critical, Some(84.85));
    assert_eq!(
        composite.thresholds.low_warning, None,
        "-273.15 C is a placeholder"
    );
    let s1 = find(&r, "nvme@nvme0/temp2");
    assert_eq!(s1.label, "Sensor 1");
    assert!(
        s1.thresholds.is_empty(),
        "65261.85 C is a placeholder: {:?}",
        s1.thresholds
    );
}

#[test]
fn acpi_power_meter_reads_average_and_cap() {
    let dir = tempfile::tempdir().unwrap();
    power_meter(dir.path());
    let mut set = SensorSet::new(&dir.path().join("sys"));
    let r = set.read();
    assert_eq!(r.len(), 1, "{r:#?}");
    let p = &r[0];
    assert_eq!(p.id, "power_meter@ACPI000D:00/power1");
    assert_eq!(p.kind, SensorKind::Power);
    assert_eq!(p.value, 245.0);
    assert_eq!(p.thresholds.high_warning, Some(400.0));
}

#[test]
fn pmbus_psu_voltages_currents_power_temps_fan() {
    let dir = tempfile::tempdir().unwrap();
    psu(dir.path(), "230500", "0", "0");
    let mut set = SensorSet::new(&dir.path().join("sys"));
    let r = set.read();
    assert_eq!(
        r.len(),
        9,
        "{:#?}",
        r.iter().map(|r| &r.id).collect::<Vec<_>>()
    );
    let vin = find(&r, "pmbus@7-0058/in1");
    assert_eq!(
        (vin.label.as_str(), vin.value, vin.kind),
        ("vin", 230.5, SensorKind::Voltage)
    );
    assert_eq!(vin.thresholds.low_critical, Some(90.0));
    assert_eq!(vin.thresholds.low_warning, Some(180.0));
    assert_eq!(find(&r, "pmbus@7-0058/curr2").value, 22.5);
    assert_eq!(find(&r, "pmbus@7-0058/power1").value, 296.0);
    let pout = find(&r, "pmbus@7-0058/power2");
    assert_eq!(
        (pout.thresholds.high_warning, pout.thresholds.high_critical),
        (Some(800.0), Some(960.0))
    );
    assert_eq!(find(&r, "pmbus@7-0058/fan1").value, 8640.0);
    let cfg = csagent_host::HealthConfig::default();
    for s in &r {
        let h = csagent_host::health::evaluate_sensor(s, &cfg);
        assert_eq!(h.state, HealthState::Ok, "{s:?} {h:?}");
    }
}

#[test]
fn psu_input_loss_and_fan_fault_are_critical() {
    let dir = tempfile::tempdir().unwrap();
    psu(dir.path(), "0", "1", "1");
    let mut set = SensorSet::new(&dir.path().join("sys"));
    let r = set.read();
    let cfg = csagent_host::HealthConfig::default();
    let vin = find(&r, "pmbus@7-0058/in1");
    let h = csagent_host::health::evaluate_sensor(vin, &cfg);
    assert_eq!(h.state, HealthState::Critical);
    assert!(h.reason.unwrap().contains("0.0 V <= low critical 90.0 V"));
    let fan = find(&r, "pmbus@7-0058/fan1");
    assert_eq!(fan.alarm, Alarm::Critical);
    assert_eq!(
        csagent_host::health::evaluate_sensor(fan, &cfg).state,
        HealthState::Critical
    );
}

#[test]
fn thermal_zones_with_trip_points() {
    let dir = tempfile::tempdir().unwrap();
    thermal_zones(dir.path());
    let mut set = SensorSet::new(&dir.path().join("sys"));
    let r = set.read();
    assert_eq!(
        r.len(),
        2,
        "disabled zone and cooling devices are skipped: {r:#?}"
    );
    let acpi = find(&r, "thermal/thermal_zone0");
    assert_eq!((acpi.label.as_str(), acpi.value), ("acpitz", 27.8));
    assert_eq!(acpi.thresholds.high_critical, Some(119.0));
    assert_eq!(acpi.thresholds.high_warning, Some(105.0));
    assert!(
        find(&r, "thermal/thermal_zone1").thresholds.is_empty(),
        "0 C trips mean unset"
    );
}

/// Captures tracing output so the test can count warnings.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn broken_tree(root: &Path) {
    hwmon(
        root,
        "hwmon0",
        "platform/nct6775.656",
        &[
            ("name", "nct6775"),
            ("temp1_input", ""),
            ("temp2_input", "abc"),
            ("temp3_input", "1000000"),
            ("temp4_input", "-300000"),
            ("temp5_input", "41000"),
            ("temp5_max", "garbage"),
            ("temp5_crit", ""),
            ("fan1_input", "-50"),
            ("fan2_input", "1200"),
            ("fan2_min", "x"),
            ("in0_input", "99999999999999999999"),
            // An unused Super I/O input: limits never set, alarm raised.
            ("in1_input", "1800"),
            ("in1_min", "0"),
            ("in1_max", "0"),
            ("in1_alarm", "1"),
            ("in2_input", "3300"),
            ("in2_min", "3500"),
            ("in2_max", "3100"),
            ("temp7_input", "40000"),
            ("temp7_fault", "1"),
        ],
    );
    // An attribute that cannot be read at all (EISDIR stands in for EIO).
    fs::create_dir(root.join("sys/devices/platform/nct6775.656/hwmon/hwmon0/temp6_input")).unwrap();
    // A chip that will be unplugged between reads.
    coretemp(root, "50000");
}

#[test]
fn broken_sensors_are_skipped_and_logged_once() {
    let dir = tempfile::tempdir().unwrap();
    broken_tree(dir.path());
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let sys = dir.path().join("sys");
    let (first, second, third) = tracing::subscriber::with_default(subscriber, || {
        let mut set = SensorSet::new(&sys);
        let first = set.read();
        // Unplug coretemp: its files vanish under the cached paths.
        fs::remove_dir_all(dir.path().join("sys/devices/platform/coretemp.0")).unwrap();
        let second = set.read();
        let third = set.read();
        (first, second, third)
    });
    let ids = |r: &[SensorReading]| r.iter().map(|s| s.id.clone()).collect::<Vec<_>>();
    assert_eq!(
        ids(&first),
        [
            "nct6775@nct6775.656/temp5",
            "nct6775@nct6775.656/fan2",
            "nct6775@nct6775.656/in1",
            "nct6775@nct6775.656/in2",
            "coretemp@coretemp.0/temp1",
            "coretemp@coretemp.0/temp2",
            "coretemp@coretemp.0/temp6",
        ]
    );
    let temp5 = find(&first, "nct6775@nct6775.656/temp5");
    assert!(temp5.thresholds.is_empty(), "garbage limits are dropped");
    let cfg = csagent_host::HealthConfig::default();
    for unset in ["nct6775@nct6775.656/in1", "nct6775@nct6775.656/in2"] {
        let r = find(&first, unset);
        assert!(r.thresholds.is_empty() && r.alarm == Alarm::None, "{r:?}");
        let state = csagent_host::health::evaluate_sensor(r, &cfg).state;
        assert_eq!(state, HealthState::Ok, "unset limits raise nothing");
    }
    assert_eq!(
        ids(&second),
        [
            "nct6775@nct6775.656/temp5",
            "nct6775@nct6775.656/fan2",
            "nct6775@nct6775.656/in1",
            "nct6775@nct6775.656/in2"
        ]
    );
    assert_eq!(
        ids(&third),
        ids(&second),
        "rediscovery dropped the unplugged chip"
    );

    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    for attr in [
        "temp1", "temp2", "temp3", "temp4", "temp6", "temp7", "fan1", "in0",
    ] {
        let id = format!("nct6775@nct6775.656/{attr}");
        let n = log
            .lines()
            .filter(|l| l.contains(&format!("sensor=\"{id}\"")))
            .count();
        assert_eq!(n, 1, "{id} logged {n} times:\n{log}");
    }
    assert!(log.contains("implausible value 1000 C"), "{log}");
    assert!(log.contains("file is empty"), "{log}");
    assert!(log.contains("not a number"), "{log}");
    assert!(log.contains("faulty"), "{log}");
    assert!(
        log.contains("sensor=\"coretemp@coretemp.0/temp1\"") && log.contains("file disappeared"),
        "{log}"
    );
}

#[test]
fn collector_report_on_fixture_host_and_admission() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    procfs(root);
    coretemp(root, "45000");
    nvme(root);
    psu(root, "230000", "0", "0");
    thermal_zones(root);
    let mut cfg = HostConfig::default();
    cfg.health.warn_when_ntp_unsynced = false;
    let mut c = HostCollector::new(cfg.clone(), SysRoots::under(root));
    let alloc = Allocated {
        vcpus: 2,
        memory: MiB(4096),
        vms: 1,
    };
    let report = c.report(&alloc, &[]);
    assert_eq!(report.health.state, HealthState::Ok, "{:#?}", report.health);
    assert_eq!(report.capacity.cpu_threads, 4);
    assert_eq!(report.capacity.vcpu_free, 2);
    assert_eq!(report.capacity.memory_total, MiB(16000));
    assert_eq!(report.capacity.memory_free, MiB(16000 - 1024 - 4096));
    // MemAvailable 12000000 kB = 11718 MiB, less the 1024 MiB reserve.
    assert_eq!(
        report.capacity.memory_available_for_vms,
        Some(MiB(11718 - 1024))
    );
    assert_eq!(report.sensors.len(), 3 + 3 + 9 + 2);
    let req = Request {
        vcpus: 2,
        memory: MiB(4096),
    };
    assert_eq!(admission::check(&report, &req, &cfg.health), Ok(()));

    let big = Request {
        vcpus: 3,
        memory: MiB(20000),
    };
    let err = admission::check(&report, &big, &cfg.health)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("Insufficient capacity"), "{err}");
    assert!(
        err.contains("vCPUs short by 1 (requested 3, free 2)"),
        "{err}"
    );
    assert!(err.contains("memory short by 9120 MiB"), "{err}");

    // The package heats up step by step: warning at max, critical at crit.
    let pkg = root.join("sys/devices/platform/coretemp.0/hwmon/hwmon1/temp1_input");
    fs::write(&pkg, "70000\n").unwrap();
    assert_eq!(c.health().state, HealthState::Ok);
    fs::write(&pkg, "85000\n").unwrap();
    assert_eq!(c.health().state, HealthState::Warning);
    fs::write(&pkg, "101000\n").unwrap();
    let hot = c.report(&alloc, &[]);
    assert_eq!(hot.health.state, HealthState::Critical);
    let err = admission::check(&hot, &req, &cfg.health).unwrap_err();
    assert!(!err.is_capacity());
    let msg = err.to_string();
    assert!(msg.contains("coretemp@coretemp.0/temp1"), "{msg}");
    assert!(
        msg.contains("Package id 0") && msg.contains("101.0 C >= critical 100.0 C"),
        "{msg}"
    );

    let mut lenient = cfg.health.clone();
    lenient.refuse_when_critical = false;
    assert_eq!(admission::check(&hot, &req, &lenient), Ok(()));
}

#[test]
fn temperature_glitch_is_held_back_and_a_real_rise_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    coretemp(dir.path(), "45000");
    let pkg = dir
        .path()
        .join("sys/devices/platform/coretemp.0/hwmon/hwmon1/temp1_input");
    let id = "coretemp@coretemp.0/temp1";
    let mut set = SensorSet::new(&dir.path().join("sys"));
    let value = |set: &mut SensorSet| set.read().iter().find(|r| r.id == id).map(|r| r.value);
    assert_eq!(value(&mut set), Some(45.0));
    // A bus glitch reads 127 C once, then 255 C: neither is confirmed.
    fs::write(&pkg, "127000\n").unwrap();
    assert_eq!(value(&mut set), None);
    fs::write(&pkg, "255000\n").unwrap();
    assert_eq!(value(&mut set), None, "255 C is implausible anyway");
    fs::write(&pkg, "46000\n").unwrap();
    assert_eq!(value(&mut set), Some(46.0));
    // A real overheat persists: accepted on the second read.
    fs::write(&pkg, "101000\n").unwrap();
    assert_eq!(value(&mut set), None);
    fs::write(&pkg, "102000\n").unwrap();
    assert_eq!(value(&mut set), Some(102.0));
}
