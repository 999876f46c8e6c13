//! Small readers for sysfs and procfs attribute files, and the configurable
//! roots they are read from (tests point these at fixture trees).
//!
//! This file only reads and parses single values; it knows nothing about
//! sensors, health or capacity, and it never writes.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Where the host's pseudo-filesystems are. `SysRoots::host()` is the real
/// machine; tests use a tempdir laid out like the real thing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysRoots {
    /// sysfs, normally `/sys`.
    pub sys: PathBuf,
    /// procfs, normally `/proc`.
    pub proc: PathBuf,
    /// devices, normally `/dev` (for `/dev/kvm`).
    pub dev: PathBuf,
    /// configuration, normally `/etc` (for `os-release`).
    pub etc: PathBuf,
}

impl SysRoots {
    /// The running machine's own roots.
    pub fn host() -> Self {
        SysRoots {
            sys: PathBuf::from("/sys"),
            proc: PathBuf::from("/proc"),
            dev: PathBuf::from("/dev"),
            etc: PathBuf::from("/etc"),
        }
    }

    /// Everything under one directory (`<root>/sys`, `<root>/proc`, ...),
    /// the layout test fixtures use.
    pub fn under(root: &Path) -> Self {
        SysRoots {
            sys: root.join("sys"),
            proc: root.join("proc"),
            dev: root.join("dev"),
            etc: root.join("etc"),
        }
    }
}

impl Default for SysRoots {
    fn default() -> Self {
        SysRoots::host()
    }
}

/// Why one attribute could not be turned into a number.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The file is gone (device removed, driver unloaded).
    Missing,
    /// Any other I/O error (EIO from a flaky bus, EISDIR, EACCES, ...).
    Io(io::Error),
    /// The file was empty.
    Empty,
    /// The content was not an integer.
    NotNumeric(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Missing => write!(f, "file disappeared"),
            ReadError::Io(e) => write!(f, "read failed: {e}"),
            ReadError::Empty => write!(f, "file is empty"),
            ReadError::NotNumeric(s) => write!(f, "not a number: {s:?}"),
        }
    }
}

/// The trimmed content of a text attribute.
pub(crate) fn read_trimmed(path: &Path) -> Result<String, ReadError> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(io_error)
}

/// A text attribute, or None when it is absent or unreadable.
pub(crate) fn read_opt(path: &Path) -> Option<String> {
    read_trimmed(path).ok().filter(|s| !s.is_empty())
}

/// An integer attribute (sysfs writes decimal integers; some end in "\n").
/// Read into a stack buffer: this runs for every sensor on every heartbeat,
/// and skipping the String and the size probe of read_to_string saves a
/// syscall and an allocation each time.
pub(crate) fn read_i64(path: &Path) -> Result<i64, ReadError> {
    let mut file = fs::File::open(path).map_err(io_error)?;
    let mut buf = [0u8; 64];
    let mut len = 0;
    while len < buf.len() {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error(e)),
        }
    }
    let s = String::from_utf8_lossy(&buf[..len]);
    let s = s.trim();
    if s.is_empty() {
        return Err(ReadError::Empty);
    }
    s.parse::<i64>()
        .map_err(|_| ReadError::NotNumeric(truncate(s)))
}

fn io_error(e: io::Error) -> ReadError {
    if e.kind() == io::ErrorKind::NotFound {
        ReadError::Missing
    } else {
        ReadError::Io(e)
    }
}

/// An integer attribute, None when absent or not a number.
pub(crate) fn read_i64_opt(path: &Path) -> Option<i64> {
    read_i64(path).ok()
}

/// A hexadecimal attribute such as PCI `class` ("0x030000").
pub(crate) fn read_hex_opt(path: &Path) -> Option<u32> {
    let s = read_opt(path)?;
    u32::from_str_radix(s.trim_start_matches("0x"), 16).ok()
}

/// The file name of a symlink's target (`driver -> ../../bus/pci/drivers/vfio-pci`).
pub(crate) fn link_name(path: &Path) -> Option<String> {
    let target = fs::read_link(path).ok()?;
    let name = match target.file_name() {
        Some(n) => n.to_os_string(),
        // A target ending in ".." names its directory only once resolved.
        None => fs::canonicalize(path).ok()?.file_name()?.to_os_string(),
    };
    Some(name.to_string_lossy().into_owned())
}

/// Keeps log lines short when a file holds garbage.
fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Parses a kernel CPU list ("0-3,8,10-11") into CPU numbers.
pub(crate) fn parse_cpu_list(list: &str) -> Vec<u32> {
    let mut cpus = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                    // A range wider than any real machine is garbage, not a
                    // reason to allocate gigabytes.
                    if b >= a && b - a < 65_536 {
                        cpus.extend(a..=b);
                    }
                }
            }
            None => cpus.extend(part.parse::<u32>().ok()),
        }
    }
    cpus
}

/// Sorted entries of a directory whose names start with `prefix`.
pub(crate) fn entries_with_prefix(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect();
    out.sort_by_key(|p| natural_key(p));
    out
}

/// Sort key that orders "hwmon10" after "hwmon9".
fn natural_key(p: &Path) -> (String, u64) {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let digits: String = name
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect();
    let num: String = digits.chars().rev().collect();
    let stem = name[..name.len() - num.len()].to_string();
    (stem, num.parse().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,8,10-11\n"), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(parse_cpu_list(""), Vec::<u32>::new());
        assert_eq!(parse_cpu_list("5-2,x,7"), vec![7]);
    }

    #[test]
    fn natural_order() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["hwmon10", "hwmon9", "hwmon1", "other"] {
            std::fs::create_dir(dir.path().join(n)).unwrap();
        }
        let names: Vec<String> = entries_with_prefix(dir.path(), "hwmon")
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["hwmon1", "hwmon9", "hwmon10"]);
    }
}
