//! systemd's service notification protocol (sd_notify(3)), spoken directly.
//!
//! Owns the datagrams to `$NOTIFY_SOCKET` ("READY=1", "WATCHDOG=1",
//! "STOPPING=1", "STATUS=...") and reading the watchdog interval from
//! `$WATCHDOG_USEC`/`$WATCHDOG_PID`. Outside systemd (no `NOTIFY_SOCKET`)
//! every call is a silent no-op, so the agent runs the same by hand. It does
//! not decide *when* the agent is ready or alive: ops.rs does.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET {path:?} is not a usable socket address: {source}")]
    Address {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot notify systemd through {path:?}: {source}")]
    Send {
        path: String,
        source: std::io::Error,
    },
}

/// A connection to the service manager, or nothing when not under systemd.
pub struct Notifier {
    target: Option<Target>,
}

struct Target {
    path: String,
    addr: SocketAddr,
    sock: UnixDatagram,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`. Absent or empty: a no-op notifier.
    pub fn from_env() -> Result<Notifier, NotifyError> {
        match std::env::var("NOTIFY_SOCKET") {
            Ok(path) if !path.is_empty() => Notifier::to(&path),
            _ => Ok(Notifier { target: None }),
        }
    }

    /// A notifier for an explicit socket path ('@' starts an abstract name).
    pub fn to(path: &str) -> Result<Notifier, NotifyError> {
        let addr_err = |source| NotifyError::Address {
            path: path.to_string(),
            source,
        };
        let addr = socket_addr(path).map_err(addr_err)?;
        let sock = UnixDatagram::unbound().map_err(addr_err)?;
        Ok(Notifier {
            target: Some(Target {
                path: path.to_string(),
                addr,
                sock,
            }),
        })
    }

    /// A notifier that sends nothing (not under systemd).
    pub fn to_nowhere() -> Notifier {
        Notifier { target: None }
    }

    pub fn is_active(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one state string ("READY=1", "STATUS=...\nWATCHDOG=1", ...).
    /// A datagram is all or nothing, so there is no partial send to handle.
    pub fn send(&self, state: &str) -> Result<(), NotifyError> {
        let Some(t) = &self.target else {
            return Ok(());
        };
        t.sock
            .send_to_addr(state.as_bytes(), &t.addr)
            .map(|_| ())
            .map_err(|source| NotifyError::Send {
                path: t.path.clone(),
                source,
            })
    }

    /// Like `send`, but a failure is only logged: losing systemd's socket
    /// must never stop the agent (the watchdog will notice if it matters).
    pub fn send_or_log(&self, state: &str) {
        if let Err(e) = self.send(state) {
            tracing::warn!(error = %e, "systemd notification lost");
        }
    }
}

fn socket_addr(path: &str) -> std::io::Result<SocketAddr> {
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name.as_bytes())
    } else if path.starts_with('/') {
        SocketAddr::from_pathname(path)
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "neither an absolute path nor an abstract name starting with '@'",
        ))
    }
}

/// How often to ping the watchdog: half of `WATCHDOG_USEC`, as sd_notify(3)
/// advises, or `None` when systemd set no watchdog for this process.
pub fn watchdog_ping_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok()?;
    let pid = std::env::var("WATCHDOG_PID").ok();
    ping_interval(&usec, pid.as_deref(), std::process::id())
}

/// The rule of `watchdog_ping_interval`, apart from the environment.
/// WATCHDOG_PID names the process meant; a child that inherited the
/// variables must not ping on its parent's behalf.
pub fn ping_interval(usec: &str, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != own_pid {
            return None;
        }
    }
    let usec: u64 = usec.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    Some(Duration::from_micros(usec / 2))
}

/// A STATUS= line without newlines (each line of a datagram is a variable).
pub fn status_line(text: &str) -> String {
    format!("STATUS={}", text.replace('\n', " "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_interval_is_half_and_respects_pid() {
        assert_eq!(
            ping_interval("2000000", None, 7),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            ping_interval("2000000", Some("7"), 7),
            Some(Duration::from_secs(1))
        );
        assert_eq!(ping_interval("2000000", Some("8"), 7), None);
        assert_eq!(ping_interval("0", None, 7), None);
        assert_eq!(ping_interval("soon", None, 7), None);
    }

    #[test]
    fn sends_to_path_and_abstract_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        Notifier::to(path.to_str().unwrap())
            .unwrap()
            .send("READY=1")
            .unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("csagent-test-notify-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        Notifier::to(&format!("@{name}"))
            .unwrap()
            .send("WATCHDOG=1")
            .unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }

    #[test]
    fn relative_path_is_refused_and_absent_socket_is_a_no_op() {
        assert!(Notifier::to("notify.sock").is_err());
        let n = Notifier { target: None };
        assert!(!n.is_active());
        n.send("READY=1").unwrap();
        assert_eq!(status_line("a\nb"), "STATUS=a b");
    }
}
