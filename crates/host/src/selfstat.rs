//! The agent's own footprint: resident memory, CPU time, open file
//! descriptors and threads, from `/proc/self`, so the plane notices an agent
//! that leaks or spins before operators do.
//!
//! Reads the calling process only; never other processes.

use super::units::Bytes;
use std::fs;
use std::io;
use std::path::Path;

/// The agent process, now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgentSelf {
    /// Resident set size (VmRSS).
    pub rss: Bytes,
    /// User CPU time since start, ms.
    pub cpu_user_ms: u64,
    /// Kernel CPU time since start, ms.
    pub cpu_system_ms: u64,
    /// Entries in /proc/self/fd.
    pub open_fds: u32,
    /// Threads (tasks) of the process.
    pub threads: u32,
}

/// Reads `<proc>/self/{status,stat,fd}`.
pub fn read(proc_root: &Path) -> io::Result<AgentSelf> {
    let me = proc_root.join("self");
    let status = fs::read_to_string(me.join("status"))?;
    let stat = fs::read_to_string(me.join("stat"))?;
    let (user_ticks, system_ticks) = cpu_ticks(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "unexpected /proc/self/stat format",
        )
    })?;
    let tick_ms = 1000 / clock_ticks_per_second();
    Ok(AgentSelf {
        rss: Bytes::from_kib(status_field(&status, "VmRSS:").unwrap_or(0)),
        cpu_user_ms: user_ticks * tick_ms,
        cpu_system_ms: system_ticks * tick_ms,
        open_fds: fs::read_dir(me.join("fd"))?.count() as u32,
        threads: status_field(&status, "Threads:").unwrap_or(0) as u32,
    })
}

/// USER_HZ; 100 on every Linux architecture in practice.
fn clock_ticks_per_second() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 && t <= 1000 => t as u64,
        _ => 100,
    }
}

/// utime and stime (fields 14 and 15). The command name (field 2) may hold
/// spaces and parentheses, so count from the last ')'.
fn cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace().skip(11);
    let utime = fields.next()?.parse().ok()?;
    let stime = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

/// First number after `key` in /proc/<pid>/status ("VmRSS:   1234 kB").
fn status_field(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_name() {
        let stat = "42 (we ird) (x)) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 1 2 3";
        assert_eq!(cpu_ticks(stat), Some((250, 75)));
    }

    #[test]
    fn reads_own_process() {
        let me = read(Path::new("/proc")).unwrap();
        assert!(me.rss.0 > 0);
        assert!(me.open_fds >= 3);
        assert!(me.threads >= 1);
    }
}
