//! Fencing: making sure a host the neighbours judged dead really is, before
//! any of its VMs starts elsewhere.
//!
//! Owns the fence actions and their command lines: `ipmi` (power off through
//! the host's BMC with Debian's ipmitool, then a status read that must say
//! off), `lab` (the lab's power cut of one lab host, for tests) and `none`
//! (nothing is done: restarts then rely on the disk leases alone). Each is
//! a program with an argument vector, never a shell. It does not decide
//! when to fence.

use std::ffi::OsString;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// How one host is fenced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fence {
    /// No fencing: the VMs' disk leases are the only guard.
    None,
    /// The host's BMC, IPMI over LAN; the password is read by ipmitool from
    /// the file (never on the command line).
    Ipmi {
        address: String,
        user: String,
        password_file: PathBuf,
    },
    /// `<script> cut <index>`: the lab ends that host's daemons and QEMUs.
    Lab { script: PathBuf, index: u32 },
}

#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("fence {what}: cannot run {program}: {source}")]
    Spawn {
        what: String,
        program: String,
        source: std::io::Error,
    },
    #[error("fence {what}: no answer within {} s", .after.as_secs())]
    Timeout { what: String, after: Duration },
    #[error("fence {what} failed ({status}): {stderr}")]
    Failed {
        what: String,
        status: String,
        stderr: String,
    },
    #[error("fence {what}: the host still reports power on after the power off: {stdout}")]
    StillOn { what: String, stdout: String },
}

impl Fence {
    pub fn name(&self) -> &'static str {
        match self {
            Fence::None => "none",
            Fence::Ipmi { .. } => "ipmi",
            Fence::Lab { .. } => "lab",
        }
    }

    /// The command lines, run in order; empty for `none`. Each must exit 0.
    pub fn commands(&self) -> Vec<Vec<OsString>> {
        match self {
            Fence::None => Vec::new(),
            Fence::Ipmi {
                address,
                user,
                password_file,
            } => {
                let base = |rest: &[&str]| {
                    let mut v: Vec<OsString> = ["ipmitool", "-I", "lanplus", "-H"]
                        .iter()
                        .map(OsString::from)
                        .collect();
                    v.push(address.into());
                    v.push("-U".into());
                    v.push(user.into());
                    v.push("-f".into());
                    v.push(password_file.into());
                    v.extend(rest.iter().map(OsString::from));
                    v
                };
                vec![
                    base(&["chassis", "power", "off"]),
                    base(&["chassis", "power", "status"]),
                ]
            }
            Fence::Lab { script, index } => {
                vec![vec![script.into(), "cut".into(), index.to_string().into()]]
            }
        }
    }

    /// Runs the fence; Ok with what it did.
    pub async fn run(&self, timeout: Duration) -> Result<String, FenceError> {
        let what = self.to_string();
        let mut last = String::new();
        for argv in self.commands() {
            last = run_one(&what, &argv, timeout).await?;
        }
        if matches!(self, Fence::Ipmi { .. }) && !last.to_ascii_lowercase().contains("is off") {
            return Err(FenceError::StillOn {
                what,
                stdout: last.trim().to_string(),
            });
        }
        Ok(match self {
            Fence::None => "not fenced (fence none): the disk leases guard its VMs".into(),
            _ => format!("fenced by {what}"),
        })
    }
}

// The fence is this module's boundary: its one external command.
#[allow(clippy::disallowed_methods)]
async fn run_one(what: &str, argv: &[OsString], timeout: Duration) -> Result<String, FenceError> {
    // commands() never builds an empty line.
    let Some((program, args)) = argv.split_first() else {
        return Ok(String::new());
    };
    let program_name = program.to_string_lossy().into_owned();
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(timeout, child).await {
        Err(_) => {
            return Err(FenceError::Timeout {
                what: what.into(),
                after: timeout,
            })
        }
        Ok(Err(source)) => {
            return Err(FenceError::Spawn {
                what: what.into(),
                program: program_name,
                source,
            })
        }
        Ok(Ok(out)) => out,
    };
    if !out.status.success() {
        return Err(FenceError::Failed {
            what: what.into(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl std::fmt::Display for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fence::None => write!(f, "none"),
            Fence::Ipmi { address, user, .. } => write!(f, "ipmi {user}@{address}"),
            Fence::Lab { index, .. } => write!(f, "lab host {index}"),
        }
    }
}

/// `none`, `ipmi:ADDRESS,USER,PASSWORD_FILE` or `lab:SCRIPT,INDEX`.
impl FromStr for Fence {
    type Err = String;

    fn from_str(s: &str) -> Result<Fence, String> {
        let (kind, args) = s.split_once(':').unwrap_or((s, ""));
        let parts: Vec<&str> = if args.is_empty() {
            Vec::new()
        } else {
            args.split(',').collect()
        };
        match (kind, parts.as_slice()) {
            ("none", []) => Ok(Fence::None),
            ("ipmi", [address, user, file]) if !address.is_empty() && !user.is_empty() => {
                let password_file = PathBuf::from(file);
                if !password_file.is_absolute() {
                    return Err(format!("ipmi password file must be an absolute path, not {file:?}"));
                }
                Ok(Fence::Ipmi {
                    address: address.to_string(),
                    user: user.to_string(),
                    password_file,
                })
            }
            ("ipmi", _) => Err(format!("ipmi fence wants ipmi:ADDRESS,USER,PASSWORD_FILE, not {s:?}")),
            ("lab", [script, index]) => {
                let index: u32 = index
                    .parse()
                    .ok()
                    .filter(|i| *i >= 1)
                    .ok_or_else(|| format!("lab fence: host index must be a number from 1, not {index:?}"))?;
                Ok(Fence::Lab {
                    script: PathBuf::from(script),
                    index,
                })
            }
            ("lab", _) => Err(format!("lab fence wants lab:SCRIPT,INDEX, not {s:?}")),
            _ => Err(format!("unknown fence {s:?}: use none, ipmi:ADDRESS,USER,PASSWORD_FILE or lab:SCRIPT,INDEX")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(v: &[OsString]) -> Vec<String> {
        v.iter().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn ipmi_powers_off_then_reads_status_with_the_password_from_a_file() {
        let f: Fence = "ipmi:10.0.0.9,admin,/etc/csagent-mgmt/bmc.pass"
            .parse()
            .unwrap();
        let cmds = f.commands();
        assert_eq!(
            argv(&cmds[0]),
            [
                "ipmitool",
                "-I",
                "lanplus",
                "-H",
                "10.0.0.9",
                "-U",
                "admin",
                "-f",
                "/etc/csagent-mgmt/bmc.pass",
                "chassis",
                "power",
                "off"
            ]
        );
        assert_eq!(argv(&cmds[1])[9..], ["chassis", "power", "status"]);
    }

    #[test]
    fn lab_and_none_parse_and_bad_ones_say_why() {
        let lab: Fence = "lab:/x/lab.sh,1".parse().unwrap();
        assert_eq!(argv(&lab.commands()[0]), ["/x/lab.sh", "cut", "1"]);
        assert!(Fence::from_str("none").unwrap().commands().is_empty());
        for (bad, says) in [
            ("ipmi:10.0.0.9,admin", "ipmi:ADDRESS,USER,PASSWORD_FILE"),
            ("ipmi:10.0.0.9,admin,pass.txt", "absolute path"),
            ("lab:/x/lab.sh,zero", "host index"),
            ("stonith", "unknown fence"),
        ] {
            let e = Fence::from_str(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[tokio::test]
    async fn a_failing_fence_is_an_error_with_its_output() {
        let f = Fence::Lab {
            script: PathBuf::from("/bin/false"),
            index: 1,
        };
        let e = f.run(Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(e, FenceError::Failed { .. }), "{e}");
        let missing = Fence::Lab {
            script: PathBuf::from("/nonexistent/csagent-fence"),
            index: 1,
        };
        let e = missing.run(Duration::from_secs(5)).await.unwrap_err();
        assert!(
            e.to_string()
                .contains("cannot run /nonexistent/csagent-fence"),
            "{e}"
        );
    }
}
